package store_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

func openStore(t *testing.T, url string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), url, store.Options{MinMaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func bmeta(action, requestID, hash string) store.Meta {
	m := store.Meta{Actor: "batchtest", Action: action, Peer: "127.0.0.1", RequestID: requestID}
	if requestID != "" {
		m.RequestHash = []byte(hash)
	}
	return m
}

func seal(value string) func(context.Context, int64) (store.Sealed, error) {
	return func(_ context.Context, version int64) (store.Sealed, error) {
		return store.Sealed{Ciphertext: fmt.Appendf(nil, "%s@%d", value, version), WrappedDEK: []byte("dek"), KEKID: "kek-test"}, nil
	}
}

// queue runs write in a goroutine and waits until it waits for the held
// batcher, so writes queue (and run in the batch) in call order.
type queue struct {
	t  *testing.T
	s  *store.Store
	wg sync.WaitGroup
}

func (q *queue) add(write func()) {
	q.t.Helper()
	n := q.s.QueuedWrites()
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		write()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for q.s.QueuedWrites() != n+1 {
		if time.Now().After(deadline) {
			q.t.Fatalf("write %d never queued", n+1)
		}
		time.Sleep(time.Millisecond)
	}
}

// transactions is how many transactions wrote the change-log entries after
// rev (each batch inserts its entries at its top level, so one xmin per
// batch).
func transactions(t *testing.T, url string, after int64) (entries, txs int) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(),
		`SELECT count(*), count(DISTINCT xmin::text) FROM change_log WHERE revision > $1`, after).Scan(&entries, &txs); err != nil {
		t.Fatal(err)
	}
	return entries, txs
}

func changeRevisions(t *testing.T, s *store.Store, after int64) (revs []int64, keys []string) {
	t.Helper()
	cs, err := s.ChangesAfter(context.Background(), after, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		revs = append(revs, c.Revision)
		keys = append(keys, c.Key)
	}
	return revs, keys
}

func auditRevisions(t *testing.T, s *store.Store, afterRev int64) []int64 {
	t.Helper()
	storetest.SequenceAll(t, s)
	var revs []int64
	for e, err := range s.AuditEvents(context.Background(), 0, math.MaxInt64) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Revision > afterRev {
			revs = append(revs, e.Revision)
		}
	}
	return revs
}

func consecutive(from int64, n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = from + int64(i)
	}
	return out
}

