package app_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

func fastWatch(c *app.Config) {
	c.WatchPollInterval = 200 * time.Millisecond
	c.WatchProgressInterval = 300 * time.Millisecond
}

type watchStream = grpc.ServerStreamingClient[pb.WatchChangesResponse]

func startWatch(t *testing.T, ctx context.Context, c pb.SecretServiceClient, req *pb.WatchChangesRequest) (watchStream, int64) {
	t.Helper()
	st, err := c.WatchChanges(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	if first.GetHeader() == nil {
		t.Fatalf("first message is not a header: %v", first)
	}
	return st, first.GetHeader().GetRevision()
}

// collect reads events until it has n of them or the deadline passes.
func collect(st watchStream, n int, timeout time.Duration) ([]*pb.ChangeEvent, error) {
	var out []*pb.ChangeEvent
	done := make(chan error, 1)
	go func() {
		for len(out) < n {
			m, err := st.Recv()
			if err != nil {
				done <- err
				return
			}
			if e := m.GetEvent(); e != nil {
				out = append(out, e)
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		return out, err
	case <-time.After(timeout):
		return nil, fmt.Errorf("timed out waiting for %d events", n)
	}
}

func revisions(evs []*pb.ChangeEvent) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.Revision
	}
	return out
}

func seq(from, to int64) []int64 {
	var out []int64
	for r := from; r <= to; r++ {
		out = append(out, r)
	}
	return out
}

// TestWatchAcrossReplicas: 16 concurrent writers × 100 changes through three
// replicas on one database; one watcher per replica sees every revision
// exactly once, in order.
func TestWatchAcrossReplicas(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	first := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: fastWatch})
	replicas := []*testserver.Server{first,
		testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: first.KEKURL, Configure: fastWatch}),
		testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: first.KEKURL, Configure: fastWatch}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const writers, each = 16, 100
	type result struct {
		evs []*pb.ChangeEvent
		err error
	}
	results := make([]chan result, len(replicas))
	for i, r := range replicas {
		st, start := startWatch(t, ctx, r.Secrets, &pb.WatchChangesRequest{})
		if start != 0 {
			t.Fatalf("fresh database at revision %d", start)
		}
		results[i] = make(chan result, 1)
		go func() {
			// A bound for a stuck watch, not a speed target: under -race
			// with the package's other tests in parallel, 1,600 writes
			// through three replicas took over 60 s on 2 cores.
			evs, err := collect(st, writers*each, 4*time.Minute)
			results[i] <- result{evs, err}
		}()
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := replicas[w%len(replicas)]
			for i := range each {
				if _, err := r.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: fmt.Sprintf("W%d", w), Value: []byte(fmt.Sprint(i))}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	want := seq(1, writers*each)
	for i, ch := range results {
		res := <-ch
		if res.err != nil {
			t.Fatalf("replica %d watcher: %v", i, res.err)
		}
		if diff := cmp.Diff(want, revisions(res.evs)); diff != "" {
			t.Fatalf("replica %d revisions (-want +got):\n%s", i, diff)
		}
	}
}

// TestWatchResume: a watcher that stops and resumes from its last revision,
// also on another server process, misses nothing and repeats nothing.
func TestWatchResume(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: fastWatch})
	ctx := context.Background()
	for i := range 10 {
		put(t, srv.Secrets, "RESUME", fmt.Sprint(i))
	}
	wctx, cancel := context.WithCancel(ctx)
	st, _ := startWatch(t, wctx, srv.Secrets, &pb.WatchChangesRequest{StartRevision: 3})
	evs, err := collect(st, 4, 5*time.Second)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(seq(4, 7), revisions(evs)); diff != "" {
		t.Fatalf("first leg (-want +got):\n%s", diff)
	}
	last := evs[len(evs)-1].Revision
	srv.Stop()
	// Changes while no server runs the watcher's process.
	other := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: srv.KEKURL, Configure: fastWatch})
	for i := range 5 {
		put(t, other.Secrets, "RESUME", fmt.Sprint("b", i))
	}
	// The header says where the new server's hub stood; it may trail the
	// database by a moment, but the stream still delivers everything after
	// `last`.
	st, head := startWatch(t, ctx, other.Secrets, &pb.WatchChangesRequest{StartRevision: last})
	if head > 15 || head < last {
		t.Fatalf("header revision %d, want between %d and 15", head, last)
	}
	evs, err = collect(st, 8, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(seq(8, 15), revisions(evs)); diff != "" {
		t.Fatalf("resumed leg (-want +got):\n%s", diff)
	}
}

