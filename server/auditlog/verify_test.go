package auditlog

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// TestVerifyLargeChain appends a long chain in big groups, signs it, and
// times a full verification. AUDIT_VERIFY_EVENTS sets the length (make
// bench-style figure: 1,000,000); by default a short chain keeps make test
// fast while still checking the walk end to end.
func TestVerifyLargeChain(t *testing.T) {
	t.Parallel()
	n := 20_000
	if v, err := strconv.Atoi(os.Getenv("AUDIT_VERIFY_EVENTS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	st, err := store.Open(ctx, testdb.New(t), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const group = 10_000
	began := time.Now()
	for done := 0; done < n; done += group {
		events := make([]store.AuditEvent, min(group, n-done))
		for i := range events {
			events[i] = store.AuditEvent{Actor: "bench", Action: "AccessSecretVersion", Key: fmt.Sprintf("KEY_%d", (done+i)%1000),
				Version: 1, Outcome: store.OutcomeOK, Peer: "127.0.0.1:1234"}
		}
		if err := st.AppendAudit(ctx, events); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("appended %d events in %v", n, time.Since(began).Round(time.Millisecond))
	began = time.Now()
	flush(t, st)
	t.Logf("sequenced %d events in %v", n, time.Since(began).Round(time.Millisecond))
	signer, _, err := GenerateSigner(t.TempDir() + "/k")
	if err != nil {
		t.Fatal(err)
	}
	log := &Log{Store: st, Signer: signer, Keys: NewKeys(signer.Public())}
	if _, err := log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	res, err := log.Verify(ctx)
	elapsed := time.Since(began)
	if err != nil || !res.Intact || res.Events != int64(n) || res.Checkpoints != 1 {
		t.Fatalf("verify: %+v, %v", res, err)
	}
	t.Logf("verified %d events and %d checkpoint in %v (%.0f events/s)", res.Events, res.Checkpoints, elapsed.Round(time.Millisecond),
		float64(res.Events)/elapsed.Seconds())
}
