package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/auth"
)

// createToken makes a token with a role and key patterns.
func createToken(t *testing.T, srv *testserver.Server, name, role string, patterns ...string) string {
	t.Helper()
	req := &pb.CreateTokenRequest{Name: name, Role: role}
	if len(patterns) > 0 {
		req.Scope = &pb.TokenScope{KeyPatterns: patterns}
	}
	res, err := srv.Tokens.CreateToken(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateToken(%s): %v", name, err)
	}
	if !strings.HasPrefix(res.Token, auth.TokenPrefix) || len(res.Token) < 40 {
		t.Fatalf("token %q lacks the prefix or entropy", res.Token[:8])
	}
	return res.Token
}

// requestFor builds a request for any method, naming key where it can.
func requestFor(t *testing.T, m protoreflect.MethodDescriptor, key string) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
	if err != nil {
		panic(err)
	}
	msg := mt.New().Interface()
	switch r := msg.(type) {
	case *pb.PutSecretRequest:
		r.Key, r.Value = key, []byte("v")
	case *pb.UpdateSecretRequest:
		r.Secret = &pb.Secret{Key: key, Description: "d"}
		r.UpdateMask = &fieldmaskpb.FieldMask{Paths: []string{"description"}}
	case *pb.BatchAccessSecretsRequest:
		r.Keys = []string{key}
	case *pb.WatchChangesRequest:
		r.Keys = []string{key}
	case *pb.ReportConsumerStateRequest:
		r.Consumer, r.LoadedRevision, r.Keys = &pb.Consumer{Service: "svc", Instance: "i"}, 1, []string{key}
	case *pb.UpdateProviderDefaultRequest:
		r.UseCase, r.Provider, r.Model = "chat", "openai", "gpt-5"
	case *pb.CreateTokenRequest:
		r.Name, r.Role = fmt.Sprintf("t%d", time.Now().UnixNano()), "reader"
	case *pb.RevokeTokenRequest:
		r.Name = "nobody"
	default:
		if f := msg.ProtoReflect().Descriptor().Fields().ByName("key"); f != nil {
			msg.ProtoReflect().Set(f, protoreflect.ValueOfString(key))
		}
		if f := msg.ProtoReflect().Descriptor().Fields().ByName("version"); f != nil && f.Kind() == protoreflect.StringKind {
			msg.ProtoReflect().Set(f, protoreflect.ValueOfString("1"))
		}
	}
	return msg
}

// call invokes any unary or server-streaming method and returns its status.
func call(ctx context.Context, conn *grpc.ClientConn, m protoreflect.MethodDescriptor, req proto.Message) codes.Code {
	full := fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name())
	mt, _ := protoregistry.GlobalTypes.FindMessageByName(m.Output().FullName())
	if m.IsStreamingServer() {
		st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, full)
		if err == nil {
			err = st.SendMsg(req)
		}
		if err == nil {
			err = st.CloseSend()
		}
		if err == nil {
			err = st.RecvMsg(mt.New().Interface())
		}
		return status.Code(err)
	}
	return status.Code(conn.Invoke(ctx, full, req, mt.New().Interface()))
}

