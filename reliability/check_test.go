package reliability

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

// writeActions are the audit actions of writes: each commits exactly one
// change-log entry and one OK audit event with the same revision.
var writeActions = []string{"PutSecret", "UpdateSecret", "DisableSecretVersion", "EnableSecretVersion",
	"DestroySecretVersion", "DeleteSecret", "UpdateProviderDefault"}

// changeKind is the change-log kind each write action records.
var changeKind = map[string]store.ChangeKind{
	"PutSecret":            store.ChangeValueAdded,
	"DisableSecretVersion": store.ChangeVersionDisabled,
	"EnableSecretVersion":  store.ChangeVersionEnabled,
	"DestroySecretVersion": store.ChangeVersionDestroyed,
	"DeleteSecret":         store.ChangeSecretDeleted,
}

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// consistency is what checkConsistency found.
type consistency struct {
	Revision, Secrets, Versions, AuditEvents, Checkpoints int64
}

// checkConsistency asserts that nothing is half-written: every secret's
// current version exists; the change log holds revisions 1..N without a gap,
// N being the revision counter; change-log entries and OK write audit events
// match one to one by revision; the audit hash chain verifies (with its
// signed checkpoints when pub is given).
func checkConsistency(t *testing.T, url string, pub ed25519.PublicKey) consistency {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sequenceLeftovers(t, url)
	conn := connect(t, url)
	var c consistency
	var logCount, logMin, logMax int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT revision FROM revision_counter),
		(SELECT count(*) FROM secrets), (SELECT count(*) FROM secret_versions), (SELECT count(*) FROM audit_events),
		count(*), COALESCE(min(revision), 0), COALESCE(max(revision), 0) FROM change_log`,
	).Scan(&c.Revision, &c.Secrets, &c.Versions, &c.AuditEvents, &logCount, &logMin, &logMax); err != nil {
		t.Fatal(err)
	}
	if logCount != c.Revision || logMax != c.Revision || (logCount > 0 && logMin != 1) {
		t.Errorf("change log holds %d entries, revisions %d..%d; want 1..%d (the revision counter), gap-free", logCount, logMin, logMax, c.Revision)
	}
	for _, q := range []struct{ what, sql string }{
		{"secrets whose current version has no secret_versions row",
			`SELECT s.key || ' v' || s.current_version FROM secrets s
			 LEFT JOIN secret_versions v ON v.key = s.key AND v.version = s.current_version WHERE v.key IS NULL`},
		{"versions newer than their secret's current version",
			`SELECT v.key || ' v' || v.version FROM secret_versions v JOIN secrets s USING (key) WHERE v.version > s.current_version`},
		{"change-log entries without their OK write audit event",
			`SELECT c.revision::text FROM change_log c WHERE NOT EXISTS (SELECT 1 FROM audit_events a
			 WHERE a.revision = c.revision AND a.outcome = 'OK' AND a.action = ANY($1))`},
		{"OK write audit events without a change-log entry",
			`SELECT a.sequence::text FROM audit_events a WHERE a.outcome = 'OK' AND a.action = ANY($1)
			 AND NOT EXISTS (SELECT 1 FROM change_log c WHERE c.revision = a.revision)`},
		{"revisions with several OK write audit events",
			`SELECT revision::text FROM audit_events WHERE outcome = 'OK' AND action = ANY($1) GROUP BY revision HAVING count(*) > 1`},
		{"secrets whose etag (revision) is ahead of the counter",
			`SELECT key FROM secrets WHERE revision > (SELECT revision FROM revision_counter)`},
	} {
		var args []any
		if strings.Contains(q.sql, "$1") {
			args = append(args, writeActions)
		}
		rows, err := conn.Query(ctx, q.sql+` LIMIT 20`, args...)
		if err != nil {
			t.Fatalf("%s: %v", q.what, err)
		}
		bad, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", q.what, err)
		}
		if len(bad) > 0 {
			t.Errorf("%s: %v", q.what, bad)
		}
	}
	st, err := store.Open(ctx, url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	res, err := (&auditlog.Log{Store: st, Keys: auditlog.NewKeys(pub)}).Verify(ctx)
	if err != nil {
		t.Fatalf("audit verify: %v", err)
	}
	if !res.Intact {
		t.Errorf("audit chain broken at %d: %s", res.FirstBad, res.Reason)
	}
	if pub != nil && res.Checkpoints == 0 && res.Events > 100 {
		t.Errorf("no signed checkpoint verified over %d events", res.Events)
	}
	c.Checkpoints = int64(res.Checkpoints)
	return c
}

// sequenceLeftovers chains the audit events a killed server committed to
// the intake but did not sequence, as the next sequencer of any replica
// does (tests of the restarted server's own sequencer wait for it
// instead: waitIntakeEmpty).
func sequenceLeftovers(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := auditlog.NewSequencer(st, auditlog.SequencerOptions{}).Flush(ctx); err != nil {
		t.Fatalf("sequencing the intake: %v", err)
	}
}

// ack is a write the server acknowledged (answered OK).
type ack struct {
	RequestID string
	Action    string
	Key       string
	Version   int64 // 0 when the action names no version (delete)
	Revision  int64
}

// checkAcks asserts that every acknowledged write is durable: exactly one OK
// audit event carries its request id, with its action, key and revision, and
// the change log holds that revision with the write's key, kind and version.
func checkAcks(t *testing.T, conn *pgx.Conn, acks []ack) {
	t.Helper()
	if len(acks) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids := make([]string, len(acks))
	revs := make([]int64, len(acks))
	for i, a := range acks {
		ids[i], revs[i] = a.RequestID, a.Revision
	}
	type event struct {
		action, key       string
		version, revision int64
	}
	events := map[string][]event{}
	rows, err := conn.Query(ctx, `SELECT request_id, action, key, version, revision FROM audit_events
		WHERE outcome = 'OK' AND request_id = ANY($1)`, ids)
	if err != nil {
		t.Fatal(err)
	}
	var id string
	var e event
	if _, err := pgx.ForEachRow(rows, []any{&id, &e.action, &e.key, &e.version, &e.revision}, func() error {
		events[id] = append(events[id], e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		kind    store.ChangeKind
		key     string
		version int64
	}
	changes := map[int64]entry{}
	var rev int64
	var c entry
	rows, err = conn.Query(ctx, `SELECT revision, kind, key, version FROM change_log WHERE revision = ANY($1)`, revs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&rev, &c.kind, &c.key, &c.version}, func() error {
		changes[rev] = c
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, a := range acks {
		evs := events[a.RequestID]
		switch {
		case len(evs) == 0:
			lost++
			if lost <= 10 {
				t.Errorf("acknowledged %s %s (request %s, revision %d) has no audit event", a.Action, a.Key, a.RequestID, a.Revision)
			}
			continue
		case len(evs) > 1:
			t.Errorf("request %s has %d OK audit events, want 1: %+v", a.RequestID, len(evs), evs)
		}
		if ev := evs[0]; ev.action != a.Action || ev.key != a.Key || ev.revision != a.Revision {
			t.Errorf("request %s: audit event %+v, want %s %s at revision %d", a.RequestID, ev, a.Action, a.Key, a.Revision)
		}
		ch, ok := changes[a.Revision]
		if !ok {
			t.Errorf("acknowledged %s %s (request %s): no change-log entry at revision %d", a.Action, a.Key, a.RequestID, a.Revision)
			continue
		}
		if want, known := changeKind[a.Action]; ch.key != a.Key || (known && ch.kind != want) || (a.Version != 0 && ch.version != a.Version) {
			t.Errorf("request %s: change-log entry %+v at revision %d, want %s %s v%d", a.RequestID, ch, a.Revision, a.Action, a.Key, a.Version)
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged writes lost", lost, len(acks))
	}
}

// codeCounter counts outcomes by status code, safely from many goroutines.
type codeCounter struct {
	mu      sync.Mutex
	n       map[string]int
	samples map[string]string // the first error message of each code
}

func (c *codeCounter) add(err error) {
	name := codeName(err)
	c.addName(name)
	if err != nil {
		c.mu.Lock()
		if c.samples == nil {
			c.samples = map[string]string{}
		}
		if _, ok := c.samples[name]; !ok {
			c.samples[name] = status.Convert(err).Message()
		}
		c.mu.Unlock()
	}
}

// sample returns the first message seen with code name.
func (c *codeCounter) sample(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.samples[name]
}

func (c *codeCounter) addName(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[name]++
}

func (c *codeCounter) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

// others lists the counts of codes not in allowed.
func (c *codeCounter) others(allowed ...string) map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.n {
		if !slices.Contains(allowed, k) {
			out[k] = v
		}
	}
	return out
}

func (c *codeCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c.n)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c.n[k]))
	}
	return strings.Join(parts, " ")
}

// codeName is the status code's name, with the ErrorInfo reason if any.
func codeName(err error) string {
	st := status.Convert(err)
	name := st.Code().String()
	if r := reason(err); r != "" {
		name += "/" + r
	}
	return name
}

// reason returns the ErrorInfo reason of err, if any.
func reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason
		}
	}
	return ""
}

func isCode(err error, c codes.Code) bool { return status.Code(err) == c }

// latencies records durations for percentiles.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// reset returns the recorded durations and starts afresh.
func (l *latencies) reset() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.d
	l.d = nil
	return d
}

// percentile returns the p-th percentile (0 < p <= 100) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func summary(d []time.Duration) string {
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", len(d), percentile(d, 50).Round(time.Microsecond*100),
		percentile(d, 99).Round(time.Microsecond*100), percentile(d, 100).Round(time.Microsecond*100))
}

// checkReadsMatchDatabase asserts that the server answers every secret's
// newest version as the database holds it (through its read cache or not):
// the version for an enabled one, FAILED_PRECONDITION otherwise.
func checkReadsMatchDatabase(t *testing.T, url string, sc pb.SecretServiceClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := connect(t, url)
	rows, err := conn.Query(ctx, `SELECT s.key, s.current_version, v.state = 1
		FROM secrets s JOIN secret_versions v ON v.key = s.key AND v.version = s.current_version`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		key     string
		version int64
		enabled bool
	}
	var want []row
	var r row
	if _, err := pgx.ForEachRow(rows, []any{&r.key, &r.version, &r.enabled}, func() error {
		want = append(want, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		res, err := sc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: w.key, Version: "latest"})
		switch {
		case w.enabled && (err != nil || res.Version != w.version):
			t.Errorf("%s: read version %d, %v; the database's newest is %d", w.key, res.GetVersion(), err, w.version)
		case !w.enabled && status.Code(err) != codes.FailedPrecondition:
			t.Errorf("%s: read %v, %v; the database's newest version %d is not enabled", w.key, res, err, w.version)
		}
	}
}
