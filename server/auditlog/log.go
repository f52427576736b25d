package auditlog

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// Store is what the log reads and writes.
type Store interface {
	AuditHead(ctx context.Context) (chainStart, sequence int64, hash []byte, err error)
	AuditEvents(ctx context.Context, after, upTo int64) iter.Seq2[store.AuditEvent, error]
	// The stored checkpoints are read in bounded pages (stored.go), never
	// whole: a page in sequence order, newest first, or by sequence.
	CheckpointsAfter(ctx context.Context, after, upTo int64, limit int) ([]store.AuditCheckpoint, error)
	CheckpointsBefore(ctx context.Context, upTo, downTo int64, limit int) ([]store.AuditCheckpoint, error)
	CheckpointsAt(ctx context.Context, seqs []int64) ([]store.AuditCheckpoint, error)
	NewestCheckpoints(ctx context.Context, upTo int64) (atOrBelow, past *store.AuditCheckpoint, err error)
	InsertCheckpoint(ctx context.Context, c store.AuditCheckpoint) error
	// AuditIntake reports the events committed but not yet chained.
	AuditIntake(ctx context.Context) (waiting int64, oldest time.Duration, err error)
}

// Log checkpoints, verifies and exports the audit chain.
type Log struct {
	Store Store
	// Signer signs checkpoints; nil disables them.
	Signer *Signer
	// Keys verify checkpoints: the signer's and earlier signing keys. Empty
	// skips the database's checkpoints (the chain is still checked, but a
	// rewrite of the whole chain is not detectable).
	Keys Keys
	// Anchor receives every signed checkpoint and is checked by Verify;
	// nil leaves the chain only self-attested.
	Anchor *Anchor
	// Logger receives warnings (nil: slog.Default()).
	Logger *slog.Logger
}

func (l *Log) logger() *slog.Logger {
	if l.Logger != nil {
		return l.Logger
	}
	return slog.Default()
}

func (l *Log) head(ctx context.Context) (Head, error) {
	start, seq, hash, err := l.Store.AuditHead(ctx)
	return Head{ChainStart: start, Sequence: seq, Hash: hash}, err
}

// Checkpoint signs the current head unless a checkpoint of it signed by a
// trusted key is stored already, writes it to the anchor (first: a
// checkpoint the anchor lacks is retried with the next head) and then to
// the database. It reports the sequence it signed (0 when there was nothing
// new). Stored rows past the head, or not signed by a trusted key, do not
// count (the service role may insert any row): one past the head is logged
// as a warning.
func (l *Log) Checkpoint(ctx context.Context) (int64, error) {
	if l.Signer == nil {
		return 0, nil
	}
	h, err := l.head(ctx)
	if err != nil || h.Sequence <= h.ChainStart {
		return 0, err
	}
	newest, past, err := l.Store.NewestCheckpoints(ctx, h.Sequence)
	if err != nil {
		return 0, err
	}
	trusted := func(c *store.AuditCheckpoint) bool {
		return c != nil && (l.Keys.valid(Checkpoint(*c)) || Checkpoint(*c).Valid(l.Signer.Public()))
	}
	if past != nil && !trusted(past) {
		// A racing replica's checkpoint of a newer head verifies; this
		// one does not, so it is ignored (verification reports it).
		l.logger().Warn("audit checkpoint past the chain head is not signed by a trusted key: ignored",
			"sequence", past.Sequence, "head", h.Sequence, "key_id", past.KeyID)
	}
	if newest != nil && newest.Sequence == h.Sequence && trusted(newest) {
		return 0, nil
	}
	c := l.Signer.Sign(h.Sequence, h.Hash, time.Now())
	if l.Anchor != nil {
		if err := l.Anchor.Put(ctx, c); err != nil {
			return 0, err
		}
	}
	return c.Sequence, l.Store.InsertCheckpoint(ctx, store.AuditCheckpoint(c))
}

