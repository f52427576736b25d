// Package storetest is the store's conformance suite, in the style of
// openfga's pkg/storage/test: every behaviour the service relies on from
// server/store — writes and their revisions, compare-and-set (etags),
// request-id replay, change-log compaction and the audit hash chain — run
// against a real database. A bug in the store shows up here, not as a wrong
// status code in an end-to-end test.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// RunAll runs every test of the suite, each on a fresh store from open.
func RunAll(t *testing.T, open func(t *testing.T) *store.Store) {
	for name, test := range map[string]func(*testing.T, *store.Store){
		"Writes":     testWrites,
		"Etags":      testEtags,
		"Replay":     testReplay,
		"Compaction": testCompaction,
		"AuditChain": testAuditChain,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, open(t))
		})
	}
}

func meta(action string) store.Meta {
	return store.Meta{Actor: "storetest", Action: action, Peer: "127.0.0.1"}
}

func sealer(value string) func(context.Context, int64) (store.Sealed, error) {
	return func(_ context.Context, version int64) (store.Sealed, error) {
		return store.Sealed{Ciphertext: fmt.Appendf(nil, "%s@%d", value, version), WrappedDEK: []byte("dek"), KEKID: "kek-test"}, nil
	}
}

func put(t *testing.T, s *store.Store, key, value string, expect *int64) store.WriteResult {
	t.Helper()
	r, err := s.PutSecret(context.Background(), meta("PutSecret"), store.PutParams{Key: key, Expect: expect,
		Defaults: store.Defaults{Category: "custom"}, Seal: sealer(value)})
	if err != nil {
		t.Fatalf("PutSecret(%s): %v", key, err)
	}
	return r
}

