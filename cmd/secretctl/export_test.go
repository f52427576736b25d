package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The export reads back exactly with Node's dotenv: values with quotes,
// backslashes, tabs, $ and CRLF line breaks included. Checked against a
// model of Node's reader always, and against Node's dotenv itself when node
// and the dotenv package are on the machine.
func TestExportDotenvNode(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	ctx := context.Background()
	stored := map[string]string{
		"CUSTOM_BACKSLASH": `it's a \ backslash`,
		"CUSTOM_QUOTES":    `it's "quoted"`,
		"CUSTOM_TAB":       "it's\ta tab",
		"CUSTOM_DOLLAR":    "it's $HOME",
		"CUSTOM_PEM":       "-----BEGIN KEY-----\r\nMIIE\r\n-----END KEY-----\r\n",
		"CUSTOM_LINES":     "line 1\nline \"2\"",
		"CUSTOM_PATH":      `C:\dir\`,
		"CUSTOM_PLAIN":     "plain",
	}
	for k, v := range stored {
		putValue(t, c, k, v)
	}
	exp := cli(t, ctx, srv.GRPCAddr(), "", nil, "export", "dotenv", "--plaintext")
	if exp.code != 0 || exp.stderr != "" {
		t.Fatalf("export: %+v", exp)
	}
	if d := cmp.Diff(stored, nodeDotenvParse(exp.stdout)); d != "" {
		t.Errorf("Node's dotenv (model) reads the export differently (-stored +read):\n%s\n%s", d, exp.stdout)
	}
	t.Run("node", func(t *testing.T) {
		got := runNodeDotenv(t, exp.stdout)
		if d := cmp.Diff(stored, got); d != "" {
			t.Errorf("Node's dotenv reads the export differently (-stored +read):\n%s", d)
		}
	})

	// A value no quoting gives Node back is written for secretctl, with a
	// warning naming its key (never the value).
	hard := "it's `both`\r\nand \\ \"all\""
	putValue(t, c, "CUSTOM_HARD", hard)
	exp = cli(t, ctx, srv.GRPCAddr(), "", nil, "export", "dotenv", "--plaintext", "--keys", "CUSTOM_HARD")
	if exp.code != 0 || !strings.Contains(exp.stderr, "CUSTOM_HARD: written with backslash escapes") || strings.Contains(exp.stderr, "both") {
		t.Fatalf("export of a value Node cannot read back: %+v", exp)
	}
	if got, err := parseDotenv([]byte(exp.stdout)); err != nil || len(got) != 1 || string(got[0].Value) != hard {
		t.Fatalf("secretctl reads %+v, %v; want %q", got, err, hard)
	}

	// --keys and --category together are refused, not half ignored.
	r := cli(t, ctx, srv.GRPCAddr(), "", nil, "export", "dotenv", "--plaintext", "--keys", "CUSTOM_PLAIN", "--category", "slack")
	if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "--keys or --category, not both") {
		t.Fatalf("--keys with --category: %+v", r)
	}
}

// runNodeDotenv parses src with Node's dotenv package, or skips: it needs
// node and the dotenv package, found through NODE_PATH or
// $SECRETCTL_TEST_NODE_DOTENV (a directory where `npm install dotenv` ran).
func runNodeDotenv(t *testing.T, src string) map[string]string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: Node's dotenv checked through its model only")
	}
	dir := os.Getenv("SECRETCTL_TEST_NODE_DOTENV")
	if dir == "" {
		dir = t.TempDir()
	}
	script := `const d = require(require.resolve("dotenv", {paths: [process.argv[1], ...(process.env.NODE_PATH || "").split(":")]}));
let s = ""; process.stdin.on("data", c => s += c).on("end", () => process.stdout.write(JSON.stringify(d.parse(s))));`
	cmd := exec.Command(node, "-e", script, filepath.Clean(dir))
	cmd.Stdin = strings.NewReader(src)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if strings.Contains(stderr.String(), "Cannot find module") {
		t.Skip("Node's dotenv package not found: run `npm install dotenv` in a directory and set SECRETCTL_TEST_NODE_DOTENV to it")
	}
	if err != nil {
		t.Fatalf("node: %v\n%s", err, stderr.String())
	}
	got := map[string]string{}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node output: %v\n%s", err, out)
	}
	return got
}