// snapshot reads the anchor's checkpoints, the database's, then the head:
// the chain only grows and a checkpoint is written after the head it signs,
// so the head covers every checkpoint read before it, and the events up to
// the head are the chain as of that moment, whatever is appended meanwhile
// (a live server's appends are not "inserted after the head"). The
// database's checkpoints are not read whole: the snapshot fixes the newest
// one's sequence, and Checks.Stored reads those up to it a page at a time
// when the walk gets to them (one stored later at or below it is read too:
// a racing replica's checkpoint of an older head, which still matches, or
// a forged row, which is reported either way).
func (l *Log) snapshot(ctx context.Context) (Head, Checks, error) {
	return l.snapshotFrom(ctx, -1)
}

// snapshotFrom is snapshot reading only the anchor's checkpoints at or
// after sequence from (-1: all of them).
func (l *Log) snapshotFrom(ctx context.Context, from int64) (Head, Checks, error) {
	checks := Checks{Keys: l.Keys, Anchored: l.Anchor != nil}
	var err error
	if l.Anchor != nil {
		if checks.External, err = l.Anchor.ListFrom(ctx, from); err != nil {
			return Head{}, checks, err
		}
	}
	ceiling, err := l.checkpointCeiling(ctx)
	if err != nil {
		return Head{}, checks, err
	}
	checks.Stored = l.storedCheckpoints(ctx, ceiling)
	h, err := l.head(ctx)
	return h, checks, err
}

