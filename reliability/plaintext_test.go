package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/pgcluster"
)

// marker returns a distinctive random value: no chance of occurring by
// accident anywhere.
func marker() string {
	const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
	b := make([]byte, 30)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "pt" + string(b)
}

// forms are the encodings of v searched for: plain, hex, base64 (all four
// alphabets) and, plain, its first 16 bytes (a truncated echo).
func forms(v string) map[string]string {
	b := []byte(v)
	out := map[string]string{
		"plain": v, "hex": hex.EncodeToString(b), "HEX": strings.ToUpper(hex.EncodeToString(b)),
		"base64": base64.StdEncoding.EncodeToString(b), "base64url": base64.URLEncoding.EncodeToString(b),
		"base64 raw": base64.RawStdEncoding.EncodeToString(b), "base64url raw": base64.RawURLEncoding.EncodeToString(b),
	}
	if len(v) > 24 {
		out["prefix"] = v[:16]
	}
	return out
}

// plaintextRun is the workload's state: what it wrote and what came back.
type plaintextRun struct {
	t      *testing.T
	sc     pb.SecretServiceClient
	base   string // REST root
	token  string
	values []string     // every value sent (written or refused)
	errs   bytes.Buffer // every error returned to a client
	events bytes.Buffer // change events and audit events
}

func (r *plaintextRun) value() string {
	v := marker()
	r.values = append(r.values, v)
	return v
}

// fail records err (a call that must fail) with its details.
func (r *plaintextRun) fail(what string, err error) {
	if err == nil {
		r.t.Errorf("%s succeeded; want an error", what)
		return
	}
	b, _ := protojson.Marshal(status.Convert(err).Proto())
	fmt.Fprintf(&r.errs, "%s: %v %s\n", what, err, b)
}

// rest calls the REST gateway; error answers are recorded.
func (r *plaintextRun) rest(method, path string, body any, want int) []byte {
	r.t.Helper()
	var rd io.Reader
	if s, ok := body.(string); ok {
		rd = strings.NewReader(s)
	} else if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, r.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+r.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		fmt.Fprintf(&r.errs, "%s %s: %d %s\n", method, path, resp.StatusCode, b)
	}
	if resp.StatusCode != want {
		r.t.Errorf("%s %s: %d %.300s; want %d", method, path, resp.StatusCode, b, want)
	}
	return b
}

