package testdb

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	return conn
}

// Two parallel tests each get their own migrated database: what one writes,
// the other does not see.
func TestIsolation(t *testing.T) {
	written := make(chan struct{})
	checked := make(chan struct{})
	t.Run("group", func(t *testing.T) {
		t.Run("writer", func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			conn := connect(t, New(t))
			t.Logf("New took %v (first call includes cluster start and migrations)", time.Since(began))
			ctx := context.Background()
			if _, err := conn.Exec(ctx, `INSERT INTO secrets (key, category, restart_required, revision, create_time, update_time)
				VALUES ('only-in-writer', 'c', false, 1, now(), now())`); err != nil {
				t.Fatal(err)
			}
			close(written)
			<-checked // keep the database alive while the reader looks
		})
		t.Run("reader", func(t *testing.T) {
			t.Parallel()
			conn := connect(t, New(t))
			<-written
			defer close(checked)
			var n int
			if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM secrets").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("reader sees %d secrets written by another test", n)
			}
			// The template carried the migrations' seed row.
			var rev int64
			if err := conn.QueryRow(context.Background(), "SELECT revision FROM revision_counter").Scan(&rev); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// A database is dropped when its test ends.
func TestDropped(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(New(t))
		if err != nil {
			t.Fatal(err)
		}
		name = cfg.Database
	})
	var exists bool
	err := connect(t, Admin(t)).QueryRow(context.Background(),
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s still exists after its test ended", name)
	}
}

func BenchmarkNew(b *testing.B) {
	New(b) // start the cluster outside the timing
	b.ResetTimer()
	for b.Loop() {
		New(b)
	}
}

func TestWithDatabase(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@h:5/old?sslmode=disable&dbname=x": "postgres://u:p@h:5/new?sslmode=disable",
		"host=/tmp port=5 dbname=old":                     "host=/tmp port=5 dbname=old dbname='new'",
	} {
		got, err := withDatabase(in, "new")
		if err != nil || got != want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
		cfg, err := pgx.ParseConfig(got)
		if err != nil || cfg.Database != "new" {
			t.Errorf("parsed %q: %v %v", got, cfg, err)
		}
	}
}