// TestGroupCommitMixedBatch: one batch of good and failing writes — a stale
// etag, a missing key, a duplicate request id (in the batch and committed by
// another replica while the write queued), a reused request id, a body
// error, a SQL error after a change — fails only the failing writes; the
// others commit in queue order with gap-free revisions, one change-log entry
// and audit event each, in one transaction.
func TestGroupCommitMixedBatch(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	s, s2 := openStore(t, url), openStore(t, url)
	x, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_X", Defaults: store.Defaults{Category: "custom"}, Seal: seal("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_A", Defaults: store.Defaults{Category: "custom"}, Seal: seal("a")}); err != nil {
		t.Fatal(err)
	}

	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	type outcome struct {
		res store.WriteResult
		err error
	}
	out := make([]outcome, 11)
	put := func(i int, m store.Meta, p store.PutParams) {
		q.add(func() {
			if p.Seal == nil {
				p.Seal = seal(fmt.Sprint(i))
			}
			p.Defaults.Category = "custom"
			out[i].res, out[i].err = s.PutSecret(ctx, m, p)
		})
	}
	errSeal := errors.New("seal failed")
	put(0, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_A"})
	put(1, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_X", Expect: &x.Revision})
	put(2, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_X", Expect: &x.Revision})
	q.add(func() {
		_, out[3].err = s.UpdateSecret(ctx, bmeta("UpdateSecret", "", ""), store.UpdateParams{Key: "CUSTOM_MISSING"})
	})
	put(4, bmeta("PutSecret", "req-1", "h1"), store.PutParams{Key: "CUSTOM_B"})
	put(5, bmeta("PutSecret", "req-1", "h1"), store.PutParams{Key: "CUSTOM_B"})
	put(6, bmeta("PutSecret", "req-1", "h2"), store.PutParams{Key: "CUSTOM_C"})
	put(7, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_D", Seal: func(context.Context, int64) (store.Sealed, error) { return store.Sealed{}, errSeal }})
	q.add(func() { out[8].err = s.FailingWrite(ctx, bmeta("UpdateSecret", "", ""), "CUSTOM_A") })
	put(9, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_X"})
	put(10, bmeta("PutSecret", "req-z", "hz"), store.PutParams{Key: "CUSTOM_Z"})

	// Another replica commits req-z while this one's write with it waits.
	z, err := s2.PutSecret(ctx, bmeta("PutSecret", "req-z", "hz"), store.PutParams{Key: "CUSTOM_Z2", Defaults: store.Defaults{Category: "custom"}, Seal: seal("z")})
	if err != nil {
		t.Fatal(err)
	}
	base := z.Revision
	release()
	q.wg.Wait()

	for i, o := range out {
		var want error
		switch i {
		case 2:
			want = store.ErrEtagMismatch
		case 3:
			want = store.ErrNotFound
		case 6:
			want = store.ErrRequestIDReused
		case 7:
			want = errSeal
		}
		switch {
		case i == 8:
			if o.err == nil || errors.Is(o.err, store.ErrBodyFailed) {
				t.Errorf("write 8 (SQL error): %v, want the division by zero", o.err)
			}
		case want == nil && o.err != nil:
			t.Errorf("write %d failed: %v", i, o.err)
		case want != nil && !errors.Is(o.err, want):
			t.Errorf("write %d: %v, want %v", i, o.err, want)
		}
	}
	gotRevs := []int64{out[0].res.Revision, out[1].res.Revision, out[4].res.Revision, out[5].res.Revision, out[9].res.Revision, out[10].res.Revision}
	if want := []int64{base + 1, base + 2, base + 3, base + 3, base + 4, base}; !slices.Equal(gotRevs, want) {
		t.Fatalf("revisions of writes 0,1,4,5,9,10: %v, want %v", gotRevs, want)
	}
	if out[1].res.Version.Version != 2 || out[9].res.Version.Version != 3 || out[9].res.Secret.Revision != base+4 {
		t.Errorf("writes to CUSTOM_X: %+v then %+v", out[1].res.Version, out[9].res)
	}
	if out[5].res.Secret.Key != "CUSTOM_B" || out[5].res.Version.Version != 1 || out[10].res.Secret.Key != "CUSTOM_Z2" {
		t.Errorf("replays: %+v, %+v", out[5].res.Secret, out[10].res.Secret)
	}
	if rev, err := s.Revision(ctx); err != nil || rev != base+4 {
		t.Fatalf("revision %d, %v; want %d", rev, err, base+4)
	}
	if got := s.LastWriteRevision(); got != base+4 {
		t.Errorf("LastWriteRevision %d, want %d", got, base+4)
	}
	revs, keys := changeRevisions(t, s, base)
	if !slices.Equal(revs, consecutive(base+1, 4)) || !slices.Equal(keys, []string{"CUSTOM_A", "CUSTOM_X", "CUSTOM_B", "CUSTOM_X"}) {
		t.Fatalf("change log after %d: %v %v", base, revs, keys)
	}
	if got := auditRevisions(t, s, base); !slices.Equal(got, consecutive(base+1, 4)) {
		t.Fatalf("audit events of revisions %v, want %v", got, consecutive(base+1, 4))
	}
	if _, txs := transactions(t, url, base); txs != 1 {
		t.Errorf("the batch's writes committed in %d transactions, want 1", txs)
	}
	if a, _, err := s.GetSecret(ctx, "CUSTOM_A"); err != nil || a.Description != "" || a.CurrentVersion != 2 {
		t.Errorf("CUSTOM_A after the failed write: %+v, %v", a, err)
	}
	for _, key := range []string{"CUSTOM_C", "CUSTOM_D", "CUSTOM_MISSING", "CUSTOM_Z"} {
		if _, _, err := s.GetSecret(ctx, key); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s written by a failed or replayed write: %v", key, err)
		}
	}
}

// TestGroupCommitSameKey: writes to one key in one batch apply in order,
// each seeing the one before and carrying its own etag.
func TestGroupCommitSameKey(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	s := openStore(t, url)
	base, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	res := make([]store.WriteResult, 5)
	errs := make([]error, 6)
	m := bmeta("PutSecret", "", "")
	p := func(v string) store.PutParams {
		return store.PutParams{Key: "CUSTOM_K", Defaults: store.Defaults{Category: "custom"}, Seal: seal(v)}
	}
	desc := "second"
	q.add(func() { res[0], errs[0] = s.PutSecret(ctx, m, p("one")) })
	q.add(func() { res[1], errs[1] = s.PutSecret(ctx, m, p("two")) })
	q.add(func() {
		res[2], errs[2] = s.UpdateSecret(ctx, bmeta("UpdateSecret", "", ""), store.UpdateParams{Key: "CUSTOM_K", Description: &desc})
	})
	q.add(func() {
		res[3], errs[3] = s.SetVersionState(ctx, bmeta("DisableSecretVersion", "", ""), "CUSTOM_K", 1, nil, store.StateDisabled)
	})
	q.add(func() { _, errs[5] = s.DeleteSecret(ctx, bmeta("DeleteSecret", "", ""), "CUSTOM_K", nil) })
	q.add(func() { res[4], errs[4] = s.PutSecret(ctx, m, p("again")) })
	release()
	q.wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	for i, r := range res[:4] {
		if want := base + int64(i) + 1; r.Revision != want || r.Secret.Revision != want {
			t.Errorf("write %d: revision %d, etag %d; want %d", i, r.Revision, r.Secret.Revision, want)
		}
	}
	if res[0].Version.Version != 1 || res[1].Version.Version != 2 || res[1].Secret.CurrentVersion != 2 {
		t.Errorf("versions %d, %d", res[0].Version.Version, res[1].Version.Version)
	}
	if res[2].Secret.Description != desc || res[2].Secret.CurrentVersion != 2 {
		t.Errorf("update: %+v", res[2].Secret)
	}
	if res[3].Version.State != store.StateDisabled || res[3].Secret.Description != desc {
		t.Errorf("disable: %+v %+v", res[3].Version, res[3].Secret)
	}
	// Deleted, then created afresh: version 1 again.
	if res[4].Revision != base+6 || res[4].Version.Version != 1 || res[4].Secret.Description != "" {
		t.Errorf("put after delete: %+v", res[4])
	}
	if entries, txs := transactions(t, url, base); entries != 6 || txs != 1 {
		t.Errorf("%d change-log entries in %d transactions, want 6 in 1", entries, txs)
	}
}

// TestGroupCommitConcurrentWriters: N concurrent writers get N consecutive
// revisions, each with its change-log entry, and share transactions (on a
// store committing each write alone, N writes are N transactions).
func TestGroupCommitConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	s := openStore(t, url)
	base, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 32
	revs := make([]int64, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: fmt.Sprintf("CUSTOM_%d", i%8),
				Defaults: store.Defaults{Category: "custom"}, Seal: seal("v")})
			if err != nil {
				t.Error(err)
			}
			revs[i] = r.Revision
		}()
	}
	close(start)
	wg.Wait()
	slices.Sort(revs)
	if !slices.Equal(revs, consecutive(base+1, n)) {
		t.Fatalf("revisions %v, want %d..%d", revs, base+1, base+n)
	}
	if got, _ := changeRevisions(t, s, base); !slices.Equal(got, revs) {
		t.Fatalf("change log %v", got)
	}
	entries, txs := transactions(t, url, base)
	t.Logf("%d writes committed in %d transactions", entries, txs)
	if entries != n || txs >= n {
		t.Fatalf("%d writes committed in %d transactions: not batched", entries, txs)
	}
}