// TestNoPlaintextAnywhere runs a full workload through the real secretsd on
// the embedded default (a fresh data directory, the development KEK) with
// debug logging: values written over gRPC and REST, versions, reads, batch
// reads, idempotent retries, stale etags, refused values (wrong shape, too
// large, request id reuse, invalid base64 around a value), disable, enable,
// destroy, delete, watches. Then it checkpoints and stops the server, and
// searches every file under the data directory (the PostgreSQL cluster with
// its WAL included), every log line, every audit event, every change event
// and every error returned to a client for each value, in plain, hex and
// base64 forms: there must be no hit. Key names, stored in clear, must be
// found in the data files: proof that the search reads what was written.
func TestNoPlaintextAnywhere(t *testing.T) {
	gate(t)
	bin := buildSecretsd(t)
	base, err := pgcluster.TempDir(tempPrefix) // traversable by the cluster's user
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(base, "data")
	t.Cleanup(func() {
		// A killed server's cluster gets SIGINT; let it finish first.
		waitFor(15*time.Second, 50*time.Millisecond, func() bool { return !processIn(filepath.Join(dataDir, "postgres")) })
		os.RemoveAll(base)
	})
	p := startSecretsd(t, bin, serverEnv(), "--data-dir", dataDir, "--log-level", "debug", "--audit-checkpoint-interval", "200ms")
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	conn := dial(t, p.grpcAddr, token)
	r := &plaintextRun{t: t, sc: pb.NewSecretServiceClient(conn), base: p.httpURL, token: token}
	r.workload(withTimeout(t, 5*time.Minute), conn)

	// CHECKPOINT, then a clean stop (a shutdown checkpoint too).
	pg, err := pgx.Connect(withTimeout(t, 30*time.Second), fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", filepath.Join(dataDir, "postgres")))
	if err != nil {
		t.Fatalf("connect to the embedded cluster: %v", err)
	}
	if _, err := pg.Exec(context.Background(), "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	pg.Close(context.Background())
	conn.Close()
	p.terminate(t)
	if err := p.wait(t, 60*time.Second); err != nil {
		t.Fatalf("secretsd exited with %v after SIGTERM:\n%s", err, p.stderr.Tail(20))
	}

	files, size := 0, 0
	keysFound := 0
	err = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		size += len(b)
		for _, v := range r.values {
			for form, s := range forms(v) {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("value %s found (%s) in %s", v[:8], form, path)
				}
			}
		}
		if bytes.Contains(b, []byte("PLAINTEXT_HUNT_7")) {
			keysFound++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := p.stderr.Bytes()
	for name, corpus := range map[string][]byte{"the server log": logs, "an error returned to a client": r.errs.Bytes(), "an audit or change event": r.events.Bytes()} {
		for _, v := range r.values {
			for form, s := range forms(v) {
				if bytes.Contains(corpus, []byte(s)) {
					t.Errorf("value %s found (%s) in %s", v[:8], form, name)
				}
			}
		}
	}
	t.Logf("searched %d values in %d forms: %d files (%.1f MB) under the data directory, %d log lines, %d bytes of errors, %d bytes of events",
		len(r.values), len(forms(r.values[0])), files, float64(size)/(1<<20), bytes.Count(logs, []byte("\n")), r.errs.Len(), r.events.Len())
	if keysFound == 0 || size < 10<<20 || r.errs.Len() < 1000 || r.events.Len() < 1000 || len(logs) < 10000 {
		t.Errorf("the search covered too little: key names found in %d files, %d bytes of files, %d of errors, %d of events, %d of logs",
			keysFound, size, r.errs.Len(), r.events.Len(), len(logs))
	}
}

// workload writes, reads, refuses and watches values through both APIs.
func (r *plaintextRun) workload(ctx context.Context, conn *grpc.ClientConn) {
	t, sc := r.t, r.sc
	watch, err := sc.WatchChanges(ctx, &pb.WatchChangesRequest{StartRevision: 0})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	keys := make([]string, n)
	for i := range n {
		keys[i] = fmt.Sprintf("PLAINTEXT_HUNT_%d", i)
		if _, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: keys[i], Value: []byte(r.value()), RequestId: "plain-" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
		r.rest("PUT", "/v1/secrets/"+keys[i], map[string]any{"value": []byte(r.value()), "description": "hunt"}, 200)
		if _, err := sc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: keys[i], Version: "1"}); err != nil {
			t.Fatal(err)
		}
		r.rest("GET", "/v1/secrets/"+keys[i]+"/versions/latest:access", nil, 200)
	}
	pem := "-----BEGIN PRIVATE KEY-----\n" + r.value() + "\n" + r.value() + "\n-----END PRIVATE KEY-----\n"
	r.values = append(r.values, pem)
	if _, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: "GITHUB_APP_PRIVATE_KEY", Value: []byte(pem)}); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: append(keys[:10:10], "GITHUB_APP_PRIVATE_KEY", "NO_SUCH_KEY")}); err != nil {
		t.Fatal(err)
	}
	r.rest("POST", "/v1/secrets:batchAccess", map[string]any{"keys": keys[10:]}, 200)

	// Refused values: every error is kept and searched.
	same := &pb.PutSecretRequest{Key: keys[0], Value: []byte(r.value()), RequestId: "plain-retry"}
	for range 2 {
		if _, err := sc.PutSecret(ctx, same); err != nil {
			t.Fatal(err)
		}
	}
	_, err = sc.PutSecret(ctx, &pb.PutSecretRequest{Key: keys[0], Value: []byte(r.value()), RequestId: "plain-retry"})
	r.fail("request id reused with another value", err)
	_, err = sc.PutSecret(ctx, &pb.PutSecretRequest{Key: keys[1], Value: []byte(r.value()), Etag: "1"})
	r.fail("stale etag", err)
	_, err = sc.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_BOT_TOKEN", Value: []byte(r.value())})
	r.fail("wrong shape for a catalog key", err)
	r.rest("PUT", "/v1/secrets/OPENAI_API_KEY", map[string]any{"value": []byte(r.value())}, 400)
	big := strings.Repeat(r.value(), 64<<10/32+1)
	r.values = append(r.values, big)
	_, err = sc.PutSecret(ctx, &pb.PutSecretRequest{Key: keys[2], Value: []byte(big)})
	r.fail("value over 64 KiB", err)
	r.rest("PUT", "/v1/secrets/"+keys[3], `{"value":"!!`+r.value()+`!!"}`, 400)
	r.rest("PUT", "/v1/secrets/"+keys[3], `{"value":"`+r.value()+`","etagg":"1"}`, 400)
	r.rest("PUT", "/v1/secrets/"+keys[3], `{"value":`+strconv.Quote(r.value())+`,"restartRequired":"`+r.value()+`"}`, 400)

	// Version states, deletes, and the errors they give.
	for _, k := range keys[:5] {
		if _, err := sc.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: k, Version: "1"}); err != nil {
			t.Fatal(err)
		}
		_, err := sc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: k, Version: "1"})
		r.fail("access a disabled version", err)
		r.rest("POST", "/v1/secrets/"+k+"/versions/1:destroy", map[string]any{}, 200)
		r.rest("GET", "/v1/secrets/"+k+"/versions/1:access", nil, 400)
		r.rest("POST", "/v1/secrets/"+k+"/versions/2:disable", map[string]any{}, 200)
		r.rest("POST", "/v1/secrets/"+k+"/versions/2:enable", map[string]any{}, 200)
	}
	for _, k := range keys[15:] {
		r.rest("DELETE", "/v1/secrets/"+k, nil, 200)
		r.rest("GET", "/v1/secrets/"+k+"/versions/latest:access", nil, 404)
	}

	// Events: the change stream (gRPC and REST) and the audit log.
	final, err := sc.GetSecret(ctx, &pb.GetSecretRequest{Key: keys[0]})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := protojson.Marshal(m)
		r.events.Write(append(b, '\n'))
		if m.GetEvent().GetRevision() >= final.Revision || m.GetHeader().GetRevision() >= final.Revision {
			break
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(wctx, "GET", r.base+"/v1/changes:watch?startRevision=1", nil)
	req.Header.Set("Authorization", "Bearer "+r.token)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		b, _ := io.ReadAll(resp.Body) // until the deadline
		resp.Body.Close()
		r.events.Write(b)
	}
	audit := pb.NewAuditServiceClient(conn)
	for page := ""; ; {
		res, err := audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{PageSize: 1000, PageToken: page})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := protojson.Marshal(res)
		r.events.Write(b)
		if page = res.NextPageToken; page == "" {
			break
		}
	}
	r.events.Write(r.rest("GET", "/v1/audit/events?pageSize=1000", nil, 200))
	if v, err := audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{}); err != nil || !v.Intact {
		t.Errorf("audit log: %v, %v", v, err)
	}
}

// processIn reports whether a process works in dir (Linux /proc).
func processIn(dir string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == dir {
			return true
		}
	}
	return false
}
