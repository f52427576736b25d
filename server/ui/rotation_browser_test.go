package ui_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// TestDashboardRotationMarks: expired and due secrets carry a badge and a
// data-rotation mark, come first in their category, and are counted; a
// catalog key without a schedule shows the catalog's proposal as a hint.
// The view passes axe.
func TestDashboardRotationMarks(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	for _, key := range []string{"E2E_A_FRESH", "E2E_B_DUE", "E2E_C_EXPIRED", "GITHUB_TOKEN"} {
		if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: []byte("ghp_value")}); err != nil {
			t.Fatal(err)
		}
	}
	// Time passes (the API refuses times in the past).
	conn, err := pgx.Connect(ctx, srv.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE secrets SET rotation_period_seconds = 7776000, next_rotation_time = now() - interval '1 day' WHERE key = 'E2E_B_DUE';
		UPDATE secrets SET expire_time = now() - interval '1 minute' WHERE key = 'E2E_C_EXPIRED'`); err != nil {
		t.Fatal(err)
	}

	tb := newTab(t, srv)
	tb.open("/ui/")
	tb.signIn(srv.AdminToken)
	tb.waitFor("the Secrets tab", qs(row("E2E_C_EXPIRED")))

	order := eval[[]string](tb, `[...document.querySelectorAll('#secrets-list section[data-category="custom"] tbody tr[data-key]')].map((r) => r.dataset.key)`)
	if strings.Join(order, ",") != "E2E_C_EXPIRED,E2E_B_DUE,E2E_A_FRESH" {
		t.Errorf("custom rows in order %v, want expired, due, then the rest", order)
	}
	for key, want := range map[string]string{"E2E_C_EXPIRED": "expired", "E2E_B_DUE": "due", "E2E_A_FRESH": ""} {
		if got := eval[string](tb, qs(row(key))+`.dataset.rotation`); got != want {
			t.Errorf("%s data-rotation = %q, want %q", key, got, want)
		}
	}
	if got := tb.text(row("E2E_C_EXPIRED") + " .badge-danger"); got != "Expired" {
		t.Errorf("expired badge %q", got)
	}
	if got := tb.text(row("E2E_B_DUE") + " .badge-warn"); got != "Rotation due" {
		t.Errorf("due badge %q", got)
	}
	if got := tb.text(row("E2E_B_DUE") + " .rotation-hint"); !strings.HasPrefix(got, "Rotate every 90 days; was due ") {
		t.Errorf("due hint %q", got)
	}
	if got := tb.text(row("GITHUB_TOKEN") + " .rotation-hint"); got != "Suggested rotation: every 90 days (not set)" {
		t.Errorf("GITHUB_TOKEN hint %q", got)
	}
	if got := tb.text("#secrets-count"); !strings.Contains(got, "1 expired · 1 due for rotation") {
		t.Errorf("count %q", got)
	}
	t.Run("axe", func(st *testing.T) {
		src := axeSource(st)
		tb.sub(st).axe("Secrets with rotation marks", src)
	})
}
