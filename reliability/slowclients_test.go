package reliability

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
)

// metric reads one unlabelled metric of p from /metrics.
func (p *secretsd) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(p.httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no metric %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// startPlain starts the real secretsd on a fresh test database.
func startPlain(t *testing.T) *secretsd {
	t.Helper()
	env := serverEnv("DATABASE_URL="+testdb.ServiceURL(t, testdb.New(t)), "SECRETS_KEK_URL="+testserver.NewKEKURL(t), "SECRETS_BOOTSTRAP_TOKEN="+adminToken)
	return startSecretsd(t, buildSecretsd(t), env, "--data-dir", t.TempDir(), "--audit-signing-key", testserver.AuditSigningKeyFile(t))
}

// TestStuckGRPCStreams: one unauthenticated TCP connection opens streams on
// a unary method and never sends the request message. The server must cap
// what one connection can hold (a concurrent-stream limit): its goroutines
// and heap stay bounded, and other clients are served meanwhile.
func TestStuckGRPCStreams(t *testing.T) {
	gate(t)
	p := startPlain(t)
	goroutines0, heap0 := p.metric(t, "go_goroutines"), p.metric(t, "go_memstats_heap_inuse_bytes")
	conn := dial(t, p.grpcAddr, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const attempts = 5000
	opened := 0
	for range attempts {
		res := make(chan error, 1)
		go func() {
			_, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
				"/orient.secrets.v1.SecretService/GetSecret", grpc.ForceCodec(rawCodec{}))
			res <- err
		}()
		select {
		case err := <-res:
			if err != nil {
				t.Fatalf("stream %d: %v", opened, err)
			}
			opened++
			continue
		case <-time.After(2 * time.Second): // held back by the server's stream limit
		}
		break
	}
	time.Sleep(time.Second)
	goroutines, heap := p.metric(t, "go_goroutines"), p.metric(t, "go_memstats_heap_inuse_bytes")
	t.Logf("%d of %d streams opened without a message: server goroutines %.0f -> %.0f, heap %s -> %s",
		opened, attempts, goroutines0, goroutines, mb(uint64(heap0)), mb(uint64(heap)))
	if goroutines-goroutines0 > 2000 || heap-heap0 > 32<<20 {
		t.Errorf("one connection holds %.0f server goroutines and %s of heap", goroutines-goroutines0, mb(uint64(heap-heap0)))
	}
	sc := pb.NewSecretServiceClient(p.dial(t))
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if _, err := sc.ListSecrets(cctx, &pb.ListSecretsRequest{}); err != nil {
		t.Errorf("another client is not served meanwhile: %v", err)
	}
}

// TestSlowRequestBody: clients send a REST request's headers and part of
// its body, then stall (no authentication needed: the gateway reads the body
// before the call is authorized). The server must not wait for the rest
// forever: each connection is answered (408) or closed within a minute.
func TestSlowRequestBody(t *testing.T) {
	gate(t)
	p := startPlain(t)
	addr := strings.TrimPrefix(p.httpURL, "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	goroutines0 := p.metric(t, "go_goroutines")
	for i := range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "PUT /v1/secrets/SLOW_%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"value\":", i)
	}
	time.Sleep(time.Second)
	t.Logf("200 stalled bodies: server goroutines %.0f -> %.0f", goroutines0, p.metric(t, "go_goroutines"))
	began := time.Now()
	for i, c := range conns {
		if !closedWithin(c, time.Until(began.Add(75*time.Second))) {
			t.Fatalf("connection %d with a stalled body still open after %v", i, time.Since(began).Round(time.Second))
		}
	}
	t.Logf("stalled bodies cut off within %v", time.Since(began).Round(time.Millisecond))
}
