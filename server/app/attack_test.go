package app_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/store"
)

// One test per class of attack of issue 11; each fails on the code before
// the per-RPC policy.

func scopedToken(t *testing.T, srv *testserver.Server, name, role string, scope *pb.TokenScope) string {
	t.Helper()
	res, err := srv.Tokens.CreateToken(context.Background(), &pb.CreateTokenRequest{Name: name, Role: role, Scope: scope})
	if err != nil {
		t.Fatalf("CreateToken(%s): %v", name, err)
	}
	return res.Token
}

// A scoped admin cannot mint an unscoped token, revoke other admins, or
// read the audit of keys outside its scope; a scoped auditor sees only its
// keys' events.
func TestAttackEscalation(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-1")
	admin := srv.Dial(t, scopedToken(t, srv, "slack-admin", "admin", &pb.TokenScope{KeyPatterns: []string{"SLACK_*"}}))
	tokens := pb.NewTokenServiceClient(admin)
	if _, err := tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "escalated", Role: "admin"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("scoped admin created an unscoped admin token: %v", err)
	}
	if _, err := tokens.RevokeToken(ctx, &pb.RevokeTokenRequest{Name: app.BootstrapTokenName}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("scoped admin revoked the bootstrap admin: %v", err)
	}
	if _, err := pb.NewAuditServiceClient(admin).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("scoped admin verified the whole chain: %v", err)
	}
	for _, who := range []string{"admin", "auditor"} {
		conn := admin
		if who == "auditor" {
			conn = srv.Dial(t, scopedToken(t, srv, "slack-auditor", "auditor", &pb.TokenScope{KeyPatterns: []string{"SLACK_*"}}))
		}
		res, err := pb.NewAuditServiceClient(conn).ListAuditEvents(ctx, &pb.ListAuditEventsRequest{PageSize: 1000})
		if err != nil {
			t.Fatalf("scoped %s lists audit: %v", who, err)
		}
		seen := 0
		for _, e := range res.Events {
			if !strings.HasPrefix(e.Key, "SLACK_") {
				t.Errorf("scoped %s sees event %d of %q", who, e.Sequence, e.Key)
			}
			seen++
		}
		if seen == 0 {
			t.Errorf("scoped %s sees no event of its own key", who)
		}
		if _, err := pb.NewAuditServiceClient(conn).ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "OPENAI_API_KEY"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("scoped %s filtered on a key outside its scope: %v", who, err)
		}
	}
}

// A reader scoped to SLACK_* walking ListSecrets one by one learns no
// other key name from the pages or their tokens, and cannot forge a token.
func TestAttackPageTokenWalk(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	for _, k := range []string{"SECRET_AAA_HIDDEN", "SLACK_BOT_TOKEN", "ZZZ_HIDDEN_KEY", "SLACK_ZZZ_CUSTOM"} {
		put(t, srv.Secrets, k, "xoxb-v")
	}
	reader := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "walker", "reader", &pb.TokenScope{KeyPatterns: []string{"SLACK_*"}})))
	var keys []string
	req := &pb.ListSecretsRequest{PageSize: 1}
	for i := 0; ; i++ {
		res, err := reader.ListSecrets(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Secrets) != 1 && res.NextPageToken != "" {
			t.Errorf("page %d has %d secrets and a next page: pages must be full after scope filtering", i, len(res.Secrets))
		}
		for _, s := range res.Secrets {
			keys = append(keys, s.Key)
		}
		raw, _ := base64.RawURLEncoding.DecodeString(res.NextPageToken)
		for _, hidden := range []string{"HIDDEN", "OPENAI", "ANTHROPIC", "GITHUB"} {
			if strings.Contains(string(raw), hidden) {
				t.Fatalf("page token %q reveals a key outside the scope", raw)
			}
		}
		if res.NextPageToken == "" {
			break
		}
		req.PageToken = res.NextPageToken
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "SLACK_") {
			t.Errorf("walk returned %s", k)
		}
	}
	if len(keys) != 5 { // 4 catalog Slack keys + SLACK_ZZZ_CUSTOM
		t.Errorf("walk returned %v, want the 5 Slack keys", keys)
	}
	// A forged cursor (valid base64 JSON, no MAC) is refused.
	forged := base64.RawURLEncoding.EncodeToString([]byte(`{"a":"SECRET_AAA_HIDDEN"}`))
	if _, err := reader.ListSecrets(ctx, &pb.ListSecretsRequest{PageSize: 1, PageToken: forged}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("forged page token: %v, want INVALID_ARGUMENT", err)
	}
}

