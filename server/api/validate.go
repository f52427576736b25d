package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orient-bot/secrets/server/catalog"
)

func checkKey(field, key string) error {
	if key == "" {
		return invalidArg(field, "required")
	}
	if !catalog.ValidKey(key) {
		return invalidArg(field, catalog.KeyRule)
	}
	return nil
}

// parseVersion accepts "latest" (returned as 0) or a positive number.
func parseVersion(field, v string) (int64, error) {
	if v == "latest" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, invalidArg(field, `must be "latest" or a version number from 1`)
	}
	return n, nil
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

func checkRequestID(id string) error {
	if id != "" && !requestIDPattern.MatchString(id) {
		return invalidArg("request_id", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : - (a UUID is ideal)")
	}
	return nil
}

const maxDescription = 1024

// checkText checks free text for length and control characters.
func checkText(field, s string, maxLen int, allowNewlines bool) error {
	if !utf8.ValidString(s) {
		return invalidArg(field, "must be valid UTF-8")
	}
	if n := utf8.RuneCountInString(s); n > maxLen {
		return invalidArg(field, "must be at most "+strconv.Itoa(maxLen)+" characters")
	}
	for _, r := range s {
		if unicode.IsControl(r) && !(allowNewlines && (r == '\n' || r == '\t')) {
			return invalidArg(field, "must not contain control characters")
		}
	}
	return nil
}

func normalizeCategory(field, c string) (string, error) {
	n, err := catalog.NormalizeCategory(c)
	if err != nil {
		return "", invalidArg(field, err.Error())
	}
	return n, nil
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// maxScannedPerPage bounds the rows one list call reads to fill a page
// that a filter the store cannot apply thins out (a narrow scope, pending
// consumers only): past it the page ends early, perhaps empty, with a
// token that resumes after the last row read (AIP-158 allows a short
// page). Without it one call with page_size=1 walked the whole table.
const maxScannedPerPage = 10000

// scanBatch is how many rows a filtered list reads per store query: size+1
// when every row counts, more when the caller's filter may drop most.
func scanBatch(size int, filtered bool) int {
	if filtered {
		return max(size+1, 500)
	}
	return size + 1
}

func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalidArg("page_size", "must not be negative")
	case n == 0:
		return defaultPageSize, nil
	case n > maxPageSize:
		return maxPageSize, nil
	}
	return int(n), nil
}

// pageToken is the cursor of a list: where the previous page ended and a
// fingerprint of its filter and caller (a token is only valid for the same
// filter and caller). It travels MACed with a service key, so a caller
// cannot forge a cursor, and it only ever holds the last item of a page the
// caller was shown.
type pageToken struct {
	After  string `json:"a,omitempty"`
	Before int64  `json:"b,omitempty"`
	Filter string `json:"f,omitempty"`
}

const pageTokenMACSize = 16

func (d Deps) pageTokenMAC(b []byte) []byte {
	m := hmac.New(sha256.New, d.PageTokenKey)
	m.Write(b)
	return m.Sum(nil)[:pageTokenMACSize]
}

func (d Deps) encodeToken(ctx context.Context, t pageToken) string {
	t.Filter = filterKey(t.Filter, IdentityFrom(ctx).Actor)
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(append(b, d.pageTokenMAC(b)...))
}

func (d Deps) decodeToken(ctx context.Context, s, filter string) (pageToken, error) {
	var t pageToken
	if s == "" {
		return t, nil
	}
	malformed := invalidArg("page_token", "malformed; pass the next_page_token of a previous call")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) <= pageTokenMACSize {
		return t, malformed
	}
	b, mac := raw[:len(raw)-pageTokenMACSize], raw[len(raw)-pageTokenMACSize:]
	if !hmac.Equal(mac, d.pageTokenMAC(b)) || json.Unmarshal(b, &t) != nil {
		return t, malformed
	}
	if t.Filter != filterKey(filter, IdentityFrom(ctx).Actor) {
		return t, invalidArg("page_token", "was issued for a different filter or caller")
	}
	return t, nil
}

func filterKey(parts ...string) string { return strings.Join(parts, "\x1f") }

// Bounds of the rotation schedule and expiry (GCP Secret Manager allows a
// period of 1 hour to 100 years; ten years is plenty for a reminder).
const (
	minRotationPeriod = time.Hour
	maxRotationPeriod = 10 * 365 * 24 * time.Hour
	maxScheduleAhead  = 10 * 365 * 24 * time.Hour
)

// rotationPeriod validates a rotation period: nil (or zero) clears it.
func rotationPeriod(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil || (d.GetSeconds() == 0 && d.GetNanos() == 0) {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidArg(field, "malformed duration")
	}
	if d.GetNanos() != 0 {
		return 0, invalidArg(field, "must be whole seconds")
	}
	p := d.AsDuration()
	if p < minRotationPeriod || p > maxRotationPeriod {
		return 0, invalidArg(field, fmt.Sprintf("must be between %s and 10 years (87600h), got %s", minRotationPeriod, p))
	}
	return p, nil
}

// scheduleTime validates a next rotation or expiry time: nil clears it; a
// set time must not be in the past nor more than 10 years ahead of now.
func scheduleTime(field string, t *timestamppb.Timestamp, now time.Time) (time.Time, error) {
	if t == nil {
		return time.Time{}, nil
	}
	if err := t.CheckValid(); err != nil {
		return time.Time{}, invalidArg(field, "malformed timestamp")
	}
	v := t.AsTime()
	if v.Before(now) {
		return time.Time{}, invalidArg(field, "must not be in the past")
	}
	if v.After(now.Add(maxScheduleAhead)) {
		return time.Time{}, invalidArg(field, "must be at most 10 years ahead")
	}
	return v, nil
}
