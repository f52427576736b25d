package app_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

func accessAt(t *testing.T, c pb.SecretServiceClient, key string, minRevision int64) (*pb.AccessSecretVersionResponse, error) {
	t.Helper()
	return c.AccessSecretVersion(context.Background(), &pb.AccessSecretVersionRequest{Key: key, Version: "latest", MinRevision: minRevision})
}

// TestReadCacheReadsOwnWrites: on one replica, every read after a write —
// of any kind — sees it, whether or not the value was cached before; the
// cache is in use between writes.
func TestReadCacheReadsOwnWrites(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	for i := range 60 {
		want := fmt.Sprintf("v%d", i)
		w := put(t, c, "CACHED_KEY", want)
		for range 3 { // the first read may fill the cache, the others hit it
			res, err := accessAt(t, c, "CACHED_KEY", 0)
			if err != nil || string(res.Value) != want || res.Version != w.Secret.CurrentVersion || res.Revision < w.Revision {
				t.Fatalf("write %d: read %v (revision %d), %v; want %s at revision ≥ %d", i, res, res.GetRevision(), err, want, w.Revision)
			}
			batch, err := c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"CACHED_KEY"}})
			if err != nil || string(batch.Results[0].Value) != want || batch.Revision < w.Revision {
				t.Fatalf("write %d: batch read %v, %v; want %s", i, batch, err, want)
			}
		}
		switch i % 20 {
		case 7:
			if _, err := c.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: "CACHED_KEY", Version: fmt.Sprint(w.Secret.CurrentVersion)}); err != nil {
				t.Fatal(err)
			}
			_, err := accessAt(t, c, "CACHED_KEY", 0)
			wantCode(t, err, codes.FailedPrecondition)
		case 13:
			if _, err := c.DestroySecretVersion(ctx, &pb.DestroySecretVersionRequest{Key: "CACHED_KEY", Version: fmt.Sprint(w.Secret.CurrentVersion)}); err != nil {
				t.Fatal(err)
			}
			_, err := accessAt(t, c, "CACHED_KEY", 0)
			wantCode(t, err, codes.FailedPrecondition)
		case 19:
			if _, err := c.DeleteSecret(ctx, &pb.DeleteSecretRequest{Key: "CACHED_KEY"}); err != nil {
				t.Fatal(err)
			}
			_, err := accessAt(t, c, "CACHED_KEY", 0)
			wantCode(t, err, codes.NotFound)
		}
	}
	// Between writes, reads are answered from memory — also after a write
	// that failed once it had taken a revision (it must not leave the cache
	// waiting for a revision that never commits).
	hits := func() float64 {
		return metricValue(httpGet(t, srv.BaseURL+"/metrics"), "secrets_read_cache_hits_total")
	}
	w := put(t, c, "CACHED_KEY", "steady")
	_, err := c.DeleteSecret(ctx, &pb.DeleteSecretRequest{Key: "NEVER_WRITTEN"})
	wantCode(t, err, codes.NotFound)
	before := hits()
	// A bound on liveness, not a speed target: the cache turns fresh when
	// the change feed catches up, which the full suite's -race load on two
	// cores has delayed past 5 s. A cache left waiting for a revision that
	// never commits never hits, whatever the bound.
	deadline := time.Now().Add(20 * time.Second)
	for hits() == before {
		res, err := accessAt(t, c, "CACHED_KEY", 0)
		if err != nil || string(res.Value) != "steady" || res.Revision < w.Revision {
			t.Fatalf("steady read: %v, %v", res, err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no read was answered by the read cache")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, err = accessAt(t, c, "CACHED_KEY", -1)
	wantCode(t, err, codes.InvalidArgument)
}

// TestReadCacheAcrossReplicas: a write through one replica is seen by
// another at once when the reader passes the write's revision as
// min_revision, and within the change stream's delay without it. A replica
// that only polls the change log never answers from memory.
func TestReadCacheAcrossReplicas(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	writer := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: fastWatch})
	reader := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: writer.KEKURL, Configure: fastWatch})
	polling := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: writer.KEKURL, Configure: func(c *app.Config) {
		fastWatch(c)
		c.WatchPollInterval = time.Hour
		c.WatchNoListen = true
	}})
	prev := ""
	for i := range 50 {
		want := fmt.Sprintf("v%d", i)
		w := put(t, writer.Secrets, "SHARED_KEY", want)
		// Without min_revision: the previous value until the change
		// arrives (within the stream's delay), then the new one.
		deadline := time.Now().Add(5 * time.Second)
		for {
			res, err := accessAt(t, reader.Secrets, "SHARED_KEY", 0)
			if err != nil && (prev != "" || status.Code(err) != codes.NotFound) {
				t.Fatal(err)
			}
			got := string(res.GetValue())
			if got == want {
				break
			}
			if got != prev {
				t.Fatalf("write %d: reader answered %q, neither the previous %q nor the new value", i, got, prev)
			}
			if time.Now().After(deadline) {
				t.Fatalf("write %d: reader still answers %q at revision %d", i, got, res.GetRevision())
			}
			time.Sleep(time.Millisecond)
		}
		// With min_revision, at once; and once given, never an older
		// answer through the same replica.
		res, err := accessAt(t, reader.Secrets, "SHARED_KEY", w.Revision)
		if err != nil || string(res.Value) != want || res.Revision < w.Revision {
			t.Fatalf("write %d: min_revision read %q at %d, %v; want %s", i, res.GetValue(), res.GetRevision(), err, want)
		}
		if res, err := accessAt(t, reader.Secrets, "SHARED_KEY", 0); err != nil || string(res.Value) != want {
			t.Fatalf("write %d: after answering %s, the reader answered %q, %v", i, want, res.GetValue(), err)
		}
		res, err = accessAt(t, polling.Secrets, "SHARED_KEY", 0)
		if err != nil || string(res.Value) != want {
			t.Fatalf("write %d: polling replica read %q, %v; want %s", i, res.GetValue(), err, want)
		}
		prev = want
	}
	if containsMetric(httpGet(t, polling.BaseURL+"/metrics"), "secrets_read_cache_hits_total") {
		t.Error("the polling-only replica answered from its read cache")
	}
}

