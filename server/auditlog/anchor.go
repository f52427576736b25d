package auditlog

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/orient-bot/secrets/server/blobstore"
)

// Anchor is the external, append-only series of signed checkpoints: one
// small file per checkpoint in a blob bucket (a directory the database's
// administrators cannot reach, or an S3/GCS/Azure bucket with object lock),
// as CloudTrail writes its digest files to a separate bucket. The database
// can be rewritten by whoever owns it; the anchor cannot, so a verifier that
// requires every anchored checkpoint catches a rewrite, a truncation or a
// rollback of the whole chain.
type Anchor struct {
	bucket *blob.Bucket
}

// anchorPrefix names the checkpoint files: the zero-padded sequence keeps
// them in chain order in any listing.
const anchorPrefix = "audit-checkpoint-"

// maxAnchorFile bounds what is read of one file (a checkpoint is ~300 bytes).
const maxAnchorFile = 4 << 10

// maxAnchorFiles bounds a listing (a checkpoint a minute for 20 years).
const maxAnchorFiles = 10_000_000

// OpenAnchor opens the bucket named by a gocloud.dev blob URL (file://,
// s3://, gs://, azblob://) through blobstore, the service's one way to
// open a bucket: errors name the URL only redacted.
func OpenAnchor(ctx context.Context, url string) (*Anchor, error) {
	b, err := blobstore.Open(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint URL: %w", err)
	}
	return &Anchor{bucket: b}, nil
}

// NewAnchor wraps an open bucket (tests use memblob).
func NewAnchor(b *blob.Bucket) *Anchor { return &Anchor{bucket: b} }

// Close releases the bucket.
func (a *Anchor) Close() error { return a.bucket.Close() }

func anchorKey(seq int64) string { return fmt.Sprintf("%s%020d.json", anchorPrefix, seq) }

// Put writes a checkpoint, never replacing one already there: a racing
// replica's checkpoint of the same sequence is as good as ours.
func (a *Anchor) Put(ctx context.Context, c Checkpoint) error {
	b, err := json.Marshal(checkpointLine(c))
	if err != nil {
		return err
	}
	err = blobstore.WriteAll(ctx, a.bucket, anchorKey(c.Sequence), append(b, '\n'), &blob.WriterOptions{
		ContentType: "application/json", IfNotExist: true})
	if gcerrors.Code(err) == gcerrors.FailedPrecondition {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit checkpoint %d: external write: %w", c.Sequence, blobstore.RedactError(err))
	}
	return nil
}

// List reads every checkpoint in the bucket, in sequence order. A file that
// does not parse is an error: the verifier cannot vouch for a chain against
// an anchor it cannot read.
func (a *Anchor) List(ctx context.Context) ([]Checkpoint, error) {
	return a.ListFrom(ctx, -1)
}

// ListFrom is List for the checkpoints at or after sequence from (-1: all):
// the files before it are listed but not read (an incremental verification
// starts after them).
func (a *Anchor) ListFrom(ctx context.Context, from int64) ([]Checkpoint, error) {
	var out []Checkpoint
	start := ""
	if from >= 0 {
		start = anchorKey(from)
	}
	it := a.bucket.List(&blob.ListOptions{Prefix: anchorPrefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("audit checkpoints: list: %w", blobstore.RedactError(err))
		}
		if obj.IsDir || !strings.HasSuffix(obj.Key, ".json") || obj.Key < start {
			continue
		}
		if len(out) >= maxAnchorFiles {
			return nil, fmt.Errorf("audit checkpoints: more than %d files", maxAnchorFiles)
		}
		c, err := a.read(ctx, obj.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func (a *Anchor) read(ctx context.Context, key string) (Checkpoint, error) {
	r, err := a.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint %s: %w", key, blobstore.RedactError(err))
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxAnchorFile+1))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit checkpoint %s: %w", key, blobstore.RedactError(err))
	}
	if len(b) > maxAnchorFile {
		return Checkpoint{}, fmt.Errorf("audit checkpoint %s: larger than %d bytes", key, maxAnchorFile)
	}
	var l exportLine
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil || l.Type != "checkpoint" {
		return Checkpoint{}, fmt.Errorf("audit checkpoint %s: not a checkpoint file", key)
	}
	c, err := l.checkpoint()
	if err != nil {
		return Checkpoint{}, err
	}
	// The name is part of the record: a file copied to another name is a
	// forgery, not a second anchor.
	if want := strings.TrimSuffix(strings.TrimPrefix(key, anchorPrefix), ".json"); want != fmt.Sprintf("%020d", c.Sequence) {
		n, _ := strconv.ParseInt(want, 10, 64)
		return Checkpoint{}, fmt.Errorf("audit checkpoint %s: holds sequence %d, not %d", key, c.Sequence, n)
	}
	return c, nil
}

// checkpointLine is the JSON form of a checkpoint, in exports and in the
// anchor's files alike.
func checkpointLine(c Checkpoint) exportLine {
	return exportLine{Type: "checkpoint", Sequence: c.Sequence, Time: c.Time.UTC().Format(time.RFC3339Nano),
		Hash: hex.EncodeToString(c.Hash), KeyID: c.KeyID, Signature: hex.EncodeToString(c.Signature)}
}
