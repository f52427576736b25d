package app_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

func dbConn(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitSequenced waits until the server's audit sequencer has chained every
// event committed to the intake.
func waitSequenced(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var waiting bool
		if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT FROM audit_intake)`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if !waiting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("audit events still waiting in the intake after 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func access(c pb.SecretServiceClient, key, version string) (string, error) {
	res, err := c.AccessSecretVersion(context.Background(), &pb.AccessSecretVersionRequest{Key: key, Version: version})
	if err != nil {
		return "", err
	}
	return string(res.Value), nil
}

func TestCiphertextBoundToRow(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	put(t, srv.Secrets, "ALPHA", "alpha-value")
	put(t, srv.Secrets, "BRAVO", "bravo-value")
	put(t, srv.Secrets, "BRAVO", "bravo-value-2")
	conn := dbConn(t, srv.DatabaseURL)

	// Swap ALPHA v1 and BRAVO v1 (ciphertext and wrapped key together).
	exec(t, conn, `WITH a AS (SELECT ciphertext, wrapped_dek FROM secret_versions WHERE key = 'ALPHA' AND version = 1),
		b AS (SELECT ciphertext, wrapped_dek FROM secret_versions WHERE key = 'BRAVO' AND version = 1)
		UPDATE secret_versions v SET ciphertext = CASE WHEN v.key = 'ALPHA' THEN b.ciphertext ELSE a.ciphertext END,
			wrapped_dek = CASE WHEN v.key = 'ALPHA' THEN b.wrapped_dek ELSE a.wrapped_dek END
		FROM a, b WHERE v.version = 1 AND v.key IN ('ALPHA', 'BRAVO')`)
	for _, key := range []string{"ALPHA", "BRAVO"} {
		if v, err := access(srv.Secrets, key, "1"); status.Code(err) != codes.DataLoss {
			t.Errorf("%s v1 after swap: value %q, err %v; want DATA_LOSS", key, v, err)
		}
	}
	// Move BRAVO v2's sealed value onto v1 of the same secret.
	exec(t, conn, `UPDATE secret_versions v SET ciphertext = s.ciphertext, wrapped_dek = s.wrapped_dek
		FROM secret_versions s WHERE s.key = 'BRAVO' AND s.version = 2 AND v.key = 'BRAVO' AND v.version = 1`)
	if v, err := access(srv.Secrets, "BRAVO", "1"); status.Code(err) != codes.DataLoss {
		t.Errorf("BRAVO v1 holding v2's ciphertext: value %q, err %v; want DATA_LOSS", v, err)
	}
	// One flipped bit.
	exec(t, conn, `UPDATE secret_versions SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1)
		WHERE key = 'BRAVO' AND version = 2`)
	if v, err := access(srv.Secrets, "BRAVO", "latest"); status.Code(err) != codes.DataLoss {
		t.Errorf("tampered BRAVO v2: value %q, err %v; want DATA_LOSS", v, err)
	}
}

func TestWrongKEK(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	first := testserver.Start(t, testserver.Options{DatabaseURL: db})
	put(t, first.Secrets, "KEYED", "keyed-value")
	first.Stop()

	// A server given only another KEK refuses to start, saying why.
	cfg := app.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.DatabaseURL = "127.0.0.1:0", "127.0.0.1:0", testdb.ServiceURL(t, db)
	cfg.AuditSigningKey = testserver.AuditSigningKeyFile(t)
	otherKEK := testserver.NewKEKURL(t)
	cfg.KEKURL = otherKEK
	if srv, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil {
		srv.Serve(canceled())
		t.Fatal("server started with a KEK that cannot open the database's keys")
	} else if !strings.Contains(err.Error(), "KEK") || strings.Contains(err.Error(), otherKEK) {
		t.Fatalf("start error %q should name the KEK problem without the KEK URL", err)
	}

	// With the new KEK primary and the old one kept, old values still read.
	both := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: otherKEK + "," + first.KEKURL})
	if v, err := access(both.Secrets, "KEYED", "latest"); err != nil || v != "keyed-value" {
		t.Fatalf("old value under a rotated ring: %q, %v", v, err)
	}
	// A row that claims the wrong KEK does not decrypt: DATA_LOSS, no value.
	// (Read by a replica that has not read it before: one that has holds
	// the authentic sealed copy in its read cache, and an edit behind the
	// service's back makes no change event.)
	put(t, both.Secrets, "PROBE", "p")
	conn := dbConn(t, db)
	exec(t, conn, `UPDATE secret_versions SET kek_id = (SELECT kek_id FROM secret_versions WHERE key = 'PROBE') WHERE key = 'KEYED'`)
	fresh := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: otherKEK + "," + first.KEKURL})
	if v, err := access(fresh.Secrets, "KEYED", "latest"); status.Code(err) != codes.DataLoss {
		t.Fatalf("relabelled KEK: value %q, err %v; want DATA_LOSS", v, err)
	}
}

// TestReplicaMissingTheNewKEK: a KEK rotation rolled out to one replica
// only. The replica still on the old KEK alone cannot open a value the
// other wrapped with the new one: it says so, UNAVAILABLE with
// KEK_UNAVAILABLE naming the KEK's fingerprint (never its URL), not
// DATA_LOSS "failed its integrity check", which sends an operator after
// tampering that did not happen.
func TestReplicaMissingTheNewKEK(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	old := testserver.Start(t, testserver.Options{DatabaseURL: db})
	put(t, old.Secrets, "KEYED", "keyed-value")
	newKEK := testserver.NewKEKURL(t)
	rotated := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: newKEK + "," + old.KEKURL})
	put(t, rotated.Secrets, "NEWER", "newer-value")
	var id string
	if err := dbConn(t, db).QueryRow(context.Background(), `SELECT kek_id FROM secret_versions WHERE key = 'NEWER'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	v, err := access(old.Secrets, "NEWER", "latest")
	if status.Code(err) != codes.Unavailable || reasonOfErr(err) != "KEK_UNAVAILABLE" {
		t.Fatalf("value wrapped by a KEK this replica lacks: value %q, err %v; want UNAVAILABLE, KEK_UNAVAILABLE", v, err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, id) || strings.Contains(msg, newKEK) {
		t.Errorf("message %q should name KEK %s and never its URL", msg, id)
	}
	// What it can open, it still serves.
	if v, err := access(old.Secrets, "KEYED", "latest"); err != nil || v != "keyed-value" {
		t.Errorf("value under the old KEK: %q, %v", v, err)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestNoPlaintextInDatabase writes, reads and changes values, then scans
// every row of every table (as text, so bytea shows as hex) for each value
// in plain, hex and base64 form.
func TestNoPlaintextInDatabase(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	values := map[string]string{}
	for i := range 20 {
		key := fmt.Sprintf("SCAN_%d", i)
		values[key] = fmt.Sprintf("plaintext-marker-%d-%x", i, time.Now().UnixNano())
		_, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: []byte(values[key]), RequestId: fmt.Sprintf("req-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := access(srv.Secrets, key, "latest"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srv.Secrets.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"SCAN_1", "SCAN_2"}}); err != nil {
		t.Fatal(err)
	}
	conn := dbConn(t, srv.DatabaseURL)
	rows, err := conn.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var dump bytes.Buffer
	for _, table := range tables {
		rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT t::text FROM %s t`, pgx.Identifier{table}.Sanitize()))
		if err != nil {
			t.Fatal(err)
		}
		texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range texts {
			dump.WriteString(s)
			dump.WriteByte('\n')
		}
	}
	if dump.Len() == 0 || len(tables) < 5 {
		t.Fatalf("scanned nothing: %d tables, %d bytes", len(tables), dump.Len())
	}
	for key, v := range values {
		for _, form := range []string{v, hex.EncodeToString([]byte(v)), base64.StdEncoding.EncodeToString([]byte(v))} {
			if bytes.Contains(dump.Bytes(), []byte(form)) {
				t.Errorf("value of %s found in the database (form %q)", key, form)
			}
		}
	}
}

// TestConcurrentCompareAndSet: 16 writers × 50 compare-and-set updates with
// retries on ABORTED. Every successful write is exactly one version and one
// audit event; none is lost or doubled.
func TestConcurrentCompareAndSet(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	put(t, srv.Secrets, "COUNTER", "0")
	const writers, each = 16, 50
	var ok, aborted atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				cur, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: "COUNTER"})
				if err != nil {
					errc <- err
					return
				}
				_, err = srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "COUNTER", Value: []byte(fmt.Sprintf("w%d-%d", w, i)), Etag: cur.Secret.Etag})
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
					i++
				case codes.Aborted:
					aborted.Add(1)
				default:
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("%d successful writes, %d aborted attempts", ok.Load(), aborted.Load())
	if ok.Load() != writers*each {
		t.Fatalf("successful writes = %d, want %d", ok.Load(), writers*each)
	}
	got, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: "COUNTER"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret.CurrentVersion != writers*each+1 {
		t.Fatalf("current version = %d, want %d", got.Secret.CurrentVersion, writers*each+1)
	}
	conn := dbConn(t, srv.DatabaseURL)
	waitSequenced(t, conn)
	var versions, events, changes int64
	if err := conn.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM secret_versions WHERE key = 'COUNTER'),
		(SELECT count(*) FROM audit_events WHERE key = 'COUNTER' AND action = 'PutSecret' AND outcome = 'OK'),
		(SELECT count(*) FROM change_log WHERE key = 'COUNTER')`).Scan(&versions, &events, &changes); err != nil {
		t.Fatal(err)
	}
	if versions != writers*each+1 || events != versions || changes != versions {
		t.Fatalf("versions %d, audit events %d, change log %d; want %d each", versions, events, changes, writers*each+1)
	}
	// The revision log has no gaps.
	var minRev, maxRev, n int64
	if err := conn.QueryRow(ctx, `SELECT min(revision), max(revision), count(*) FROM change_log`).Scan(&minRev, &maxRev, &n); err != nil {
		t.Fatal(err)
	}
	if minRev != 1 || maxRev != n {
		t.Fatalf("change log revisions %d..%d with %d rows: gaps", minRev, maxRev, n)
	}
}

func TestIdempotentRetry(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	first := put(t, srv.Secrets, "IDEM", "v1")
	req := &pb.PutSecretRequest{Key: "IDEM", Value: []byte("v2"), Etag: first.Secret.Etag, RequestId: "3f1c-retry"}
	a, err := srv.Secrets.PutSecret(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// The retry's etag is stale now, yet it returns the first result.
	b, err := srv.Secrets.PutSecret(ctx, req)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if a.Revision != b.Revision || b.Secret.CurrentVersion != 2 {
		t.Fatalf("retry returned revision %d version %d, want %d and 2", b.Revision, b.Secret.CurrentVersion, a.Revision)
	}
	// Concurrent duplicates write once.
	var wg sync.WaitGroup
	revs := make([]int64, 8)
	for i := range revs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "IDEM", Value: []byte("v3"), RequestId: "same-id-concurrent"})
			if err == nil {
				revs[i] = r.Revision
			}
		}()
	}
	wg.Wait()
	for _, r := range revs {
		if r == 0 || r != revs[0] {
			t.Fatalf("concurrent duplicates got revisions %v", revs)
		}
	}
	got, _ := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: "IDEM"})
	if got.Secret.CurrentVersion != 3 {
		t.Fatalf("version = %d after concurrent duplicates, want 3", got.Secret.CurrentVersion)
	}
	_, err = srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "OTHER_KEY", Value: []byte("v"), RequestId: "3f1c-retry"})
	wantCode(t, err, codes.InvalidArgument)
	// Same id, same fields, another value: refused, not silently dropped.
	changed := &pb.PutSecretRequest{Key: "IDEM", Value: []byte("v2-but-different"), Etag: first.Secret.Etag, RequestId: "3f1c-retry"}
	_, err = srv.Secrets.PutSecret(ctx, changed)
	wantCode(t, err, codes.InvalidArgument)
	if f := badField(err); f != "request_id" {
		t.Errorf("field %q, want request_id", f)
	}
}

