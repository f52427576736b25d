package client_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/orient-bot/secrets/client"
)

// TestValuesNeverLogged: a Value, a Resolved, or a Change holding them,
// logged or marshalled by mistake in any common way, never shows the value.
func TestValuesNeverLogged(t *testing.T) {
	const secret = "xoxb-very-secret-token"
	v := client.Value{Key: "SLACK_BOT_TOKEN", Version: 3, Data: []byte(secret)}
	r := client.Resolved{Key: "SLACK_BOT_TOKEN", Value: secret, Source: client.SourceDatabase, Version: 3}
	ch := client.Change{Key: "SLACK_BOT_TOKEN", Old: r, New: r}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		slog.New(h).Info("changed", "value", v, "resolved", r, "change", ch, "ptr", &ch)
	}
	for _, x := range []any{v, r, ch, &ch} {
		b, err := json.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		fmt.Fprintf(&buf, "%v %+v %#v %s", x, x, x, x)
	}
	if strings.Contains(buf.String(), secret) {
		t.Fatalf("the value leaked:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "redacted") {
		t.Fatalf("no redaction marker in:\n%s", buf.String())
	}
}
