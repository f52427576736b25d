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
