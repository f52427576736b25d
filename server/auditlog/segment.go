package auditlog

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"regexp"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// An archive segment is one dropped partition of the audit log, as JSON
// lines: a header (which partition, which sequences, the previous segment's
// hash), the signed checkpoints inside its range, its events in the export
// format, and a signed trailer:
//
//	digest       = SHA-256 of every byte before the trailer line
//	segment hash = SHA-256("orient.secrets.audit-segment-link.v1\0" || previous segment hash || digest)
//	signature    = Ed25519 over the name, range, last event hash, digest and both segment hashes
//
// The segment hashes link the segments into a chain of their own, so a
// missing, reordered or replaced segment is found by name even before the
// events are walked; the events themselves keep their hash chain.

// segmentHeader is a segment's first line.
type segmentHeader struct {
	Type            string `json:"type"` // "segment"
	Version         int    `json:"version"`
	Name            string `json:"name"`
	From            string `json:"from"`
	To              string `json:"to"`
	FirstSeq        int64  `json:"first_seq"`
	LastSeq         int64  `json:"last_seq"`
	ChainStart      int64  `json:"chain_start"`
	PrevSegmentHash string `json:"prev_segment_hash"`
}

// segmentTrailer is a segment's last line.
type segmentTrailer struct {
	Type        string `json:"type"` // "segment_end"
	Events      int64  `json:"events"`
	LastHash    string `json:"last_hash"`
	Digest      string `json:"digest"`
	SegmentHash string `json:"segment_hash"`
	KeyID       string `json:"key_id"`
	Signature   string `json:"signature"`
}

// Segment describes a verified archive segment.
type Segment struct {
	Object            string // the object's name in the bucket
	Name              string // the partition it archives
	From, To          time.Time
	FirstSeq, LastSeq int64
	ChainStart        int64
	Events            int64
	LastHash          []byte
	PrevSegmentHash   []byte
	Digest            []byte
	Hash              []byte // the segment hash
	KeyID             string
	Checkpoints       []Checkpoint
}

// SegmentError says what is wrong with an archive segment, by name.
type SegmentError struct {
	Segment string
	Problem string
}

func (e *SegmentError) Error() string { return "archive segment " + e.Segment + ": " + e.Problem }

// partitionName is what a partition (and so a segment) may be called.
var partitionName = regexp.MustCompile(`^audit_events_[0-9]{8}t[0-9]{6}$`)

// SegmentObject names the archive object of a partition: deterministic, so a
// retried export finds what an interrupted one wrote; names sort in time
// order.
func SegmentObject(partition string) string { return partition + ".jsonl" }

// segmentLink computes a segment hash.
func segmentLink(prev, digest []byte) []byte {
	h := sha256.New()
	h.Write([]byte("orient.secrets.audit-segment-link.v1\x00"))
	field(h, prev)
	field(h, digest)
	return h.Sum(nil)
}

func segmentMessage(name string, first, last int64, lastHash, digest, prev, segHash []byte) []byte {
	msg := []byte("orient.secrets.audit-segment.v1\x00")
	for _, b := range [][]byte{[]byte(name), lastHash, digest, prev, segHash} {
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(b)))
		msg = append(msg, b...)
	}
	msg = binary.BigEndian.AppendUint64(msg, uint64(first))
	return binary.BigEndian.AppendUint64(msg, uint64(last))
}

func field(h hash.Hash, b []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// signSegment signs a segment's trailer (Ed25519 is deterministic: the same
// segment always gets the same signature).
func (s *Signer) signSegment(name string, first, last int64, lastHash, digest, prev, segHash []byte) []byte {
	return ed25519.Sign(s.key, segmentMessage(name, first, last, lastHash, digest, prev, segHash))
}

// segmentWriter writes a segment, hashing what it writes.
type segmentWriter struct {
	bw     *bufio.Writer
	digest hash.Hash
	enc    *json.Encoder
}

func newSegmentWriter(w io.Writer) *segmentWriter {
	sw := &segmentWriter{bw: bufio.NewWriterSize(w, 1<<16), digest: sha256.New()}
	sw.enc = json.NewEncoder(io.MultiWriter(sw.bw, sw.digest))
	return sw
}

// eventLine is an event in the export format.
func eventLine(e store.AuditEvent) exportLine {
	return exportLine{Type: "event", Sequence: e.Sequence, Time: e.Time.UTC().Format(time.RFC3339Nano),
		Actor: e.Actor, Action: e.Action, Key: e.Key, Version: e.Version, Outcome: e.Outcome, RequestID: e.RequestID,
		Peer: e.Peer, Revision: e.Revision, Detail: e.Detail, ValueHMAC: hex.EncodeToString(e.ValueHMAC),
		PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash)}
}

// maxSegmentLine bounds one line of a segment (an event's text is bounded
// far below it by store/auditbound.go).
const maxSegmentLine = 1 << 20

