package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
)

// TestGracefulShutdown sends SIGTERM to the real secretsd under concurrent
// gRPC and REST load (writes of 8 KiB values with request ids, batch reads
// of 40 × 16 KiB values) with watch streams open over both, and asserts:
//   - every gRPC call either succeeds or fails with UNAVAILABLE;
//   - every REST call gets 200 or 503, or fails to connect without having
//     written anything; no response is cut off mid-body;
//   - every watch stream ends with UNAVAILABLE and reason
//     SERVER_SHUTTING_DOWN (the REST stream with that error as its last
//     line, then a clean end);
//   - the process exits 0 within its shutdown timeout, and every
//     acknowledged write is in the database, consistently.
func TestGracefulShutdown(t *testing.T) {
	gate(t)
	bin := buildSecretsd(t)
	db := testdb.New(t)
	env := serverEnv("DATABASE_URL="+testdb.ServiceURL(t, db), "SECRETS_KEK_URL="+testserver.NewKEKURL(t), "SECRETS_BOOTSTRAP_TOKEN="+adminToken)
	p := startSecretsd(t, bin, env, "--data-dir", t.TempDir(), "--shutdown-timeout", "20s", "--audit-signing-key", testserver.AuditSigningKeyFile(t))
	sc := pb.NewSecretServiceClient(p.dial(t))
	ctx := withTimeout(t, 5*time.Minute)
	var keys []string
	for i := range 40 {
		keys = append(keys, fmt.Sprintf("DRAIN_%02d", i))
		if _, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: keys[i], Value: randomValue(16 << 10)}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	var acks []ack
	var unknownREST []string // request ids of REST writes that got no answer
	grpcCodes, restCodes, watchEnds := &codeCounter{}, &codeCounter{}, &codeCounter{}
	var wg sync.WaitGroup
	var termAt time.Time
	var termMu sync.Mutex
	afterTerm := func() bool { termMu.Lock(); defer termMu.Unlock(); return !termAt.IsZero() }
	ackedAfterTerm := 0
	record := func(a ack) {
		late := afterTerm()
		mu.Lock()
		defer mu.Unlock()
		acks = append(acks, a)
		if late {
			ackedAfterTerm++
		}
	}

	// gRPC watchers, and one REST watcher.
	for range 4 {
		st, err := sc.WatchChanges(ctx, &pb.WatchChangesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := st.Recv(); err != nil {
					watchEnds.add(err)
					return
				}
			}
		}()
	}
	restWatch := make(chan string, 1)
	go func() { restWatch <- p.restWatchEnd(ctx) }()

	// gRPC writers and readers run until the server is gone.
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				a, err := putOp(keys[(w+n)%len(keys)], randomValue(8<<10), fmt.Sprintf("drain-g%d-%d", w, n)).send(ctx, sc)
				grpcCodes.add(err)
				if err != nil {
					return
				}
				record(a)
			}
		}()
	}
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := sc.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: keys})
				grpcCodes.add(err)
				if err != nil {
					return
				}
			}
		}()
	}
	// REST writers and readers, on keep-alive connections.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	restDo := func(method, path string, body []byte) (int, []byte, string) {
		req, _ := http.NewRequestWithContext(ctx, method, p.httpURL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, "no answer"
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return resp.StatusCode, b, "cut off mid-body: " + err.Error()
		}
		return resp.StatusCode, b, ""
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				key, id := keys[(w+n)%len(keys)], fmt.Sprintf("drain-r%d-%d", w, n)
				body, _ := json.Marshal(map[string]any{"value": randomValue(8 << 10), "requestId": id})
				code, b, broken := restDo("PUT", "/v1/secrets/"+key, body)
				restCodes.addName(restOutcome("PUT", code, broken))
				if code == 200 && broken == "" {
					var out struct {
						Secret   struct{ CurrentVersion string }
						Revision string
					}
					json.Unmarshal(b, &out)
					v, _ := strconv.ParseInt(out.Secret.CurrentVersion, 10, 64)
					r, _ := strconv.ParseInt(out.Revision, 10, 64)
					record(ack{RequestID: id, Action: "PutSecret", Key: key, Version: v, Revision: r})
					continue
				}
				if broken == "no answer" {
					mu.Lock()
					unknownREST = append(unknownREST, id)
					mu.Unlock()
				}
				if afterTerm() {
					return
				}
			}
		}()
	}
	batch, _ := json.Marshal(map[string]any{"keys": keys})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				code, _, broken := restDo("POST", "/v1/secrets:batchAccess", batch)
				restCodes.addName(restOutcome("batch", code, broken))
				if code != 200 && afterTerm() {
					return
				}
			}
		}()
	}

	time.Sleep(size(time.Second, 3*time.Second))
	termMu.Lock()
	termAt = time.Now()
	termMu.Unlock()
	p.terminate(t)
	exitErr := p.wait(t, 40*time.Second)
	exited := time.Since(termAt)
	wg.Wait()
	t.Logf("SIGTERM to exit: %v (exit: %v); %d writes acknowledged after SIGTERM", exited.Round(time.Millisecond), exitErr, ackedAfterTerm)
	t.Logf("gRPC calls: %s", grpcCodes)
	t.Logf("REST calls: %s", restCodes)
	restEnd := <-restWatch
	t.Logf("watch streams ended with: %s; REST watch: %.200s", watchEnds, restEnd)
	if exitErr != nil {
		t.Errorf("secretsd exited with %v after SIGTERM:\n%s", exitErr, p.stderr.Tail(20))
	}
	if others := grpcCodes.others("OK", "Unavailable"); len(others) > 0 {
		t.Errorf("gRPC calls failed with %v; want OK or UNAVAILABLE", others)
	}
	for k, n := range restCodes.others() {
		if !strings.HasSuffix(k, " 200") && !strings.HasSuffix(k, " 503") && !strings.HasSuffix(k, " no answer") {
			t.Errorf("%d REST calls: %s", n, k)
		}
	}
	if n := watchEnds.get("Unavailable/SERVER_SHUTTING_DOWN"); n != 4 {
		t.Errorf("watch streams ended with %s; want 4 × UNAVAILABLE/SERVER_SHUTTING_DOWN", watchEnds)
	}
	if !strings.Contains(restEnd, "SERVER_SHUTTING_DOWN") || strings.Contains(restEnd, "cut off") {
		t.Errorf("REST watch ended with %q; want a last line with SERVER_SHUTTING_DOWN and a clean end", restEnd)
	}
	// No write that got no answer was made.
	conn := connect(t, db)
	if n := committed(t, conn, opsFor(unknownREST)); n > 0 {
		t.Errorf("%d of %d REST writes that got no answer were written", n, len(unknownREST))
	}
	checkAcks(t, conn, acks)
	c := checkConsistency(t, db, nil)
	t.Logf("%d acknowledged writes durable; %d REST writes unanswered and not written; consistent at revision %d",
		len(acks), len(unknownREST), c.Revision)
}

func restOutcome(op string, code int, broken string) string {
	if broken != "" {
		return op + " " + broken
	}
	return fmt.Sprintf("%s %d", op, code)
}

func opsFor(ids []string) []writeOp {
	out := make([]writeOp, len(ids))
	for i, id := range ids {
		out[i] = writeOp{requestID: id}
	}
	return out
}

// restWatchEnd follows the REST change stream until it ends and describes
// how: its last line, and whether the body was cut off.
func (p *secretsd) restWatchEnd(ctx context.Context) string {
	req, _ := http.NewRequestWithContext(ctx, "GET", p.httpURL+"/v1/changes:watch", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	last := ""
	for sc.Scan() {
		last = sc.Text()
	}
	if err := sc.Err(); err != nil {
		return "cut off: " + err.Error() + "; last line " + last
	}
	return last
}