func changes(t *testing.T, s *store.Store, after int64) []store.Change {
	t.Helper()
	cs, err := s.ChangesAfter(context.Background(), after, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// testWrites: every write takes the next revision, records one change-log
// entry of the right kind, and reads back as written.
func testWrites(t *testing.T, s *store.Store) {
	ctx := context.Background()
	rev0, err := s.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r1 := put(t, s, "CUSTOM_A", "one", nil)
	r2 := put(t, s, "CUSTOM_A", "two", nil)
	desc := "described"
	r3, err := s.UpdateSecret(ctx, meta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_A", Description: &desc})
	if err != nil {
		t.Fatal(err)
	}
	r4, err := s.SetVersionState(ctx, meta("DisableSecretVersion"), "CUSTOM_A", 1, nil, store.StateDisabled)
	if err != nil {
		t.Fatal(err)
	}
	if got := []int64{r1.Revision, r2.Revision, r3.Revision, r4.Revision}; fmt.Sprint(got) != fmt.Sprint([]int64{rev0 + 1, rev0 + 2, rev0 + 3, rev0 + 4}) {
		t.Fatalf("revisions %v after %d: each write takes the next one", got, rev0)
	}
	if r2.Version.Version != 2 || r2.Secret.CurrentVersion != 2 {
		t.Fatalf("second put: %+v", r2)
	}
	var kinds []store.ChangeKind
	for _, c := range changes(t, s, rev0) {
		if c.Key != "CUSTOM_A" {
			t.Errorf("change %d is for %q", c.Revision, c.Key)
		}
		kinds = append(kinds, c.Kind)
	}
	want := []store.ChangeKind{store.ChangeValueAdded, store.ChangeValueAdded, store.ChangeMetadataChanged, store.ChangeVersionDisabled}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Fatalf("change kinds %v, want %v", kinds, want)
	}
	got, rev, err := s.GetSecret(ctx, "CUSTOM_A")
	if err != nil || got.Description != desc || got.Revision != r4.Revision || got.CurrentVersion != 2 || rev != r4.Revision {
		t.Fatalf("GetSecret: %+v at %d, %v", got, rev, err)
	}
	sv, _, err := s.AccessVersion(ctx, "CUSTOM_A", 2)
	if err != nil || string(sv.Sealed.Ciphertext) != "two@2" {
		t.Fatalf("AccessVersion: %+v, %v", sv, err)
	}
	// A write that fails takes no revision.
	if _, err := s.SetVersionState(ctx, meta("EnableSecretVersion"), "CUSTOM_NONE", 1, nil, store.StateEnabled); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("write to a missing secret: %v", err)
	}
	if rev, _ := s.Revision(ctx); rev != r4.Revision {
		t.Fatalf("a failed write moved the revision to %d", rev)
	}
	if _, err := s.DeleteSecret(ctx, meta("DeleteSecret"), "CUSTOM_A", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.GetSecret(ctx, "CUSTOM_A"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// testEtags: a write with a stale etag is refused and changes nothing; the
// current one goes through.
func testEtags(t *testing.T, s *store.Store) {
	ctx := context.Background()
	r1 := put(t, s, "CUSTOM_E", "one", nil)
	stale := r1.Revision
	r2 := put(t, s, "CUSTOM_E", "two", &stale)
	if _, err := s.PutSecret(ctx, meta("PutSecret"), store.PutParams{Key: "CUSTOM_E", Expect: &stale, Seal: sealer("three")}); !errors.Is(err, store.ErrEtagMismatch) {
		t.Fatalf("put with a stale etag: %v", err)
	}
	desc := "x"
	if _, err := s.UpdateSecret(ctx, meta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_E", Expect: &stale, Description: &desc}); !errors.Is(err, store.ErrEtagMismatch) {
		t.Fatalf("update with a stale etag: %v", err)
	}
	if _, err := s.DeleteSecret(ctx, meta("DeleteSecret"), "CUSTOM_E", &stale); !errors.Is(err, store.ErrEtagMismatch) {
		t.Fatalf("delete with a stale etag: %v", err)
	}
	missing := int64(1)
	if _, err := s.PutSecret(ctx, meta("PutSecret"), store.PutParams{Key: "CUSTOM_NEW", Expect: &missing, Seal: sealer("x")}); !errors.Is(err, store.ErrEtagMismatch) {
		t.Fatalf("put with an etag on a missing secret: %v", err)
	}
	if got, _, err := s.GetSecret(ctx, "CUSTOM_E"); err != nil || got.Revision != r2.Revision || got.CurrentVersion != 2 || got.Description != "" {
		t.Fatalf("refused writes changed the secret: %+v, %v", got, err)
	}
	current := r2.Revision
	if _, err := s.DeleteSecret(ctx, meta("DeleteSecret"), "CUSTOM_E", &current); err != nil {
		t.Fatalf("delete with the current etag: %v", err)
	}
}

// testReplay: a retry with the same request id returns the first result and
// writes nothing; the same id with other content is refused.
func testReplay(t *testing.T, s *store.Store) {
	ctx := context.Background()
	m := meta("PutSecret")
	m.RequestID, m.RequestHash = "req-1", []byte("hash-1")
	first, err := s.PutSecret(ctx, m, store.PutParams{Key: "CUSTOM_R", Seal: sealer("one")})
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.PutSecret(ctx, m, store.PutParams{Key: "CUSTOM_R", Seal: sealer("one")})
	if err != nil || again.Revision != first.Revision || again.Version.Version != 1 {
		t.Fatalf("replay: %+v, %v; first %+v", again, err, first)
	}
	if rev, _ := s.Revision(ctx); rev != first.Revision {
		t.Fatalf("the replay wrote: revision %d, first %d", rev, first.Revision)
	}
	m.RequestHash = []byte("hash-2")
	if _, err := s.PutSecret(ctx, m, store.PutParams{Key: "CUSTOM_R", Seal: sealer("two")}); !errors.Is(err, store.ErrRequestIDReused) {
		t.Fatalf("reused request id: %v", err)
	}
	other := meta("DeleteSecret")
	other.RequestID, other.RequestHash = "req-1", []byte("hash-1")
	if _, err := s.DeleteSecret(ctx, other, "CUSTOM_R", nil); !errors.Is(err, store.ErrRequestIDReused) {
		t.Fatalf("request id reused by another method: %v", err)
	}
	if n, err := s.PurgeIdempotency(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("purge of fresh records: %d, %v", n, err)
	}
}

// testCompaction: compaction keeps the newest entries (always at least one)
// and the oldest revision follows it; entries younger than maxAge and
// within maxCount stay.
func testCompaction(t *testing.T, s *store.Store) {
	ctx := context.Background()
	var last int64
	for i := range 10 {
		last = put(t, s, fmt.Sprintf("CUSTOM_C%d", i), "v", nil).Revision
	}
	if n, err := s.CompactChanges(ctx, time.Hour, 100); err != nil || n != 0 {
		t.Fatalf("compaction within bounds deleted %d, %v", n, err)
	}
	if n, err := s.CompactChanges(ctx, time.Hour, 3); err != nil || n != 7 {
		t.Fatalf("compaction to 3 deleted %d, %v", n, err)
	}
	oldest, err := s.OldestRevision(ctx)
	if err != nil || oldest != last-2 {
		t.Fatalf("oldest %d, %v; want %d", oldest, err, last-2)
	}
	if cs := changes(t, s, 0); len(cs) != 3 || cs[0].Revision != last-2 || cs[2].Revision != last {
		t.Fatalf("kept %+v", cs)
	}
	// By age: everything is older than 0s, but the newest entry stays (it
	// holds the current revision for readers that resume).
	if n, err := s.CompactChanges(ctx, 0, 1_000_000); err != nil || n != 2 {
		t.Fatalf("compaction by age deleted %d, %v", n, err)
	}
	if cs := changes(t, s, 0); len(cs) != 1 || cs[0].Revision != last {
		t.Fatalf("after compaction by age: %+v", cs)
	}
}

// testAuditChain: every write's audit event, and every other append, is
// committed to the intake; the sequencer's rounds chain them in commit
// order, each linking to the previous one, and the head names the last.
func testAuditChain(t *testing.T, s *store.Store) {
	ctx := context.Background()
	for i := range 5 {
		put(t, s, fmt.Sprintf("CUSTOM_A%d", i%2), "v", nil)
	}
	if err := s.RecordFailure(ctx, meta("PutSecret"), "CUSTOM_A0", 0, "PERMISSION_DENIED", "refused"); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(ctx, []store.AuditEvent{{Actor: "a", Action: "AccessSecretVersion", Key: "CUSTOM_A1", Version: 1, Outcome: store.OutcomeOK}}); err != nil {
		t.Fatal(err)
	}
	if waiting, _, err := s.AuditIntake(ctx); err != nil || waiting != 7 {
		t.Fatalf("%d events waiting in the intake, %v; want 7", waiting, err)
	}
	if events, err := s.ListAudit(ctx, store.AuditFilter{Limit: 10}); err != nil || len(events) != 0 {
		t.Fatalf("listed before sequencing: %d events, %v; want none (not chained yet)", len(events), err)
	}
	for limit := 3; ; {
		r, err := s.SequenceAudit(ctx, store.SequenceOptions{Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		if r.Events == 0 {
			break
		}
		if len(r.Times) != r.Events || r.SequencedAt.IsZero() {
			t.Fatalf("round %+v: want a time per event and the sequencing time", r)
		}
	}
	if waiting, _, err := s.AuditIntake(ctx); err != nil || waiting != 0 {
		t.Fatalf("%d events waiting after sequencing, %v", waiting, err)
	}
	var prev []byte
	var n, lastSeq int64
	var actions []string
	for e, err := range s.AuditEvents(ctx, 0, math.MaxInt64) {
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 && !bytes.Equal(e.PrevHash, prev) {
			t.Fatalf("event %d does not link to the one before it", e.Sequence)
		}
		if !bytes.Equal(e.Hash, store.EventHash(e.PrevHash, e)) {
			t.Fatalf("event %d: hash does not match its content", e.Sequence)
		}
		if n > 0 && e.Sequence != lastSeq+1 {
			t.Fatalf("sequence %d after %d", e.Sequence, lastSeq)
		}
		prev, lastSeq = e.Hash, e.Sequence
		actions = append(actions, e.Action+":"+e.Outcome)
		n++
	}
	if n != 7 {
		t.Fatalf("%d audit events, want 7: %v", n, actions)
	}
	if actions[5] != "PutSecret:PERMISSION_DENIED" || actions[6] != "AccessSecretVersion:OK" {
		t.Fatalf("actions %v", actions)
	}
	_, seq, hash, err := s.AuditHead(ctx)
	if err != nil || seq != lastSeq || !bytes.Equal(hash, prev) {
		t.Fatalf("head %d %x, %v; want %d %x", seq, hash, err, lastSeq, prev)
	}
}

// SequenceAll chains every event waiting in the audit intake, as a
// replica's sequencer would, so a test can read the chain.
func SequenceAll(t testing.TB, s *store.Store) {
	t.Helper()
	ctx := context.Background()
	for range 10_000 {
		r, err := s.SequenceAudit(ctx, store.SequenceOptions{FromStart: true})
		if err != nil {
			t.Fatalf("sequence the audit intake: %v", err)
		}
		if r.Events == 0 {
			return
		}
	}
	t.Fatal("sequence the audit intake: it never emptied")
}