// exportLine is one line of an export: a head, a checkpoint or an event.
type exportLine struct {
	Type       string `json:"type"`
	ChainStart int64  `json:"chain_start,omitempty"`
	Sequence   int64  `json:"sequence"`
	Time       string `json:"time,omitempty"`
	Actor      string `json:"actor,omitempty"`
	Action     string `json:"action,omitempty"`
	Key        string `json:"key,omitempty"`
	Version    int64  `json:"version,omitempty"`
	Outcome    string `json:"outcome,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	Peer       string `json:"peer,omitempty"`
	Revision   int64  `json:"revision,omitempty"`
	Detail     string `json:"detail,omitempty"`
	ValueHMAC  string `json:"value_hmac,omitempty"`
	PrevHash   string `json:"prev_hash,omitempty"`
	Hash       string `json:"hash,omitempty"`
	KeyID      string `json:"key_id,omitempty"`
	Signature  string `json:"signature,omitempty"`
}

// Export writes the head, the checkpoints and every chained event as JSON
// lines, verifiable offline with VerifyExport. It reports the events written.
func (l *Log) Export(ctx context.Context, w io.Writer, progress func(n int64)) (int64, error) {
	h, checks, err := l.snapshot(ctx)
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(exportLine{Type: "head", ChainStart: h.ChainStart, Sequence: h.Sequence, Hash: hex.EncodeToString(h.Hash)}); err != nil {
		return 0, err
	}
	for c, err := range checks.checkpointsAfter(math.MinInt64) {
		if err != nil {
			return 0, err
		}
		if err := enc.Encode(checkpointLine(c)); err != nil {
			return 0, err
		}
	}
	// After retention dropped partitions the table's chain starts later:
	// the export says where (the archives hold the rest).
	start, err := l.liveStart(ctx, h)
	if err != nil {
		return 0, err
	}
	if start.Sequence > h.ChainStart {
		if err := enc.Encode(exportLine{Type: "archived", Sequence: start.Sequence, Hash: hex.EncodeToString(start.Hash)}); err != nil {
			return 0, err
		}
	}
	var n int64
	for e, err := range l.Store.AuditEvents(ctx, start.Sequence, h.Sequence) {
		if err != nil {
			return n, err
		}
		if err := enc.Encode(exportLine{Type: "event", Sequence: e.Sequence, Time: e.Time.UTC().Format(time.RFC3339Nano),
			Actor: e.Actor, Action: e.Action, Key: e.Key, Version: e.Version, Outcome: e.Outcome, RequestID: e.RequestID,
			Peer: e.Peer, Revision: e.Revision, Detail: e.Detail, ValueHMAC: hex.EncodeToString(e.ValueHMAC),
			PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash)}); err != nil {
			return n, err
		}
		n++
		if progress != nil && n%10000 == 0 {
			progress(n)
		}
	}
	return n, bw.Flush()
}

// VerifyExport verifies an export read from r against its own checkpoints
// and checks (keys, and the anchor's checkpoints: an export cannot drop
// those).
func VerifyExport(r io.Reader, checks Checks) (Result, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	var head Head
	var after Point // set by an "archived" line
	var first *store.AuditEvent
	readHeader := func() error {
		sawHead := false
		for {
			var l exportLine
			if err := dec.Decode(&l); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			switch l.Type {
			case "head":
				h, err := hex.DecodeString(l.Hash)
				if err != nil {
					return fmt.Errorf("export: head hash: %w", err)
				}
				head, sawHead = Head{ChainStart: l.ChainStart, Sequence: l.Sequence, Hash: h}, true
			case "archived":
				h, err := hex.DecodeString(l.Hash)
				if err != nil || l.Sequence < 0 {
					return fmt.Errorf("export: bad archived line")
				}
				after = Point{Sequence: l.Sequence, Hash: h}
			case "checkpoint":
				c, err := l.checkpoint()
				if err != nil {
					return err
				}
				checks.Checkpoints = append(checks.Checkpoints, c)
			case "event":
				e, err := l.event()
				if err != nil {
					return err
				}
				first = &e
				if !sawHead {
					return errors.New("export: no head line before the events")
				}
				return nil
			default:
				return fmt.Errorf("export: unknown line type %q", l.Type)
			}
		}
		if !sawHead {
			return errors.New("export: no head line")
		}
		return nil
	}
	if err := readHeader(); err != nil {
		return Result{}, err
	}
	events := func(yield func(store.AuditEvent, error) bool) {
		if first == nil {
			return
		}
		if !yield(*first, nil) {
			return
		}
		for {
			var l exportLine
			if err := dec.Decode(&l); errors.Is(err, io.EOF) {
				return
			} else if err != nil {
				yield(store.AuditEvent{}, fmt.Errorf("export: %w", err))
				return
			}
			e, err := l.event()
			if !yield(e, err) || err != nil {
				return
			}
		}
	}
	if after.Sequence <= head.ChainStart {
		return Verify(events, head, checks)
	}
	res, err := VerifyAfter(events, after, head, checks)
	res.From, res.ArchivedThrough = head.ChainStart, after.Sequence
	return res, err
}

func (l exportLine) event() (store.AuditEvent, error) {
	if l.Type != "event" {
		return store.AuditEvent{}, fmt.Errorf("export: %s line among the events", l.Type)
	}
	t, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil {
		return store.AuditEvent{}, fmt.Errorf("export: event %d: time: %w", l.Sequence, err)
	}
	e := store.AuditEvent{Sequence: l.Sequence, Time: t, Actor: l.Actor, Action: l.Action, Key: l.Key, Version: l.Version,
		Outcome: l.Outcome, RequestID: l.RequestID, Peer: l.Peer, Revision: l.Revision, Detail: l.Detail}
	for _, f := range []struct {
		dst *[]byte
		src string
	}{{&e.ValueHMAC, l.ValueHMAC}, {&e.PrevHash, l.PrevHash}, {&e.Hash, l.Hash}} {
		if *f.dst, err = hex.DecodeString(f.src); err != nil {
			return e, fmt.Errorf("export: event %d: %w", l.Sequence, err)
		}
	}
	if len(e.ValueHMAC) == 0 {
		e.ValueHMAC = nil
	}
	return e, nil
}

func (l exportLine) checkpoint() (Checkpoint, error) {
	t, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("export: checkpoint %d: %w", l.Sequence, err)
	}
	h, err1 := hex.DecodeString(l.Hash)
	sig, err2 := hex.DecodeString(l.Signature)
	if err1 != nil || err2 != nil {
		return Checkpoint{}, fmt.Errorf("export: checkpoint %d: bad hex", l.Sequence)
	}
	return Checkpoint{Sequence: l.Sequence, Hash: h, Time: t, KeyID: l.KeyID, Signature: sig}, nil
}
