package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// TestSecretsByKeysLooksUp: reading a few secrets by name (what every
// write batch does while it holds the revision lock) is a primary-key
// lookup per name, never a scan of every secret, whatever the table's
// size and whether PostgreSQL plans the prepared statement for its
// arguments (custom) or once for all (generic, the plan a pooled
// connection's cached statement ends up with). Plain EXPLAIN: nothing runs.
func TestSecretsByKeysLooksUp(t *testing.T) {
	ctx := context.Background()
	url := testdb.New(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	for _, sql := range []string{
		`INSERT INTO secrets (key, category, restart_required, current_version, revision, create_time, update_time)
			SELECT 'plan/secret-' || lpad(i::text, 5, '0'), 'api_key', false, 3, i, now(), now()
			FROM generate_series(1, 1000) AS i`,
		`INSERT INTO secret_versions (key, version, state, ciphertext, wrapped_dek, kek_id, create_time)
			SELECT key, v, 1, '\x00', '\x00', 'kek-test', now() FROM secrets, generate_series(1, 3) AS v`,
		// Dead rows, as the updates of a busy server leave behind.
		`UPDATE secrets SET description = 'updated' WHERE key < 'plan/secret-00500'`,
		`ANALYZE secrets`,
		`ANALYZE secret_versions`,
		`PREPARE by_keys(text[]) AS ` + store.SecretsByKeysSQL,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	keys := `'{plan/secret-00010,plan/secret-00200,plan/secret-00300,plan/secret-00400,plan/secret-00600,plan/secret-00900}'`
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		if _, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode); err != nil {
			t.Fatal(err)
		}
		rows, err := conn.Query(ctx, `EXPLAIN EXECUTE by_keys(`+keys+`)`)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(lines, "\n")
		for _, table := range []string{"secrets", "secret_versions"} {
			if strings.Contains(plan, "Seq Scan on "+table+" ") {
				t.Errorf("%s: the read scans all of %s:\n%s", mode, table, plan)
			}
		}
		t.Logf("%s:\n%s", mode, plan)
		if !strings.Contains(plan, "secrets_pkey") {
			t.Errorf("%s: the read does not look secrets up by key:\n%s", mode, plan)
		}
	}
	// And it answers the six names asked (six distinct, stored secrets).
	rows, err := conn.Query(ctx, `EXECUTE by_keys(`+keys+`)`)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for rows.Next() {
		got++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if got != 6 {
		t.Fatalf("read %d secrets, want 6", got)
	}
}