// TestReadCacheConcurrent: writers on two replicas, readers on both. A
// reader that passes the revision of the newest write it knows of (or of
// the newest answer it got) never sees an older value; versions a key's
// reads return through one reader never go backwards.
func TestReadCacheConcurrent(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	a := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: fastWatch})
	b := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: a.KEKURL, Configure: fastWatch})
	replicas := []pb.SecretServiceClient{a.Secrets, b.Secrets}
	const keys, writes, readers = 4, 60, 6
	type acked struct{ version, revision int64 }
	var mu sync.Mutex
	last := make([]acked, keys) // newest acknowledged write per key
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var writers, reading sync.WaitGroup
	for k := range keys {
		writers.Go(func() {
			for n := range writes {
				res, err := replicas[n%2].PutSecret(ctx, &pb.PutSecretRequest{Key: fmt.Sprintf("CONC_%d", k), Value: []byte(fmt.Sprint(n))})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				last[k] = acked{res.Secret.CurrentVersion, res.Revision}
				mu.Unlock()
			}
		})
	}
	var reads, problems atomic.Int64
	for r := range readers {
		reading.Go(func() {
			seen := make([]int64, keys) // newest version this reader got per key
			var rev int64               // newest revision this reader got
			for i := 0; ctx.Err() == nil; i++ {
				k := i % keys
				mu.Lock()
				want := last[k]
				mu.Unlock()
				if want.version == 0 {
					continue
				}
				res, err := replicas[(r+i)%2].AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{
					Key: fmt.Sprintf("CONC_%d", k), Version: "latest", MinRevision: max(want.revision, rev)})
				if ctx.Err() != nil {
					return
				}
				reads.Add(1)
				switch {
				case err != nil:
					t.Errorf("read CONC_%d: %v", k, err)
				case res.Version < want.version || res.Version < seen[k]:
					problems.Add(1)
					t.Errorf("read CONC_%d: version %d at revision %d; acknowledged %d, this reader saw %d", k, res.Version, res.Revision, want.version, seen[k])
				default:
					seen[k], rev = res.Version, max(rev, res.Revision)
					if string(res.Value) != fmt.Sprint(res.Version-1) {
						t.Errorf("read CONC_%d version %d = %q", k, res.Version, res.Value)
					}
				}
			}
		})
	}
	writers.Wait()
	cancel()
	reading.Wait()
	t.Logf("%d reads against %d writes; %d stale", reads.Load(), keys*writes, problems.Load())
	if reads.Load() < keys*writes {
		t.Errorf("only %d reads", reads.Load())
	}
	if !containsMetric(httpGet(t, a.BaseURL+"/metrics"), "secrets_read_cache_hits_total") &&
		!containsMetric(httpGet(t, b.BaseURL+"/metrics"), "secrets_read_cache_hits_total") {
		t.Error("no read was answered by a read cache: the test did not exercise it")
	}
}
