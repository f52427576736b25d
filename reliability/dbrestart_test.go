package reliability

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/pgcluster"
)

// outcome is one call's result and when it ended.
type outcome struct {
	at   time.Time
	op   string
	code string
}

// outcomes collects call results from many goroutines.
type outcomes struct {
	mu  sync.Mutex
	all []outcome
}

func (o *outcomes) add(op string, err error) { o.addName(op, codeName(err)) }

func (o *outcomes) addName(op, code string) {
	o.mu.Lock()
	o.all = append(o.all, outcome{at: time.Now(), op: op, code: code})
	o.mu.Unlock()
}

// between counts the outcomes that ended in [from, to).
func (o *outcomes) between(from, to time.Time) *codeCounter {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := &codeCounter{}
	for _, x := range o.all {
		if !x.at.Before(from) && x.at.Before(to) {
			c.addName(x.op + ":" + x.code)
		}
	}
	return c
}

// firstOK returns when the first successful op ended at or after from.
func (o *outcomes) firstOK(op string, from time.Time) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, x := range o.all {
		if x.op == op && x.code == "OK" && !x.at.Before(from) {
			return x.at, true
		}
	}
	return time.Time{}, false
}

// TestDatabaseRestart stops a private PostgreSQL cluster under read, write
// and watch load, keeps it down for a while, and starts it again. It
// asserts that the in-process server never goes down (/healthz answers
// throughout, no panic), answers UNAVAILABLE while the database is gone
// (never INTERNAL or UNKNOWN), reports /readyz 503 meanwhile, recovers
// without a restart, that every write it acknowledged is durable, and that
// a watcher resuming with start_revision = the last revision it saw misses
// no revision and sees none twice.
func TestDatabaseRestart(t *testing.T) {
	gate(t)
	dir, err := pgcluster.TempDir(tempPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	opts := pgcluster.Options{DataDir: filepath.Join(dir, "data"), Port: 5433,
		ExtraConfig: map[string]string{"max_connections": "100"}}
	cluster, err := pgcluster.Start(withTimeout(t, time.Minute), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop(context.Background()) }) // the current one, after the server
	admin := connect(t, cluster.ConnString("postgres"))
	if _, err := admin.Exec(context.Background(), `CREATE DATABASE secrets`); err != nil {
		t.Fatal(err)
	}
	admin.Close(context.Background())
	url := cluster.ConnString("secrets")
	// As secretsd migrate does: the owner migrates and makes the service role.
	if err := migrations.Up(withTimeout(t, time.Minute), url); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.EnsureServiceRole(withTimeout(t, time.Minute), url, migrations.DefaultServiceRole); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv := testserver.Start(t, testserver.Options{DatabaseURL: url, ServiceURL: cluster.ConnStringAs(migrations.DefaultServiceRole, "secrets"), Log: logs, Configure: func(c *app.Config) {
		c.WatchPollInterval = 200 * time.Millisecond
		c.WatchProgressInterval = 500 * time.Millisecond
	}})
	ctx := withTimeout(t, 5*time.Minute)
	const keys = 20
	for i := range keys {
		if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: fmt.Sprintf("RESTART_%d", i), Value: randomValue(32)}); err != nil {
			t.Fatal(err)
		}
	}

	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	res := &outcomes{}
	messages := &codeCounter{} // a sample message of each code
	var ackMu sync.Mutex
	var acks []ack
	var failed []writeOp // writes that got an error: retried at the end
	call := func(op string, f func(cctx context.Context) error) {
		cctx, cancel := context.WithTimeout(lctx, 5*time.Second)
		err := f(cctx)
		cancel()
		if lctx.Err() == nil {
			res.add(op, err)
			messages.add(err)
		}
		if err != nil {
			time.Sleep(20 * time.Millisecond) // no busy loop while down
		}
	}
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				key := fmt.Sprintf("RESTART_%d", mrand.IntN(keys))
				if r%2 == 0 {
					call("get", func(c context.Context) error {
						_, err := srv.Secrets.GetSecret(c, &pb.GetSecretRequest{Key: key})
						return err
					})
				} else {
					call("access", func(c context.Context) error {
						_, err := srv.Secrets.AccessSecretVersion(c, &pb.AccessSecretVersionRequest{Key: key, Version: "latest"})
						return err
					})
				}
			}
		}()
	}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; lctx.Err() == nil; n++ {
				op := putOp(fmt.Sprintf("RESTART_%d", mrand.IntN(keys)), randomValue(32), fmt.Sprintf("restart-w%d-%d", w, n))
				call("put", func(c context.Context) error {
					a, err := op.send(c, srv.Secrets)
					ackMu.Lock()
					if err == nil {
						acks = append(acks, a)
					} else if lctx.Err() == nil {
						failed = append(failed, op)
					}
					ackMu.Unlock()
					return err
				})
			}
		}()
	}
	// Watchers resume from the last revision they saw after any error; one
	// keeps its stream as long as it lasts, the other also drops it every
	// 300 ms, so that it resumes while the database is down too.
	start, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: "RESTART_0"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var wwg sync.WaitGroup
	watchers := []*resumingWatcher{{sc: srv.Secrets}, {sc: srv.Secrets, churn: 300 * time.Millisecond}}
	for _, w := range watchers {
		w.last.Store(start.Revision)
		wwg.Add(1)
		go func() { defer wwg.Done(); w.run(wctx) }()
	}
	// Health: the process stays up; readiness follows the database.
	var healthBad atomic.Int64
	ready := &outcomes{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 5 * time.Second}
		for lctx.Err() == nil {
			if r, err := client.Get(srv.BaseURL + "/healthz"); err != nil || r.StatusCode != 200 {
				healthBad.Add(1)
			} else {
				r.Body.Close()
			}
			if r, err := client.Get(srv.BaseURL + "/readyz"); err == nil {
				r.Body.Close()
				ready.addName("readyz", fmt.Sprint(r.StatusCode))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	steady := size(1500*time.Millisecond, 3*time.Second)
	down := size(2*time.Second, 5*time.Second)
	time.Sleep(steady)
	tStop := time.Now()
	if err := cluster.Stop(ctx); err != nil {
		t.Fatalf("stopping PostgreSQL: %v", err)
	}
	tDown := time.Now()
	time.Sleep(down)
	tStart := time.Now()
	if cluster, err = pgcluster.Start(ctx, opts); err != nil {
		t.Fatalf("restarting PostgreSQL: %v", err)
	}
	tUp := time.Now()
	if !waitFor(30*time.Second, 10*time.Millisecond, func() bool {
		_, r := res.firstOK("access", tUp)
		_, w := res.firstOK("put", tUp)
		return r && w
	}) {
		t.Fatalf("no successful read and write 30s after PostgreSQL came back; since: %s", res.between(tUp, time.Now()))
	}
	firstRead, _ := res.firstOK("access", tUp)
	firstWrite, _ := res.firstOK("put", tUp)
	time.Sleep(steady)
	stopLoad()
	wg.Wait()

	t.Logf("PostgreSQL stop took %v, down %v, start took %v", tDown.Sub(tStop).Round(time.Millisecond),
		tStart.Sub(tDown).Round(time.Millisecond), tUp.Sub(tStart).Round(time.Millisecond))
	t.Logf("recovery after PostgreSQL was ready: first read %v, first write %v",
		firstRead.Sub(tUp).Round(time.Millisecond), firstWrite.Sub(tUp).Round(time.Millisecond))
	before, stopping, during := res.between(time.Time{}, tStop), res.between(tStop, tDown), res.between(tDown, tStart)
	after := res.between(tStart, time.Now())
	t.Logf("before: %s", before)
	t.Logf("while stopping: %s", stopping)
	t.Logf("while down: %s", during)
	t.Logf("restarting and after: %s", after)
	t.Logf("readyz while down: %s; after: %s", ready.between(tDown, tStart), ready.between(firstRead, time.Now()))
	for i, w := range watchers {
		t.Logf("watcher %d: %d events, resumed %d times; errors: %s", i, w.events.Load(), w.resumes.Load(), w.errs.String())
		if others := w.errs.others("Unavailable/DATABASE_UNAVAILABLE", "Unavailable", "Unavailable/AUDIT_UNAVAILABLE"); len(others) > 0 {
			var msgs []string
			for name := range others {
				msgs = append(msgs, fmt.Sprintf("%s: %q", name, w.errs.sample(name)))
			}
			t.Errorf("watcher %d: the watch stream ended with %v (%s); want UNAVAILABLE (resumable)", i, others, strings.Join(msgs, "; "))
		}
	}
	if watchers[1].resumes.Load() < int64(down/time.Second) {
		t.Errorf("the churning watcher resumed only %d times", watchers[1].resumes.Load())
	}

	t.Logf("UNAVAILABLE without ErrorInfo (no reason to branch on) says %q", messages.sample("Unavailable"))
	for name, c := range map[string]*codeCounter{"before the stop": before, "while stopping": stopping, "while down": during, "restarting and after": after} {
		for k, n := range c.others() {
			op, code, _ := strings.Cut(k, ":")
			if code == "OK" || strings.HasPrefix(code, "Unavailable") {
				continue
			}
			t.Errorf("%s: %d %s calls failed with %s; want OK or UNAVAILABLE", name, n, op, code)
		}
	}
	for _, op := range []string{"get", "access", "put"} {
		if n := during.get(op + ":OK"); n > 0 {
			t.Errorf("%d %s calls succeeded while the database was down", n, op)
		}
		if during.get(op+":Unavailable/DATABASE_UNAVAILABLE")+during.get(op+":Unavailable/AUDIT_UNAVAILABLE")+during.get(op+":Unavailable") == 0 {
			t.Errorf("no %s call answered UNAVAILABLE while the database was down: %s", op, during)
		}
	}
	if n := ready.between(tDown, tStart).get("readyz:200"); n > 0 {
		t.Errorf("/readyz answered 200 %d times while the database was down", n)
	}
	if n := healthBad.Load(); n > 0 {
		t.Errorf("/healthz failed %d times: the server went down with its database", n)
	}
	if strings.Contains(string(logs.Bytes()), "panic") {
		t.Errorf("the server log mentions a panic")
	}

	// The watchers saw every revision once, in order, up to the last one.
	final, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: "RESTART_0"})
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range watchers {
		if !waitFor(30*time.Second, 20*time.Millisecond, func() bool { return w.last.Load() >= final.Revision }) {
			t.Errorf("watcher %d at revision %d, want %d", i, w.last.Load(), final.Revision)
		}
	}
	stopWatch()
	wwg.Wait()
	for _, w := range watchers {
		for _, p := range w.problems() {
			t.Error(p)
		}
	}
	// Writes that failed around the outage, retried with their request ids,
	// succeed exactly once (some had committed before the connection broke).
	conn := connect(t, url)
	// The replica's sequencer, which lived through the outage, chains
	// every audit event committed before and after it.
	t.Logf("audit intake drained %v after recovery", waitIntakeEmpty(t, conn, 30*time.Second).Round(time.Millisecond))
	wasCommitted := committed(t, conn, failed)
	for _, op := range failed {
		a, err := op.send(ctx, srv.Secrets)
		if err != nil {
			t.Errorf("retry of %s (request %s) after recovery: %v", op.key, op.requestID, err)
			continue
		}
		acks = append(acks, a)
	}
	t.Logf("%d failed writes retried with their request ids (%d had committed)", len(failed), wasCommitted)
	waitIntakeEmpty(t, conn, 30*time.Second)
	checkAcks(t, conn, acks)
	c := checkConsistency(t, url, nil)
	t.Logf("%d acknowledged writes durable; consistent at revision %d", len(acks), c.Revision)
	// The replica that lived through the outage (and its read cache)
	// answers what the database holds.
	checkReadsMatchDatabase(t, url, srv.Secrets)
}