func TestWatchCompacted(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		fastWatch(c)
		c.ChangeRetentionCount = 5
		c.MaintenanceInterval = 100 * time.Millisecond
	}})
	for i := range 20 {
		put(t, srv.Secrets, "COMPACT", fmt.Sprint(i))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := srv.Secrets.WatchChanges(context.Background(), &pb.WatchChangesRequest{StartRevision: 2})
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) == codes.OutOfRange {
			if reason := errorReason(err); reason != "REVISION_COMPACTED" {
				t.Fatalf("reason %q, want REVISION_COMPACTED", reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("start revision 2 still served after compaction: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The retained tail still resumes.
	st, _ := startWatch(t, context.Background(), srv.Secrets, &pb.WatchChangesRequest{StartRevision: 17})
	evs, err := collect(st, 3, 5*time.Second)
	if err != nil || !cmp.Equal(seq(18, 20), revisions(evs)) {
		t.Fatalf("tail: %v, %v", revisions(evs), err)
	}
}

func errorReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason
		}
	}
	return ""
}

func TestWatchFilters(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	byKey, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{Keys: []string{"SLACK_BOT_TOKEN", "CUSTOM_B"}})
	byCat, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{Categories: []string{"AI"}})
	put(t, srv.Secrets, "CUSTOM_A", "a")             // 1
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1") // 2
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-1")    // 3
	put(t, srv.Secrets, "CUSTOM_B", "b")             // 4
	put(t, srv.Secrets, "GOOGLE_AI_API_KEY", "g")    // 5
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-2") // 6
	evs, err := collect(byKey, 3, 5*time.Second)
	if err != nil || !cmp.Equal([]int64{2, 4, 6}, revisions(evs)) {
		t.Fatalf("key filter: %v, %v", revisions(evs), err)
	}
	evs, err = collect(byCat, 2, 5*time.Second)
	if err != nil || !cmp.Equal([]int64{3, 5}, revisions(evs)) {
		t.Fatalf("category filter: %v, %v", revisions(evs), err)
	}
	// An idle filtered watcher gets progress marks up to the current revision.
	deadline := time.After(5 * time.Second)
	for {
		m, err := byKey.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if p := m.GetProgress(); p != nil && p.Revision == 6 {
			break
		}
		select {
		case <-deadline:
			t.Fatal("no progress mark")
		default:
		}
	}
	bad, err := srv.Secrets.WatchChanges(ctx, &pb.WatchChangesRequest{Keys: []string{"bad key"}})
	if err == nil {
		_, err = bad.Recv()
	}
	wantCode(t, err, codes.InvalidArgument)
}