// A writer scoped by key pattern cannot move its keys into another
// category, nor create keys in a category it chose; a writer that governs
// both categories can.
func TestAttackCategoryMove(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	w := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "slack-writer", "writer", &pb.TokenScope{KeyPatterns: []string{"SLACK_*"}})))
	_, err := w.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "SLACK_BOT_TOKEN", Category: "ai"},
		UpdateMask: mask("category")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("pattern-scoped writer moved SLACK_BOT_TOKEN into ai: %v", err)
	}
	if _, err := w.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_NEW_THING", Value: []byte("v"), Category: ptr("ai")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("pattern-scoped writer created a key in category ai: %v", err)
	}
	// Writing in its default category, or naming the current one, is fine.
	if _, err := w.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_NEW_THING", Value: []byte("v")}); err != nil {
		t.Errorf("pattern-scoped writer creating a key in its default category: %v", err)
	}
	if _, err := w.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_BOT_TOKEN", Value: []byte("xoxb-2"), Category: ptr("slack")}); err != nil {
		t.Errorf("pattern-scoped writer naming the current category: %v", err)
	}
	// A category-scoped writer of slack alone cannot move into ai; one of
	// slack and ai can.
	slackOnly := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "slack-cat", "writer", &pb.TokenScope{Categories: []string{"slack"}})))
	if _, err := slackOnly.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "SLACK_BOT_TOKEN", Category: "ai"}, UpdateMask: mask("category")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("slack-scoped writer moved a key into ai: %v", err)
	}
	both := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "both-cat", "writer", &pb.TokenScope{Categories: []string{"slack", "ai"}})))
	if _, err := both.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "SLACK_BOT_TOKEN", Category: "ai"}, UpdateMask: mask("category")}); err != nil {
		t.Errorf("writer governing both categories: %v", err)
	}
	// And the slack-only writer now cannot touch it at all.
	if _, err := slackOnly.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_BOT_TOKEN", Value: []byte("xoxb-3")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("slack-scoped writer wrote a key now in ai: %v", err)
	}
}

// A watch ends with UNAUTHENTICATED soon after its token is revoked, over
// gRPC and over REST.
func TestAttackRevokedStream(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	token := scopedToken(t, srv, "watcher", "reader", nil)
	st, _ := startWatch(t, ctx, pb.NewSecretServiceClient(srv.Dial(t, token)), &pb.WatchChangesRequest{})
	hr, _ := http.NewRequestWithContext(ctx, "GET", srv.BaseURL+"/v1/changes:watch", nil)
	hr.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(hr)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("REST watch: %v %v", res, err)
	}
	defer res.Body.Close()
	revoked := time.Now()
	if _, err := srv.Tokens.RevokeToken(ctx, &pb.RevokeTokenRequest{Name: "watcher"}); err != nil {
		t.Fatal(err)
	}
	grpcEnd := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				grpcEnd <- err
				return
			}
		}
	}()
	restEnd := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(res.Body)
		last := ""
		for sc.Scan() {
			last = sc.Text()
		}
		restEnd <- last
	}()
	limit := time.After(5 * time.Second)
	for range 2 {
		select {
		case err := <-grpcEnd:
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("gRPC watch ended with %v, want UNAUTHENTICATED", err)
			}
			t.Logf("gRPC watch ended %v after the revocation", time.Since(revoked).Round(time.Millisecond))
		case last := <-restEnd:
			if !strings.Contains(last, `"code":16`) {
				t.Errorf("REST watch's last line %q, want an UNAUTHENTICATED error", last)
			}
		case <-limit:
			t.Fatal("a watch kept running 5 s after its token was revoked")
		}
	}
}

