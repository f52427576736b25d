// Package deploy holds what runs the service elsewhere: the Kubernetes base
// (deploy/kubernetes, its own module), the compose file, and this test of
// the container image.
package deploy

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/pgcluster"
)

const tempPrefix = "secrets-image-test-"

func TestMain(m *testing.M) {
	pgcluster.Sweep(tempPrefix)
	os.Exit(m.Run())
}

// imageConfig is the part of `podman image inspect` this test reads.
type imageConfig struct {
	Config struct {
		User         string
		ExposedPorts map[string]struct{}
		Env          []string
		Entrypoint   []string
		WorkingDir   string
		Labels       map[string]string
	}
}

// TestImage checks the image `make image` built (IMAGE, default
// localhost/orient-secrets:dev): its metadata (OCI labels, a non-root user,
// both ports), its filesystem (static secretsd and secretctl, CA bundle, no
// shell), and then runs secretsd from the exported filesystem with chroot,
// as the image's user and with the image's environment, against a real
// PostgreSQL: it starts, serves REST and gRPC (secretctl from the image reads
// a value back), and exits cleanly on SIGTERM. Containers cannot be run on
// these machines (the sandbox refuses crun's setrlimit), hence chroot.
//
// Run with `make image-test` (needs root and podman); skipped otherwise.
func TestImage(t *testing.T) {
	if os.Getenv("IMAGE_TEST") == "" {
		t.Skip("container image test: run `make image-test` (builds the image with podman; needs root)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the image test needs root (chroot)")
	}
	image := os.Getenv("IMAGE")
	if image == "" {
		image = "localhost/orient-secrets:dev"
	}

	// Metadata.
	out, err := exec.Command("podman", "image", "inspect", image).Output()
	if err != nil {
		t.Fatalf("podman image inspect %s: %v (build it with `make image`)", image, err)
	}
	var cfgs []imageConfig
	if err := json.Unmarshal(out, &cfgs); err != nil || len(cfgs) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	cfg := cfgs[0].Config
	for _, l := range []string{"org.opencontainers.image.version", "org.opencontainers.image.revision",
		"org.opencontainers.image.source", "org.opencontainers.image.created", "org.opencontainers.image.title"} {
		if v := cfg.Labels[l]; v == "" || v == "unknown" {
			t.Errorf("label %s is %q", l, v)
		}
	}
	uid, gid, ok := strings.Cut(cfg.User, ":")
	if !ok || uid == "" || uid == "0" || uid == "root" || gid == "0" {
		t.Errorf("image user %q, want a numeric non-root uid:gid", cfg.User)
	}
	for _, p := range []string{"9090/tcp", "8080/tcp"} {
		if _, ok := cfg.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed (%v)", p, cfg.ExposedPorts)
		}
	}
	if len(cfg.Entrypoint) != 1 || cfg.Entrypoint[0] != "/usr/local/bin/secretsd" {
		t.Errorf("entrypoint %v", cfg.Entrypoint)
	}

	// The filesystem, exported from a created (never started) container.
	dir, err := pgcluster.TempDir(tempPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	exportImage(t, image, rootfs)
	for _, f := range []string{"usr/local/bin/secretsd", "usr/local/bin/secretctl"} {
		checkStatic(t, filepath.Join(rootfs, f))
	}
	if fi, err := os.Stat(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt")); err != nil || fi.Size() < 1000 {
		t.Errorf("CA bundle: %v", err)
	}
	for _, sh := range []string{"bin/sh", "bin/bash", "usr/bin/sh"} {
		if _, err := os.Lstat(filepath.Join(rootfs, sh)); err == nil {
			t.Errorf("the image has a shell: /%s", sh)
		}
	}

	// PostgreSQL, its socket inside the exported filesystem (as a sidecar
	// sharing a volume would have it).
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: filepath.Join(dir, "pgdata"), SocketDir: filepath.Join(rootfs, "run", "postgresql")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop(context.Background()) })
	admin, err := pgx.Connect(ctx, cluster.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE secrets"); err != nil {
		t.Fatal(err)
	}
	admin.Close(ctx)

	// As the README deploys it: `secretsd migrate` as the owner role
	// creates the schema and the service role, and the server connects as
	// that role (it refuses the owner).
	dbURL := func(user string) string {
		return "DATABASE_URL=host=/run/postgresql port=" + itoa(cluster.Port()) + " user=" + user + " dbname=secrets sslmode=disable"
	}
	migrate := chrootCmd(rootfs, cfg.User, cfg.WorkingDir, append(slices.Clone(cfg.Env), dbURL("postgres")), cfg.Entrypoint[0], "migrate")
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("secretsd migrate from the image: %v\n%s", err, out)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	// The audit signing key the server requires with DATABASE_URL, as the
	// README makes it, readable by the image's user only.
	signing := make([]byte, 32)
	rand.Read(signing)
	keyFile := filepath.Join(rootfs, "audit-signing.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(signing)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	owner, group, _ := strings.Cut(cfg.User, ":")
	if err := os.Chown(keyFile, atoi(owner), atoi(group)); err != nil {
		t.Fatal(err)
	}
	token := "osk_image-test-" + randomHex(16)
	env := append(slices.Clone(cfg.Env),
		// Loopback and free ports: the test shares the host's network.
		"SECRETS_GRPC_ADDR=127.0.0.1:0", "SECRETS_HTTP_ADDR=127.0.0.1:0",
		dbURL(migrations.DefaultServiceRole),
		"SECRETS_KEK_URL=base64key://"+base64.URLEncoding.EncodeToString(kek),
		"SECRETS_AUDIT_SIGNING_KEY=/audit-signing.key",
		"SECRETS_BOOTSTRAP_TOKEN="+token)
	srv := chrootCmd(rootfs, cfg.User, cfg.WorkingDir, env, cfg.Entrypoint[0])
	stderr, err := srv.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("chroot %s: %v", rootfs, err)
	}
	exited := make(chan error, 1)
	logs := make(chan map[string]any, 100)
	var logText bytes.Buffer
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logText.WriteString(sc.Text() + "\n")
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				select {
				case logs <- line:
				default:
				}
			}
		}
		exited <- srv.Wait()
	}()
	t.Cleanup(func() { srv.Process.Kill() })

	var grpcAddr, httpURL string
	for grpcAddr == "" {
		select {
		case line := <-logs:
			if line["msg"] == "secretsd serving" {
				grpcAddr, httpURL = line["grpc"].(string), "http://"+line["http"].(string)
			}
		case err := <-exited:
			t.Fatalf("secretsd exited at start: %v\n%s", err, logText.String())
		case <-time.After(90 * time.Second):
			t.Fatalf("secretsd not serving after 90s:\n%s", logText.String())
		}
	}
	waitReady(t, httpURL)

	// REST in, secretctl (from the image, in the chroot) out.
	value := "image-value-" + randomHex(8)
	req, _ := http.NewRequest("PUT", httpURL+"/v1/secrets/IMAGE_TEST", strings.NewReader(`{"value":"`+base64.StdEncoding.EncodeToString([]byte(value))+`"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, body)
	}
	ctl := chrootCmd(rootfs, cfg.User, cfg.WorkingDir, []string{"SECRETS_ADDR=" + grpcAddr, "SECRETS_TOKEN=" + token},
		"/usr/local/bin/secretctl", "get", "IMAGE_TEST")
	got, err := ctl.Output()
	if err != nil {
		t.Fatalf("secretctl get: %v", err)
	}
	if strings.TrimSpace(string(got)) != value {
		t.Errorf("secretctl get printed %q, want %q", got, value)
	}

	// SIGTERM: a clean exit, promptly.
	began := time.Now()
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logText.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM:\n%s", logText.String())
	}
	t.Logf("image %s: served from the exported filesystem as %s, SIGTERM to exit %v", image, cfg.User, time.Since(began).Round(time.Millisecond))
}

// exportImage writes the filesystem of image into dir.
func exportImage(t *testing.T, image, dir string) {
	t.Helper()
	out, err := exec.Command("podman", "create", image).Output()
	if err != nil {
		t.Fatalf("podman create: %v", err)
	}
	id := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", id).Run() })
	cmd := exec.Command("podman", "export", id)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(pipe)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("podman export: %v", err)
		}
		name := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(name, 0o755)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
				_, err = io.Copy(f, tr)
				f.Close()
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, name)
		default:
			continue
		}
		if err == nil && h.Typeflag != tar.TypeSymlink {
			if err = os.Chmod(name, h.FileInfo().Mode()); err == nil {
				err = os.Lchown(name, h.Uid, h.Gid)
			}
		}
		if err != nil {
			t.Fatalf("extract %s: %v", h.Name, err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("podman export: %v", err)
	}
}

// checkStatic asserts that path is an ELF executable with no interpreter
// (statically linked: nothing else in the image to load it).
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked", path)
		}
	}
}

// chrootCmd runs name inside rootfs as user ("uid:gid").
func chrootCmd(rootfs, user, workdir string, env []string, name string, args ...string) *exec.Cmd {
	uid, gid, _ := strings.Cut(user, ":")
	cmd := exec.Command(name, args...)
	cmd.Env = env
	if workdir == "" {
		workdir = "/"
	}
	cmd.Dir = workdir
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     rootfs,
		Credential: &syscall.Credential{Uid: uint32(atoi(uid)), Gid: uint32(atoi(gid)), Groups: []uint32{}},
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	return cmd
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not ready in 60s (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func itoa(n int) string { return strconv.Itoa(n) }

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
