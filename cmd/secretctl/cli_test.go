package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// transcript renders one command's outcome for a golden file.
func transcript(args []string, r result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ secretctl %s\n%s", strings.Join(args, " "), r.stdout)
	if r.stdout != "" && !strings.HasSuffix(r.stdout, "\n") {
		b.WriteString("\n[no trailing newline]\n")
	}
	if r.stderr != "" {
		fmt.Fprintf(&b, "[stderr]\n%s", r.stderr)
	}
	fmt.Fprintf(&b, "[exit %d]\n\n", r.code)
	return b.String()
}

func TestCommandsGolden(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	addr := srv.GRPCAddr()
	ctx := context.Background()
	pemFile := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(pemFile, []byte("-----BEGIN KEY-----\nabc\n-----END KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Each group of commands becomes one golden file.
	groups := []struct {
		name string
		cmds []struct {
			stdin string
			args  []string
		}
	}{}
	add := func(group, stdin string, args ...string) {
		if len(groups) == 0 || groups[len(groups)-1].name != group {
			groups = append(groups, struct {
				name string
				cmds []struct {
					stdin string
					args  []string
				}
			}{name: group})
		}
		g := &groups[len(groups)-1]
		g.cmds = append(g.cmds, struct {
			stdin string
			args  []string
		}{stdin, args})
	}
	add("put", "s3cret-one\n", "put", "CUSTOM_API_KEY", "--description", "API key of the test service")
	add("put", "s3cret-two\n", "put", "CUSTOM_API_KEY")
	add("put", "", "put", "GITHUB_APP_PRIVATE_KEY", "--from-file", pemFile, "-o", "json")
	add("put", "", "put", "CUSTOM_API_KEY", "s3cret-on-the-command-line")
	add("put", "", "put", "CUSTOM_EMPTY")
	add("get", "", "get", "CUSTOM_API_KEY")
	add("get", "", "get", "CUSTOM_API_KEY", "--version", "1")
	add("get", "", "get", "CUSTOM_MISSING")
	add("list", "", "list", "--category", "github")
	add("list", "", "list", "--configured", "-o", "json")
	add("versions", "", "disable", "CUSTOM_API_KEY", "1")
	add("versions", "", "enable", "CUSTOM_API_KEY", "1")
	add("versions", "", "destroy", "CUSTOM_API_KEY", "1")
	add("versions", "", "get", "CUSTOM_API_KEY", "--version", "1")
	add("versions", "", "versions", "CUSTOM_API_KEY")
	add("versions", "", "versions", "CUSTOM_API_KEY", "-o", "json")
	add("versions", "", "disable", "CUSTOM_API_KEY", "first")
	add("delete", "", "delete", "CUSTOM_API_KEY")
	add("delete", "", "delete", "CUSTOM_API_KEY", "-o", "json")
	add("providers", "", "providers")
	add("providers", "", "providers", "set-default", "chat", "openai", "gpt-5")
	add("providers", "", "providers", "-o", "json")
	add("audit", "", "audit", "--key", "CUSTOM_API_KEY", "--action", "PutSecret")
	add("audit", "", "audit", "--key", "GITHUB_APP_PRIVATE_KEY", "-o", "json")
	add("consumers", "", "consumers")
	add("consumers", "", "consumers", "-o", "json")

	var all strings.Builder
	for _, g := range groups {
		var b strings.Builder
		for _, c := range g.cmds {
			r := cli(t, ctx, addr, c.stdin, nil, c.args...)
			b.WriteString(strings.ReplaceAll(transcript(c.args, r), pemFile, "key.pem"))
			all.WriteString(r.stdout + r.stderr)
		}
		golden(t, g.name, b.String())
	}
	// No value other than get's output is ever printed.
	for _, leaked := range []string{"s3cret-two", "abc"} {
		if n := strings.Count(all.String(), leaked); n > 1 {
			t.Errorf("%q printed %d times", leaked, n)
		}
	}
}

func TestPutRefusesValueArgument(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	r := cli(t, context.Background(), srv.GRPCAddr(), "from-stdin\n", nil, "put", "CUSTOM_ARG", "on-the-command-line")
	if r.code != 2 || !strings.Contains(r.stderr, "never as an argument") || strings.Contains(r.stderr, "on-the-command-line") {
		t.Fatalf("put with a value argument: %+v", r)
	}
	if r := cli(t, context.Background(), srv.GRPCAddr(), "", nil, "get", "CUSTOM_ARG"); r.code != 1 {
		t.Fatalf("value stored anyway: %+v", r)
	}
	// From stdin it works, without its trailing newline.
	cli(t, context.Background(), srv.GRPCAddr(), "from-stdin\n", nil, "put", "CUSTOM_ARG")
	if r := cli(t, context.Background(), srv.GRPCAddr(), "", nil, "get", "CUSTOM_ARG"); r.stdout != "from-stdin" {
		t.Fatalf("get = %+v", r)
	}
}
