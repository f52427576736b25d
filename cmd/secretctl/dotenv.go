package main

import (
	"bytes"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// dotenvEntry is one assignment of a .env file.
type dotenvEntry struct {
	Name  string
	Value []byte
	Line  int // where the assignment starts, from 1
}

// parseDotenv reads the usual .env syntax: blank lines and # comments,
// an optional "export " prefix, NAME=value with spaces around = allowed,
// unquoted values (trimmed; " #" starts a comment, and so does a # that
// begins the value: `KEY= # fill in` is empty), 'single' and `backtick`
// quoted values (literal), and "double" quoted values with the escapes \n
// \r \t \\ \" \$ (a backslash before anything else is kept). Quoted values
// may span lines (PEM keys). Line breaks are LF, CRLF or a lone CR (old
// Mac files); like Node's dotenv, every CRLF and CR becomes LF first, in
// quoted values too. Variables are not expanded: $X stays $X, as in Node's
// dotenv. A later assignment of the same name wins.
//
// Errors name the line, never a value.
func parseDotenv(src []byte) ([]dotenvEntry, error) {
	if !utf8.Valid(src) {
		return nil, fmt.Errorf("not UTF-8 text")
	}
	s := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(src))
	s = strings.TrimPrefix(s, "\ufeff")
	var out []dotenvEntry
	index := map[string]int{}
	line := 1
	for len(s) > 0 {
		// One logical line: leading space, then a comment, blank, or assignment.
		rest := strings.TrimLeft(s, " \t")
		if rest == "" {
			break
		}
		if rest[0] == '\n' || rest[0] == '#' {
			nl := strings.IndexByte(rest, '\n')
			if nl < 0 {
				break
			}
			s, line = rest[nl+1:], line+1
			continue
		}
		if after, ok := strings.CutPrefix(rest, "export"); ok && len(after) > 0 && (after[0] == ' ' || after[0] == '\t') {
			rest = strings.TrimLeft(after, " \t")
		}
		n := 0
		for n < len(rest) && isNameByte(rest[n], n == 0) {
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("line %d: expected NAME=value", line)
		}
		name := rest[:n]
		rest = strings.TrimLeft(rest[n:], " \t")
		if rest == "" || rest[0] != '=' {
			return nil, fmt.Errorf("line %d: %s: expected = after the name", line, name)
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		start := line
		var value string
		var err error
		value, rest, line, err = dotenvValue(rest, line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", start, name, err)
		}
		e := dotenvEntry{Name: name, Value: []byte(value), Line: start}
		if i, ok := index[name]; ok {
			out[i] = e
		} else {
			index[name] = len(out)
			out = append(out, e)
		}
		s = rest
	}
	return out, nil
}

func isNameByte(c byte, first bool) bool {
	switch {
	case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		return true
	case c >= '0' && c <= '9', c == '.', c == '-':
		return !first
	}
	return false
}

// dotenvValue reads a value at the start of s and returns it, the input
// after its line, and the line number there.
func dotenvValue(s string, line int) (value, rest string, next int, err error) {
	if s != "" && (s[0] == '"' || s[0] == '\'' || s[0] == '`') {
		q := s[0]
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != q; i++ {
			c := s[i]
			if c == '\n' {
				line++
			}
			if c == '\\' && q == '"' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				case '\\', '"', '$':
					b.WriteByte(s[i])
				case '\n':
					line++
					b.WriteString("\\\n")
				default:
					b.WriteByte('\\')
					b.WriteByte(s[i])
				}
				continue
			}
			b.WriteByte(c)
		}
		if i >= len(s) {
			return "", "", line, fmt.Errorf("unterminated %c quote", q)
		}
		// After the closing quote: only spaces and a comment.
		tail, after, found := strings.Cut(s[i+1:], "\n")
		if t := strings.TrimLeft(tail, " \t"); t != "" && t[0] != '#' {
			return "", "", line, fmt.Errorf("unexpected text after the closing quote")
		}
		if found {
			line++
		}
		return b.String(), after, line, nil
	}
	v, after, found := strings.Cut(s, "\n")
	if found {
		line++
	}
	// A comment starts at a # that begins the value (s starts after the
	// spaces following =) or that follows a space.
	if strings.HasPrefix(v, "#") {
		return "", after, line, nil
	}
	for i := 1; i < len(v); i++ {
		if v[i] == '#' && (v[i-1] == ' ' || v[i-1] == '\t') {
			v = v[:i]
			break
		}
	}
	return strings.TrimRight(v, " \t"), after, line, nil
}

// formatDotenv writes one assignment so that parseDotenv gives back
// exactly value, and so does Node's dotenv whenever it can. Node's reader
// has no escapes but \n and \r inside double quotes (a backslash before
// anything else stays, \" included), turns every CR into LF, and takes a
// backslash just before a closing quote for an escaped quote (the value
// then runs on to a later quote). So the form follows what the value holds:
//
//   - one line without ', not ending in a backslash: 'single quotes'
//     (nothing is special inside);
//   - no " and no backslash: "double quotes", with \n and \r for line
//     breaks (the only escapes that then appear);
//   - no backtick and no CR, not ending in a backslash: `backticks`, line
//     breaks kept as they are;
//   - one line without quotes or #, not starting or ending with a space:
//     unquoted (say, C:\dir\);
//   - otherwise: double quotes with \n \r \t \\ \" \$ escaped, which
//     parseDotenv reads back but Node's dotenv does not; portable is false.
func formatDotenv(name string, value []byte) (line string, portable bool) {
	v := string(value)
	endsInBackslash := strings.HasSuffix(v, `\`)
	switch {
	case !strings.ContainsAny(v, "'\n\r") && !endsInBackslash:
		return name + "='" + v + "'\n", true
	case !strings.ContainsAny(v, `"\`):
		r := strings.NewReplacer("\n", `\n`, "\r", `\r`)
		return name + "=\"" + r.Replace(v) + "\"\n", true
	case !strings.ContainsAny(v, "`\r") && !endsInBackslash:
		return name + "=`" + v + "`\n", true
	case dotenvBare(v):
		return name + "=" + v + "\n", true
	}
	var b strings.Builder
	b.WriteString(name + "=\"")
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\\', '"', '$':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteString("\"\n")
	return b.String(), false
}

// dotenvBare reports whether v reads back the same unquoted, with
// parseDotenv and with Node's dotenv: not empty, one line, no quote or #,
// no space (or BOM) at either end, no Unicode line separator.
func dotenvBare(v string) bool {
	if v == "" || strings.ContainsAny(v, "'\"`#\n\r\u2028\u2029") {
		return false
	}
	first, _ := utf8.DecodeRuneInString(v)
	last, _ := utf8.DecodeLastRuneInString(v)
	blank := func(r rune) bool { return unicode.IsSpace(r) || r == '\ufeff' }
	return !blank(first) && !blank(last)
}

// dotenvSafe reports whether a value can be written to a .env file: UTF-8
// text without NUL bytes.
func dotenvSafe(value []byte) bool {
	return utf8.Valid(value) && !bytes.ContainsRune(value, 0)
}