// TestGroupCommitConcurrentRequestID: concurrent retries of one request on
// two replicas all get the first result; the write happens once.
func TestGroupCommitConcurrentRequestID(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	replicas := []*store.Store{openStore(t, url), openStore(t, url)}
	base, err := replicas[0].Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	res := make([]store.WriteResult, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := replicas[i%2].PutSecret(ctx, bmeta("PutSecret", "req-same", "h"), store.PutParams{Key: "CUSTOM_SAME",
				Defaults: store.Defaults{Category: "custom"}, Seal: seal(fmt.Sprint(i))})
			if err != nil {
				t.Error(err)
			}
			res[i] = r
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range res {
		if r.Revision != base+1 || r.Version == nil || r.Version.Version != 1 {
			t.Errorf("attempt %d: %+v, want revision %d version 1", i, r, base+1)
		}
	}
	if revs, _ := changeRevisions(t, replicas[0], base); !slices.Equal(revs, []int64{base + 1}) {
		t.Fatalf("change log %v: the request was written more than once", revs)
	}
}

// TestGroupCommitPanickingWrite: a write body that panics runs on the
// batcher's goroutine, beyond the gRPC recovery interceptor; it fails that
// write alone (undone to its savepoint) instead of the process and its
// neighbours.
func TestGroupCommitPanickingWrite(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testdb.New(t))
	if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_A", Defaults: store.Defaults{Category: "custom"}, Seal: seal("a")}); err != nil {
		t.Fatal(err)
	}
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	errs := make([]error, 3)
	q.add(func() {
		_, errs[0] = s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_B", Defaults: store.Defaults{Category: "custom"}, Seal: seal("b")})
	})
	q.add(func() { errs[1] = s.PanickingWrite(ctx, bmeta("UpdateSecret", "", ""), "CUSTOM_A") })
	q.add(func() {
		_, errs[2] = s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_C", Defaults: store.Defaults{Category: "custom"}, Seal: seal("c")})
	})
	release()
	q.wg.Wait()
	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], store.ErrWritePanicked) {
		t.Fatalf("outcomes %v, want nil, ErrWritePanicked, nil", errs)
	}
	if strings.Contains(errs[1].Error(), "a bug in a write body") {
		t.Errorf("the panic's value reached the error: %v", errs[1])
	}
	if a, _, err := s.GetSecret(ctx, "CUSTOM_A"); err != nil || a.Description != "" {
		t.Errorf("CUSTOM_A after the panicking write: %+v, %v", a, err)
	}
	if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_D", Defaults: store.Defaults{Category: "custom"}, Seal: seal("d")}); err != nil {
		t.Errorf("a write after the panic: %v", err)
	}
}

// TestGroupCommitAnswerIsTheOutcome: a caller whose context ends while its
// write's batch runs is told the batch's outcome (the write committed), not
// "cancelled" — a caller told "cancelled" might write again.
func TestGroupCommitAnswerIsTheOutcome(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testdb.New(t))
	if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_A", Defaults: store.Defaults{Category: "custom"}, Seal: seal("a")}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.WriteCancellingCaller(cctx, cancel, bmeta("UpdateSecret", "", ""), "CUSTOM_A"); err != nil {
		t.Fatalf("a write that committed answered %v", err)
	}
	if a, _, err := s.GetSecret(ctx, "CUSTOM_A"); err != nil || a.Description != "written" {
		t.Fatalf("CUSTOM_A: %+v, %v", a, err)
	}
}

