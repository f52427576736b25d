package main

import (
	"fmt"
	"math/rand/v2"
	"regexp"
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
		line, _ := formatDotenv(name, []byte(v))
		file.WriteString(line)
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

// A # that begins an unquoted value starts a comment, as in Node's dotenv:
// the value is empty (and the import reports it), not "# fill in".
func TestParseDotenvCommentForValue(t *testing.T) {
	src := "A= # fill in\nB=   # TODO\nC=\t#x\nD=#x\nE=x # y\nF='#kept'\nG=a#b\n"
	got, err := parseDotenv([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []dotenvEntry{
		{"A", []byte(""), 1}, {"B", []byte(""), 2}, {"C", []byte(""), 3}, {"D", []byte(""), 4},
		{"E", []byte("x"), 5}, {"F", []byte("#kept"), 6}, {"G", []byte("a#b"), 7},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("parse (-want +got):\n%s", d)
	}
}

// A lone CR ends a line (old Mac files), as in Node's dotenv, which turns
// every CRLF and CR into LF before it parses, quoted values included.
func TestParseDotenvLoneCR(t *testing.T) {
	src := "A=x\rB='y'\r\rC=\"multi\rline\"\rD=z\r\nE=w"
	got, err := parseDotenv([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []dotenvEntry{
		{"A", []byte("x"), 1}, {"B", []byte("y"), 2}, {"C", []byte("multi\nline"), 4},
		{"D", []byte("z"), 6}, {"E", []byte("w"), 7},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("parse (-want +got):\n%s", d)
	}
}

// nodeDotenvLine is the pattern of Node's dotenv parse (lib/main.js, LINE):
// a model of that reader for machines without node. Go's regexp picks the
// same leftmost-first match as JavaScript's backtracking here; JavaScript's
// $ also matches before U+2028 and U+2029, which the tests do not use.
var nodeDotenvLine = regexp.MustCompile(`(?m)(?:^|^)\s*(?:export\s+)?([\w.-]+)(?:\s*=\s*?|:\s+?)(\s*'(?:\\'|[^'])*'|\s*"(?:\\"|[^"])*"|\s*` +
	"`(?:\\\\`|[^`])*`" + `|[^#\r\n]+)?\s*(?:#.*)?(?:$|$)`)

// nodeDotenvParse reads src as Node's dotenv parse does: CRLF and CR become
// LF, values are trimmed, one pair of matching quotes is removed, and
// inside double quotes \n and \r are the only escapes.
func nodeDotenvParse(src string) map[string]string {
	src = strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(src)
	out := map[string]string{}
	for _, m := range nodeDotenvLine.FindAllStringSubmatch(src, -1) {
		v := strings.TrimSpace(m[2])
		if len(v) >= 2 && strings.ContainsRune(`'"`+"`", rune(v[0])) && v[len(v)-1] == v[0] {
			q := v[0]
			v = v[1 : len(v)-1]
			if q == '"' {
				v = strings.NewReplacer(`\n`, "\n", `\r`, "\r").Replace(v)
			}
		}
		out[m[1]] = v
	}
	return out
}

// The model agrees with Node's dotenv on the cases that matter here.
func TestNodeDotenvModel(t *testing.T) {
	got := nodeDotenvParse("A= # c\nB=x\rC='y'\nD=\"a\\nb\\\\c\\\"\"\nE=`it's`\nF=\"x\ry\"\nG=foo#bar\n")
	want := map[string]string{"A": "", "B": "x", "C": "y", "D": "a\nb\\\\c\\\"", "E": "it's", "F": "x\ny", "G": "foo"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("model (-want +got):\n%s", d)
	}
}

// formatDotenv's output reads back exactly with Node's dotenv (its model
// here; TestExportDotenvNode runs the real one) unless it says otherwise,
// and it says otherwise only for the values no quoting can give Node.
func TestFormatDotenvReadableByNode(t *testing.T) {
	values := []string{
		"plain", "it's", `it's a \ backslash`, `it's "quoted"`, "it's\ttab", "it's $HOME", `back\slash\n`,
		"-----BEGIN KEY-----\r\nMIIE\r\n-----END KEY-----\r\n", "line\nwith \"quote\"", "`tick` and 'quote'",
		`a\`, `ends in \`, `it's C:\dir\`, "x\n", " spaced ", `'"` + "`\\\n",
	}
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []rune("aZ09 \t\n\r'\"`\\$#={}ü-")
	for range 2000 {
		b := make([]rune, 1+r.IntN(30))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		values = append(values, string(b))
	}
	var file strings.Builder
	want := map[string]string{}
	for i, v := range values {
		name := fmt.Sprintf("K%d", i)
		line, portable := formatDotenv(name, []byte(v))
		endsInBackslash := strings.HasSuffix(v, `\`)
		hard := (strings.ContainsAny(v, "'\n\r") || endsInBackslash) && strings.ContainsAny(v, `"\`) &&
			(strings.ContainsAny(v, "`\r") || endsInBackslash) && !dotenvBare(v)
		if portable == hard {
			t.Errorf("%q: portable = %v", v, portable)
		}
		if portable {
			file.WriteString(line)
			want[name] = v
		}
	}
	got := nodeDotenvParse(file.String())
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s: Node's dotenv reads %q, stored %q", name, got[name], v)
		}
	}
}