// Hostile keys and request ids (NUL, 200 KB, newlines, terminal escapes)
// mixed with ordinary denials under concurrency: every ordinary denial is
// in the log, the log pages, and the chain verifies.
func TestAttackAuditBlinding(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	reader := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "blind-reader", "reader", &pb.TokenScope{KeyPatterns: []string{"SLACK_*"}})))
	writer := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "blind-writer", "writer", nil)))
	hostile := []string{"KEY\x00NUL", strings.Repeat("K", 200<<10), "FAKE\nsequence 1 admin DeleteSecret", "ESC\x1b[2J\x1b[31mRED", "\xff\xfe"}
	const legit = 40
	var wg sync.WaitGroup
	for i := range legit {
		wg.Go(func() {
			// An ordinary denial: a key outside the reader's scope.
			_, _ = reader.GetSecret(ctx, &pb.GetSecretRequest{Key: fmt.Sprintf("OPENAI_DENIED_%d", i)})
		})
		wg.Go(func() {
			h := hostile[i%len(hostile)]
			_, _ = reader.GetSecret(ctx, &pb.GetSecretRequest{Key: h})
			// A failed audited write whose request id is hostile.
			_, _ = writer.PutSecret(ctx, &pb.PutSecretRequest{Key: "BLIND_" + fmt.Sprint(i), Value: []byte("v"), RequestId: h})
			_, _ = writer.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: h, Version: "latest"})
		})
	}
	wg.Wait()
	// Denials are written in the background: wait for all of them.
	var events []*pb.AuditEvent
	deadline := time.Now().Add(10 * time.Second)
	for {
		events = events[:0]
		req := &pb.ListAuditEventsRequest{PageSize: 1000}
		for {
			res, err := srv.Audit.ListAuditEvents(ctx, req)
			if err != nil {
				t.Fatalf("audit list no longer pages: %v", err)
			}
			events = append(events, res.Events...)
			if res.NextPageToken == "" {
				break
			}
			req.PageToken = res.NextPageToken
		}
		found := 0
		for _, e := range events {
			if strings.HasPrefix(e.Key, "OPENAI_DENIED_") && e.Outcome == "PERMISSION_DENIED" {
				found++
			}
		}
		if found == legit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d ordinary denials are in the audit log", found, legit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	hostileSeen := 0
	for _, e := range events {
		for _, f := range []string{e.Key, e.RequestId, e.Actor, e.Peer, e.Detail} {
			if strings.ContainsAny(f, "\x00\n\x1b") || len(f) > 2048 {
				t.Errorf("event %d stores raw hostile text %.60q", e.Sequence, f)
			}
		}
		if strings.HasPrefix(e.Key, store.InvalidMarker) || strings.HasPrefix(e.RequestId, store.InvalidMarker) {
			hostileSeen++
		}
	}
	if hostileSeen == 0 {
		t.Error("no hostile attempt is in the audit log (they must be recorded, as a marker and a hash)")
	}
	v, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Intact {
		t.Fatalf("chain after the attack: %v %v", v, err)
	}
}

// Another reader cannot rewrite a consumer's restart state, and one
// principal cannot flood the consumer list; reports are audited.
func TestAttackConsumers(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	rev := put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1").Revision
	owner := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "bot", "reader", nil)))
	other := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "intruder", "reader", nil)))
	c := &pb.Consumer{Service: "slack-bot", Instance: "pod-1"}
	if _, err := owner.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: c, LoadedRevision: rev}); err != nil {
		t.Fatal(err)
	}
	_, err := other.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: c, LoadedRevision: rev})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("another token reported someone else's consumer: %v", err)
	}
	// Flood: past the bound, new consumers are refused.
	var refused error
	for i := range api.MaxConsumersPerPrincipal + 1 {
		_, err := other.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{
			Consumer: &pb.Consumer{Service: "junk", Instance: fmt.Sprint(i)}, LoadedRevision: rev})
		if err != nil {
			refused = err
			break
		}
	}
	if status.Code(refused) != codes.ResourceExhausted {
		t.Errorf("flood of consumers: %v, want RESOURCE_EXHAUSTED", refused)
	}
	// The list pages.
	res, err := srv.Secrets.ListConsumers(ctx, &pb.ListConsumersRequest{PageSize: 50})
	if err != nil || len(res.Consumers) != 50 || res.NextPageToken == "" {
		t.Fatalf("ListConsumers page: %d consumers, token %q, %v", len(res.GetConsumers()), res.GetNextPageToken(), err)
	}
	ev, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "ReportConsumerState", Actor: "bot"})
	if err != nil || len(ev.Events) == 0 {
		t.Errorf("ReportConsumerState is not audited: %v %v", ev, err)
	}
}