// TestGroupCommitLostConnectionIsUnavailable: a write in a batch whose
// statement fails because the database is going away is UNAVAILABLE (retry
// with the request id), as outside a batch — not an internal error.
func TestGroupCommitLostConnectionIsUnavailable(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testdb.New(t))
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	errs := make([]error, 2)
	q.add(func() {
		_, errs[0] = s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: "CUSTOM_A", Defaults: store.Defaults{Category: "custom"}, Seal: seal("a")})
	})
	q.add(func() {
		errs[1] = s.WriteFailingWith(ctx, bmeta("UpdateSecret", "", ""), &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"})
	})
	release()
	q.wg.Wait()
	if errs[0] != nil || !errors.Is(errs[1], store.ErrUnavailable) {
		t.Fatalf("outcomes %v, want nil and ErrUnavailable", errs)
	}
}

// TestGroupCommitPutAfterChangeInBatch: a PutSecret starts from the secret
// as its batch read it at the start; when an earlier write of the batch
// changed or deleted it, the put sees the change (the description an update
// set, a fresh secret after a delete, the etag an earlier put made stale),
// never the row read at the start.
func TestGroupCommitPutAfterChangeInBatch(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	s := openStore(t, url)
	m := bmeta("PutSecret", "", "")
	p := func(key, v string) store.PutParams {
		return store.PutParams{Key: key, Defaults: store.Defaults{Category: "custom"}, Seal: seal(v)}
	}
	first := map[string]store.WriteResult{}
	for _, k := range []string{"CUSTOM_U", "CUSTOM_D", "CUSTOM_E"} {
		r, err := s.PutSecret(ctx, m, p(k, "one"))
		if err != nil {
			t.Fatal(err)
		}
		first[k] = r
	}
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	res := make([]store.WriteResult, 6)
	errs := make([]error, 6)
	desc := "updated"
	q.add(func() {
		res[0], errs[0] = s.UpdateSecret(ctx, bmeta("UpdateSecret", "", ""), store.UpdateParams{Key: "CUSTOM_U", Description: &desc})
	})
	q.add(func() { res[1], errs[1] = s.PutSecret(ctx, m, p("CUSTOM_U", "two")) })
	q.add(func() { _, errs[2] = s.DeleteSecret(ctx, bmeta("DeleteSecret", "", ""), "CUSTOM_D", nil) })
	q.add(func() { res[3], errs[3] = s.PutSecret(ctx, m, p("CUSTOM_D", "again")) })
	q.add(func() { res[4], errs[4] = s.PutSecret(ctx, m, p("CUSTOM_E", "two")) })
	q.add(func() {
		pp := p("CUSTOM_E", "three")
		etag := first["CUSTOM_E"].Revision
		pp.Expect = &etag // the read at the batch's start matches; the put before made it stale
		res[5], errs[5] = s.PutSecret(ctx, m, pp)
	})
	release()
	q.wg.Wait()
	for i, err := range errs[:5] {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if !errors.Is(errs[5], store.ErrEtagMismatch) {
		t.Errorf("put with the etag an earlier write of the batch made stale: %v, want ErrEtagMismatch", errs[5])
	}
	if r := res[1]; r.Secret.Description != desc || r.Version.Version != 2 || r.Secret.Revision != res[0].Revision+1 {
		t.Errorf("put after update: %+v %+v", r.Secret, r.Version)
	}
	if r := res[3]; r.Version.Version != 1 || !r.Secret.CreateTime.After(first["CUSTOM_D"].Secret.CreateTime) {
		t.Errorf("put after delete: %+v %+v, want a new secret", r.Secret, r.Version)
	}
	for _, k := range []string{"CUSTOM_U", "CUSTOM_D", "CUSTOM_E"} {
		got, _, err := s.GetSecret(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{"CUSTOM_U": res[1].Revision, "CUSTOM_D": res[3].Revision, "CUSTOM_E": res[4].Revision}[k]
		if got.Revision != want {
			t.Errorf("%s: revision %d, want %d", k, got.Revision, want)
		}
	}
}

// roundTrips counts the round trips of the connection that runs a write
// batch (the one taking the revision lock), from that batch to its commit.
type roundTrips struct {
	mu    sync.Mutex
	conn  *pgx.Conn
	n     int
	ended bool
}

func (r *roundTrips) count(conn *pgx.Conn, sqls ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, q := range sqls {
		if r.conn == nil && strings.Contains(q, "revision_counter FOR UPDATE") {
			r.conn, r.n, r.ended = conn, 0, false
		}
	}
	if conn != r.conn || r.ended {
		return
	}
	r.n++
	for _, q := range sqls {
		if strings.EqualFold(strings.TrimSpace(q), "commit") {
			r.ended = true
		}
	}
}

func (r *roundTrips) reset() (n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = r.n
	r.conn, r.n, r.ended = nil, 0, false
	return n
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.count(conn, d.SQL)
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var sqls []string
	for _, q := range d.Batch.QueuedQueries {
		sqls = append(sqls, q.SQL)
	}
	r.count(conn, sqls...)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// TestGroupCommitRoundTrips: a batch of n PutSecrets of distinct secrets
// costs 3 round trips to PostgreSQL, the batch's lock held for all of them:
// one to begin (the lock, the request ids and the secrets read), one for the
// writes' statements with the bookkeeping and the audit events (runPlanned),
// one to commit. Of two puts of one secret the second is held over to the
// next batch, so this one stays planned: 3 round trips too (it was n+3, the
// batch's writes one after another, the second put reading the secret
// again; and before that 2n+4 in both cases: each put read its secret in a
// round trip of its own, and the audit insert and the commit had one each).
func TestGroupCommitRoundTrips(t *testing.T) {
	ctx := context.Background()
	rt := &roundTrips{}
	s, err := store.Open(ctx, testdb.New(t), store.Options{MinMaxConns: 8, Tracer: rt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	const n = 4
	batch := func(keys ...string) int {
		t.Helper()
		rt.reset()
		release := s.HoldWrites()
		q := &queue{t: t, s: s}
		for _, k := range keys {
			q.add(func() {
				if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: k,
					Defaults: store.Defaults{Category: "custom"}, Seal: seal("v")}); err != nil {
					t.Error(err)
				}
			})
		}
		release()
		q.wg.Wait()
		return rt.reset()
	}
	distinct := []string{"CUSTOM_0", "CUSTOM_1", "CUSTOM_2", "CUSTOM_3"}
	sameKey := []string{"CUSTOM_0", "CUSTOM_1", "CUSTOM_2", "CUSTOM_2"}
	batch(distinct...) // creates the secrets
	batch(distinct...) // prepares the statements of new versions
	batch(sameKey...)
	if got := batch(distinct...); got != 3 {
		t.Errorf("a batch of %d puts took %d round trips, want 3", n, got)
	}
	before := s.WriteBatchStats()
	if got := batch(sameKey...); got != 3 {
		t.Errorf("a batch of %d puts, two of one secret, took %d round trips, want 3", n, got)
	}
	after := s.WriteBatchStats()
	if after.Batches-before.Batches != 2 || after.OneByOne != before.OneByOne {
		t.Errorf("%d puts, two of one secret: %d batches, %d one by one; want 2, none",
			n, after.Batches-before.Batches, after.OneByOne-before.OneByOne)
	}
}

// TestGroupCommitPlannedBatchFallsBack: when a statement of a planned batch
// fails, the batch runs its writes again one after another: the failing
// write fails alone, the others commit with consecutive revisions, each
// secret's version once.
func TestGroupCommitPlannedBatchFallsBack(t *testing.T) {
	ctx := context.Background()
	m := bmeta("PutSecret", "", "")
	p := func(key, v string) store.PutParams {
		return store.PutParams{Key: key, Defaults: store.Defaults{Category: "custom"}, Seal: seal(v)}
	}
	s, conn := threeSecretsAndTrigger(t, `CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF convert_from(NEW.ciphertext, 'UTF8') LIKE 'boom@%' THEN RAISE EXCEPTION 'boom'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER boom BEFORE INSERT ON secret_versions FOR EACH ROW EXECUTE FUNCTION boom()`)
	base, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	res := make([]store.WriteResult, 3)
	errs := make([]error, 3)
	for i, v := range []string{"two", "boom", "two"} {
		k := []string{"CUSTOM_A", "CUSTOM_B", "CUSTOM_C"}[i]
		q.add(func() { res[i], errs[i] = s.PutSecret(ctx, m, p(k, v)) })
	}
	release()
	q.wg.Wait()
	if errs[0] != nil || errs[1] == nil || errs[2] != nil {
		t.Fatalf("outcomes %v, want only the second to fail", errs)
	}
	if res[0].Revision != base+1 || res[2].Revision != base+2 || res[0].Version.Version != 2 || res[2].Version.Version != 2 {
		t.Fatalf("revisions %d, %d, versions %d, %d; want %d, %d and 2, 2",
			res[0].Revision, res[2].Revision, res[0].Version.Version, res[2].Version.Version, base+1, base+2)
	}
	var versions int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM secret_versions`).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if versions != 5 {
		t.Errorf("%d versions, want 5", versions)
	}
	if revs, _ := changeRevisions(t, s, base); !slices.Equal(revs, consecutive(base+1, 2)) {
		t.Errorf("change log %v", revs)
	}
	if revs := auditRevisions(t, s, base); !slices.Equal(revs, consecutive(base+1, 2)) {
		t.Errorf("audit %v", revs)
	}
}

// lockTakers counts the batches that began by taking the revision lock.
type lockTakers struct{ n atomic.Int32 }

func (l *lockTakers) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (l *lockTakers) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (l *lockTakers) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	for _, q := range d.Batch.QueuedQueries {
		if strings.Contains(q.SQL, "revision_counter FOR UPDATE") {
			l.n.Add(1)
		}
	}
	return ctx
}
func (l *lockTakers) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (l *lockTakers) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// TestGroupCommitNextBatchWaitsOnTheLock: while a batch commits, the next
// one is already sent and waits in PostgreSQL for the revision lock (the
// two overlap); it still runs after the first commits, sees its writes and
// takes the next revisions.
func TestGroupCommitNextBatchWaitsOnTheLock(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	lt := &lockTakers{}
	s, err := store.Open(ctx, url, store.Options{MinMaxConns: 8, Tracer: lt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	m := bmeta("PutSecret", "", "")
	p := func(v string) store.PutParams {
		return store.PutParams{Key: "CUSTOM_K", Defaults: store.Defaults{Category: "custom"}, Seal: seal(v)}
	}
	if _, err := s.PutSecret(ctx, m, p("zero")); err != nil {
		t.Fatal(err)
	}
	// Hold the first batch in its last round trip: its change-log insert
	// waits for this lock.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE change_log IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				_ = tx.Rollback(ctx)
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	var wg sync.WaitGroup
	res := make([]store.WriteResult, 2)
	errs := make([]error, 2)
	wg.Go(func() { res[0], errs[0] = s.PutSecret(ctx, m, p("one")) })
	waitFor("the first batch's commit", func() bool {
		var waiting int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE relation = 'change_log'::regclass AND NOT granted`).Scan(&waiting); err != nil {
			t.Error(err)
		}
		return waiting == 1
	})
	begun := lt.n.Load()
	wg.Go(func() { res[1], errs[1] = s.PutSecret(ctx, m, p("two")) })
	waitFor("the second batch to be sent while the first commits", func() bool { return lt.n.Load() > begun })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if res[1].Revision != res[0].Revision+1 || res[0].Version.Version != 2 || res[1].Version.Version != 3 {
		t.Fatalf("revisions %d, %d; versions %d, %d: want consecutive revisions and versions 2, 3",
			res[0].Revision, res[1].Revision, res[0].Version.Version, res[1].Version.Version)
	}
	if entries, txs := transactions(t, url, res[0].Revision-1); entries != 2 || txs != 2 {
		t.Fatalf("%d change-log entries in %d transactions, want 2 in 2", entries, txs)
	}
}

