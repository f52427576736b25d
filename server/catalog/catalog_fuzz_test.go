package catalog

import (
	"fmt"
	"strings"
	"testing"
)

// validKey is the key rule written out by hand: 1 to 128 bytes, an
// uppercase ASCII letter, then uppercase letters, digits or underscores.
func validKey(k string) bool {
	if len(k) == 0 || len(k) > 128 || k[0] < 'A' || k[0] > 'Z' {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// FuzzValidKey checks ValidKey against the rule written out by hand
// (regular expressions and multi-byte input disagree in subtle ways: a
// trailing newline, a Unicode uppercase letter, a 129th character).
func FuzzValidKey(f *testing.F) {
	for _, k := range []string{"ANTHROPIC_API_KEY", "A", "a", "_A", "1A", "A-B", "A\n", "ÄPI_KEY", "A\x00",
		"K" + strings.Repeat("_", 127), "K" + strings.Repeat("_", 128), ""} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if got, want := ValidKey(key), validKey(key); got != want {
			t.Fatalf("ValidKey(%q) = %v, want %v", key, got, want)
		}
	})
}

// FuzzCheckValue checks that CheckValue accepts exactly the values of the
// right size and, for catalog keys, shape, and that its error is exactly
// the one its rule describes: it depends on the key and the value's length,
// never on the value's bytes (so it cannot echo them).
func FuzzCheckValue(f *testing.F) {
	f.Add("SLACK_BOT_TOKEN", []byte("xoxb-123"))
	f.Add("SLACK_BOT_TOKEN", []byte("xoxp-123"))
	f.Add("OPENAI_API_KEY", []byte("sk-"))
	f.Add("ANTHROPIC_API_KEY", []byte("sk-ant"))
	f.Add("CUSTOM", []byte{})
	f.Add("CUSTOM", []byte("\x00\xff secret value"))
	f.Add("GITHUB_APP_PRIVATE_KEY", []byte("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		// Sizes around the limit, without making the corpus huge.
		for _, v := range [][]byte{value, padTo(value, MaxValueSize), padTo(value, MaxValueSize+1)} {
			var want string
			e, known := Lookup(key)
			switch {
			case len(v) == 0:
				want = "must not be empty"
			case len(v) > MaxValueSize:
				want = fmt.Sprintf("must be at most %d bytes, got %d", MaxValueSize, len(v))
			case known && e.Prefix != "" && !strings.HasPrefix(string(v), e.Prefix):
				want = key + " must start with " + e.Prefix
			}
			err := CheckValue(key, v)
			switch {
			case want == "" && err != nil:
				t.Fatalf("CheckValue(%q, %d bytes) = %v, want nil", key, len(v), err)
			case want != "" && (err == nil || err.Error() != want):
				t.Fatalf("CheckValue(%q, %d bytes) = %v, want %q", key, len(v), err, want)
			}
		}
	})
}

// padTo returns v extended (or cut) to n bytes, keeping its prefix.
func padTo(v []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, v)
	for i := len(v); i < n; i++ {
		out[i] = 'p'
	}
	return out
}

// FuzzNormalizeCategory checks that a normalized category matches its
// pattern, is the lowercased, trimmed input, and normalizes to itself; the
// error never quotes the input.
func FuzzNormalizeCategory(f *testing.F) {
	for _, c := range []string{"slack", " Slack ", "AI", "my-cat_1", "", "-x", "x y", "ß", "\tdatabase\n", strings.Repeat("a", 65)} {
		f.Add(c)
	}
	_, refusal := NormalizeCategory("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := NormalizeCategory(s)
		if err != nil {
			if err.Error() != refusal.Error() {
				t.Fatalf("NormalizeCategory(%q) error %q, want the fixed %q", s, err, refusal)
			}
			return
		}
		if !categoryPattern.MatchString(c) || c != strings.ToLower(strings.TrimSpace(s)) {
			t.Fatalf("NormalizeCategory(%q) = %q", s, c)
		}
		if again, err := NormalizeCategory(c); err != nil || again != c {
			t.Fatalf("NormalizeCategory(%q) = %q, %v; not idempotent", c, again, err)
		}
	})
}
