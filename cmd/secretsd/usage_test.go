package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestUsageListsEveryEnvVar: secretsd -h names every environment variable
// the command reads (found in its source), so none is undocumented.
func TestUsageListsEveryEnvVar(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`"((?:SECRETS_[A-Z_]+)|DATABASE_URL)"`)
	seen := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllStringSubmatch(string(src), -1) {
			seen++
			if !regexp.MustCompile(`(?m)^  ` + m[1] + ` `).MatchString(usage) {
				t.Errorf("%s (read in %s) is not listed in secretsd -h", m[1], f)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("found %d environment variables in the source; the pattern is broken", seen)
	}
}

// TestBadEnvironmentValuesAreErrors: a variable that is set but does not
// parse stops the start with its name, never a silent default
// (SECRETS_KEK_TIMEOUT=30 used to mean 10 s). --log-format=bogus would
// fail later in the start: the error must be the variable's.
func TestBadEnvironmentValuesAreErrors(t *testing.T) {
	for _, c := range []struct{ name, value, want string }{
		{"SECRETS_KEK_TIMEOUT", "30", `SECRETS_KEK_TIMEOUT: "30" is not a positive duration`},
		{"SECRETS_KEK_TIMEOUT", "-5s", `SECRETS_KEK_TIMEOUT: "-5s" is not a positive duration`},
		{"SECRETS_ALLOW_PLAINTEXT", "yes-please", `SECRETS_ALLOW_PLAINTEXT: "yes-please" is not true or false`},
		{"SECRETS_ALLOW_OWNER_ROLE", "on", `SECRETS_ALLOW_OWNER_ROLE: "on" is not true or false`},
	} {
		t.Run(c.name+"="+c.value, func(t *testing.T) {
			t.Setenv(c.name, c.value)
			err := run([]string{"--log-format=bogus"})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want an error containing %s", err, c.want)
			}
		})
	}
	err := run([]string{"--kek-timeout=0", "--log-format=bogus"})
	if err == nil || !strings.Contains(err.Error(), "--kek-timeout") {
		t.Fatalf("--kek-timeout=0: %v", err)
	}
}