// TestGroupCommitHoldsOverWritesOfOneSecret: a put of a secret its batch
// already writes is held over to the next batch, which keeps the batch
// planned (not one write after another); each secret's writes still apply
// in the order they came. A secret written by many at once (more writes
// than are held over) goes in one batch, one write after another, as
// before, rather than one write of it per batch.
func TestGroupCommitHoldsOverWritesOfOneSecret(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testdb.New(t))
	m := bmeta("PutSecret", "", "")
	run := func(keys ...string) (versions map[string][]int64, batches, oneByOne int64) {
		t.Helper()
		before := s.WriteBatchStats()
		release := s.HoldWrites()
		q := &queue{t: t, s: s}
		res := make([]store.WriteResult, len(keys))
		for i, k := range keys {
			q.add(func() {
				var err error
				if res[i], err = s.PutSecret(ctx, m, store.PutParams{Key: k, Defaults: store.Defaults{Category: "custom"},
					Seal: seal(fmt.Sprint(i))}); err != nil {
					t.Errorf("put %d: %v", i, err)
				}
			})
		}
		release()
		q.wg.Wait()
		versions = map[string][]int64{}
		var last int64
		for i, r := range res {
			versions[keys[i]] = append(versions[keys[i]], r.Version.Version)
			if keys[i] == keys[0] {
				if r.Revision <= last {
					t.Errorf("put %d of %s: revision %d after %d", i, keys[i], r.Revision, last)
				}
				last = r.Revision
			}
		}
		after := s.WriteBatchStats()
		return versions, after.Batches - before.Batches, after.OneByOne - before.OneByOne
	}
	versions, batches, oneByOne := run("CUSTOM_K", "CUSTOM_L", "CUSTOM_K", "CUSTOM_M", "CUSTOM_K")
	if !slices.Equal(versions["CUSTOM_K"], []int64{1, 2, 3}) {
		t.Errorf("versions of CUSTOM_K in queue order: %v, want 1, 2, 3", versions["CUSTOM_K"])
	}
	if batches != 3 || oneByOne != 0 {
		t.Errorf("%d batches, %d one write after another; want 3 (K, L, M; K; K), none", batches, oneByOne)
	}
	hot := []string{"CUSTOM_HOT"}
	for range store.MaxHeldOver + 1 {
		hot = append(hot, "CUSTOM_HOT")
	}
	versions, batches, oneByOne = run(hot...)
	if want := consecutive(1, len(hot)); !slices.Equal(versions["CUSTOM_HOT"], want) {
		t.Errorf("versions of CUSTOM_HOT in queue order: %v, want %v", versions["CUSTOM_HOT"], want)
	}
	if batches != 1 || oneByOne != 1 {
		t.Errorf("%d puts of one secret: %d batches, %d one write after another; want 1, 1", len(hot), batches, oneByOne)
	}
}

