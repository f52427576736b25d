package store

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/orient-bot/secrets/server/catalog"
)

// Bounds of the caller-influenced text columns of an audit event.
const (
	maxAuditActor  = 256
	maxAuditAction = 64
	maxAuditPeer   = 256
	maxAuditDetail = 1024
	maxAuditReqID  = 128
)

// InvalidMarker starts a stored key or request id that broke its rule: the
// marker and a short hash of the bytes sent, never the bytes.
const InvalidMarker = "invalid:"

var auditRequestID = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// boundEvent makes an event safe to store whatever the caller sent: a key
// or request id that breaks its rule becomes the marker and a hash, and free
// text is escaped (no control characters, valid UTF-8) and bounded. So no
// event can fail the insert of the events batched with it, forge a line
// where it is printed, or grow a page of the log past its limit.
func boundEvent(e *AuditEvent) {
	if e.Key != "" && !catalog.ValidKey(e.Key) {
		e.Key = invalidToken(e.Key)
	}
	if e.RequestID != "" && !auditRequestID.MatchString(e.RequestID) {
		e.RequestID = invalidToken(e.RequestID)
	}
	e.Actor = EscapeText(e.Actor, maxAuditActor)
	e.Action = EscapeText(e.Action, maxAuditAction)
	e.Outcome = EscapeText(e.Outcome, maxAuditAction)
	e.Peer = EscapeText(e.Peer, maxAuditPeer)
	e.Detail = EscapeText(e.Detail, maxAuditDetail)
}

func invalidToken(s string) string {
	h := sha256.Sum256([]byte(s))
	return InvalidMarker + hex.EncodeToString(h[:8])
}

// EscapeText returns s with control characters and invalid UTF-8 written as
// Go escapes (\n, \x00, \u2028, …) and cut to at most max bytes (with "…").
func EscapeText(s string, max int) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || r == '\\' {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && size <= 1:
			piece = `\x` + hex.EncodeToString([]byte{s[i]})
		case r == '\\':
			piece = `\\`
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			q := strconv.QuoteRune(r)
			piece = q[1 : len(q)-1]
		default:
			piece = s[i : i+size]
		}
		if b.Len()+len(piece) > max-len("…") {
			b.WriteString("…")
			break
		}
		b.WriteString(piece)
		i += size
	}
	return b.String()
}
