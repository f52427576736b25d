package kmsdrivers_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// TestSlowKMS: with a remote KMS (Cloud KMS's client library against the
// stand-in), a write pays one KMS round trip for its data key, taken before
// its transaction; so writers waiting on the KMS hold no lock (all of them
// reach the KMS at once, none waits for another) and reads of data keys in
// memory do not wait for the KMS at all.
func TestSlowKMS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newGCPFake(t)
	srv := testserver.Start(t, testserver.Options{KEKURL: f.kekURL(), Configure: func(cfg *app.Config) {
		f.configure(cfg)
		cfg.KEKTimeout = 30 * time.Second // writers are held in the KMS below
	}})
	values := map[string]string{}
	for i := range 4 {
		put(t, srv, values, fmt.Sprintf("READ_%d", i), fmt.Sprintf("read-%d", i))
	}
	checkAll(t, srv, values) // their data keys are in memory now

	// Latency: a write takes at least the KMS's round trip; reads do not.
	writeLatency := func(n int) []time.Duration {
		var d []time.Duration
		for i := range n {
			t0 := time.Now()
			put(t, srv, values, fmt.Sprintf("TIMED_%d", i), "v")
			d = append(d, time.Since(t0))
		}
		slices.Sort(d)
		return d
	}
	fast := writeLatency(5)
	const delay = 150 * time.Millisecond
	f.box.mu.Lock()
	f.box.delay = delay
	f.box.mu.Unlock()
	slow := writeLatency(5)
	t0 := time.Now()
	checkAll(t, srv, values)
	readAll := time.Since(t0)
	t.Logf("write latency (median of 5): %v with a local KMS, %v with a %v KMS; %d reads of cached data keys meanwhile: %v",
		fast[2].Round(time.Millisecond), slow[2].Round(time.Millisecond), delay, len(values), readAll.Round(time.Millisecond))
	if slow[0] < delay {
		t.Errorf("a write with a %v KMS took %v: the data key was not wrapped by the KMS?", delay, slow[0])
	}
	f.box.mu.Lock()
	f.box.delay = 0
	f.box.mu.Unlock()

	// Writers held by the KMS: every one of them reaches it (none is
	// queued behind a lock another holds), and reads go on meanwhile.
	gate := make(chan struct{})
	f.box.mu.Lock()
	f.box.gate, f.box.peak = gate, 0
	f.box.mu.Unlock()
	const writers = 8
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			_, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: fmt.Sprintf("HELD_%d", i), Value: []byte("held")})
			errs <- err
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, _ := f.box.counts(); n == writers {
			break
		}
		if time.Now().After(deadline) {
			n, _ := f.box.counts()
			close(gate)
			t.Fatalf("%d of %d writers reached the KMS while it held them: writers wait for each other", n, writers)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// All writers are inside the KMS call; reads of cached keys answer.
	readCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	for key, want := range map[string]string{"READ_0": values["READ_0"], "READ_3": values["READ_3"]} {
		res, err := srv.Secrets.AccessSecretVersion(readCtx, &pb.AccessSecretVersionRequest{Key: key, Version: "latest"})
		if err != nil || string(res.Value) != want {
			t.Errorf("read %s while writers wait on the KMS: %v", key, err)
		}
	}
	cancel()
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("held write: %v", err)
		}
	}
	for i := range writers {
		values[fmt.Sprintf("HELD_%d", i)] = "held"
	}
	checkAll(t, srv, values)
}
