package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/pgcluster"
)

// tempPrefix names the suite's folders under /tmp (removed by the next run
// if a killed test binary left them).
const tempPrefix = "secrets-reliability-"

func TestMain(m *testing.M) {
	flag.Parse()
	pgcluster.Sweep(tempPrefix)
	code := testdb.Main(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Environment variables that turn the suite on: RELIABILITY=1 for the full
// sizes (make reliability), RELIABILITY_SHORT=1 for CI's small counts.
const (
	envFull  = "RELIABILITY"
	envShort = "RELIABILITY_SHORT"
)

// gate skips t unless the suite was asked for.
func gate(t *testing.T) {
	t.Helper()
	if os.Getenv(envFull) == "" && os.Getenv(envShort) == "" {
		t.Skipf("reliability suite: run `make reliability`, or set %s=1 (full) or %s=1 (short)", envFull, envShort)
	}
}

// short reports whether the small counts apply (RELIABILITY_SHORT=1 or
// go test -short).
func short() bool { return os.Getenv(envShort) != "" || testing.Short() }

// size picks the short or the full count.
func size[T any](shortN, fullN T) T {
	if short() {
		return shortN
	}
	return fullN
}

// adminToken is the bootstrap token of every server the suite starts.
const adminToken = testserver.DefaultAdminToken

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
	buildDir  string
)

// buildSecretsd builds ./cmd/secretsd once per test binary.
func buildSecretsd(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = err
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(gomod)))
		if buildDir, buildErr = os.MkdirTemp("", "secretsd-reliability-bin-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "secretsd")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/secretsd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// secretsd is a running server process (the real binary).
type secretsd struct {
	cmd      *exec.Cmd
	stderr   *syncBuffer
	grpcAddr string
	httpURL  string
	ready    time.Duration // from exec to a ready /readyz
	exited   chan struct{}
	waitErr  error
}

var servingRe = regexp.MustCompile(`msg="?secretsd serving"? .*\bgrpc=(\S+) .*\bhttp=(\S+)`)

// serverEnv is the environment without the server's own settings, plus env.
func serverEnv(env ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "DATABASE_URL" || strings.HasPrefix(name, "SECRETS_") || strings.HasPrefix(name, "PG") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, env...)
}

// startSecretsd runs bin with env and args (loopback listeners on free ports
// are added) and waits until /readyz says ready. A test that fails leaves no
// process behind.
func startSecretsd(t *testing.T, bin string, env []string, args ...string) *secretsd {
	t.Helper()
	p := &secretsd{stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	p.cmd.Env = env
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrs := make(chan [2]string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			p.stderr.WriteString(line + "\n")
			if m := servingRe.FindStringSubmatch(line); m != nil {
				select {
				case addrs <- [2]string{m[1], m[2]}:
				default:
				}
			}
		}
		io.Copy(io.Discard, pipe)
	}()
	go func() {
		<-scanDone // Wait closes the pipe: read it to the end first
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case a := <-addrs:
		p.grpcAddr, p.httpURL = a[0], "http://"+a[1]
	case <-p.exited:
		t.Fatalf("secretsd exited during startup (%v):\n%s", p.waitErr, p.stderr.Tail(40))
	case <-time.After(120 * time.Second):
		t.Fatalf("secretsd did not log \"secretsd serving\" in 120s:\n%s", p.stderr.Tail(40))
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if ok, err := p.isReady(); ok {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("/readyz not ready in 60s (last error %v):\n%s", err, p.stderr.Tail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.ready = time.Since(began)
	return p
}

func (p *secretsd) isReady() (bool, error) {
	resp, err := http.Get(p.httpURL + "/readyz")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var body struct {
		Ready bool `json:"ready"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return false, err
	}
	return resp.StatusCode == http.StatusOK && body.Ready, nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *secretsd) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("secretsd still running 30s after SIGKILL")
	}
}

// terminate sends SIGTERM; wait reports how the process ended.
func (p *secretsd) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// wait waits up to timeout for the process to exit and returns its error.
func (p *secretsd) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.waitErr
	case <-time.After(timeout):
		t.Fatalf("secretsd still running after %v:\n%s", timeout, p.stderr.Tail(40))
		return nil
	}
}

// dial returns an admin-authenticated gRPC connection to p.
func (p *secretsd) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	return dial(t, p.grpcAddr, adminToken)
}

// dial opens a gRPC client connection authenticating with token.
func dial(t testing.TB, addr, token string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(testserver.Bearer(token))}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// syncBuffer collects a process's output for concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// Tail returns the last n lines.
func (b *syncBuffer) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(string(b.Bytes()), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

// withTimeout is a context with a deadline, canceled at the end of t.
func withTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
