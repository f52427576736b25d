package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
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

	"github.com/orient-bot/secrets/server/auditlog"
)

// TestE2E builds the real secretsd, runs it on the embedded default (no
// DATABASE_URL, no SECRETS_KEK_URL), writes a secret over REST, stops it with
// SIGTERM, starts it again on the same data directory and reads the secret
// back.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds the binary and runs PostgreSQL")
	}
	bin := buildSecretsd(t)

	// The embedded cluster may run as another user (postgres, when we are
	// root): the data directory's parent must be traversable.
	base, err := os.MkdirTemp("/tmp", "secretsd-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("removing %s: %v", base, err)
		}
	})
	dataDir := filepath.Join(base, "data")

	value := "e2e-value-" + randomHex(t, 12)
	const key = "E2E_SECRET"

	// First start: creates the cluster and the development KEK.
	p := startSecretsd(t, bin, dataDir)
	t.Logf("first start (initdb, migrations): ready in %v", p.ready)
	p.putSecret(t, key, value)
	if got := p.accessSecret(t, key); got != value {
		t.Fatalf("read back %q, want %q", got, value)
	}
	p.stop(t)
	assertClusterStopped(t, dataDir)
	if !strings.Contains(p.stderr.String(), "database role") || !strings.Contains(p.stderr.String(), "role=secrets_service superuser=false owner=false") {
		t.Errorf("the embedded default does not serve as the least-privileged service role:\n%s", p.stderr.String())
	}
	// The checkpoints are anchored outside the database, in the data
	// directory, signed by the generated key (the last one at shutdown).
	signer, err := auditlog.LoadSigner(filepath.Join(dataDir, "audit-signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	anchor, err := auditlog.OpenAnchor(context.Background(), "file://"+filepath.Join(dataDir, "audit-checkpoints"))
	if err != nil {
		t.Fatal(err)
	}
	cps, err := anchor.List(context.Background())
	anchor.Close()
	if err != nil || len(cps) == 0 || !cps[len(cps)-1].Valid(signer.Public()) || cps[len(cps)-1].Sequence < 2 {
		t.Errorf("external checkpoints in the data directory: %d, %v", len(cps), err)
	}

	kekFile := filepath.Join(dataDir, "dev-kek.key")
	fi, err := os.Stat(kekFile)
	if err != nil {
		t.Fatalf("development KEK: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("dev-kek.key mode %04o, want 0600", mode)
	}
	kekBytes, err := os.ReadFile(kekFile)
	if err != nil {
		t.Fatal(err)
	}
	kek := strings.TrimSpace(string(kekBytes))
	if len(kek) < 40 {
		t.Fatalf("dev-kek.key holds %d characters, want a base64 32-byte key", len(kek))
	}

	// Restart on the same data directory: the value is still there, readable
	// with the same KEK.
	p2 := startSecretsd(t, bin, dataDir)
	t.Logf("restart: ready in %v", p2.ready)
	if got := p2.accessSecret(t, key); got != value {
		t.Fatalf("after restart read %q, want %q", got, value)
	}
	p2.stop(t)
	assertClusterStopped(t, dataDir)

	for i, proc := range []*secretsd{p, p2} {
		logs := proc.stderr.String()
		if !strings.Contains(logs, "DEVELOPMENT KEY-ENCRYPTION KEY") {
			t.Errorf("run %d: no development KEK warning in the log", i+1)
		}
		for name, s := range map[string]string{
			"the secret value": value, "the secret value in base64": base64.StdEncoding.EncodeToString([]byte(value)),
			"the dev KEK": kek, "the dev KEK URL": "base64key://" + kek,
		} {
			if strings.Contains(logs, s) {
				t.Errorf("run %d: stderr contains %s", i+1, name)
			}
		}
	}
}

// TestE2EHelp checks that the usage text does not leak the KEK or the
// database URL from the environment.
func TestE2EHelp(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds the binary")
	}
	bin := buildSecretsd(t)
	kek := "base64key://" + base64.URLEncoding.EncodeToString([]byte(randomHex(t, 16)))
	dbPassword := "pw" + randomHex(t, 8)
	cmd := exec.Command(bin, "-h")
	cmd.Env = append(cleanEnv(), "SECRETS_KEK_URL="+kek, "DATABASE_URL=postgres://u:"+dbPassword+"@127.0.0.1:1/db")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("secretsd -h: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Usage:") || !strings.Contains(string(out), "-data-dir") {
		t.Errorf("secretsd -h does not show the usage:\n%s", out)
	}
	if m := regexp.MustCompile(`base64key://[A-Za-z0-9_\-+/=]{8,}`).Find(out); m != nil {
		t.Errorf("secretsd -h prints key material: %s", m)
	}
	if bytes.Contains(out, []byte(dbPassword)) {
		t.Errorf("secretsd -h prints DATABASE_URL")
	}
}

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
		if buildDir, buildErr = os.MkdirTemp("", "secretsd-bin-"); buildErr != nil {
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

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// secretsd is a running server process.
type secretsd struct {
	cmd      *exec.Cmd
	dataDir  string
	stderr   *syncBuffer
	httpURL  string
	grpcAddr string
	ready    time.Duration // from exec to a ready /readyz
	exited   chan struct{}
	waitErr  error
}

var servingRe = regexp.MustCompile(`msg="?secretsd serving"? .*\bgrpc=(\S+) .*\bhttp=(\S+)`)

// startSecretsd runs bin on the embedded default in dataDir, with env added
// to a clean environment.
func startSecretsd(t *testing.T, bin, dataDir string, env ...string) *secretsd {
	t.Helper()
	p := &secretsd{stderr: &syncBuffer{}, exited: make(chan struct{}), dataDir: dataDir}
	p.cmd = exec.Command(bin, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", dataDir)
	p.cmd.Env = append(cleanEnv(), env...)
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan [2]string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.stderr.WriteString(line + "\n")
			if m := servingRe.FindStringSubmatch(line); m != nil {
				select {
				case addr <- [2]string{m[1], m[2]}:
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
	// A failing test must not leave the server (and its PostgreSQL) behind.
	t.Cleanup(func() {
		select {
		case <-p.exited:
			return
		default:
		}
		p.cmd.Process.Kill()
		<-p.exited
		waitNoPostmaster(dataDir, 15*time.Second)
	})

	select {
	case a := <-addr:
		p.grpcAddr, p.httpURL = a[0], "http://"+a[1]
	case <-p.exited:
		t.Fatalf("secretsd exited during startup (%v):\n%s", p.waitErr, p.stderr)
	case <-time.After(90 * time.Second):
		t.Fatalf("secretsd did not log \"secretsd serving\" in 90s:\n%s", p.stderr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.httpURL + "/readyz")
		if err == nil {
			var body struct {
				Ready bool `json:"ready"`
			}
			derr := json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode == 200 && derr == nil && body.Ready {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not ready in 30s (last error %v):\n%s", err, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.ready = time.Since(began)
	return p
}

// stop sends SIGTERM and expects a clean exit within 20s.
func (p *secretsd) stop(t *testing.T) {
	t.Helper()
	began := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("secretsd still running 20s after SIGTERM:\n%s", p.stderr)
	}
	if p.waitErr != nil {
		t.Fatalf("secretsd exited with %v after SIGTERM:\n%s", p.waitErr, p.stderr)
	}
	t.Logf("SIGTERM to exit: %v", time.Since(began).Round(time.Millisecond))
}

func (p *secretsd) putSecret(t *testing.T, key, value string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"value": []byte(value)})
	req, _ := http.NewRequest("PUT", p.httpURL+"/v1/secrets/"+key, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	p.authorize(t, req)
	var out struct {
		Secret struct {
			Key            string `json:"key"`
			CurrentVersion string `json:"currentVersion"`
		} `json:"secret"`
		Revision string `json:"revision"`
	}
	doJSON(t, req, &out)
	if out.Secret.Key != key || out.Secret.CurrentVersion != "1" || out.Revision == "" {
		t.Fatalf("PUT %s answered %+v", key, out)
	}
}

func (p *secretsd) accessSecret(t *testing.T, key string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", p.httpURL+"/v1/secrets/"+key+"/versions/latest:access", nil)
	p.authorize(t, req)
	var out struct {
		Value []byte `json:"value"` // base64 in JSON
	}
	doJSON(t, req, &out)
	return string(out.Value)
}

// authorize adds the bootstrap admin token, which the embedded default wrote
// (0600) into its data directory on first start.
func (p *secretsd) authorize(t *testing.T, req *http.Request) {
	t.Helper()
	file := filepath.Join(p.dataDir, "admin-token")
	info, err := os.Stat(file)
	if err != nil {
		t.Fatalf("admin token file: %v", err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file mode %v, want 0600", info.Mode().Perm())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
}

func doJSON(t *testing.T, req *http.Request, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("%s %s: %v: %s", req.Method, req.URL.Path, err, raw)
	}
}

// assertClusterStopped checks that the embedded PostgreSQL stopped with the
// server: no postmaster.pid and no process working in the cluster directory.
func assertClusterStopped(t *testing.T, dataDir string) {
	t.Helper()
	pgDir := filepath.Join(dataDir, "postgres")
	if _, err := os.Stat(filepath.Join(pgDir, "PG_VERSION")); err != nil {
		t.Fatalf("no cluster in %s: %v", pgDir, err)
	}
	if _, err := os.Stat(filepath.Join(pgDir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid still present after the server exited (err %v)", err)
	}
	if pids := processesIn(pgDir); len(pids) > 0 {
		t.Errorf("processes %v still run in %s after the server exited", pids, pgDir)
	}
}

// processesIn lists the pids whose working directory is dir (Linux /proc).
func processesIn(dir string) []string {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range entries {
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == real {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// waitNoPostmaster waits for a killed server's PostgreSQL to go away (it gets
// SIGINT when its parent dies), so the folder can be removed.
func waitNoPostmaster(dataDir string, timeout time.Duration) {
	pgDir := filepath.Join(dataDir, "postgres")
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if len(processesIn(pgDir)) == 0 {
			return
		}
	}
}

// cleanEnv is the environment without the server's own settings, so the
// embedded default and the development KEK are used.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "DATABASE_URL" || strings.HasPrefix(name, "SECRETS_") || strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