// TestDatabaseOutage: while the database refuses connections, calls fail
// with UNAVAILABLE (no crash, no value); when it is back, serving resumes.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	put(t, srv.Secrets, "DURING", "before-outage")
	admin := dbConn(t, testdb.Admin(t))
	var dbname string
	if err := dbConn(t, srv.DatabaseURL).QueryRow(context.Background(), `SELECT current_database()`).Scan(&dbname); err != nil {
		t.Fatal(err)
	}
	ident := pgx.Identifier{dbname}.Sanitize()
	exec(t, admin, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS false`)
	exec(t, admin, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, dbname)
	deadline := time.Now().Add(10 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		_, lastErr = access(srv.Secrets, "DURING", "latest")
		if status.Code(lastErr) == codes.Unavailable {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	wantCode(t, lastErr, codes.Unavailable)
	_, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: "DURING", Value: []byte("x")})
	wantCode(t, err, codes.Unavailable)

	exec(t, admin, `ALTER DATABASE `+ident+` ALLOW_CONNECTIONS true`)
	deadline = time.Now().Add(10 * time.Second)
	for {
		v, err := access(srv.Secrets, "DURING", "latest")
		if err == nil {
			if v != "before-outage" {
				t.Fatalf("value after outage = %q", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving 10s after the database came back: %v", err)
		}
		if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.Unavailable {
			t.Fatalf("unexpected error while recovering: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