func TestScopedListsAndWatch(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	reader := pb.NewSecretServiceClient(srv.Dial(t, createToken(t, srv, "slack-reader", "reader", "SLACK_*")))
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-1")
	list, err := reader.ListSecrets(ctx, &pb.ListSecretsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Secrets {
		if !strings.HasPrefix(s.Key, "SLACK_") {
			t.Errorf("scoped list shows %s", s.Key)
		}
	}
	if len(list.Secrets) != 4 {
		t.Errorf("scoped list has %d secrets, want the 4 Slack keys", len(list.Secrets))
	}
	st, _ := startWatch(t, ctx, reader, &pb.WatchChangesRequest{})
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-2")
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-2")
	evs, err := collect(st, 1, 5*time.Second)
	if err != nil || evs[0].Key != "SLACK_BOT_TOKEN" {
		t.Fatalf("scoped watch: %v, %v", evs, err)
	}
	_, err = reader.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"SLACK_BOT_TOKEN", "OPENAI_API_KEY"}})
	wantCode(t, err, codes.PermissionDenied)
	// Bad input is bad input for a scoped caller too (not a scope denial).
	_, err = reader.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"slack_bot_token"}})
	wantCode(t, err, codes.InvalidArgument)
	// A writer may not move a secret into its scope by category either.
	catWriter := pb.NewSecretServiceClient(srv.Dial(t, func() string {
		res, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "slack-writer", Role: "writer", Scope: &pb.TokenScope{Categories: []string{"slack"}}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Token
	}()))
	if _, err := catWriter.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_USER_TOKEN", Value: []byte("xoxp-1")}); err != nil {
		t.Fatalf("category-scoped write in scope: %v", err)
	}
	_, err = catWriter.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_USER_TOKEN", Value: []byte("xoxp-2"), Category: ptr("ai")})
	wantCode(t, err, codes.PermissionDenied)
	_, err = catWriter.PutSecret(ctx, &pb.PutSecretRequest{Key: "OPENAI_API_KEY", Value: []byte("sk-3")})
	wantCode(t, err, codes.PermissionDenied)
}

