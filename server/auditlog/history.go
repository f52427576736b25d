package auditlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// historyStore is what verification needs besides Store once retention
// has dropped partitions, and to verify incrementally.
type historyStore interface {
	AuditPartitions(ctx context.Context) ([]store.AuditPartition, error)
	AuditEventAt(ctx context.Context, seq int64) (store.AuditEvent, error)
	InsertAuditVerified(ctx context.Context, v store.AuditVerified) error
	AuditVerifiedProgress(ctx context.Context, keyIDs []string, before *store.AuditVerified, limit int) ([]store.AuditVerified, error)
	AuditRowBounds(ctx context.Context, upTo int64, count bool) (store.AuditRows, error)
	AuditDuplicate(ctx context.Context, upTo int64) (int64, error)
}

// archivedThrough is the last sequence retention dropped from the table
// (0: none): the live chain starts after it.
func archivedThrough(parts []store.AuditPartition) int64 {
	var through int64
	for _, p := range parts {
		if p.State == store.PartitionDropped && p.LastSeq != nil {
			through = max(through, *p.LastSeq)
		}
	}
	return through
}

// liveStart is where the table's chain starts: after the chain start, or
// after the events retention dropped (then linked to the first live
// event's previous hash, which only the archives can confirm).
func (l *Log) liveStart(ctx context.Context, h Head) (Point, error) {
	p, _, err := l.liveStartThrough(ctx, h)
	return p, err
}

// liveStartThrough is liveStart, also reporting the last sequence the
// catalog says retention dropped (0: none).
func (l *Log) liveStartThrough(ctx context.Context, h Head) (Point, int64, error) {
	hs, ok := l.Store.(historyStore)
	if !ok {
		return Point{Sequence: h.ChainStart}, 0, nil
	}
	parts, err := hs.AuditPartitions(ctx)
	if err != nil {
		return Point{}, 0, err
	}
	through := archivedThrough(parts)
	if through <= h.ChainStart {
		return Point{Sequence: h.ChainStart}, through, nil
	}
	if through >= h.Sequence {
		return Point{Sequence: h.Sequence, Hash: h.Hash}, through, nil
	}
	e, err := hs.AuditEventAt(ctx, through+1)
	if errors.Is(err, store.ErrNotFound) {
		// Verify reports the gap.
		return Point{Sequence: through}, through, nil
	}
	if err != nil {
		return Point{}, 0, err
	}
	return Point{Sequence: through, Hash: e.PrevHash}, through, nil
}

// checkRows finds rows a walk of the chain never reads, so cannot vouch
// for, yet the audit listing shows: numbered at or below the events
// retention dropped (or below 1), past the head, or (full: counted)
// more than once. through is the last sequence the catalog says was
// dropped, h the head the walk ended at.
func checkRows(ctx context.Context, hs historyStore, res Result, through int64, h Head, full bool) (Result, error) {
	bad := func(seq int64, format string, args ...any) (Result, error) {
		res.Intact, res.FirstBad, res.Reason = false, seq, fmt.Sprintf(format, args...)
		return res, nil
	}
	r, err := hs.AuditRowBounds(ctx, h.Sequence, full)
	if err != nil {
		return res, err
	}
	switch {
	case r.Min == 0 && r.Max == 0:
	case r.Min < 1:
		return bad(r.Min, "inserted: the table holds an event numbered %d, outside the chain (which starts at 1)", r.Min)
	case r.Min <= through:
		return bad(r.Min, "inserted: the table holds event %d, but the partition catalog says events up to %d were archived and dropped (a row outside the chain, or a catalog that lies)", r.Min, through)
	case r.Max > r.Head:
		return bad(r.Max, "inserted: the table holds event %d, past the chain head %d: it is not part of the chain", r.Max, r.Head)
	}
	if !full || r.Counted < 0 {
		return res, nil
	}
	want := max(h.Sequence-through, 0)
	switch {
	case r.Counted > want:
		dup, err := hs.AuditDuplicate(ctx, h.Sequence)
		if err != nil {
			return res, err
		}
		if dup != 0 {
			return bad(dup, "inserted: the table holds more than one event numbered %d", dup)
		}
		return bad(through+1, "inserted: the table holds %d events numbered %d to %d, not %d", r.Counted, through+1, h.Sequence, want)
	case r.Counted < want:
		return bad(through+1, "deleted: the table holds %d events numbered %d to %d, not %d (events before the chain start are missing)", r.Counted, through+1, h.Sequence, want)
	}
	return res, nil
}