// readSegment reads and checks a segment: every line parses, the digest and
// the signature (by a trusted key) hold, the segment hash links to the
// previous one as the header says, the events are exactly FirstSeq..LastSeq
// in order and the last one's hash is the trailer's. onEvent (optional)
// sees each event as it is read; the verdict comes only at the end, so a
// caller that needs a verified segment's events reads it twice (or trusts
// onEvent's output only once readSegment returned no error). Problems are
// *SegmentError, named by object.
func readSegment(r io.Reader, object string, keys Keys, onEvent func(store.AuditEvent) error) (Segment, error) {
	seg := Segment{Object: object}
	bad := func(format string, args ...any) (Segment, error) {
		return seg, &SegmentError{Segment: object, Problem: fmt.Sprintf(format, args...)}
	}
	br := bufio.NewReaderSize(r, 1<<16)
	digest := sha256.New()
	readLine := func() ([]byte, error) {
		var line []byte
		for {
			chunk, err := br.ReadSlice('\n')
			line = append(line, chunk...)
			if len(line) > maxSegmentLine {
				return nil, errors.New("a line is too long")
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
				return nil, err
			}
			return line, nil
		}
	}
	line, err := readLine()
	if err != nil {
		return bad("unreadable header: %v", err)
	}
	var h segmentHeader
	if err := strictJSON(line, &h); err != nil || h.Type != "segment" || h.Version != 1 {
		return bad("not an archive segment (header)")
	}
	digest.Write(line)
	seg.Name, seg.FirstSeq, seg.LastSeq, seg.ChainStart = h.Name, h.FirstSeq, h.LastSeq, h.ChainStart
	if seg.PrevSegmentHash, err = hex.DecodeString(h.PrevSegmentHash); err != nil {
		return bad("header: bad previous segment hash")
	}
	if seg.From, err = time.Parse(time.RFC3339Nano, h.From); err != nil {
		return bad("header: bad time")
	}
	if seg.To, err = time.Parse(time.RFC3339Nano, h.To); err != nil {
		return bad("header: bad time")
	}
	if !partitionName.MatchString(h.Name) || h.FirstSeq < 1 || h.LastSeq < h.FirstSeq {
		return bad("header: bad name or range")
	}
	expect := h.FirstSeq
	var last []byte
	for {
		line, err := readLine()
		if errors.Is(err, io.EOF) {
			return bad("truncated: no trailer")
		}
		if err != nil {
			return bad("unreadable: %v", err)
		}
		var typ struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(line, &typ); err != nil {
			return bad("line after event %d does not parse", expect-1)
		}
		if typ.Type == "segment_end" {
			var t segmentTrailer
			if err := strictJSON(line, &t); err != nil {
				return bad("trailer does not parse")
			}
			if _, err := readLine(); !errors.Is(err, io.EOF) {
				return bad("data after the trailer")
			}
			return checkTrailer(seg, t, digest.Sum(nil), last, expect, keys)
		}
		digest.Write(line)
		var l exportLine
		if err := strictJSON(line, &l); err != nil {
			return bad("line after event %d does not parse", expect-1)
		}
		switch l.Type {
		case "checkpoint":
			c, err := l.checkpoint()
			if err != nil || c.Sequence < h.FirstSeq || c.Sequence > h.LastSeq {
				return bad("bad checkpoint line")
			}
			seg.Checkpoints = append(seg.Checkpoints, c)
		case "event":
			e, err := l.event()
			if err != nil {
				return bad("%v", err)
			}
			if e.Sequence != expect {
				return bad("holds event %d where event %d belongs", e.Sequence, expect)
			}
			if onEvent != nil {
				if err := onEvent(e); err != nil {
					return seg, err
				}
			}
			last = e.Hash
			expect++
			seg.Events++
		default:
			return bad("unknown line type %q", l.Type)
		}
	}
}

func checkTrailer(seg Segment, t segmentTrailer, digest, lastHash []byte, expect int64, keys Keys) (Segment, error) {
	bad := func(format string, args ...any) (Segment, error) {
		return seg, &SegmentError{Segment: seg.Object, Problem: fmt.Sprintf(format, args...)}
	}
	seg.Digest = digest
	seg.KeyID = t.KeyID
	var err error
	if seg.Hash, err = hex.DecodeString(t.SegmentHash); err != nil {
		return bad("trailer: bad segment hash")
	}
	if seg.LastHash, err = hex.DecodeString(t.LastHash); err != nil {
		return bad("trailer: bad last hash")
	}
	sig, err := hex.DecodeString(t.Signature)
	if err != nil {
		return bad("trailer: bad signature")
	}
	if d, err := hex.DecodeString(t.Digest); err != nil || !bytes.Equal(d, digest) {
		return bad("altered: its content does not match its digest")
	}
	if !bytes.Equal(seg.Hash, segmentLink(seg.PrevSegmentHash, digest)) {
		return bad("altered: its segment hash does not follow from its content")
	}
	pub, ok := keys[t.KeyID]
	if !ok {
		return bad("signed by key %q, which is not trusted", t.KeyID)
	}
	if !ed25519.Verify(pub, segmentMessage(seg.Name, seg.FirstSeq, seg.LastSeq, seg.LastHash, digest, seg.PrevSegmentHash, seg.Hash), sig) {
		return bad("altered: its signature does not verify")
	}
	if t.Events != seg.Events || expect != seg.LastSeq+1 {
		return bad("holds %d events, not %d to %d", seg.Events, seg.FirstSeq, seg.LastSeq)
	}
	if !bytes.Equal(seg.LastHash, lastHash) {
		return bad("altered: its last event's hash is not the signed one")
	}
	return seg, nil
}

// strictJSON decodes one line, refusing unknown fields.
func strictJSON(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