// resumingWatcher follows the change stream; after an error it watches again
// from the last revision it saw and checks that revisions stay consecutive.
type resumingWatcher struct {
	sc pb.SecretServiceClient
	// churn, if set, also drops the stream this often.
	churn   time.Duration
	last    atomic.Int64
	events  atomic.Int64
	resumes atomic.Int64
	errs    codeCounter
	mu      sync.Mutex
	bad     []string
}

func (w *resumingWatcher) run(ctx context.Context) {
	for ctx.Err() == nil {
		sctx, cancel := ctx, context.CancelFunc(func() {})
		if w.churn > 0 {
			sctx, cancel = context.WithTimeout(ctx, w.churn)
		}
		err := w.follow(sctx)
		// The server may see the deadline a moment before the client does.
		dropped := w.churn > 0 && (sctx.Err() != nil || isCode(err, codes.DeadlineExceeded))
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.resumes.Add(1)
		if dropped {
			continue // on purpose
		}
		w.errs.add(err)
		time.Sleep(100 * time.Millisecond)
	}
}

// follow watches from the last revision seen until the stream ends.
func (w *resumingWatcher) follow(ctx context.Context) error {
	st, err := w.sc.WatchChanges(ctx, &pb.WatchChangesRequest{StartRevision: w.last.Load()})
	if err != nil {
		return err
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		if e := m.GetEvent(); e != nil {
			if want := w.last.Load() + 1; e.Revision != want {
				w.mu.Lock()
				w.bad = append(w.bad, fmt.Sprintf("watcher got revision %d, want %d", e.Revision, want))
				w.mu.Unlock()
			}
			w.last.Store(e.Revision)
			w.events.Add(1)
		}
	}
}

func (w *resumingWatcher) problems() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.bad) > 10 {
		return append(w.bad[:10], fmt.Sprintf("... and %d more", len(w.bad)-10))
	}
	return w.bad
}
