package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/orient-bot/secrets/client"
)

// JSON shapes: lowerCamelCase like the REST API, times in RFC 3339, never
// a value.
type secretJSON struct {
	Key             string     `json:"key"`
	Category        string     `json:"category"`
	Description     string     `json:"description,omitempty"`
	Configured      bool       `json:"configured"`
	CurrentVersion  int64      `json:"currentVersion"`
	RestartRequired bool       `json:"restartRequired"`
	Catalog         bool       `json:"catalog"`
	Etag            string     `json:"etag,omitempty"`
	UpdateTime      *time.Time `json:"updateTime,omitempty"`
	UpdatedBy       string     `json:"updatedBy,omitempty"`
	Revision        int64      `json:"revision,omitempty"`
	// Rotation, as the REST API writes durations ("7776000s").
	RotationPeriod          string     `json:"rotationPeriod,omitempty"`
	NextRotationTime        *time.Time `json:"nextRotationTime,omitempty"`
	ExpireTime              *time.Time `json:"expireTime,omitempty"`
	RotationDue             bool       `json:"rotationDue,omitempty"`
	Expired                 bool       `json:"expired,omitempty"`
	SuggestedRotationPeriod string     `json:"suggestedRotationPeriod,omitempty"`
}

func jsonDuration(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}

func toSecretJSON(s client.Secret) secretJSON {
	return secretJSON{Key: s.Key, Category: s.Category, Description: s.Description, Configured: s.Configured,
		CurrentVersion: s.CurrentVersion, RestartRequired: s.RestartRequired, Catalog: s.Catalog, Etag: s.Etag,
		UpdateTime: timePtr(s.UpdateTime), UpdatedBy: s.UpdatedBy, Revision: s.Revision,
		RotationPeriod: jsonDuration(s.RotationPeriod), NextRotationTime: timePtr(s.NextRotationTime),
		ExpireTime: timePtr(s.ExpireTime), RotationDue: s.RotationDue, Expired: s.Expired,
		SuggestedRotationPeriod: jsonDuration(s.SuggestedRotationPeriod)}
}

type versionJSON struct {
	Key         string     `json:"key"`
	Version     int64      `json:"version"`
	State       string     `json:"state"`
	CreateTime  *time.Time `json:"createTime,omitempty"`
	DestroyTime *time.Time `json:"destroyTime,omitempty"`
	CreatedBy   string     `json:"createdBy,omitempty"`
	KEKID       string     `json:"kekId,omitempty"`
}

func toVersionJSON(v client.SecretVersion) versionJSON {
	return versionJSON{Key: v.Key, Version: v.Version, State: v.State.String(), CreateTime: timePtr(v.CreateTime),
		DestroyTime: timePtr(v.DestroyTime), CreatedBy: v.CreatedBy, KEKID: v.KEKID}
}

type eventJSON struct {
	Revision        int64     `json:"revision"`
	Time            time.Time `json:"time"`
	Kind            string    `json:"kind"`
	Key             string    `json:"key,omitempty"`
	Version         int64     `json:"version,omitempty"`
	Category        string    `json:"category,omitempty"`
	RestartRequired bool      `json:"restartRequired"`
	Detail          string    `json:"detail,omitempty"`
}

func toEventJSON(e client.ChangeEvent) eventJSON {
	return eventJSON{Revision: e.Revision, Time: e.Time, Kind: e.Kind.String(), Key: e.Key, Version: e.Version,
		Category: e.Category, RestartRequired: e.RestartRequired, Detail: e.Detail}
}

type auditJSON struct {
	Sequence  int64     `json:"sequence"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	Action    string    `json:"action"`
	Key       string    `json:"key,omitempty"`
	Version   int64     `json:"version,omitempty"`
	Outcome   string    `json:"outcome"`
	RequestID string    `json:"requestId,omitempty"`
	Peer      string    `json:"peer,omitempty"`
	Revision  int64     `json:"revision,omitempty"`
	Detail    string    `json:"detail,omitempty"`
}

func toAuditJSON(e client.AuditEvent) auditJSON {
	return auditJSON{Sequence: e.Sequence, Time: e.Time, Actor: e.Actor, Action: e.Action, Key: e.Key, Version: e.Version,
		Outcome: e.Outcome, RequestID: e.RequestID, Peer: e.Peer, Revision: e.Revision, Detail: e.Detail}
}

type consumerJSON struct {
	Service        string                 `json:"service"`
	Instance       string                 `json:"instance"`
	LoadedRevision int64                  `json:"loadedRevision"`
	LastSeen       *time.Time             `json:"lastSeen,omitempty"`
	Stale          bool                   `json:"stale"`
	Pending        []client.PendingChange `json:"pending"`
	Keys           []string               `json:"keys,omitempty"`
	Categories     []string               `json:"categories,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// writeJSON prints v indented, one document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var jsonMarshal = json.Marshal

// table prints aligned columns for people.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(toAny(header)...)
	}
	return t
}

func (t *table) row(cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		s[i] = cell(c)
	}
	fmt.Fprintln(t.tw, strings.Join(s, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func cell(v any) string {
	switch v := v.(type) {
	case time.Time:
		if v.IsZero() {
			return "-"
		}
		return v.UTC().Format(time.RFC3339)
	case bool:
		if v {
			return "yes"
		}
		return "no"
	case string:
		if v == "" {
			return "-"
		}
		return printable(v)
	}
	return printable(fmt.Sprint(v))
}

// printable escapes control characters (newlines, tabs, terminal escape
// sequences) and invalid UTF-8 the way Go quotes strings, so text a caller
// chose (a key or request id in the audit log) can neither break a table
// row nor forge one.
func printable(s string) string {
	clean := utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || r == '\u2028' || r == '\u2029'
	})
	if clean {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}
