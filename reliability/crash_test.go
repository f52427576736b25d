package reliability

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/auditlog"
)

// TestCrashKill9 kills the real secretsd with SIGKILL under a mixed write
// load (puts, disables, deletes, each with a request id), round after round,
// and asserts after each kill that:
//   - every acknowledged write is durable: its audit event (found by request
//     id) and its change-log entry (found by revision) are there;
//   - nothing is half-written (checkConsistency: current versions exist,
//     revisions 1..N gap-free and equal to the counter, change log and audit
//     match one to one, the audit chain and its signed checkpoints verify);
//   - the server restarts on the same database and serves, and retrying the
//     writes that were in flight at the kill with the same request ids
//     succeeds exactly once (one OK audit event per request id).
func TestCrashKill9(t *testing.T) {
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
	rounds := size(3, 10)
	writers := size(8, 16)
	conn := connect(t, db)

	var all []ack
	var pending []writeOp
	began := time.Now()
	for round := 0; round <= rounds; round++ {
		p := startSecretsd(t, bin, env, "--data-dir", t.TempDir(),
			"--audit-signing-key", keyFile, "--audit-checkpoint-interval", "100ms")
		sc := pb.NewSecretServiceClient(p.dial(t))
		ctx := withTimeout(t, 2*time.Minute)

		// The restarted server serves: a fresh write reads back.
		probe := fmt.Sprintf("CRASH_PROBE_%d", round)
		if _, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: probe, Value: []byte("probe")}); err != nil {
			t.Fatalf("round %d: put after restart: %v", round, err)
		}
		if v, err := sc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: probe, Version: "latest"}); err != nil || string(v.GetValue()) != "probe" {
			t.Fatalf("round %d: read after restart: %v", round, err)
		}
		// Writes cut off by the last kill, retried with their request ids:
		// each succeeds, and only once (checkAcks counts audit events).
		if len(pending) > 0 {
			t.Logf("round %d: %d of %d writes cut off by the kill had committed", round, committed(t, conn, pending), len(pending))
		}
		for _, op := range pending {
			a, err := op.send(ctx, sc)
			if err != nil {
				t.Errorf("round %d: retry of %s %s (request %s) after the crash: %v", round, op.action, op.key, op.requestID, err)
				continue
			}
			all = append(all, a)
		}
		if round == rounds {
			p.terminate(t)
			if err := p.wait(t, 30*time.Second); err != nil {
				t.Errorf("final SIGTERM: %v", err)
			}
			break
		}

		lctx, stop := context.WithCancel(ctx)
		load := startWriteLoad(lctx, sc, fmt.Sprintf("crash-r%d", round), writers, 64)
		// Kill at a random moment once some writes were acknowledged.
		minAcks := int64(mrand.IntN(200) + 20)
		if !waitFor(60*time.Second, 5*time.Millisecond, func() bool { return load.nAcks.Load() >= minAcks }) {
			t.Fatalf("round %d: only %d writes acknowledged in 60s", round, load.nAcks.Load())
		}
		time.Sleep(time.Duration(mrand.IntN(50)) * time.Millisecond)
		p.kill(t)
		acks, cut := load.wait()
		stop()
		pending = cut
		t.Logf("round %d: started in %v, killed after %d acknowledged writes; %d cut off (%s)",
			round, p.ready.Round(time.Millisecond), len(acks), len(cut), load.failed.String())
		if others := load.failed.others("Unavailable"); len(others) > 0 {
			t.Errorf("round %d: writes cut off by the kill failed with %v; want UNAVAILABLE only", round, others)
		}
		all = append(all, acks...)
		sequenceLeftovers(t, db)
		checkAcks(t, conn, acks)
		c := checkConsistency(t, db, signer.Public())
		t.Logf("round %d: consistent at revision %d (%d secrets, %d versions, %d audit events, %d signed checkpoints)",
			round, c.Revision, c.Secrets, c.Versions, c.AuditEvents, c.Checkpoints)
		if t.Failed() {
			t.FailNow()
		}
	}
	checkAcks(t, conn, all)
	c := checkConsistency(t, db, signer.Public())
	t.Logf("%d rounds in %v: %d acknowledged writes durable; final revision %d, %d signed checkpoints",
		rounds, time.Since(began).Round(time.Millisecond), len(all), c.Revision, c.Checkpoints)
}

// committed counts the writes among ops that left an OK audit event.
func committed(t *testing.T, conn *pgx.Conn, ops []writeOp) int {
	t.Helper()
	ids := make([]string, len(ops))
	for i, op := range ops {
		ids[i] = op.requestID
	}
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(DISTINCT request_id) FROM audit_events
		WHERE outcome = 'OK' AND request_id = ANY($1)`, ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