// VerifyIncremental verifies the chain after the newest point a verifier
// holding the signing key recorded as verified, when that point is still
// trustworthy: its record is signed by a trusted key, a signed checkpoint
// in the database (and, with an anchor, an external one) vouches for the
// same hash at that sequence, and the table's event there still has it. So
// the starting point is a signed checkpoint matching the external anchor,
// and the walk covers only the events after it: seconds on a large log.
// Otherwise it verifies everything (Verify). With a signer, an intact
// result records the newest checkpoint it covered as the next start.
//
// What it does not re-check: the content of events before the starting
// point (verified when the point was recorded). Verify (--full) does.
func (l *Log) VerifyIncremental(ctx context.Context) (Result, error) {
	return l.withWaiting(ctx)(l.verifyLive(ctx, true))
}

// Verify checks the chain in the database against its checkpoints and the
// anchor's, all of it (after the events retention archived and dropped:
// VerifyArchives checks those).
func (l *Log) Verify(ctx context.Context) (Result, error) {
	return l.withWaiting(ctx)(l.verifyLive(ctx, false))
}

// verifyLive walks the table after the archived events — incremental: after
// the newest trusted progress record instead, when there is one — and
// records its progress when the chain holds.
func (l *Log) verifyLive(ctx context.Context, incremental bool) (Result, error) {
	hs, canRecord := l.Store.(historyStore)
	var res Result
	var checks Checks
	var w walked
	var from int64
	var err error
	// A retention pass that drops a partition while the walk runs leaves
	// the walk short of the events it expected: when the catalog moved,
	// verify again from the new start rather than report them deleted.
	for attempt := 0; ; attempt++ {
		var through int64
		res, through, checks, from, w, err = l.verifyLiveOnce(ctx, hs, canRecord, incremental)
		if err != nil || res.Intact || !canRecord || attempt == maxRetentionRetries {
			break
		}
		parts, perr := hs.AuditPartitions(ctx)
		if perr != nil {
			return res, perr
		}
		if archivedThrough(parts) == through {
			break
		}
	}
	if err == nil && res.Intact && canRecord {
		err = l.recordVerified(ctx, hs, res, checks, from, w)
	}
	return res, err
}

// maxRetentionRetries bounds how often a verification starts again because
// retention dropped partitions while it ran.
const maxRetentionRetries = 3

