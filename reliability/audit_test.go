package reliability

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/auditlog"
)

// accessLoad reads keys on many goroutines and counts the accesses the
// server acknowledged (answered with the value), by key.
type accessLoad struct {
	mu     sync.Mutex
	acked  map[string]int
	nAcks  atomic.Int64
	failed codeCounter
	wg     sync.WaitGroup
}

func startAccessLoad(ctx context.Context, sc pb.SecretServiceClient, keys []string, n int) *accessLoad {
	l := &accessLoad{acked: map[string]int{}}
	for range n {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				k := keys[mrand.IntN(len(keys))]
				_, err := sc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: k, Version: "latest"})
				if err != nil {
					if ctx.Err() == nil {
						l.failed.add(err)
					}
					continue
				}
				l.mu.Lock()
				l.acked[k]++
				l.mu.Unlock()
				l.nAcks.Add(1)
			}
		})
	}
	return l
}

// waitIntakeEmpty waits for the running server's sequencer to chain every
// event committed to the intake.
func waitIntakeEmpty(t *testing.T, conn *pgx.Conn, within time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	var n int64
	if !waitFor(within, 10*time.Millisecond, func() bool {
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM audit_intake`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	}) {
		t.Fatalf("%d audit events still waiting in the intake after %v", n, within)
	}
	return time.Since(began)
}

// checkAccessesChained asserts every acknowledged access has its audit
// event in the chain: per key, at least as many chained OK access events
// as acknowledged accesses (accesses cut off after their event committed
// add events, never remove one).
func checkAccessesChained(t *testing.T, conn *pgx.Conn, acked map[string]int) {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT key, count(*) FROM audit_events
		WHERE action = 'AccessSecretVersion' AND outcome = 'OK' GROUP BY key`)
	if err != nil {
		t.Fatal(err)
	}
	chained := map[string]int{}
	var k string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&k, &n}, func() error { chained[k] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	for key, a := range acked {
		if chained[key] < a {
			t.Errorf("key %s: %d accesses acknowledged, %d access events chained", key, a, chained[key])
		}
	}
}

// TestCrashKill9Accesses kills the real secretsd with SIGKILL while audited
// reads are in flight (their audit events committing to the intake, the
// sequencer chaining them), round after round. After each restart the new
// server's sequencer chains what the dead one left, and every acknowledged
// access's audit event is in the chain, which verifies with its signed
// checkpoints.
func TestCrashKill9Accesses(t *testing.T) {
	gate(t)
	bin := buildSecretsd(t)
	db := testdb.New(t)
	kek := testserver.NewKEKURL(t)
	keyFile := filepath.Join(t.TempDir(), "audit-signing.key")
	signer, _, err := auditlog.GenerateSigner(keyFile)
	if err != nil {
		t.Fatalf("audit signing key: %v", err)
	}
	env := serverEnv("DATABASE_URL="+testdb.ServiceURL(t, db), "SECRETS_KEK_URL="+kek, "SECRETS_BOOTSTRAP_TOKEN="+adminToken)
	rounds := size(2, 6)
	readers := size(16, 32)
	conn := connect(t, db)
	var keys []string
	acked := map[string]int{}
	for round := 0; round <= rounds; round++ {
		p := startSecretsd(t, bin, env, "--data-dir", t.TempDir(),
			"--audit-signing-key", keyFile, "--audit-checkpoint-interval", "100ms")
		sc := pb.NewSecretServiceClient(p.dial(t))
		ctx := withTimeout(t, 2*time.Minute)
		if round == 0 {
			for i := range 20 {
				k := fmt.Sprintf("AUDIT_CRASH_%d", i)
				if _, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: k, Value: randomValue(32)}); err != nil {
					t.Fatal(err)
				}
				keys = append(keys, k)
			}
		}
		// The restarted server's sequencer chains the dead one's intake.
		if round > 0 {
			d := waitIntakeEmpty(t, conn, 30*time.Second)
			t.Logf("round %d: the restarted server chained the dead one's intake within %v", round, d.Round(time.Millisecond))
			checkAccessesChained(t, conn, acked)
			c := checkConsistency(t, db, signer.Public())
			t.Logf("round %d: %d audit events chained, intact", round, c.AuditEvents)
			if t.Failed() {
				t.FailNow()
			}
		}
		if round == rounds {
			p.terminate(t)
			if err := p.wait(t, 30*time.Second); err != nil {
				t.Errorf("final SIGTERM: %v", err)
			}
			break
		}
		lctx, stop := context.WithCancel(ctx)
		load := startAccessLoad(lctx, sc, keys, readers)
		minAcks := int64(mrand.IntN(500) + 100)
		if !waitFor(60*time.Second, 5*time.Millisecond, func() bool { return load.nAcks.Load() >= minAcks }) {
			t.Fatalf("round %d: only %d accesses acknowledged in 60s", round, load.nAcks.Load())
		}
		time.Sleep(time.Duration(mrand.IntN(30)) * time.Millisecond)
		p.kill(t)
		stop()
		load.wg.Wait()
		var waiting int64
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM audit_intake`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed after %d acknowledged accesses; %d events left waiting in the intake (%s)",
			round, load.nAcks.Load(), waiting, load.failed.String())
		if others := load.failed.others("Unavailable"); len(others) > 0 {
			t.Errorf("round %d: accesses cut off by the kill failed with %v; want UNAVAILABLE only", round, others)
		}
		for k, n := range load.acked {
			acked[k] += n
		}
	}
	checkAccessesChained(t, conn, acked)
	checkConsistency(t, db, signer.Public())
}

// TestSequencerKilledMidBatch kills the server's sequencer mid-round, over
// and over, under audited read load: its database connection is terminated
// whenever it is seen holding the chain head or integrating. Reads keep
// being answered; once the killing stops, the sequencer chains everything
// still waiting, every acknowledged access's event is in the chain, and the
// chain verifies.
func TestSequencerKilledMidBatch(t *testing.T) {
	gate(t)
	bin := buildSecretsd(t)
	db := testdb.New(t)
	kek := testserver.NewKEKURL(t)
	keyFile := filepath.Join(t.TempDir(), "audit-signing.key")
	signer, _, err := auditlog.GenerateSigner(keyFile)
	if err != nil {
		t.Fatalf("audit signing key: %v", err)
	}
	env := serverEnv("DATABASE_URL="+testdb.ServiceURL(t, db), "SECRETS_KEK_URL="+kek, "SECRETS_BOOTSTRAP_TOKEN="+adminToken)
	p := startSecretsd(t, bin, env, "--data-dir", t.TempDir(), "--audit-signing-key", keyFile, "--audit-checkpoint-interval", "100ms")
	sc := pb.NewSecretServiceClient(p.dial(t))
	ctx := withTimeout(t, 3*time.Minute)
	var keys []string
	for i := range 10 {
		k := fmt.Sprintf("SEQ_KILL_%d", i)
		if _, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: k, Value: randomValue(32)}); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	admin := connect(t, testdb.Admin(t))
	conn := connect(t, db)
	var dbName string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	lctx, stop := context.WithCancel(ctx)
	load := startAccessLoad(lctx, sc, keys, size(8, 16))
	killFor := size(2*time.Second, 10*time.Second)
	var kills int
	for began := time.Now(); time.Since(began) < killFor; {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = $1 AND pid <> pg_backend_pid()
			AND (query LIKE '%audit_integrate%' OR query LIKE '%FROM audit_head FOR UPDATE%')
			AND state <> 'idle'`, dbName).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		kills += n
		time.Sleep(time.Duration(mrand.IntN(5)) * time.Millisecond)
	}
	// Reads go on after the killing.
	acksAtStop := load.nAcks.Load()
	if !waitFor(30*time.Second, 5*time.Millisecond, func() bool { return load.nAcks.Load() >= acksAtStop+50 }) {
		t.Errorf("reads stalled after the sequencer was killed: %d acknowledged", load.nAcks.Load()-acksAtStop)
	}
	stop()
	load.wg.Wait()
	d := waitIntakeEmpty(t, conn, 30*time.Second)
	t.Logf("sequencer connection killed %d times in %v under %d acknowledged accesses (%s); intake drained within %v",
		kills, killFor, load.nAcks.Load(), load.failed.String(), d.Round(time.Millisecond))
	if kills == 0 {
		t.Errorf("the sequencer was never caught mid-round")
	}
	if others := load.failed.others(); len(others) > 0 {
		t.Errorf("accesses failed while the sequencer was being killed: %v", others)
	}
	checkAccessesChained(t, conn, load.acked)
	checkConsistency(t, db, signer.Public())
	p.terminate(t)
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
}
