package auditlog

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// RetentionStore is what the retention job reads and calls: the partition
// catalog, a partition's events, and the two privileged acts.
type RetentionStore interface {
	AuditHead(ctx context.Context) (chainStart, sequence int64, hash []byte, err error)
	AuditPartitions(ctx context.Context) ([]store.AuditPartition, error)
	AuditSequencedThrough(ctx context.Context) (time.Time, error)
	AuditPartitionEvents(ctx context.Context, from, to time.Time) iter.Seq2[store.AuditEvent, error]
	AuditPartitionRange(ctx context.Context, from, to time.Time) (first, last int64, err error)
	// CheckpointsAfter reads a page of the stored checkpoints (a
	// partition's are read a page at a time, never the whole table).
	CheckpointsAfter(ctx context.Context, after, upTo int64, limit int) ([]store.AuditCheckpoint, error)
	RecordAuditArchive(ctx context.Context, name, archive string, hash []byte, first, last *int64) error
	DropAuditPartition(ctx context.Context, name string) error
}

// Retention archives and drops the audit log's partitions older than
// Keep, one at a time and in chain order: export the partition as a signed
// segment, read it back and check it, record it archived, drop it. Each
// step can be interrupted (a crash, a lost connection) and the next run
// resumes: the object's name is fixed by the partition, so an export that
// finished is found, checked and recorded instead of written again, and a
// partition recorded archived is dropped. A partition is never skipped: a
// later one waits until every earlier one is archived.
type Retention struct {
	Store   RetentionStore
	Archive *Archive
	Signer  *Signer
	// Keys verify the checkpoints a segment carries (earlier signing keys
	// too); empty: the signer's own.
	Keys Keys
	// Keep is how long events stay in the database (by sequencing time).
	Keep time.Duration
	// DryRun lists what would be archived and dropped, and changes nothing.
	DryRun bool
	// Progress, if set, is told the rows exported so far of a partition
	// (every 10,000, and at its end).
	Progress func(partition string, rows int64)
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time

	// hooks inject failures between the steps (tests).
	hooks retentionHooks
}

type retentionHooks struct {
	afterExport, afterRecord func(partition string) error
}

// RetentionResult counts what a run did.
type RetentionResult struct {
	// Exported: segments written; Reused: segments found already written
	// (an interrupted run's) and checked; Recorded: partitions recorded
	// archived; Dropped: partitions dropped; Rows: events exported.
	Exported, Reused, Recorded, Dropped int
	Rows                                int64
	// Pending lists, on a dry run, the partitions that would be archived
	// and dropped.
	Pending []string
}

// Run archives and drops every partition that is due, in order.
func (r *Retention) Run(ctx context.Context) (RetentionResult, error) {
	var res RetentionResult
	if r.Signer == nil && !r.DryRun {
		return res, errors.New("audit retention needs the audit signing key: archive segments are signed")
	}
	if r.Keep <= 0 {
		return res, errors.New("audit retention: no retention period")
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	cutoff := now().Add(-r.Keep)
	parts, err := r.Store.AuditPartitions(ctx)
	if err != nil {
		return res, err
	}
	through, err := r.Store.AuditSequencedThrough(ctx)
	if err != nil {
		return res, err
	}
	chainStart, _, _, err := r.Store.AuditHead(ctx)
	if err != nil {
		return res, err
	}
	var prevSegment []byte // the previous segment's hash
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		switch p.State {
		case store.PartitionDropped:
			if p.ArchiveHash != nil {
				prevSegment = p.ArchiveHash
			}
			continue
		case store.PartitionArchived:
			// Recorded by a run that stopped before dropping it.
			if r.DryRun {
				res.Pending = append(res.Pending, p.Name)
			} else if err := r.Store.DropAuditPartition(ctx, p.Name); err != nil {
				return res, fmt.Errorf("audit partition %s: drop: %w", p.Name, err)
			} else {
				res.Dropped++
			}
			if p.ArchiveHash != nil {
				prevSegment = p.ArchiveHash
			}
			continue
		}
		// Live: due once older than the retention and complete.
		if p.To.After(cutoff) || p.To.After(through) {
			return res, nil
		}
		if r.DryRun {
			res.Pending = append(res.Pending, p.Name)
			continue
		}
		seg, wrote, err := r.export(ctx, p, chainStart, prevSegment)
		if err != nil {
			return res, err
		}
		var first, last *int64
		object := ""
		if seg != nil {
			first, last, object = &seg.FirstSeq, &seg.LastSeq, seg.Object
			if wrote {
				res.Exported++
				res.Rows += seg.Events
			} else {
				res.Reused++
			}
		}
		if err := r.hook(r.hooks.afterExport, p.Name); err != nil {
			return res, err
		}
		var hash []byte
		if seg != nil {
			hash = seg.Hash
		}
		if err := r.Store.RecordAuditArchive(ctx, p.Name, object, hash, first, last); err != nil {
			return res, fmt.Errorf("audit partition %s: record archive: %w", p.Name, err)
		}
		res.Recorded++
		if err := r.hook(r.hooks.afterRecord, p.Name); err != nil {
			return res, err
		}
		if err := r.Store.DropAuditPartition(ctx, p.Name); err != nil {
			return res, fmt.Errorf("audit partition %s: drop: %w", p.Name, err)
		}
		res.Dropped++
		if seg != nil {
			prevSegment = seg.Hash
		}
	}
	return res, nil
}