// TestGroupCommitPlannedWriteThatChangesNothing: a planned put whose
// statement changes nothing (its secret changed since the batch read it,
// by a writer outside the lock; here a trigger that skips the update)
// must not commit with its batch as if it had: the batch checks each
// planned statement's row count before its COMMIT and runs its writes
// again one after another: that put fails alone (etag mismatch),
// the others commit with consecutive revisions, and no change-log entry,
// audit event or version claims the put that did not happen.
func TestGroupCommitPlannedWriteThatChangesNothing(t *testing.T) {
	ctx := context.Background()
	m := bmeta("PutSecret", "", "")
	keys := []string{"CUSTOM_A", "CUSTOM_B", "CUSTOM_C"}
	s, conn := threeSecretsAndTrigger(t, `CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.description = 'skipped' THEN RETURN NULL; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER skip BEFORE UPDATE ON secrets FOR EACH ROW EXECUTE FUNCTION skip()`)
	base, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := s.WriteBatchStats()
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	res := make([]store.WriteResult, 3)
	errs := make([]error, 3)
	skipped := "skipped"
	for i, k := range keys {
		p := store.PutParams{Key: k, Defaults: store.Defaults{Category: "custom"}, Seal: seal("two")}
		if i == 1 {
			p.Description = &skipped
		}
		q.add(func() { res[i], errs[i] = s.PutSecret(ctx, m, p) })
	}
	release()
	q.wg.Wait()
	if errs[0] != nil || !errors.Is(errs[1], store.ErrEtagMismatch) || errs[2] != nil {
		t.Fatalf("outcomes %v, want only the second to fail with an etag mismatch", errs)
	}
	if res[0].Revision != base+1 || res[2].Revision != base+2 || res[0].Version.Version != 2 || res[2].Version.Version != 2 {
		t.Fatalf("revisions %d, %d, versions %d, %d; want %d, %d and 2, 2",
			res[0].Revision, res[2].Revision, res[0].Version.Version, res[2].Version.Version, base+1, base+2)
	}
	after := s.WriteBatchStats()
	if after.Batches-before.Batches != 1 || after.OneByOne-before.OneByOne != 1 {
		t.Errorf("%d batches, %d one write after another; want 1, 1 (the planned attempt fell back)",
			after.Batches-before.Batches, after.OneByOne-before.OneByOne)
	}
	var versions, bVersions int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE key = 'CUSTOM_B') FROM secret_versions`).
		Scan(&versions, &bVersions); err != nil {
		t.Fatal(err)
	}
	if versions != 5 || bVersions != 1 {
		t.Errorf("%d versions (%d of CUSTOM_B), want 5 (1)", versions, bVersions)
	}
	if revs, keys := changeRevisions(t, s, base); !slices.Equal(revs, consecutive(base+1, 2)) || slices.Contains(keys, "CUSTOM_B") {
		t.Errorf("change log %v %v", revs, keys)
	}
	if revs := auditRevisions(t, s, base); !slices.Equal(revs, consecutive(base+1, 2)) {
		t.Errorf("audit %v", revs)
	}
}

// threeSecretsAndTrigger opens a store on a fresh database holding
// CUSTOM_A, CUSTOM_B and CUSTOM_C (version 1 each), then runs trigger (SQL
// that installs a trigger to make some write misbehave) on a connection of
// its own, which it returns for the test's checks.
func threeSecretsAndTrigger(t *testing.T, trigger string) (*store.Store, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	url := testdb.New(t)
	s := openStore(t, url)
	for _, k := range []string{"CUSTOM_A", "CUSTOM_B", "CUSTOM_C"} {
		if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: k,
			Defaults: store.Defaults{Category: "custom"}, Seal: seal("one")}); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	if _, err := conn.Exec(ctx, trigger); err != nil {
		t.Fatal(err)
	}
	return s, conn
}

// TestGroupCommitNotifiesOncePerBatch: a batch's commit sends listeners
// one notification, its last revision (the payload is a hint: they read
// the change log), not one per write.
func TestGroupCommitNotifiesOncePerBatch(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	s := openStore(t, url)
	listener, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close(context.Background()) })
	if _, err := listener.Exec(ctx, "LISTEN "+store.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	var last atomic.Int64
	for i := range 4 {
		q.add(func() {
			res, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), store.PutParams{Key: fmt.Sprintf("CUSTOM_%d", i),
				Defaults: store.Defaults{Category: "custom"}, Seal: seal("v")})
			if err != nil {
				t.Error(err)
				return
			}
			for {
				if l := last.Load(); res.Revision <= l || last.CompareAndSwap(l, res.Revision) {
					break
				}
			}
		})
	}
	before := s.WriteBatchStats()
	release()
	q.wg.Wait()
	if got := s.WriteBatchStats().Batches - before.Batches; got != 1 {
		t.Fatalf("4 held writes committed in %d batches, want 1", got)
	}
	var payloads []string
	for {
		// The first may take a while on a busy machine; any more would
		// follow it at once.
		wait := 300 * time.Millisecond
		if len(payloads) == 0 {
			wait = 10 * time.Second
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		payloads = append(payloads, n.Payload)
	}
	if want := fmt.Sprint(last.Load()); len(payloads) != 1 || payloads[0] != want {
		t.Errorf("a batch of 4 writes notified %q, want one notification %q", payloads, want)
	}
}

// TestGroupCommitWriteFailingBeforeItsPrefixRan: a write whose first
// statement fails while pgx prepares it (here: it waits for a table's lock
// and is cancelled) sent nothing else, the savepoint prefix riding with it
// included, and the failure aborted the transaction. The batch must not
// then roll back to a savepoint that still holds the write before it and
// commit that write's bookkeeping as if it had stored its value: either
// the put before it is stored, or it fails too. (It was reported done,
// with its change-log entry and an OK audit event, and its version
// missing.)
func TestGroupCommitWriteFailingBeforeItsPrefixRan(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	s := openStore(t, url)
	p := func(v string) store.PutParams {
		return store.PutParams{Key: "CUSTOM_K", Defaults: store.Defaults{Category: "custom"}, Seal: seal(v)}
	}
	if _, err := s.PutSecret(ctx, bmeta("PutSecret", "", ""), p("one")); err != nil {
		t.Fatal(err)
	}
	base, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE blocker (x int)`); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `LOCK TABLE blocker IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	release := s.HoldWrites()
	q := &queue{t: t, s: s}
	var (
		res              store.WriteResult
		putErr, otherErr error
	)
	q.add(func() { res, putErr = s.PutSecret(ctx, bmeta("PutSecret", "", ""), p("two")) })
	q.add(func() { otherErr = s.ReadingWrite(ctx, bmeta("UpdateSecret", "", ""), "blocker") })
	release()
	// The reading write's statement waits for the lock while pgx prepares
	// it: cancel it there.
	var pid int32
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		err := conn.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE relation = 'blocker'::regclass AND NOT granted`).Scan(&pid)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) || time.Now().After(deadline) {
			t.Fatalf("waiting for the reading write to wait for the lock: %v", err)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_cancel_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	q.wg.Wait()
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("put: %v; reading write: %v", putErr, otherErr)
	if otherErr == nil {
		t.Fatal("the cancelled write succeeded")
	}
	got, _, err := s.AccessVersion(ctx, "CUSTOM_K", 0)
	if err != nil {
		t.Fatal(err)
	}
	revs, _ := changeRevisions(t, s, base)
	if putErr == nil {
		if got.Version != 2 || string(got.Sealed.Ciphertext) != "two@2" || res.Version.Version != 2 {
			t.Fatalf("the put was reported done as version %d, and the latest version is %d %q", res.Version.Version, got.Version, got.Sealed.Ciphertext)
		}
		if !slices.Equal(revs, []int64{base + 1}) {
			t.Errorf("change log after the put %v, want [%d]", revs, base+1)
		}
		return
	}
	// Failed with it: nothing of the batch is kept.
	if got.Version != 1 || len(revs) != 0 {
		t.Fatalf("the put failed (%v), yet version %d is the latest and the change log has %v", putErr, got.Version, revs)
	}
	if revs := auditRevisions(t, s, base); len(revs) != 0 {
		t.Errorf("the put failed (%v), yet the audit log has %v", putErr, revs)
	}
}