// Refused calls reach the request metrics and the denial counter.
func TestAttackRefusalsVisible(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	reader := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "visible-reader", "reader", nil)))
	_, _ = reader.PutSecret(ctx, &pb.PutSecretRequest{Key: "X", Value: []byte("v")})
	_, _ = pb.NewSecretServiceClient(srv.Dial(t, "")).GetSecret(ctx, &pb.GetSecretRequest{Key: "X"})
	body := scrapeMetrics(t, srv)
	for _, m := range []string{
		`grpc_server_handled_total{grpc_code="PermissionDenied",grpc_method="PutSecret",grpc_service="orient.secrets.v1.SecretService",grpc_type="unary"}`,
		`grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="GetSecret",grpc_service="orient.secrets.v1.SecretService",grpc_type="unary"}`,
		`secrets_denials_total{reason="role"}`,
		`secrets_denials_total{reason="unauthenticated"}`,
	} {
		if metricValue(body, m) < 1 {
			t.Errorf("metric %s not counted", m)
		}
	}
}

func scrapeMetrics(t *testing.T, srv *testserver.Server) string {
	t.Helper()
	res, err := http.Get(srv.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// Per-token stream cap; no X-HTTP-Method-Override.
func TestAttackStreamsAndOverride(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) { c.MaxStreamsPerToken = 2 }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := pb.NewSecretServiceClient(srv.Dial(t, scopedToken(t, srv, "streamer", "reader", nil)))
	startWatch(t, ctx, c, &pb.WatchChangesRequest{})
	startWatch(t, ctx, c, &pb.WatchChangesRequest{})
	st, err := c.WatchChanges(ctx, &pb.WatchChangesRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("third stream of a token capped at 2: %v", err)
	}
	put(t, srv.Secrets, "OVERRIDE_ME", "v")
	hr, _ := http.NewRequest("POST", srv.BaseURL+"/v1/secrets/OVERRIDE_ME", strings.NewReader("x=1"))
	hr.Header.Set("Authorization", "Bearer "+srv.AdminToken)
	hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hr.Header.Set("X-HTTP-Method-Override", "DELETE")
	res, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if _, err := srv.Secrets.GetSecret(metadata.NewOutgoingContext(context.Background(), nil), &pb.GetSecretRequest{Key: "OVERRIDE_ME"}); err != nil {
		t.Errorf("X-HTTP-Method-Override turned a POST into a DELETE (HTTP %d): %v", res.StatusCode, err)
	}
}

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

// A watch ends with UNAUTHENTICATED at its token's expiry time.
func TestAttackExpiredStream(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	expiry := time.Now().Add(2 * time.Second)
	res, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "short-lived", Role: "reader", ExpireTime: timestamppb.New(expiry)})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := startWatch(t, ctx, pb.NewSecretServiceClient(srv.Dial(t, res.Token)), &pb.WatchChangesRequest{})
	end := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				end <- err
				return
			}
		}
	}()
	select {
	case err := <-end:
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("watch ended with %v, want UNAUTHENTICATED", err)
		}
		if early := time.Until(expiry); early > 100*time.Millisecond {
			t.Errorf("watch ended %v before its token expired", early)
		}
	case <-time.After(time.Until(expiry) + 5*time.Second):
		t.Fatal("a watch kept running 5 s after its token expired")
	}
}

// An auditor scoped to a category sees the events of the keys now in that
// category only (judged by each key's current category).
func TestAttackCategoryAuditor(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-1")
	aud := pb.NewAuditServiceClient(srv.Dial(t, scopedToken(t, srv, "slack-cat-auditor", "auditor", &pb.TokenScope{Categories: []string{"slack"}})))
	res, err := aud.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, e := range res.Events {
		if e.Key != "SLACK_BOT_TOKEN" {
			t.Errorf("category-scoped auditor sees event %d of %q", e.Sequence, e.Key)
		}
		seen++
	}
	if seen == 0 {
		t.Error("category-scoped auditor sees no event of its category")
	}
}