func (r *Retention) hook(h func(string) error, name string) error {
	if h == nil {
		return nil
	}
	return h(name)
}

// export writes partition p's segment, or finds the one an interrupted run
// wrote, and reads it back: only a segment that verifies (digest,
// signature, link to prevSegment, the partition's name) is returned. An
// empty partition has no segment (nil). wrote says whether this run wrote
// it.
func (r *Retention) export(ctx context.Context, p store.AuditPartition, chainStart int64, prevSegment []byte) (*Segment, bool, error) {
	object := SegmentObject(p.Name)
	if !partitionName.MatchString(p.Name) {
		return nil, false, fmt.Errorf("audit partition %q: unexpected name", p.Name)
	}
	exists, err := r.Archive.exists(ctx, object)
	if err != nil {
		return nil, false, err
	}
	wrote := false
	if !exists {
		n, err := r.writeSegment(ctx, p, object, chainStart, prevSegment)
		switch {
		case errors.Is(err, errExists): // written meanwhile (another replica): check it below
		case err != nil:
			return nil, false, err
		case n == 0:
			return nil, false, nil
		default:
			wrote = true
		}
	}
	keys := NewKeys(r.Signer.Public())
	seg, err := r.Archive.readSegment(ctx, object, keys, nil)
	if err != nil {
		return nil, false, fmt.Errorf("audit partition %s: the archive does not read back: %w", p.Name, err)
	}
	switch {
	case seg.Name != p.Name:
		return nil, false, &SegmentError{Segment: object, Problem: "holds partition " + seg.Name}
	case !bytes.Equal(seg.PrevSegmentHash, prevSegment):
		return nil, false, &SegmentError{Segment: object, Problem: "does not link to the previous segment (written by another chain of archives?)"}
	}
	return &seg, wrote, nil
}

