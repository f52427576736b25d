package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// Head is the chain head as the database records it.
type Head struct {
	// ChainStart: events up to it predate the chain and are not checked.
	ChainStart int64
	Sequence   int64
	Hash       []byte
}

// Keys are the trusted checkpoint verification keys, by key id: the
// current signing key and the ones it replaced (key rotation).
type Keys map[string]ed25519.PublicKey

// NewKeys indexes public keys by their id.
func NewKeys(pubs ...ed25519.PublicKey) Keys {
	k := make(Keys, len(pubs))
	for _, p := range pubs {
		if len(p) == ed25519.PublicKeySize {
			k[KeyID(p)] = p
		}
	}
	return k
}

// IDs lists the key ids, sorted.
func (k Keys) IDs() []string {
	ids := make([]string, 0, len(k))
	for id := range k {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// valid reports whether a trusted key signed c.
func (k Keys) valid(c Checkpoint) bool {
	pub, ok := k[c.KeyID]
	return ok && c.Valid(pub)
}

// Checks are what a chain is verified against besides itself.
type Checks struct {
	// Checkpoints are the signed checkpoints stored in the database: they
	// prove the signer wrote them, but whoever owns the database can delete
	// them, or the chain's tail with them. Held in memory: an export's, or
	// archived segments'.
	Checkpoints []Checkpoint
	// Stored, when set, streams more of them: those with a sequence after
	// the given one, in sequence order, read from the database a page at a
	// time as the walk gets to them (Log's snapshot), so that verification
	// holds a page, not the table.
	Stored func(after int64) iter.Seq2[Checkpoint, error]
	// Anchored says external checkpoints were consulted (External may
	// still be empty: an anchor with no checkpoint yet).
	Anchored bool
	// External are the checkpoints from the anchor: every one must match,
	// and the chain must reach the newest.
	External []Checkpoint
	// Keys verify signatures; empty skips the database's checkpoints (the
	// external ones need keys: see Verify).
	Keys Keys
}

// Result is the outcome of a verification.
type Result struct {
	Intact bool
	// VerifiedThrough is the last sequence whose event verified.
	VerifiedThrough int64
	// FirstBad is the first sequence that does not verify (0 when intact).
	FirstBad int64
	// Reason says why: edited, deleted, reordered, inserted, rewritten.
	Reason string
	Events int64
	// Checkpoints counts the database's signed checkpoints that matched.
	Checkpoints int
	// Anchored says external checkpoints were checked; External counts
	// those that matched, AnchoredThrough is the newest of them (events
	// after it are only self-attested).
	Anchored        bool
	External        int
	AnchoredThrough int64
	// ChainStart: events up to it predate the chain.
	ChainStart int64
	// From: the walk started after this event, verified before (an
	// incremental verification) or archived; 0 or ChainStart: the start.
	From int64
	// Segments counts the archived segments verified (with archives).
	Segments int
	// ArchivedThrough: events up to it were archived and dropped from the
	// table, and not walked here (0: none).
	ArchivedThrough int64
	// Waiting counts the events committed to the intake but not yet
	// sequenced into the chain (verified once they are); OldestWaiting is
	// how long the oldest of them has waited. Zero for an export.
	Waiting       int64
	OldestWaiting time.Duration
}

// Summary says in one sentence what the result vouches for, and what it
// cannot: a chain that only the database attests is never just "intact".
func (r Result) Summary() string {
	if !r.Intact {
		return fmt.Sprintf("NOT INTACT: first bad sequence %d: %s (verified through %d)", r.FirstBad, r.Reason, r.VerifiedThrough)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "intact up to sequence %d (%d events", r.VerifiedThrough, r.Events)
	if r.Segments > 0 {
		fmt.Fprintf(&b, " in %d archived segments and the table", r.Segments)
	}
	resumed := r.From > r.ChainStart && r.From > r.ArchivedThrough
	if resumed {
		fmt.Fprintf(&b, " after %d; events up to %d were verified by an earlier run and not re-checked here: --full re-checks them", r.From, r.From)
	}
	fmt.Fprintf(&b, ", %d signed checkpoints in the database matched", r.Checkpoints)
	if r.ArchivedThrough > 0 {
		fmt.Fprintf(&b, ", events up to %d archived and not checked here: verify them with --archives", r.ArchivedThrough)
	}
	switch {
	case !r.Anchored:
		b.WriteString("); no external checkpoints were checked, so all of it is only self-attested: whoever controls the database could have rewritten or cut back the whole chain")
	case r.AnchoredThrough == 0 && r.VerifiedThrough > r.ChainStart:
		fmt.Fprintf(&b, ", 0 external); the external checkpoints cover nothing yet: events %d to %d are only self-attested", r.ChainStart+1, r.VerifiedThrough)
	case r.AnchoredThrough < r.VerifiedThrough:
		fmt.Fprintf(&b, ", %d external); anchored through %d; events %d to %d are only self-attested until the next external checkpoint",
			r.External, r.AnchoredThrough, r.AnchoredThrough+1, r.VerifiedThrough)
	case resumed:
		fmt.Fprintf(&b, ", %d external); anchored through %d: every event checked here is covered by an external checkpoint", r.External, r.AnchoredThrough)
	default:
		fmt.Fprintf(&b, ", %d external); anchored through %d: every event is covered by an external checkpoint", r.External, r.AnchoredThrough)
	}
	if r.Waiting > 0 {
		fmt.Fprintf(&b, "; %d events committed but not yet sequenced into the chain (the oldest waiting %s)", r.Waiting, r.OldestWaiting.Round(time.Millisecond))
	}
	return b.String()
}

// Verify walks events in sequence order and checks every link of the hash
// chain, the head, the database's signed checkpoints (with keys), and every
// external checkpoint: each must match the event at its sequence, and the
// chain must reach the newest one (a chain cut back, or rewritten, behind
// an anchor is not intact). It reads one event ahead, to tell a reordering
// from an insertion.
func Verify(events iter.Seq2[store.AuditEvent, error], head Head, checks Checks) (Result, error) {
	return VerifyAfter(events, Point{Sequence: head.ChainStart}, head, checks)
}

// Point is a place in the chain: the event Sequence, whose hash is Hash
// (empty at the chain's start).
type Point struct {
	Sequence int64
	Hash     []byte
}

// VerifyAfter is Verify for the chain after a point already verified (an
// incremental verification, or the live table after archived segments):
// the first event must link to after.Hash; checkpoints up to after are not
// checked again, except that one at after itself must match after.Hash.
func VerifyAfter(events iter.Seq2[store.AuditEvent, error], after Point, head Head, checks Checks) (Result, error) {
	res, _, err := verifyAfter(events, after, head, checks)
	return res, err
}

// walked is what a walk learnt besides its Result.
type walked struct {
	// signed is the newest database checkpoint the walk matched (and, with
	// an anchor, an external one at the same sequence): nil when none.
	signed *Checkpoint
}

func verifyAfter(events iter.Seq2[store.AuditEvent, error], after Point, head Head, checks Checks) (Result, walked, error) {
	var w walked
	res := Result{VerifiedThrough: max(head.ChainStart, after.Sequence), ChainStart: head.ChainStart, Anchored: checks.Anchored,
		From: after.Sequence}
	bad := func(seq int64, format string, args ...any) (Result, walked, error) {
		res.Intact, res.FirstBad, res.Reason = false, seq, fmt.Sprintf(format, args...)
		return res, w, nil
	}
	if len(checks.External) > 0 && len(checks.Keys) == 0 {
		return res, w, fmt.Errorf("external checkpoints need a public key to be checked")
	}
	// External checkpoints are the anchor: one that is not signed by a
	// trusted key is a forgery in the anchor itself.
	external := make(map[int64]Checkpoint, len(checks.External))
	var newestExternal int64
	for _, c := range checks.External {
		if !checks.Keys.valid(c) {
			return bad(c.Sequence, "rewritten: the external checkpoint at %d is not signed by a trusted key (key %q; trusted: %s)",
				c.Sequence, c.KeyID, strings.Join(checks.Keys.IDs(), ", "))
		}
		if c.Sequence <= head.ChainStart {
			return bad(c.Sequence, "rewritten: the chain claims to start after %d, but the external checkpoint at %d covers an event before that",
				head.ChainStart, c.Sequence)
		}
		if c.Sequence <= after.Sequence {
			if c.Sequence == after.Sequence && !bytes.Equal(c.Hash, after.Hash) {
				return bad(c.Sequence, "rewritten: the verified event %d does not match the external checkpoint at %d", c.Sequence, c.Sequence)
			}
			continue
		}
		if o, dup := external[c.Sequence]; dup && !bytes.Equal(o.Hash, c.Hash) {
			return bad(c.Sequence, "rewritten: two external checkpoints at %d disagree", c.Sequence)
		}
		external[c.Sequence] = c
		newestExternal = max(newestExternal, c.Sequence)
	}
	// The database's checkpoints after the starting point, streamed in
	// sequence order alongside the events (a page at a time): each trusted
	// one is matched with the event at its sequence; one not signed by a
	// trusted key (a replaced signing key, a forged row) is reported unless
	// the walk finds the damage first, with a better position.
	var untrusted *Checkpoint
	var nextStored func() (Checkpoint, error, bool)
	if len(checks.Keys) > 0 {
		var stopStored func()
		nextStored, stopStored = iter.Pull2(checks.checkpointsAfter(after.Sequence))
		defer stopStored()
	}
	// pull returns the next trusted stored checkpoint (nil: no more),
	// noting the first untrusted one on the way.
	pull := func() (*Checkpoint, error) {
		for nextStored != nil {
			c, err, ok := nextStored()
			if !ok {
				nextStored = nil
				break
			}
			if err != nil {
				return nil, err
			}
			if c.Sequence <= after.Sequence {
				continue
			}
			if !checks.Keys.valid(c) {
				if untrusted == nil || c.Sequence < untrusted.Sequence {
					untrusted = &c
				}
				continue
			}
			return &c, nil
		}
		return nil, nil
	}
	signed, err := pull()
	if err != nil {
		return res, w, err
	}
	next, stop := iter.Pull2(events)
	defer stop()
	var prev, prevPrev []byte // hashes of the last two verified events
	lastCheckpoint := head.ChainStart
	expect := head.ChainStart + 1
	if after.Sequence > head.ChainStart {
		prev, lastCheckpoint, expect = after.Hash, after.Sequence, after.Sequence+1
	}
	cur, err, ok := next()
	for ok {
		if err != nil {
			return res, w, err
		}
		nxt, nerr, nok := next()
		if cur.Sequence <= head.ChainStart || cur.Sequence <= after.Sequence {
			cur, err, ok = nxt, nerr, nok
			continue
		}
		res.Events++
		switch {
		case cur.Sequence < expect:
			return bad(cur.Sequence, "inserted: the table holds more than one event numbered %d", cur.Sequence)
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
		mismatch := func(c Checkpoint, where string) (Result, walked, error) {
			if nok && nerr == nil && bytes.Equal(nxt.Hash, c.Hash) {
				// The event signed at this sequence now sits one later.
				return bad(cur.Sequence, "inserted: event %d is not part of the signed chain", cur.Sequence)
			}
			return bad(lastCheckpoint+1, "rewritten: the chain after event %d does not match the %s checkpoint at %d (the change is in events %d to %d)",
				lastCheckpoint, where, c.Sequence, lastCheckpoint+1, c.Sequence)
		}
		// The stored checkpoints up to this event: before it, only those
		// at or before the chain's start (never walked); at it, each must
		// match.
		var here *Checkpoint
		for signed != nil && signed.Sequence <= cur.Sequence {
			c := signed
			if signed, err = pull(); err != nil {
				return res, w, err
			}
			if c.Sequence < cur.Sequence {
				continue
			}
			if !bytes.Equal(c.Hash, cur.Hash) {
				return mismatch(*c, "signed")
			}
			here = c
		}
		matched := here != nil
		if matched {
			res.Checkpoints++
		}
		x, anchored := external[cur.Sequence]
		if anchored {
			if !bytes.Equal(x.Hash, cur.Hash) {
				return mismatch(x, "external")
			}
			matched = true
			res.External++
			res.AnchoredThrough = cur.Sequence
		}
		if here != nil && (anchored || !checks.Anchored) {
			w.signed = here
		}
		if matched {
			lastCheckpoint = cur.Sequence
		}
		prevPrev, prev = prev, cur.Hash
		res.VerifiedThrough = cur.Sequence
		expect++
		cur, err, ok = nxt, nerr, nok
	}
	if newestExternal > res.VerifiedThrough {
		return bad(res.VerifiedThrough+1, "deleted: the chain ends at %d, but the external checkpoint at %d covers events %d to %d",
			res.VerifiedThrough, newestExternal, res.VerifiedThrough+1, newestExternal)
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
	// The rest of the stored checkpoints: a trusted one past the last
	// event means the chain was cut back; an untrusted one is reported.
	for signed != nil {
		if signed.Sequence > res.VerifiedThrough {
			return bad(res.VerifiedThrough+1, "deleted: a signed checkpoint covers event %d, past the last event", signed.Sequence)
		}
		if signed, err = pull(); err != nil {
			return res, w, err
		}
	}
	if untrusted != nil {
		return bad(untrusted.Sequence, "rewritten: the checkpoint at %d is not signed by a trusted key (key %q; trusted: %s)",
			untrusted.Sequence, untrusted.KeyID, strings.Join(checks.Keys.IDs(), ", "))
	}
	res.Intact = true
	return res, w, nil
}
