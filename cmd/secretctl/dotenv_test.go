package main

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseDotenv(t *testing.T) {
	src := "# Orient settings\n" +
		"\n" +
		"export ANTHROPIC_API_KEY=sk-ant-abc   # inline comment\n" +
		"  SPACED = value with spaces  \n" +
		"HASH=abc#not-a-comment\n" +
		"SINGLE='literal \\n $HOME # kept'\n" +
		"DOUBLE=\"tab\\there \\\"q\\\" \\\\ \\$X \\q\"\n" +
		"EMPTY=\n" +
		"PEM=\"-----BEGIN KEY-----\n" +
		"abc\n" +
		"-----END KEY-----\"\n" +
		"BACKTICK=`it's \"x\"`\r\n" +
		"DUP=first\n" +
		"lower.name-x=ok\n" +
		"DUP=second # a later assignment wins\n" +
		"LAST=no-newline"
	got, err := parseDotenv([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []dotenvEntry{
		{"ANTHROPIC_API_KEY", []byte("sk-ant-abc"), 3},
		{"SPACED", []byte("value with spaces"), 4},
		{"HASH", []byte("abc#not-a-comment"), 5},
		{"SINGLE", []byte(`literal \n $HOME # kept`), 6},
		{"DOUBLE", []byte("tab\there \"q\" \\ $X \\q"), 7},
		{"EMPTY", []byte(""), 8},
		{"PEM", []byte("-----BEGIN KEY-----\nabc\n-----END KEY-----"), 9},
		{"BACKTICK", []byte(`it's "x"`), 12},
		{"DUP", []byte("second"), 15},
		{"lower.name-x", []byte("ok"), 14},
		{"LAST", []byte("no-newline"), 16},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("parse (-want +got):\n%s", d)
	}
}

func TestParseDotenvErrorsNameTheLineNotTheValue(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"A=1\nB=\"s3cret-unterminated\nC=3\n", "line 2: B: unterminated \" quote"},
		{"A='s3cret' trailing\n", "line 1: A: unexpected text after the closing quote"},
		{"A=1\n=s3cret\n", "line 2: expected NAME=value"},
		{"A 1\n", "line 1: A: expected = after the name"},
		{"A=\xff\n", "not UTF-8 text"},
	} {
		_, err := parseDotenv([]byte(c.src))
		if err == nil || err.Error() != c.want {
			t.Errorf("parse(%q) = %v, want %q", c.src, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error repeats the value: %v", err)
		}
	}
}

// Every text value survives formatDotenv then parseDotenv.
func TestDotenvRoundTrip(t *testing.T) {
	values := []string{
		"plain", "with space", "it's", `"quoted"`, "$HOME and ${X}", `back\slash\n`, "a#b", "a #b",
		"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n", "crlf\r\nline",
		" leading and trailing ", "tab\there", "'", `\`, "ünïcödé", "`tick`", "=", "x\n",
	}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("aZ09 \t\n\r'\"`\\$#={}ü-")
	for range 500 {
		n := 1 + r.IntN(40)
		b := make([]rune, n)
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		values = append(values, string(b))
	}
	var file strings.Builder
	var want []dotenvEntry
	for i, v := range values {
		name := "K" + strings.Repeat("X", i%3) + "_" + string(rune('A'+i%26)) + strings.Repeat("Y", i/26)
		file.WriteString(formatDotenv(name, []byte(v)))
		want = append(want, dotenvEntry{Name: name, Value: []byte(v)})
	}
	got, err := parseDotenv([]byte(file.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Name != want[i].Name || string(got[i].Value) != string(want[i].Value) {
			t.Errorf("entry %d: got %s=%q, want %s=%q", i, got[i].Name, got[i].Value, want[i].Name, want[i].Value)
		}
	}
}