// writeSegment streams partition p's events into a new segment and reports
// how many it wrote (0: the partition is empty and nothing was written).
// It checks the hash chain inside the partition as it goes: a partition
// whose chain is broken is not archived (verification reports it). The
// partition's stored checkpoints are read twice, a page at a time (once to
// write them, once alongside the events to match them), never held whole.
func (r *Retention) writeSegment(ctx context.Context, p store.AuditPartition, object string, chainStart int64, prevSegment []byte) (int64, error) {
	// The range first: the header states it.
	first, last, err := r.Store.AuditPartitionRange(ctx, p.From, p.To)
	if err != nil || first == 0 {
		return 0, err
	}
	var n int64
	err = r.Archive.write(ctx, object, func(w io.Writer) error {
		sw := newSegmentWriter(w)
		if err := sw.enc.Encode(segmentHeader{Type: "segment", Version: 1, Name: p.Name,
			From: p.From.UTC().Format(time.RFC3339Nano), To: p.To.UTC().Format(time.RFC3339Nano),
			FirstSeq: first, LastSeq: last, ChainStart: chainStart, PrevSegmentHash: hex.EncodeToString(prevSegment)}); err != nil {
			return err
		}
		keys := r.Keys
		if len(keys) == 0 {
			keys = NewKeys(r.Signer.Public())
		}
		// The checkpoints it carries must be genuine and match its events:
		// the segment is signed with the trusted key and the database's copy
		// is then dropped, so nothing rewritten may be archived as if sound.
		for c, err := range pagedCheckpoints(ctx, r.Store, first-1, last) {
			if err != nil {
				return err
			}
			if !keys.valid(c) {
				return fmt.Errorf("audit partition %s: checkpoint %d is not signed by a trusted key: not archived (run secretsd audit verify)", p.Name, c.Sequence)
			}
			if err := sw.enc.Encode(checkpointLine(c)); err != nil {
				return err
			}
		}
		// The same checkpoints again, in step with the events: each must
		// match the event at its sequence (a forged row stored meanwhile
		// stops the export too).
		nextCP, stopCP := iter.Pull2(pagedCheckpoints(ctx, r.Store, first-1, last))
		defer stopCP()
		cp, cpErr, cpOK := nextCP()
		var prev, lastHash []byte
		expect := first
		for e, err := range r.Store.AuditPartitionEvents(ctx, p.From, p.To) {
			if err != nil {
				return err
			}
			if e.Sequence != expect {
				return fmt.Errorf("audit partition %s: event %d where %d belongs: not archived (run secretsd audit verify)", p.Name, e.Sequence, expect)
			}
			if e.Sequence > chainStart {
				if !bytes.Equal(store.EventHash(e.PrevHash, e), e.Hash) || (prev != nil && !bytes.Equal(e.PrevHash, prev)) {
					return fmt.Errorf("audit partition %s: the chain is broken at event %d: not archived (run secretsd audit verify)", p.Name, e.Sequence)
				}
			}
			for ; cpOK && (cpErr != nil || cp.Sequence <= e.Sequence); cp, cpErr, cpOK = nextCP() {
				if cpErr != nil {
					return cpErr
				}
				if !keys.valid(cp) {
					return fmt.Errorf("audit partition %s: checkpoint %d is not signed by a trusted key: not archived (run secretsd audit verify)", p.Name, cp.Sequence)
				}
				if cp.Sequence == e.Sequence && !bytes.Equal(cp.Hash, e.Hash) {
					return fmt.Errorf("audit partition %s: event %d does not match its signed checkpoint: not archived (run secretsd audit verify)", p.Name, e.Sequence)
				}
			}
			if err := sw.enc.Encode(eventLine(e)); err != nil {
				return err
			}
			prev, lastHash = e.Hash, e.Hash
			expect++
			n++
			if r.Progress != nil && n%10_000 == 0 {
				r.Progress(p.Name, n)
			}
		}
		if expect != last+1 {
			return fmt.Errorf("audit partition %s: events changed while being archived", p.Name)
		}
		digest := sw.digest.Sum(nil)
		segHash := segmentLink(prevSegment, digest)
		sig := r.Signer.signSegment(p.Name, first, last, lastHash, digest, prevSegment, segHash)
		// The trailer is not part of the digest.
		if err := json.NewEncoder(sw.bw).Encode(segmentTrailer{Type: "segment_end", Events: n, LastHash: hex.EncodeToString(lastHash),
			Digest: hex.EncodeToString(digest), SegmentHash: hex.EncodeToString(segHash), KeyID: r.Signer.ID(),
			Signature: hex.EncodeToString(sig)}); err != nil {
			return err
		}
		return sw.bw.Flush()
	})
	if err == nil && r.Progress != nil {
		r.Progress(p.Name, n)
	}
	return n, err
}
