package kek_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/kek"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func newKEKURL(t testing.TB) string {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return "base64key://" + base64.URLEncoding.EncodeToString(k)
}

func openKeyring(t testing.TB, urls ...string) *seal.Keyring {
	t.Helper()
	k, err := seal.OpenKeyring(context.Background(), urls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func openStore(t testing.TB, url string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), url, store.Options{MinMaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// fixture is a database seeded with sealed values under one KEK.
type fixture struct {
	url    string
	store  *store.Store
	oldURL string
	values map[string]string // "KEY/version" -> value, for versions not destroyed
	// ciphertexts as written, to prove rotation does not touch them.
	ciphertexts map[string][]byte
	mu          sync.Mutex
}

func vkey(key string, version int64) string { return fmt.Sprintf("%s/%d", key, version) }

// seed writes n secrets with three versions each (the second destroyed)
// directly into the tables, sealed under a fresh KEK, plus a service key.
// Live data keys: 2n + 1.
func seed(t testing.TB, n int) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{url: testdb.New(t), oldURL: newKEKURL(t), values: map[string]string{}, ciphertexts: map[string][]byte{}}
	f.store = openStore(t, f.url)
	kr := openKeyring(t, f.oldURL)
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var secretRows, versionRows [][]any
	now := time.Now()
	for i := range n {
		key := fmt.Sprintf("SEEDED_%05d", i)
		secretRows = append(secretRows, []any{key, "custom", "", false, int64(3), int64(1), now, now})
		for v := int64(1); v <= 3; v++ {
			if v == 2 {
				versionRows = append(versionRows, []any{key, v, int16(3), nil, nil, kr.PrimaryID(), now})
				continue
			}
			value := fmt.Sprintf("value %s v%d %x", key, v, randBytes(t, 8))
			s, _, err := kr.Seal(ctx, key, v, []byte(value))
			if err != nil {
				t.Fatal(err)
			}
			versionRows = append(versionRows, []any{key, v, int16(1), s.Ciphertext, s.WrappedDEK, s.KEKID, now})
			f.values[vkey(key, v)] = value
			f.ciphertexts[vkey(key, v)] = s.Ciphertext
		}
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"secrets"},
		[]string{"key", "category", "description", "restart_required", "current_version", "revision", "create_time", "update_time"},
		pgx.CopyFromRows(secretRows)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"secret_versions"},
		[]string{"key", "version", "state", "ciphertext", "wrapped_dek", "kek_id", "create_time"},
		pgx.CopyFromRows(versionRows)); err != nil {
		t.Fatal(err)
	}
	sk, _, err := kr.Seal(ctx, "__test-service-key", 1, randBytes(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO service_keys (name, ciphertext, wrapped_dek, kek_id, create_time) VALUES ($1, $2, $3, $4, now())`,
		"test-service-key", sk.Ciphertext, sk.WrappedDEK, sk.KEKID); err != nil {
		t.Fatal(err)
	}
	return f
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func randInt(n int) int {
	i, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
	return int(i.Int64())
}

func counts(t testing.TB, st *store.Store) map[string]int64 {
	t.Helper()
	cs, err := st.CountByKEK(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, c := range cs {
		out[c.KEKID] = c.DataKeys
	}
	return out
}

// read opens one version through the store and keyring, as the service does.
func read(ctx context.Context, st *store.Store, kr *seal.Keyring, key string, version int64) (string, error) {
	sv, _, err := st.AccessVersion(ctx, key, version)
	if err != nil {
		return "", err
	}
	v, _, err := kr.Open(ctx, key, sv.Version, seal.Sealed{Ciphertext: sv.Sealed.Ciphertext, WrappedDEK: sv.Sealed.WrappedDEK, KEKID: sv.Sealed.KEKID})
	return string(v), err
}

// checkAll reads back every value the fixture knows with kr.
func (f *fixture) checkAll(t *testing.T, kr *seal.Keyring) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, want := range f.values {
		key, vs, _ := strings.Cut(k, "/")
		var version int64
		fmt.Sscan(vs, &version)
		got, err := read(context.Background(), f.store, kr, key, version)
		if err != nil || got != want {
			t.Fatalf("%s: %q, %v; want %q", k, got, err, want)
		}
	}
}

// TestRotateUnderLoad rotates while readers check every value they read
// and writers add versions: every value reads back the same before, during
// and after, ciphertexts are untouched, and the old KEK ends up wrapping
// nothing, so a keyring without it reads everything.
func TestRotateUnderLoad(t *testing.T) {
	t.Parallel()
	const secrets = 1000
	f := seed(t, secrets)
	newURL := newKEKURL(t)
	both := openKeyring(t, newURL, f.oldURL)
	oldID, newID := both.IDs()[1], both.IDs()[0]
	f.checkAll(t, both)
	if c := counts(t, f.store); c[oldID] != 2*secrets+1 || c[newID] != 0 {
		t.Fatalf("counts before: %v", c)
	}

	ctx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var reads, writes atomic.Int64
	errc := make(chan error, 16)
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				key := fmt.Sprintf("SEEDED_%05d", randInt(secrets))
				version := int64(1)
				if randInt(2) == 0 {
					version = 3
				}
				got, err := read(ctx, f.store, both, key, version)
				if ctx.Err() != nil {
					return
				}
				f.mu.Lock()
				want := f.values[vkey(key, version)]
				f.mu.Unlock()
				if err != nil || got != want {
					errc <- fmt.Errorf("read %s v%d during rotation: %q, %v; want %q", key, version, got, err, want)
					return
				}
				reads.Add(1)
			}
		})
	}
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("WRITTEN_%d_%d", w, i%20)
				value := fmt.Sprintf("written %d/%d", w, i)
				res, err := f.store.PutSecret(ctx, store.Meta{Actor: "test", Action: "PutSecret"}, store.PutParams{
					Key: key, Defaults: store.Defaults{Category: "custom"},
					Seal: func(ctx context.Context, version int64) (store.Sealed, error) {
						s, _, err := both.Seal(ctx, key, version, []byte(value))
						return store.Sealed{Ciphertext: s.Ciphertext, WrappedDEK: s.WrappedDEK, KEKID: s.KEKID}, err
					},
				})
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					errc <- fmt.Errorf("write during rotation: %v", err)
					return
				}
				f.mu.Lock()
				f.values[vkey(key, res.Version.Version)] = value
				f.mu.Unlock()
				writes.Add(1)
			}
		})
	}

	r := kek.New(f.store, both, kek.Options{BatchSize: 50, Workers: 3, Pause: 5 * time.Millisecond, RefreshInterval: 50 * time.Millisecond})
	var sawProgress bool
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background(), store.Meta{Actor: "test"}) }()
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-time.After(20 * time.Millisecond):
			if p := r.Progress(); p.Running && p.Done > 0 && p.Done < p.Total && p.Rate > 0 && p.ETA > 0 {
				sawProgress = true
			}
		}
	}
	stopLoad()
	wg.Wait()
	close(errc)
	for e := range errc {
		t.Error(e)
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	p := r.Progress()
	t.Logf("rotation: %s; meanwhile %d reads, %d writes", p, reads.Load(), writes.Load())
	if !sawProgress {
		t.Error("never saw partial progress with a rate and an ETA while running")
	}
	if p.Running || p.Err != nil || p.Done != 2*secrets+1 || p.Total != p.Done || p.ETA != 0 {
		t.Errorf("final progress %+v", p)
	}
	if reads.Load() == 0 || writes.Load() == 0 {
		t.Errorf("no load ran during the rotation: %d reads, %d writes", reads.Load(), writes.Load())
	}
	c := counts(t, f.store)
	if c[oldID] != 0 {
		t.Errorf("old KEK still wraps %d data keys", c[oldID])
	}
	if err := kek.CheckConfigured(context.Background(), f.store, openKeyring(t, newURL)); err != nil {
		t.Errorf("check without the old KEK: %v", err)
	}
	// Ciphertexts are untouched.
	conn, err := pgx.Connect(context.Background(), f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), `SELECT key, version, ciphertext FROM secret_versions WHERE key LIKE 'SEEDED_%' AND state <> 3`)
	n := 0
	for rows.Next() {
		var key string
		var version int64
		var ct []byte
		if err := rows.Scan(&key, &version, &ct); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ct, f.ciphertexts[vkey(key, version)]) {
			t.Fatalf("ciphertext of %s v%d changed", key, version)
		}
		n++
	}
	if rows.Err() != nil || n != 2*secrets {
		t.Fatalf("checked %d ciphertexts: %v", n, rows.Err())
	}
	// Every value, old and new, reads back with the new KEK alone.
	f.checkAll(t, openKeyring(t, newURL))
	var destroyedIntact bool
	if err := conn.QueryRow(context.Background(), `SELECT bool_and(wrapped_dek IS NULL AND ciphertext IS NULL) FROM secret_versions WHERE state = 3`).Scan(&destroyedIntact); err != nil || !destroyedIntact {
		t.Errorf("destroyed versions were given a data key: %v", err)
	}
}

// TestRotateResumes interrupts a rotation (as a crash would: the batches in
// flight roll back) and runs it again: it finishes, and the audit log holds
// both runs.
func TestRotateResumes(t *testing.T) {
	t.Parallel()
	const secrets = 1500
	f := seed(t, secrets)
	newURL := newKEKURL(t)
	both := openKeyring(t, newURL, f.oldURL)
	newID, oldID := both.IDs()[0], both.IDs()[1]
	total := int64(2*secrets + 1)

	ctx, cancel := context.WithCancel(context.Background())
	r := kek.New(f.store, both, kek.Options{BatchSize: 20, Workers: 2, Pause: 2 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, store.Meta{Actor: "first"}) }()
	for r.Progress().Done < total/4 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Run: %v", err)
	}
	p := r.Progress()
	mid := counts(t, f.store)
	t.Logf("interrupted at %s; counts %v", p, mid)
	// A batch whose COMMIT was already sent when the context was canceled
	// may still commit (as with a crash): at most one per worker.
	const inDoubt = 2 * 20
	if mid[oldID] == 0 || mid[newID] == 0 || mid[oldID]+mid[newID] != total || mid[newID] < p.Done || mid[newID] > p.Done+inDoubt {
		t.Fatalf("after interruption: counts %v, progress %+v", mid, p)
	}
	if p.Running || !errors.Is(p.Err, context.Canceled) {
		t.Errorf("progress after interruption: %+v", p)
	}
	f.checkAll(t, both)

	// A new process (a new Rotator) picks up where it stopped.
	r2 := kek.New(f.store, both, kek.Options{})
	if err := r2.Run(context.Background(), store.Meta{Actor: "second"}); err != nil {
		t.Fatal(err)
	}
	if c := counts(t, f.store); c[oldID] != 0 || c[newID] != total {
		t.Fatalf("after resuming: %v", c)
	}
	if got := r2.Progress().Done; got > total-p.Done || got < total-p.Done-inDoubt {
		t.Errorf("resumed run re-wrapped %d, want the %d left (give or take %d in doubt)", got, total-p.Done, inDoubt)
	}
	// A run with nothing left is a quick no-op.
	r3 := kek.New(f.store, both, kek.Options{})
	if err := r3.Run(context.Background(), store.Meta{Actor: "third"}); err != nil || r3.Progress().Done != 0 {
		t.Fatalf("third run: %v, %+v", err, r3.Progress())
	}
	f.checkAll(t, openKeyring(t, newURL))

	storetest.SequenceAll(t, f.store) // as the server's sequencer would
	events, err := f.store.ListAudit(context.Background(), store.AuditFilter{Action: store.RotationAuditAction, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := len(events) - 1; i >= 0; i-- {
		got = append(got, events[i].Actor+":"+events[i].Outcome)
	}
	want := "first:STARTED first:CANCELLED second:STARTED second:OK third:STARTED third:OK"
	if strings.Join(got, " ") != want {
		t.Errorf("audit events %q, want %q", got, want)
	}
	for _, e := range events {
		if strings.Contains(e.Detail, "base64key") || strings.Contains(e.Detail, strings.TrimPrefix(newURL, "base64key://")) {
			t.Errorf("audit detail holds key material: %q", e.Detail)
		}
	}
}

// TestStartJoins: a second Start while one runs joins it.
func TestStartJoins(t *testing.T) {
	t.Parallel()
	f := seed(t, 300)
	both := openKeyring(t, newKEKURL(t), f.oldURL)
	r := kek.New(f.store, both, kek.Options{BatchSize: 10, Workers: 1, Pause: 10 * time.Millisecond})
	ctx := context.Background()
	started, err := r.Start(ctx, ctx, store.Meta{Actor: "a"}, 0)
	if err != nil || !started {
		t.Fatalf("first Start: %v, %v", started, err)
	}
	started, err = r.Start(ctx, ctx, store.Meta{Actor: "b"}, 0)
	if err != nil || started {
		t.Fatalf("second Start: %v, %v; want it to join", started, err)
	}
	r.Wait()
	if p := r.Progress(); p.Err != nil || p.Done != 601 || p.Running {
		t.Fatalf("progress %+v", p)
	}
	storetest.SequenceAll(t, f.store)
	events, err := f.store.ListAudit(ctx, store.AuditFilter{Action: store.RotationAuditAction, Limit: 10})
	if err != nil || len(events) != 3 || events[1].Actor != "b" || events[1].Outcome != "JOINED" {
		t.Fatalf("audit: %+v, %v", events, err)
	}
}

// TestRemovedKEKStillInUse: a keyring without the KEK that wraps the data
// keys is refused, naming the KEK and the count; rotation refuses too.
func TestRemovedKEKStillInUse(t *testing.T) {
	t.Parallel()
	f := seed(t, 10)
	oldID := openKeyring(t, f.oldURL).PrimaryID()
	onlyNew := openKeyring(t, newKEKURL(t))
	err := kek.CheckConfigured(context.Background(), f.store, onlyNew)
	if !errors.Is(err, kek.ErrKEKInUse) || !strings.Contains(err.Error(), "KEK "+oldID+" still wraps 21 data keys") {
		t.Fatalf("CheckConfigured: %v", err)
	}
	if err := kek.New(f.store, onlyNew, kek.Options{}).Run(context.Background(), store.Meta{Actor: "t"}); !errors.Is(err, kek.ErrKEKInUse) {
		t.Fatalf("Run: %v", err)
	}
	status, err := kek.Status(context.Background(), f.store, onlyNew)
	if err != nil || len(status) != 2 || !status[0].Primary || status[0].DataKeys != 0 ||
		status[1].ID != oldID || status[1].Configured || status[1].DataKeys != 21 {
		t.Fatalf("status %+v, %v", status, err)
	}
}

// flakyKeyring fails Rewrap as a KMS outage would while failing is set.
type flakyKeyring struct {
	*seal.Keyring
	failing atomic.Int64 // calls left to fail; <0 forever
}

func (k *flakyKeyring) Rewrap(ctx context.Context, s seal.Sealed) (seal.Sealed, error) {
	if n := k.failing.Load(); n != 0 {
		if n > 0 {
			k.failing.Add(-1)
		}
		return seal.Sealed{}, fmt.Errorf("%w: fake outage", seal.ErrKEKUnavailable)
	}
	return k.Keyring.Rewrap(ctx, s)
}

// TestRotateKEKOutage: a short outage is retried through; a long one stops
// the rotation with the error in its progress, nothing half-done.
func TestRotateKEKOutage(t *testing.T) {
	t.Parallel()
	f := seed(t, 100)
	both := openKeyring(t, newKEKURL(t), f.oldURL)
	newID := both.PrimaryID()
	k := &flakyKeyring{Keyring: both}

	k.failing.Store(-1)
	r := kek.New(f.store, k, kek.Options{Retries: 2, BatchSize: 10})
	err := r.Run(context.Background(), store.Meta{Actor: "t"})
	if !errors.Is(err, seal.ErrKEKUnavailable) || !errors.Is(r.Progress().Err, seal.ErrKEKUnavailable) {
		t.Fatalf("Run during an outage: %v", err)
	}
	if c := counts(t, f.store); c[newID] != 0 {
		t.Fatalf("failed batches left %d rows re-wrapped", c[newID])
	}

	k.failing.Store(3)
	r = kek.New(f.store, k, kek.Options{BatchSize: 10})
	if err := r.Run(context.Background(), store.Meta{Actor: "t"}); err != nil {
		t.Fatalf("Run through a short outage: %v", err)
	}
	if c := counts(t, f.store); c[newID] != 201 {
		t.Fatalf("counts %v", c)
	}
}

// BenchmarkRotate measures a rotation of 5,000 live data keys with the
// defaults (base64key KEKs: the database's share of the cost).
func BenchmarkRotate(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		f := seed(b, 2500) // 5,000 live versions + 1 service key
		both := openKeyring(b, newKEKURL(b), f.oldURL)
		r := kek.New(f.store, both, kek.Options{})
		b.StartTimer()
		if err := r.Run(context.Background(), store.Meta{Actor: "t"}); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.Progress().Rate, "keys/s")
	}
}

// hookKeyring calls hook (once per Rewrap call) before re-wrapping.
type hookKeyring struct {
	*seal.Keyring
	calls atomic.Int64
	hook  func(call int64, s seal.Sealed) error
}

func (k *hookKeyring) Rewrap(ctx context.Context, s seal.Sealed) (seal.Sealed, error) {
	if err := k.hook(k.calls.Add(1), s); err != nil {
		return seal.Sealed{}, err
	}
	return k.Keyring.Rewrap(ctx, s)
}

// TestRotateHoldsNoLockDuringKMSCall: while the KMS is in the middle of
// re-wrapping, every row of the table can be locked at once by someone else
// (NOWAIT: any lock rotation held would fail it), and a writer's destroy of
// a version in the batch being re-wrapped commits at once.
func TestRotateHoldsNoLockDuringKMSCall(t *testing.T) {
	t.Parallel()
	f := seed(t, 20)
	both := openKeyring(t, newKEKURL(t), f.oldURL)
	conn, err := pgx.Connect(context.Background(), f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	checked := false
	k := &hookKeyring{Keyring: both, hook: func(call int64, _ seal.Sealed) error {
		if call != 3 {
			return nil
		}
		checked = true
		ctx := context.Background()
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SELECT 1 FROM secret_versions FOR UPDATE NOWAIT`); err != nil {
			return fmt.Errorf("a row is locked during a KMS call: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM service_keys FOR UPDATE NOWAIT`); err != nil {
			return fmt.Errorf("a service key is locked during a KMS call: %w", err)
		}
		return tx.Commit(ctx)
	}}
	r := kek.New(f.store, k, kek.Options{BatchSize: 10, Workers: 1, Retries: 1})
	if err := r.Run(context.Background(), store.Meta{Actor: "t"}); err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("the hook never ran")
	}
	if c := counts(t, f.store); c[both.PrimaryID()] != 41 {
		t.Fatalf("counts %v", c)
	}
}