// verifyLiveOnce reports, besides the result, the last sequence the
// catalog says was dropped, the checks, and the walk's start and findings
// (for recordVerified).
func (l *Log) verifyLiveOnce(ctx context.Context, hs historyStore, canRecord, incremental bool) (Result, int64, Checks, int64, walked, error) {
	// An incremental run reads only the anchor's checkpoints from the
	// newest signed progress record on (a year of one-minute checkpoints
	// is 525,600 files, read at about a millisecond each); if it cannot
	// start there after all, it reads them all and starts earlier.
	from := int64(-1)
	if incremental && canRecord && l.Anchor != nil {
		var err error
		if from, err = l.newestProgress(ctx, hs); err != nil {
			return Result{}, 0, Checks{}, 0, walked{}, err
		}
	}
	h, checks, err := l.snapshotFrom(ctx, from)
	if err != nil {
		return Result{}, 0, checks, 0, walked{}, err
	}
	start, through, err := l.liveStartThrough(ctx, h)
	if err != nil {
		return Result{}, 0, checks, 0, walked{}, err
	}
	archived := start.Sequence
	resumed := false
	if incremental && canRecord {
		p, ok, err := l.verifiedPoint(ctx, hs, checks, start)
		if err != nil {
			return Result{}, through, checks, 0, walked{}, err
		}
		if from >= 0 && (!ok || p.Sequence < from) {
			// The anchor was read from a point this run does not start
			// at: read all of it.
			if h, checks, err = l.snapshot(ctx); err != nil {
				return Result{}, 0, checks, 0, walked{}, err
			}
			if start, through, err = l.liveStartThrough(ctx, h); err != nil {
				return Result{}, 0, checks, 0, walked{}, err
			}
			archived = start.Sequence
			if p, ok, err = l.verifiedPoint(ctx, hs, checks, start); err != nil {
				return Result{}, through, checks, 0, walked{}, err
			}
		}
		if ok {
			start, resumed = p, true
		}
	}
	res, w, err := verifyAfter(l.Store.AuditEvents(ctx, start.Sequence, h.Sequence), start, h, checks)
	if resumed && checks.Anchored && res.Intact && res.AnchoredThrough < start.Sequence {
		// The starting point is a checkpoint the anchor holds
		// (verifiedPoint): the events up to it are anchored, though this
		// walk met no external checkpoint after it.
		res.AnchoredThrough = start.Sequence
		res.External++
	}
	if archived > h.ChainStart {
		res.ArchivedThrough = archived
		if !resumed {
			res.From = h.ChainStart
		}
	}
	if err == nil && res.Intact && canRecord {
		// Rows the walk never read: below its start, past the head, or
		// twice (counted by a full verification only).
		res, err = checkRows(ctx, hs, res, through, h, !resumed)
	}
	return res, through, checks, start.Sequence, w, err
}

// Progress records are read in pages of progressPage, at most
// maxProgressPages of them: rows the service role inserted (it may insert
// any) are skipped, not allowed to crowd out the real ones; past the bound
// the verification walks everything, which is slower but complete.
const (
	progressPage     = 64
	maxProgressPages = 64
)

// verifiedPoint finds the starting point of an incremental verification.
func (l *Log) verifiedPoint(ctx context.Context, hs historyStore, checks Checks, live Point) (Point, bool, error) {
	if len(checks.Keys) == 0 {
		return Point{}, false, nil // nothing signed can be trusted
	}
	// The checkpoints by sequence: a page of records is matched without
	// scanning every checkpoint for each.
	index := func(cps []Checkpoint) map[int64][]Checkpoint {
		m := make(map[int64][]Checkpoint, len(cps))
		for _, c := range cps {
			m[c.Sequence] = append(m[c.Sequence], c)
		}
		return m
	}
	external := index(checks.External)
	var before *store.AuditVerified
	for range maxProgressPages {
		recs, err := hs.AuditVerifiedProgress(ctx, checks.Keys.IDs(), before, progressPage)
		if err != nil {
			return Point{}, false, err
		}
		// The database's checkpoints at this page's sequences (index
		// probes: the table is never read whole), and those checks hold.
		seqs := make([]int64, 0, len(recs))
		for _, v := range recs {
			if v.Sequence > live.Sequence {
				seqs = append(seqs, v.Sequence)
			}
		}
		at, err := l.Store.CheckpointsAt(ctx, seqs)
		if err != nil {
			return Point{}, false, err
		}
		stored := index(checks.Checkpoints)
		for _, c := range at {
			stored[c.Sequence] = append(stored[c.Sequence], Checkpoint(c))
		}
		for _, v := range recs {
			if v.Sequence <= live.Sequence {
				return Point{}, false, nil // older ones start earlier still
			}
			if !hasCheckpoint(stored[v.Sequence], checks.Keys, v.Sequence, v.Hash) || !checks.Keys.validProgress(v) {
				continue
			}
			if checks.Anchored && !hasCheckpoint(external[v.Sequence], checks.Keys, v.Sequence, v.Hash) {
				continue
			}
			e, err := hs.AuditEventAt(ctx, v.Sequence)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return Point{}, false, err
			}
			if !bytes.Equal(e.Hash, v.Hash) || !bytes.Equal(store.EventHash(e.PrevHash, e), e.Hash) {
				continue // the full walk will say what is wrong
			}
			return Point{Sequence: v.Sequence, Hash: v.Hash}, true, nil
		}
		if len(recs) < progressPage {
			break
		}
		before = &recs[len(recs)-1]
	}
	return Point{}, false, nil
}