func TestTokensLifecycle(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	token := createToken(t, srv, "ci-bot", "writer")
	c := pb.NewSecretServiceClient(srv.Dial(t, token))
	if _, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "BY_BOT", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	_, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "ci-bot", Role: "reader"})
	wantCode(t, err, codes.AlreadyExists)
	for _, bad := range []*pb.CreateTokenRequest{
		{Name: "Bad Name", Role: "reader"},
		{Name: "x", Role: "root"},
		{Name: "x", Role: "reader", Scope: &pb.TokenScope{KeyPatterns: []string{"lower*"}}},
		{Name: "x", Role: "reader", ExpireTime: timestamppb.New(time.Now().Add(-time.Hour))},
	} {
		_, err := srv.Tokens.CreateToken(ctx, bad)
		wantCode(t, err, codes.InvalidArgument)
	}
	// The audit log names the token as the actor.
	events, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "BY_BOT"})
	if err != nil || len(events.Events) != 1 || events.Events[0].Actor != "ci-bot" {
		t.Fatalf("audit actor: %v, %v", events, err)
	}
	// Revocation is immediate on this replica.
	if _, err := srv.Tokens.RevokeToken(ctx, &pb.RevokeTokenRequest{Name: "ci-bot"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetSecret(ctx, &pb.GetSecretRequest{Key: "BY_BOT"})
	wantCode(t, err, codes.Unauthenticated)
	// Expiry is checked on every call.
	res, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "short", Role: "reader", ExpireTime: timestamppb.New(time.Now().Add(1500 * time.Millisecond))})
	if err != nil {
		t.Fatal(err)
	}
	short := pb.NewSecretServiceClient(srv.Dial(t, res.Token))
	if _, err := short.GetSecret(ctx, &pb.GetSecretRequest{Key: "BY_BOT"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1600 * time.Millisecond)
	_, err = short.GetSecret(ctx, &pb.GetSecretRequest{Key: "BY_BOT"})
	wantCode(t, err, codes.Unauthenticated)
	list, err := srv.Tokens.ListTokens(ctx, &pb.ListTokensRequest{})
	if err != nil || len(list.Tokens) != 3 {
		t.Fatalf("ListTokens: %v, %v", list, err)
	}
	// Denials are audited with the reason, never the token.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Actor: "unauthenticated"})
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.Events) >= 2 {
			for _, e := range ev.Events {
				if e.Outcome != "UNAUTHENTICATED" || strings.Contains(e.String(), token) || strings.Contains(e.String(), res.Token) {
					t.Fatalf("denial event: %v", e)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("denials not audited: %v", ev.Events)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// No token is stored in plaintext.
	dump := dumpDatabase(t, srv.DatabaseURL)
	for _, tok := range []string{token, res.Token, srv.AdminToken} {
		if strings.Contains(dump, tok) || strings.Contains(dump, tok[len(auth.TokenPrefix)+4:]) {
			t.Fatalf("a token is stored in plaintext")
		}
	}
}

func dumpDatabase(t *testing.T, url string) string {
	t.Helper()
	conn := dbConn(t, url)
	var b strings.Builder
	for _, table := range []string{"tokens", "audit_events", "secrets", "secret_versions", "change_log", "idempotency"} {
		rows, err := conn.Query(context.Background(), fmt.Sprintf(`SELECT t::text FROM %s t`, table))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			b.WriteString(s + "\n")
		}
		rows.Close()
	}
	return b.String()
}

func TestRESTAuth(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	reader := createToken(t, srv, "rest-reader", "reader")
	do := func(method, path, token, body string) int {
		req, _ := http.NewRequest(method, srv.BaseURL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	for _, tc := range []struct {
		method, path, token, body string
		want                      int
	}{
		{"GET", "/v1/secrets", "", "", 401},
		{"GET", "/v1/secrets", "Basic abc", "", 401},
		{"GET", "/v1/secrets", "Bearer osk_unknown", "", 401},
		{"GET", "/v1/secrets", "Bearer " + reader, "", 200},
		{"PUT", "/v1/secrets/REST_AUTH", "Bearer " + reader, `{"value":"dg=="}`, 403},
		{"PUT", "/v1/secrets/REST_AUTH", "Bearer " + srv.AdminToken, `{"value":"dg=="}`, 200},
		{"GET", "/v1/tokens", "Bearer " + reader, "", 403},
		{"GET", "/v1/tokens", "Bearer " + srv.AdminToken, "", 200},
		{"GET", "/healthz", "", "", 200},
		{"GET", "/openapi.json", "", "", 200},
		{"GET", "/metrics", "", "", 200},
	} {
		if got := do(tc.method, tc.path, tc.token, tc.body); got != tc.want {
			t.Errorf("%s %s with %q: HTTP %d, want %d", tc.method, tc.path, tc.token, got, tc.want)
		}
	}
}

func TestBootstrapTokenShownOnce(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	var out bytes.Buffer
	start := func() *app.Server {
		cfg := app.DefaultConfig()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.DatabaseURL, cfg.KEKURL = "127.0.0.1:0", "127.0.0.1:0", testdb.ServiceURL(t, db), "base64key://"+strings.Repeat("A", 43)+"="
		cfg.AuditSigningKey = testserver.AuditSigningKeyFile(t)
		cfg.BootstrapOut = &out
		srv, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	srv := start()
	srv.Serve(canceled())
	printed := out.String()
	i := strings.Index(printed, auth.TokenPrefix)
	if i < 0 {
		t.Fatalf("no token printed: %q", printed)
	}
	srv = start()
	srv.Serve(canceled())
	if out.String() != printed {
		t.Fatal("the bootstrap token was printed again on a second start")
	}
}

// TestMutualTLS: without a client certificate the handshake fails; a mapped
// certificate gets its role without a token; the REST gateway still needs a
// token.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	serverCert, serverKey := issue(t, ca, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", serverCert)
	writePEM(t, filepath.Join(dir, "server-key.pem"), "PRIVATE KEY", serverKey)
	ids := `[{"subject": "slack-bot", "role": "reader", "scope": {"key_patterns": ["SLACK_*"]}}]`
	if err := os.WriteFile(filepath.Join(dir, "ids.json"), []byte(ids), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		c.TLSCert, c.TLSKey = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
		c.ClientCA, c.CertIdentities = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ids.json")
	}})
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	dial := func(certs ...tls.Certificate) pb.SecretServiceClient {
		conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: pool, ServerName: "localhost", Certificates: certs})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return pb.NewSecretServiceClient(conn)
	}
	ctx := context.Background()
	_, err := dial().ListSecrets(ctx, &pb.ListSecretsRequest{})
	wantCode(t, err, codes.Unavailable) // handshake refused
	botCert, botKey := issue(t, ca, caKey, "slack-bot", x509.ExtKeyUsageClientAuth)
	key, _ := x509.ParsePKCS8PrivateKey(botKey)
	bot := dial(tls.Certificate{Certificate: [][]byte{botCert}, PrivateKey: key})
	if _, err := bot.GetSecret(ctx, &pb.GetSecretRequest{Key: "SLACK_BOT_TOKEN"}); err != nil {
		t.Fatalf("mapped certificate: %v", err)
	}
	_, err = bot.GetSecret(ctx, &pb.GetSecretRequest{Key: "OPENAI_API_KEY"})
	wantCode(t, err, codes.PermissionDenied)
	_, err = bot.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_BOT_TOKEN", Value: []byte("xoxb-1")})
	wantCode(t, err, codes.PermissionDenied)
	other, otherKey := issue(t, ca, caKey, "stranger", x509.ExtKeyUsageClientAuth)
	okey, _ := x509.ParsePKCS8PrivateKey(otherKey)
	_, err = dial(tls.Certificate{Certificate: [][]byte{other}, PrivateKey: okey}).GetSecret(ctx, &pb.GetSecretRequest{Key: "SLACK_BOT_TOKEN"})
	wantCode(t, err, codes.Unauthenticated)
	// REST over TLS with a client certificate: the gateway's own identity
	// grants nothing; the caller's token decides.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{botCert}, PrivateKey: key}}}}}
	base := strings.Replace(srv.BaseURL, "http://", "https://", 1)
	for token, want := range map[string]int{"": 401, srv.AdminToken: 200} {
		req, _ := http.NewRequest("GET", base+"/v1/secrets", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("REST over mTLS with token %v: %d, want %d", token != "", res.StatusCode, want)
		}
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return ca, key
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) ([]byte, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	return der, pk
}