// TestWatchSlowReaderAndLostNotifications: a watcher that stops reading
// cannot stall the hub or the others, and later catches up from the table
// without gaps; killing the LISTEN connection only delays delivery.
func TestWatchSlowReaderAndLostNotifications(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	// A small fixed flow-control window, so the unread stream backs up into
	// the server quickly (by default the client would buffer megabytes).
	slowConn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(testserver.Bearer(srv.AdminToken)),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close()
	slow, _ := startWatch(t, ctx, pb.NewSecretServiceClient(slowConn), &pb.WatchChangesRequest{})
	fast, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{})
	const n = 1200
	fastDone := make(chan error, 1)
	go func() {
		evs, err := collect(fast, n, 3*time.Minute)
		if err == nil && !cmp.Equal(seq(1, n), revisions(evs)) {
			err = errors.New("fast watcher saw a gap or a duplicate")
		}
		fastDone <- err
	}()
	// Four writers (revisions still serialize on the counter row); halfway
	// through, the hub's LISTEN connection is killed.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				// Long keys make big events, so the unread stream backs up sooner.
				key := fmt.Sprintf("FLOOD_%03d_%s", i%100, strings.Repeat("X", 110))
				if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: []byte(fmt.Sprint(i))}); err != nil {
					t.Error(err)
					return
				}
				if i == n/2 {
					conn := dbConn(t, srv.DatabaseURL)
					exec(t, conn, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND datname = current_database()`)
				}
			}
		}()
	}
	wg.Wait()
	if err := <-fastDone; err != nil {
		t.Fatal(err)
	}
	metrics := httpGet(t, srv.BaseURL+"/metrics")
	if !containsMetric(metrics, "secrets_watch_lagged_total") {
		t.Fatalf("the unread watcher never overflowed its buffer; metrics:\n%s", grepLines(metrics, "secrets_watch"))
	}
	// The slow watcher now reads everything, in order, from the table.
	evs, err := collect(slow, n, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(seq(1, n), revisions(evs)); diff != "" {
		t.Fatalf("slow watcher (-want +got):\n%s", diff)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func containsMetric(body, name string) bool { return metricValue(body, name) != 0 }

// metricValue is the value of the sample name (with its labels, if any)
// in a Prometheus text body; 0 when absent.
func metricValue(body, name string) float64 {
	sc := bufio.NewScanner(stringsReader(body))
	for sc.Scan() {
		line := sc.Text()
		if len(line) > len(name) && line[:len(name)] == name && line[len(name)] == ' ' {
			v, _ := strconv.ParseFloat(line[len(name)+1:], 64)
			return v
		}
	}
	return 0
}

func TestWatchPollingOnly(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		fastWatch(c)
		c.WatchNoListen = true
	}})
	st, _ := startWatch(t, context.Background(), srv.Secrets, &pb.WatchChangesRequest{})
	put(t, srv.Secrets, "POLLED", "x")
	evs, err := collect(st, 1, 5*time.Second)
	if err != nil || evs[0].Key != "POLLED" {
		t.Fatalf("polling-only delivery: %v, %v", evs, err)
	}
}

func TestRestartTracking(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	base := put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	bot := &pb.Consumer{Service: "slack-bot", Instance: "pod-1"}
	st, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{Consumer: bot, LoadedRevision: base.Revision, Categories: []string{"slack"}})
	pending := func() []string {
		t.Helper()
		res, err := srv.Secrets.ListConsumers(ctx, &pb.ListConsumersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range res.Consumers {
			for _, p := range c.Pending {
				out = append(out, fmt.Sprintf("%s/%s:%s@%d", c.Consumer.Service, c.Consumer.Instance, p.Key, p.Revision))
			}
		}
		return out
	}
	if got := pending(); len(got) != 0 {
		t.Fatalf("pending before any change: %v", got)
	}
	// No restart needed: an AI key (not restart-required, other category).
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-1")
	if got := pending(); len(got) != 0 {
		t.Fatalf("pending after a change that needs no restart: %v", got)
	}
	changed := put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-2")
	if _, err := collect(st, 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprintf("slack-bot/pod-1:SLACK_BOT_TOKEN@%d", changed.Revision)}
	if diff := cmp.Diff(want, pending()); diff != "" {
		t.Fatalf("pending (-want +got):\n%s", diff)
	}
	rep, err := srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, LoadedRevision: changed.Revision, Categories: []string{"slack"}})
	if err != nil || len(rep.Consumer.Pending) != 0 {
		t.Fatalf("report: %v, %v", rep, err)
	}
	if got := pending(); len(got) != 0 {
		t.Fatalf("pending after the consumer reported the new revision: %v", got)
	}
	_, err = srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, LoadedRevision: 999})
	wantCode(t, err, codes.InvalidArgument)
	_, err = srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, LoadedRevision: -1})
	wantCode(t, err, codes.InvalidArgument)
	// 0: the consumer runs on no value from the service (environment and
	// defaults only), so every restart-required change to its keys is
	// pending; a watch's loaded_revision 0 keeps that.
	rep, err = srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, Categories: []string{"slack"}})
	if err != nil || rep.Consumer.LoadedRevision != 0 {
		t.Fatalf("report of no loaded revision: %v, %v", rep, err)
	}
	st2, err := srv.Secrets.WatchChanges(ctx, &pb.WatchChangesRequest{Consumer: bot, Categories: []string{"slack"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Recv(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, pending()); diff != "" {
		t.Fatalf("pending of a consumer on fallbacks (-want +got):\n%s", diff)
	}
}

// TestWatchREST: the gateway streams the same events as JSON lines, and a
// bad start revision is refused with a real status before any line.
func TestWatchREST(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	put(t, srv.Secrets, "REST_A", "a")
	put(t, srv.Secrets, "REST_B", "b")
	ahead, _ := http.NewRequest(http.MethodGet, srv.BaseURL+"/v1/changes:watch?startRevision=99", nil)
	ahead.Header.Set("Authorization", "Bearer "+srv.AdminToken)
	res, err := http.DefaultClient.Do(ahead)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("ahead start revision: HTTP %d, want 400", res.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.BaseURL+"/v1/changes:watch?startRevision=0&keys=REST_A&keys=REST_C", nil)
	req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d", res.StatusCode)
	}
	lines := bufio.NewScanner(res.Body)
	type line struct {
		Result struct {
			Header *struct{ Revision string }
			Event  *struct{ Revision, Key, Kind string }
		}
	}
	next := func() line {
		t.Helper()
		for lines.Scan() {
			var l line
			if err := json.Unmarshal(lines.Bytes(), &l); err != nil {
				t.Fatalf("line %q: %v", lines.Text(), err)
			}
			if l.Result.Header != nil || l.Result.Event != nil {
				return l
			}
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return line{}
	}
	if h := next(); h.Result.Header == nil || h.Result.Header.Revision != "2" {
		t.Fatalf("first line: %+v", h)
	}
	put(t, srv.Secrets, "REST_B", "b2")
	put(t, srv.Secrets, "REST_C", "c")
	put(t, srv.Secrets, "REST_A", "a2")
	var got []string
	for range 2 {
		e := next().Result.Event
		got = append(got, e.Revision+":"+e.Key+":"+e.Kind)
	}
	want := []string{"4:REST_C:CHANGE_KIND_VALUE_ADDED", "5:REST_A:CHANGE_KIND_VALUE_ADDED"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("REST events (-want +got):\n%s", diff)
	}
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAuditSequencerMetrics: a write's and the accesses' audit events are
// chained by the replica's sequencer shortly after they commit, and
// /metrics counts them and their sequencing delay.
func TestAuditSequencerMetrics(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	put(t, srv.Secrets, "METRIC_KEY", "v")
	for range 5 {
		if _, err := srv.Secrets.AccessSecretVersion(context.Background(), &pb.AccessSecretVersionRequest{Key: "METRIC_KEY", Version: "latest"}); err != nil {
			t.Fatal(err)
		}
	}
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		body = httpGet(t, srv.BaseURL+"/metrics")
		if (metricValue(body, "secrets_audit_sequenced_events_total") >= 6 && metricValue(body, "secrets_audit_sequencing_delay_seconds_count") >= 6) ||
			time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for name, want := range map[string]float64{
		"secrets_audit_sequenced_events_total":         6,
		"secrets_audit_sequencing_delay_seconds_count": 6,
	} {
		if got := metricValue(body, name); got < want {
			t.Errorf("%s = %v, want at least %v:\n%s", name, got, want, grepLines(body, "secrets_audit_"))
		}
	}
	if metricValue(body, "secrets_audit_sequencer_rounds_total") < 1 {
		t.Errorf("no sequencer round counted:\n%s", grepLines(body, "secrets_audit_"))
	}
	// The five reads, one after another: five groups of one, each a commit.
	groups, callers := metricValue(body, "secrets_audit_access_groups_total"), metricValue(body, "secrets_audit_access_group_callers_total")
	if groups < 1 || callers != 5 || groups > callers || metricValue(body, "secrets_audit_access_group_commit_seconds_total") <= 0 {
		t.Errorf("access group metrics: %v groups, %v callers:\n%s", groups, callers, grepLines(body, "secrets_audit_access"))
	}
}

// TestWatchEventsSentPastWrappers: change events go to the transport
// straight from the authorization stream (past the per-message metrics and
// logging wrappers) and are counted in secrets_watch_events_sent_total;
// they still arrive in order, filtered to the stream's request.
func TestWatchEventsSentPastWrappers(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	all, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{})
	one, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{Keys: []string{"SENT_B"}})
	for _, k := range []string{"SENT_A", "SENT_B", "SENT_C"} {
		if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: k, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := collect(all, 3, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := revisions(evs); !cmp.Equal(got, seq(evs[0].Revision, evs[0].Revision+2)) {
		t.Errorf("revisions %v, want three in a row", got)
	}
	evs, err = collect(one, 1, 30*time.Second)
	if err != nil || evs[0].GetKey() != "SENT_B" {
		t.Fatalf("filtered watch got %v, %v", evs, err)
	}
	metrics := httpGet(t, srv.BaseURL+"/metrics")
	if got := metricValue(metrics, "secrets_watch_events_sent_total"); got != 4 {
		t.Errorf("secrets_watch_events_sent_total %v, want 4 (3 + 1 events sent); metrics:\n%s", got, grepLines(metrics, "secrets_watch"))
	}
}