// newestProgress returns the sequence of the newest progress record signed
// by a trusted key (-1: none in the newest page), where an incremental
// verification will most likely start.
func (l *Log) newestProgress(ctx context.Context, hs historyStore) (int64, error) {
	if len(l.Keys) == 0 {
		return -1, nil
	}
	recs, err := hs.AuditVerifiedProgress(ctx, l.Keys.IDs(), nil, progressPage)
	if err != nil {
		return -1, err
	}
	for _, v := range recs {
		if l.Keys.validProgress(v) {
			return v.Sequence, nil
		}
	}
	return -1, nil
}

func hasCheckpoint(cps []Checkpoint, keys Keys, seq int64, hash []byte) bool {
	for _, c := range cps {
		if c.Sequence == seq && bytes.Equal(c.Hash, hash) && keys.valid(c) {
			return true
		}
	}
	return false
}

// recordVerified records, with the signer, the newest checkpoint an intact
// result covered: one the anchor holds too, if there is an anchor (the
// starting point verifiedPoint accepts). The walk found the newest after
// its start (w); when it met none, the newest stored at or before the start
// is looked for, newest first, a page at a time.
func (l *Log) recordVerified(ctx context.Context, hs historyStore, res Result, checks Checks, from int64, w walked) error {
	if l.Signer == nil || !res.Intact {
		return nil
	}
	newest, err := hs.AuditVerifiedProgress(ctx, checks.Keys.IDs(), nil, 1)
	if err != nil {
		return err
	}
	recorded := func(seq int64) bool {
		return len(newest) > 0 && newest[0].Sequence >= seq && checks.Keys.validProgress(newest[0])
	}
	best := w.signed
	if best == nil {
		upTo := min(from, res.VerifiedThrough)
		if upTo <= res.ChainStart || recorded(upTo) {
			return nil // nothing to record, or recorded already
		}
		if best, err = l.newestTrusted(ctx, checks, upTo, res.ChainStart); err != nil || best == nil {
			return err
		}
	}
	if recorded(best.Sequence) {
		return nil // recorded already
	}
	return hs.InsertAuditVerified(ctx, l.Signer.signProgress(best.Sequence, best.Hash, time.Now()))
}

// newestTrusted is the newest stored checkpoint with downTo < sequence <=
// upTo signed by a trusted key (and held by the anchor too, if there is
// one), read newest first a page at a time (nil: none).
func (l *Log) newestTrusted(ctx context.Context, checks Checks, upTo, downTo int64) (*Checkpoint, error) {
	if len(checks.Keys) == 0 {
		return nil, nil
	}
	var external map[int64][]Checkpoint
	if checks.Anchored {
		external = make(map[int64][]Checkpoint, len(checks.External))
		for _, c := range checks.External {
			external[c.Sequence] = append(external[c.Sequence], c)
		}
	}
	for upTo > downTo {
		page, err := l.Store.CheckpointsBefore(ctx, upTo, downTo, checkpointPage)
		if err != nil {
			return nil, err
		}
		for _, s := range page {
			c := Checkpoint(s)
			if !checks.Keys.valid(c) || (checks.Anchored && !hasCheckpoint(external[c.Sequence], checks.Keys, c.Sequence, c.Hash)) {
				continue
			}
			return &c, nil
		}
		if len(page) < checkpointPage {
			break
		}
		upTo = page[len(page)-1].Sequence - 1
	}
	return nil, nil
}