// TestGroupCommitStalledBatchLetsGoOfTheLock: a replica that stalls in the
// middle of a write batch (a paused process: its transaction idle, holding
// the revision lock) does not hold every other replica's writes until its
// TCP connection times out: PostgreSQL ends its session once it has been
// idle writeBatchIdleTimeout, the other replica's write goes through, and
// the stalled write fails, nothing of it kept.
func TestGroupCommitStalledBatchLetsGoOfTheLock(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	other := openStore(t, url)
	stalled := openStore(t, url)
	stalled.SetWriteBatchIdleTimeout(300 * time.Millisecond)
	p := func(key string) store.PutParams {
		return store.PutParams{Key: key, Defaults: store.Defaults{Category: "custom"}, Seal: seal("v")}
	}
	if _, err := other.PutSecret(ctx, bmeta("PutSecret", "", ""), p("CUSTOM_K")); err != nil {
		t.Fatal(err)
	}
	started, resume := make(chan struct{}), make(chan struct{})
	stallErr := make(chan error, 1)
	go func() {
		stallErr <- stalled.StallingWrite(ctx, bmeta("UpdateSecret", "", ""), "CUSTOM_K", started, resume)
	}()
	<-started
	start := time.Now()
	if _, err := other.PutSecret(ctx, bmeta("PutSecret", "", ""), p("CUSTOM_L")); err != nil {
		t.Fatal(err)
	}
	waited := time.Since(start)
	t.Logf("the other replica's write waited %v", waited)
	if waited > 3*time.Second {
		t.Errorf("the other replica's write waited %v for the stalled batch's lock", waited)
	}
	close(resume)
	if err := <-stallErr; err == nil {
		t.Error("the stalled write succeeded after its session ended")
	}
	got, _, err := other.GetSecret(ctx, "CUSTOM_K")
	if err != nil {
		t.Fatal(err)
	}
	if got.Description == "stalled" {
		t.Error("the stalled write's change was kept")
	}
}