func writePEM(t *testing.T, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestForwardedPeer: X-Forwarded-For is believed only from the gateway's
// own connection and trusted proxies, never from a direct caller.
func TestForwardedPeer(t *testing.T) {
	t.Parallel()
	peers := func(srv *testserver.Server, key string) []string {
		t.Helper()
		res, err := srv.Audit.ListAuditEvents(context.Background(), &pb.ListAuditEventsRequest{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range res.Events {
			out = append(out, e.Peer)
		}
		return out
	}
	restPut := func(srv *testserver.Server, key, xff string) {
		req, _ := http.NewRequest("PUT", srv.BaseURL+"/v1/secrets/"+key, strings.NewReader(`{"value":"dg=="}`))
		req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
		req.Header.Set("X-Forwarded-For", xff)
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("PUT: %v %v", res, err)
		}
		res.Body.Close()
	}
	plain := testserver.Start(t, testserver.Options{})
	restPut(plain, "XFF_A", "203.0.113.7")
	md := metadata.Pairs("x-forwarded-for", "198.51.100.9", "x-orient-gateway", "guess")
	if _, err := plain.Secrets.PutSecret(metadata.NewOutgoingContext(context.Background(), md), &pb.PutSecretRequest{Key: "XFF_B", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if got := peers(plain, "XFF_A"); len(got) != 1 || got[0] != "127.0.0.1 (rest)" {
		t.Errorf("untrusted forwarded REST peer: %v", got)
	}
	if got := peers(plain, "XFF_B"); len(got) != 1 || strings.Contains(got[0], "198.51.100.9") || !strings.HasPrefix(got[0], "127.0.0.1:") {
		t.Errorf("direct caller set its own peer: %v", got)
	}
	proxied := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}})
	restPut(proxied, "XFF_C", "203.0.113.7")
	if got := peers(proxied, "XFF_C"); len(got) != 1 || got[0] != "203.0.113.7 (rest)" {
		t.Errorf("trusted proxy's forwarded peer: %v", got)
	}
}

// TestScopedConsumers: a scoped token sees only the pending restarts (and
// declared keys) its scope allows, judged by key pattern and by the
// category the change log recorded — never another category's key names.
func TestScopedConsumers(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	base := put(t, srv.Secrets, "OPENAI_API_KEY", "sk-0")
	bot := &pb.Consumer{Service: "orient", Instance: "pod-1"}
	if _, err := srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, LoadedRevision: base.Revision}); err != nil {
		t.Fatal(err)
	}
	other := &pb.Consumer{Service: "github-bot", Instance: "pod-1"}
	if _, err := srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: other, LoadedRevision: base.Revision,
		Keys: []string{"GITHUB_APP_ID", "SLACK_BOT_TOKEN"}}); err != nil {
		t.Fatal(err)
	}
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	put(t, srv.Secrets, "GITHUB_APP_ID", "42")
	if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "CHAT_RELAY_DSN", Value: []byte("x"),
		Category: ptr("slack"), RestartRequired: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	catReader := func() string {
		res, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "slack-cat-reader", Role: "reader", Scope: &pb.TokenScope{Categories: []string{"slack"}}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Token
	}()
	seen := func(c pb.SecretServiceClient) (pending, declared []string) {
		t.Helper()
		res, err := c.ListConsumers(ctx, &pb.ListConsumersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range res.Consumers {
			for _, p := range st.Pending {
				pending = append(pending, st.Consumer.Service+":"+p.Key)
			}
			for _, k := range st.Keys {
				declared = append(declared, st.Consumer.Service+":"+k)
			}
		}
		return pending, declared
	}
	for _, tc := range []struct {
		name                  string
		client                pb.SecretServiceClient
		wantPending, wantKeys []string
	}{
		{"admin", srv.Secrets,
			[]string{"github-bot:SLACK_BOT_TOKEN", "github-bot:GITHUB_APP_ID", "orient:SLACK_BOT_TOKEN", "orient:GITHUB_APP_ID", "orient:CHAT_RELAY_DSN"},
			[]string{"github-bot:GITHUB_APP_ID", "github-bot:SLACK_BOT_TOKEN"}},
		{"category slack", pb.NewSecretServiceClient(srv.Dial(t, catReader)),
			[]string{"github-bot:SLACK_BOT_TOKEN", "orient:SLACK_BOT_TOKEN", "orient:CHAT_RELAY_DSN"},
			[]string{"github-bot:SLACK_BOT_TOKEN"}},
		{"pattern GITHUB_*", pb.NewSecretServiceClient(srv.Dial(t, createToken(t, srv, "github-reader", "reader", "GITHUB_*"))),
			[]string{"github-bot:GITHUB_APP_ID", "orient:GITHUB_APP_ID"},
			[]string{"github-bot:GITHUB_APP_ID"}},
	} {
		pending, declared := seen(tc.client)
		if diff := cmp.Diff(tc.wantPending, pending); diff != "" {
			t.Errorf("%s: pending (-want +got):\n%s", tc.name, diff)
		}
		if diff := cmp.Diff(tc.wantKeys, declared); diff != "" {
			t.Errorf("%s: declared keys (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestScopedListReadsABoundedSlice: a list whose page a narrow scope thins
// out reads a bounded number of rows per call and then answers a short
// page (here empty) with a token to go on (AIP-158): with page_size=1 a
// scoped auditor walked the whole audit log in one call, two rows a query.
func TestScopedListReadsABoundedSlice(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("CUSTOM_K%d", i)
		put(t, srv.Secrets, k, "v")
		keys = append(keys, k)
	}
	// Over 10,000 audited reads, none of them in the auditor's scope.
	for range 101 {
		if _, err := srv.Secrets.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: keys}); err != nil {
			t.Fatal(err)
		}
	}
	auditor := pb.NewAuditServiceClient(srv.Dial(t, createToken(t, srv, "nope-auditor", "auditor", "NOPE_*")))
	var (
		token string
		pages int
	)
	for {
		res, err := auditor.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(res.Events) != 0 {
			t.Fatalf("the scoped auditor sees %v", res.Events)
		}
		if token = res.NextPageToken; token == "" {
			break
		}
		if pages > 100 {
			t.Fatal("no end after 100 pages")
		}
	}
	t.Logf("%d pages", pages)
	if pages < 2 {
		t.Errorf("a scoped list with page_size=1 read the whole log (over 10,000 events) in one call")
	}
}