func progressMessage(seq int64, hash []byte, t time.Time) []byte {
	msg := []byte("orient.secrets.audit-verified.v1\x00")
	msg = binary.BigEndian.AppendUint64(msg, uint64(seq))
	msg = binary.BigEndian.AppendUint64(msg, uint64(t.UnixMicro()))
	return append(msg, hash...)
}

// signProgress signs "the chain verified through seq, whose hash is hash".
func (s *Signer) signProgress(seq int64, hash []byte, t time.Time) store.AuditVerified {
	t = t.Truncate(time.Microsecond).UTC()
	return store.AuditVerified{Sequence: seq, Hash: hash, Time: t, KeyID: s.id,
		Signature: ed25519.Sign(s.key, progressMessage(seq, hash, t))}
}

func (k Keys) validProgress(v store.AuditVerified) bool {
	pub, ok := k[v.KeyID]
	return ok && ed25519.Verify(pub, progressMessage(v.Sequence, v.Hash, v.Time), v.Signature)
}

// VerifyArchives verifies the whole history as one chain: the archived
// segments the partition catalog records, in order (each one's digest and
// signature, the segment-hash links between them, and that the bucket holds
// no segment the catalog lost), then the live table. A missing, reordered
// or altered segment is reported by name.
func (l *Log) VerifyArchives(ctx context.Context, a *Archive, progress func(segment string, events int64)) (Result, error) {
	hs, ok := l.Store.(historyStore)
	if !ok {
		return Result{}, errors.New("audit archives: the store has no partition catalog")
	}
	// As verifyLive: a retention pass that moved a partition from the table
	// to the archive while this ran is not a deletion; verify again.
	var res Result
	var err error
	for attempt := 0; ; attempt++ {
		parts, perr := hs.AuditPartitions(ctx)
		if perr != nil {
			return Result{}, perr
		}
		res, err = l.verifyArchives(ctx, a, progress)
		if err != nil || res.Intact || attempt == maxRetentionRetries {
			break
		}
		after, perr := hs.AuditPartitions(ctx)
		if perr != nil {
			return res, perr
		}
		if archivedThrough(after) == archivedThrough(parts) {
			break
		}
	}
	return l.withWaiting(ctx)(res, err)
}

