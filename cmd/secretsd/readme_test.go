package main_test

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeSection returns the README's text from the heading title to the
// next heading of the same level.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## "+title+"\n")
	if start < 0 {
		t.Fatalf("README has no section %q", title)
	}
	rest := text[start+1:]
	if end := strings.Index(rest[3:], "\n## "); end >= 0 {
		rest = rest[:end+3]
	}
	return rest
}

// readmeCommands extracts the commands a reader of "Calling the API" copies:
// the lines of its sh blocks, and the grpcurl and curl columns of its
// table, with the table's "…" shorthand expanded as its header says
// (grpcurl -plaintext 127.0.0.1:9090, the orient.secrets.v1 package).
func readmeCommands(t *testing.T) (blocks []string, grpcurls, curls []string) {
	section := readmeSection(t, "Calling the API")
	inBlock := false
	sc := bufio.NewScanner(strings.NewReader(section))
	var cont string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```sh"):
			inBlock = true
			continue
		case strings.HasPrefix(line, "```"):
			inBlock = false
			continue
		}
		if inBlock {
			if strings.HasSuffix(line, "\\") {
				cont += strings.TrimSuffix(line, "\\")
				continue
			}
			line = cont + line
			cont = ""
			if cmd := strings.TrimSpace(line); cmd != "" && !strings.HasPrefix(cmd, "#") {
				blocks = append(blocks, cmd)
			}
			continue
		}
		cells := strings.Split(line, " | ")
		if !strings.HasPrefix(line, "| ") || len(cells) != 3 {
			continue
		}
		if g := firstCode(cells[1]); strings.Contains(g, "SecretService/") || strings.Contains(g, "Service/") {
			grpcurls = append(grpcurls, expandGrpcurl(g))
		}
		if c := firstCode(cells[2]); strings.HasPrefix(c, "curl ") {
			curls = append(curls, c)
		}
	}
	return blocks, grpcurls, curls
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

func firstCode(cell string) string {
	if m := codeSpan.FindStringSubmatch(cell); m != nil {
		return m[1]
	}
	return ""
}

// expandGrpcurl turns the table's "… -d '{…}' … SecretService/Get" into the
// full command.
func expandGrpcurl(c string) string {
	if !strings.HasPrefix(c, "…") {
		return c
	}
	c = strings.TrimSpace(strings.TrimPrefix(c, "…"))
	if i := strings.LastIndex(c, "… "); i >= 0 {
		return "grpcurl -plaintext " + strings.TrimSpace(c[:i]) + " 127.0.0.1:9090 orient.secrets.v1." + c[i+len("… "):]
	}
	return "grpcurl -plaintext 127.0.0.1:9090 orient.secrets.v1." + c
}

// TestREADMECommands runs the commands of the README's "Calling the API"
// as a reader would, against secretsd started like `make run` (the
// embedded default in ./.secrets-data of the working directory), with the
// token the README exports. Only the addresses are rewritten (to free
// ports). Each must exit 0; curl runs with --fail, so an HTTP error fails
// it. grpcurl commands run when grpcurl is installed
// (scripts/ensure-api-tools.sh; required in CI).
func TestREADMECommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real binary")
	}
	t.Parallel()
	blocks, grpcurls, curls := readmeCommands(t)
	if len(blocks) < 4 || len(grpcurls) < 15 || len(curls) < 15 {
		t.Fatalf("found %d block lines, %d grpcurl and %d curl commands; the README's layout changed", len(blocks), len(grpcurls), len(curls))
	}
	grpcurl := lookTool(t, "grpcurl")

	bin := buildSecretsd(t)
	// The embedded cluster may run as another user (postgres, when we are
	// root): the working directory must be traversable.
	work, err := os.MkdirTemp("/tmp", "secretsd-readme-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(work, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	p := startSecretsd(t, bin, filepath.Join(work, ".secrets-data"))
	defer p.stop(t)
	httpAddr := strings.TrimPrefix(p.httpURL, "http://")
	m := regexp.MustCompile(`\bgrpc=(\S+)`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no gRPC address in the log:\n%s", p.stderr)
	}
	grpcAddr := m[1]

	env := append(cleanEnv(), "PATH="+filepath.Dir(grpcurl)+":"+os.Getenv("PATH"))
	run := func(kind, cmd string) {
		t.Helper()
		shown := cmd
		cmd = strings.NewReplacer("127.0.0.1:9090", grpcAddr, "localhost:8080", httpAddr, "127.0.0.1:8080", httpAddr).Replace(cmd)
		if strings.HasPrefix(cmd, "grpcurl ") && grpcurl == "" {
			return
		}
		if strings.HasPrefix(cmd, "grpcurl ") && !strings.Contains(cmd, "authorization:") && !strings.Contains(cmd, " list") && !strings.Contains(cmd, " describe ") {
			cmd = strings.Replace(cmd, "grpcurl -plaintext", `grpcurl -plaintext -H "authorization: Bearer $SECRETS_TOKEN"`, 1)
		}
		watch := strings.Contains(cmd, "changes:watch") || strings.HasSuffix(cmd, "/WatchChanges")
		if strings.HasPrefix(cmd, "curl ") {
			extra := "curl -sS --fail-with-body "
			if !strings.Contains(cmd, "Authorization:") {
				extra += `-H "Authorization: Bearer $SECRETS_TOKEN" `
			}
			if watch {
				extra += "--max-time 2 "
			}
			cmd = strings.Replace(cmd, "curl ", extra, 1)
		}
		if watch && strings.HasPrefix(cmd, "grpcurl ") {
			cmd = strings.Replace(cmd, "grpcurl ", "grpcurl -max-time 2 ", 1)
		}
		script := "set -e\nexport SECRETS_TOKEN=$(cat .secrets-data/admin-token)\n" + cmd + "\n"
		c := exec.Command("bash", "-c", script)
		c.Dir = work
		c.Env = env
		began := time.Now()
		out, err := c.CombinedOutput()
		var exit *exec.ExitError
		if watch && errors.As(err, &exit) && (exit.ExitCode() == 28 || strings.Contains(string(out), "DeadlineExceeded")) {
			err = nil // a watch streams until it is stopped: 2 s of it
		}
		if err != nil {
			t.Errorf("README %s command failed (%v) after %v:\n  %s\n%s", kind, err, time.Since(began).Round(time.Millisecond), shown, out)
		}
	}
	for _, c := range blocks {
		run("block", c)
	}
	// Each column is a whole walk through the API (store, read, update,
	// disable, delete, tokens, KEK): gRPC first, then REST.
	for _, c := range grpcurls {
		run("grpcurl", c)
	}
	for _, c := range curls {
		run("curl", c)
	}
}

// lookTool finds a Go tool on PATH or in GOPATH/bin; "" (with the calls
// skipped) when missing, unless REQUIRE_API_TOOLS is set.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("REQUIRE_API_TOOLS") != "" {
		t.Fatalf("%s not installed: run scripts/ensure-api-tools.sh", name)
	}
	t.Logf("%s not installed: its README commands are not run", name)
	return ""
}
