package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"iter"

	"github.com/orient-bot/secrets/server/store"
)

// Head is the chain head as the database records it.
type Head struct {
	// ChainStart: events up to it predate the chain and are not checked.
	ChainStart int64
	Sequence   int64
	Hash       []byte
}

// Result is the outcome of a verification.
type Result struct {
	Intact bool
	// VerifiedThrough is the last sequence whose event verified.
	VerifiedThrough int64
	// FirstBad is the first sequence that does not verify (0 when intact).
	FirstBad int64
	// Reason says why: edited, deleted, reordered, inserted, rewritten.
	Reason      string
	Events      int64
	Checkpoints int
}

// Verify walks events in sequence order and checks every link of the hash
// chain, the head, and the signed checkpoints (when pub is given). It reads
// one event ahead, to tell a reordering from an insertion.
func Verify(events iter.Seq2[store.AuditEvent, error], head Head, checkpoints []Checkpoint, pub ed25519.PublicKey) (Result, error) {
	res := Result{VerifiedThrough: head.ChainStart}
	bad := func(seq int64, format string, args ...any) (Result, error) {
		res.Intact, res.FirstBad, res.Reason = false, seq, fmt.Sprintf(format, args...)
		return res, nil
	}
	byseq := make(map[int64]Checkpoint, len(checkpoints))
	for _, c := range checkpoints {
		if pub == nil {
			break
		}
		if !c.Valid(pub) {
			return bad(c.Sequence, "rewritten: the checkpoint at %d has no valid signature by key %s", c.Sequence, KeyID(pub))
		}
		byseq[c.Sequence] = c
	}
	next, stop := iter.Pull2(events)
	defer stop()
	var prev, prevPrev []byte // hashes of the last two verified events
	lastCheckpoint := head.ChainStart
	expect := head.ChainStart + 1
	cur, err, ok := next()
	for ok {
		if err != nil {
			return res, err
		}
		nxt, nerr, nok := next()
		if cur.Sequence <= head.ChainStart {
			cur, err, ok = nxt, nerr, nok
			continue
		}
		res.Events++
		switch {
		case cur.Sequence != expect:
			return bad(expect, "deleted: events %d to %d are missing", expect, cur.Sequence-1)
		case !bytes.Equal(store.EventHash(cur.PrevHash, cur), cur.Hash):
			return bad(cur.Sequence, "edited: event %d does not match its hash", cur.Sequence)
		case !bytes.Equal(cur.PrevHash, prev):
			if nok && nerr == nil && bytes.Equal(cur.PrevHash, nxt.Hash) {
				return bad(cur.Sequence, "reordered: event %d belongs after event %d", cur.Sequence, nxt.Sequence)
			}
			if prevPrev != nil && bytes.Equal(cur.PrevHash, prevPrev) {
				return bad(cur.Sequence-1, "inserted: event %d is not part of the chain", cur.Sequence-1)
			}
			return bad(cur.Sequence, "deleted: the event before %d is missing from the chain", cur.Sequence)
		}
		if c, ok := byseq[cur.Sequence]; ok {
			if !bytes.Equal(c.Hash, cur.Hash) {
				if nok && nerr == nil && bytes.Equal(nxt.Hash, c.Hash) {
					// The event signed at this sequence now sits one later.
					return bad(cur.Sequence, "inserted: event %d is not part of the signed chain", cur.Sequence)
				}
				return bad(lastCheckpoint+1, "rewritten: the chain after event %d does not match the signed checkpoint at %d", lastCheckpoint, c.Sequence)
			}
			lastCheckpoint = cur.Sequence
			res.Checkpoints++
		}
		prevPrev, prev = prev, cur.Hash
		res.VerifiedThrough = cur.Sequence
		expect++
		cur, err, ok = nxt, nerr, nok
	}
	if head.Sequence > res.VerifiedThrough {
		return bad(res.VerifiedThrough+1, "deleted: events %d to %d are missing", res.VerifiedThrough+1, head.Sequence)
	}
	if head.Sequence < res.VerifiedThrough {
		return bad(head.Sequence+1, "inserted: events after %d are not covered by the chain head", head.Sequence)
	}
	if head.Sequence == res.VerifiedThrough && head.Sequence > head.ChainStart && !bytes.Equal(head.Hash, prev) {
		return bad(head.Sequence, "edited: the chain head does not match event %d", head.Sequence)
	}
	for _, c := range byseq {
		if c.Sequence > res.VerifiedThrough {
			return bad(res.VerifiedThrough+1, "deleted: a signed checkpoint covers event %d, past the last event", c.Sequence)
		}
	}
	res.Intact = true
	return res, nil
}