func (l *Log) verifyArchives(ctx context.Context, a *Archive, progress func(segment string, events int64)) (Result, error) {
	hs, ok := l.Store.(historyStore)
	if !ok {
		return Result{}, errors.New("audit archives: the store has no partition catalog")
	}
	h, checks, err := l.snapshot(ctx)
	if err != nil {
		return Result{}, err
	}
	if len(checks.Keys) == 0 {
		return Result{}, errors.New("audit archives: segments are signed; verifying them needs a public key")
	}
	res := Result{ChainStart: h.ChainStart, VerifiedThrough: h.ChainStart, Anchored: checks.Anchored}
	bad := func(segment string, seq int64, format string, args ...any) (Result, error) {
		res.Intact, res.FirstBad = false, seq
		res.Reason = fmt.Sprintf("segment %s: ", segment) + fmt.Sprintf(format, args...)
		return res, nil
	}
	parts, err := hs.AuditPartitions(ctx)
	if err != nil {
		return Result{}, err
	}
	inBucket, err := a.list(ctx)
	if err != nil {
		return Result{}, err
	}
	bucket := make(map[string]bool, len(inBucket))
	for _, o := range inBucket {
		bucket[o] = true
	}
	catalog := map[string]store.AuditPartition{}
	var segs []Segment
	var prev *Segment
	for _, p := range parts {
		catalog[SegmentObject(p.Name)] = p
		if p.State == store.PartitionLive || p.Archive == "" {
			continue
		}
		object := p.Archive
		var next int64 = h.ChainStart + 1
		if prev != nil {
			next = prev.LastSeq + 1
		}
		seg, err := a.readSegment(ctx, object, checks.Keys, nil)
		var se *SegmentError
		if errors.As(err, &se) {
			return bad(object, next, "%s", se.Problem)
		}
		if err != nil {
			return Result{}, err
		}
		switch {
		case seg.Name != p.Name || object != SegmentObject(seg.Name):
			return bad(object, next, "reordered: it holds partition %s, not %s", seg.Name, p.Name)
		case !bytes.Equal(seg.Hash, p.ArchiveHash):
			return bad(object, next, "replaced: it is not the segment the catalog recorded for %s", p.Name)
		case prev == nil && len(seg.PrevSegmentHash) != 0:
			return bad(object, next, "missing: it links to a segment before it that is not in the archive")
		case prev != nil && !bytes.Equal(seg.PrevSegmentHash, prev.Hash):
			return bad(object, next, "missing or reordered: it does not follow segment %s (a segment between them is missing, or they are out of order)", prev.Object)
		case seg.FirstSeq != next && !(prev == nil && seg.FirstSeq <= next):
			return bad(object, next, "missing: events %d to %d are in no segment before it", next, seg.FirstSeq-1)
		}
		segs = append(segs, seg)
		prev = &segs[len(segs)-1]
		checks.Checkpoints = append(checks.Checkpoints, seg.Checkpoints...)
	}
	// A segment the catalog does not know (deleted from the catalog, or
	// written by an export that never got recorded) is reported unless its
	// partition is still live (an export in progress).
	for _, o := range inBucket {
		if _, known := catalog[o]; !known {
			return bad(o, res.VerifiedThrough+1, "not in the partition catalog (the catalog lost it, or the segment is foreign)")
		}
	}
	// One walk over segments and table: the segments' events as read
	// (their digests were checked above; a change between the two reads is
	// caught by the event hashes), then the table after the last segment.
	var tableAfter int64 = h.ChainStart
	if prev != nil {
		tableAfter = prev.LastSeq
	}
	owner := func(seq int64) string {
		for _, s := range segs {
			if seq >= s.FirstSeq && seq <= s.LastSeq {
				return s.Object
			}
		}
		return ""
	}
	events := func(yield func(store.AuditEvent, error) bool) {
		stopped := errors.New("stopped")
		for _, s := range segs {
			var n int64
			_, err := a.readSegment(ctx, s.Object, checks.Keys, func(e store.AuditEvent) error {
				n++
				if progress != nil && n%100_000 == 0 {
					progress(s.Object, n)
				}
				if !yield(e, nil) {
					return stopped
				}
				return nil
			})
			if errors.Is(err, stopped) {
				return
			}
			if err != nil {
				yield(store.AuditEvent{}, err)
				return
			}
			if progress != nil {
				progress(s.Object, n)
			}
		}
		for e, err := range l.Store.AuditEvents(ctx, tableAfter, h.Sequence) {
			if !yield(e, err) || err != nil {
				return
			}
		}
	}
	res, err = Verify(iter.Seq2[store.AuditEvent, error](events), h, checks)
	res.Segments = len(segs)
	if err == nil && res.Intact {
		res, err = checkRows(ctx, hs, res, archivedThrough(parts), h, true)
	}
	var se *SegmentError
	if errors.As(err, &se) {
		return bad(se.Segment, res.VerifiedThrough+1, "altered while being read: %s", se.Problem)
	}
	if err == nil && !res.Intact {
		if o := owner(res.FirstBad); o != "" {
			res.Reason = fmt.Sprintf("segment %s: %s", o, res.Reason)
		}
	}
	return res, err
}

// withWaiting completes a verification's result with the events committed
// but not yet sequenced into the chain: how many wait in the intake and how
// long the oldest has waited (read after the walk, so an event committed
// before the verification started is either verified or counted).
func (l *Log) withWaiting(ctx context.Context) func(Result, error) (Result, error) {
	return func(res Result, err error) (Result, error) {
		if err != nil {
			return res, err
		}
		res.Waiting, res.OldestWaiting, err = l.Store.AuditIntake(ctx)
		return res, err
	}
}