// TestRotateSkipsRowsChangedMeanwhile: rows that change between the read
// and the store (a version destroyed, a data key re-wrapped by another
// replica) are not overwritten; the destroyed one stays destroyed and the
// other is taken as it now is.
func TestRotateSkipsRowsChangedMeanwhile(t *testing.T) {
	t.Parallel()
	f := seed(t, 20)
	newURL := newKEKURL(t)
	both := openKeyring(t, newURL, f.oldURL)
	newID := both.PrimaryID()
	conn, err := pgx.Connect(context.Background(), f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var otherDEK []byte
	k := &hookKeyring{Keyring: both, hook: func(call int64, _ seal.Sealed) error {
		if call != 1 {
			return nil
		}
		ctx := context.Background()
		// Row locks are waited on for a second at most: on a rotation that
		// held them across this call, these writes fail instead of hanging.
		if _, err := conn.Exec(ctx, `SET lock_timeout = '1s'`); err != nil {
			return err
		}
		// A writer destroys SEEDED_00000 v1 (first in the batch) ...
		if _, err := conn.Exec(ctx, `UPDATE secret_versions SET state = 3, wrapped_dek = NULL, ciphertext = NULL
			WHERE key = 'SEEDED_00000' AND version = 1`); err != nil {
			return fmt.Errorf("destroy during the KMS call: %w", err)
		}
		// ... and another replica re-wraps SEEDED_00001 v3 itself.
		var old seal.Sealed
		if err := conn.QueryRow(ctx, `SELECT wrapped_dek, kek_id FROM secret_versions WHERE key = 'SEEDED_00001' AND version = 3`).
			Scan(&old.WrappedDEK, &old.KEKID); err != nil {
			return err
		}
		re, err := both.Rewrap(ctx, old)
		if err != nil {
			return err
		}
		otherDEK = re.WrappedDEK
		_, err = conn.Exec(ctx, `UPDATE secret_versions SET wrapped_dek = $1, kek_id = $2 WHERE key = 'SEEDED_00001' AND version = 3`,
			re.WrappedDEK, re.KEKID)
		return err
	}}
	r := kek.New(f.store, k, kek.Options{BatchSize: 100, Workers: 1, Retries: 1})
	if err := r.Run(context.Background(), store.Meta{Actor: "t"}); err != nil {
		t.Fatal(err)
	}
	if p := r.Progress(); p.Done != 41-2 {
		t.Errorf("re-wrapped %d, want 39 (two rows changed under the rotation)", p.Done)
	}
	var state int16
	var wrapped []byte
	if err := conn.QueryRow(context.Background(), `SELECT state, wrapped_dek FROM secret_versions WHERE key = 'SEEDED_00000' AND version = 1`).
		Scan(&state, &wrapped); err != nil || state != 3 || wrapped != nil {
		t.Fatalf("destroyed version after rotation: state %d, wrapped %x, %v", state, wrapped, err)
	}
	if err := conn.QueryRow(context.Background(), `SELECT wrapped_dek FROM secret_versions WHERE key = 'SEEDED_00001' AND version = 3`).
		Scan(&wrapped); err != nil || !bytes.Equal(wrapped, otherDEK) {
		t.Fatalf("the other replica's re-wrap was overwritten: %v", err)
	}
	f.mu.Lock()
	delete(f.values, vkey("SEEDED_00000", 1))
	f.mu.Unlock()
	if c := counts(t, f.store); c[newID] != 40 || len(c) != 1 {
		t.Fatalf("counts %v", c)
	}
	f.checkAll(t, openKeyring(t, newURL))
}

// slowKeyring is a KMS that answers each re-wrap after delay (and honours
// the caller's deadline, as KMS clients do).
type slowKeyring struct {
	*seal.Keyring
	delay time.Duration
}

func (k slowKeyring) Rewrap(ctx context.Context, s seal.Sealed) (seal.Sealed, error) {
	select {
	case <-time.After(k.delay):
	case <-ctx.Done():
		return seal.Sealed{}, fmt.Errorf("%w: %w", seal.ErrKEKUnavailable, ctx.Err())
	}
	return k.Keyring.Rewrap(ctx, s)
}

// TestRotateBehindAKMSTooSlowForABatch: a KMS too slow to re-wrap a whole
// batch within BatchTimeout still gets the rotation done, batch part by
// batch part. Before, every batch timed out and was thrown away whole, and
// the rotation failed at 0 done (the defaults scaled down 100 times: 100
// keys a batch, 300 ms a batch, 4 ms a key).
func TestRotateBehindAKMSTooSlowForABatch(t *testing.T) {
	t.Parallel()
	f := seed(t, 100)
	both := openKeyring(t, newKEKURL(t), f.oldURL)
	r := kek.New(f.store, slowKeyring{Keyring: both, delay: 4 * time.Millisecond},
		kek.Options{BatchSize: 100, Workers: 2, BatchTimeout: 300 * time.Millisecond, Retries: 3})
	if err := r.Run(context.Background(), store.Meta{Actor: "t"}); err != nil {
		t.Fatalf("Run: %v (progress %s)", err, r.Progress())
	}
	if c := counts(t, f.store); c[both.PrimaryID()] != 201 || len(c) != 1 {
		t.Fatalf("counts %v", c)
	}
	f.checkAll(t, both)
}
