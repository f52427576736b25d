package auditlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/orient-bot/secrets/server/blobstore"
	"github.com/orient-bot/secrets/server/store"
)

// Archive is the bucket that holds archive segments: a gocloud.dev blob
// URL (file://, s3://, gs://, azblob://), ideally with object lock, which
// the database's administrators cannot write.
type Archive struct {
	bucket *blob.Bucket
}

// maxArchiveObjects bounds a listing (a segment a day for 27,000 years, or
// a segment a minute for 19).
const maxArchiveObjects = 10_000_000

// OpenArchive opens the archive bucket (file://, s3://, gs://, azblob://,
// through server/blobstore). Errors do not echo the URL's secrets.
func OpenArchive(ctx context.Context, url string) (*Archive, error) {
	b, err := blobstore.Open(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("audit archive URL: %w", err)
	}
	return &Archive{bucket: b}, nil
}

// NewArchive wraps an open bucket.
func NewArchive(b *blob.Bucket) *Archive { return &Archive{bucket: b} }

// Close releases the bucket.
func (a *Archive) Close() error { return a.bucket.Close() }

// errExists: the object was there already (a write never replaces one).
var errExists = errors.New("archive object exists")

// write streams an object, never replacing one: an interrupted write
// leaves nothing.
func (a *Archive) write(ctx context.Context, object string, fill func(io.Writer) error) error {
	err := blobstore.WriteStream(ctx, a.bucket, object, fill, &blob.WriterOptions{ContentType: "application/jsonl", IfNotExist: true})
	if gcerrors.Code(err) == gcerrors.FailedPrecondition {
		return errExists
	}
	if err != nil {
		return fmt.Errorf("archive %s: write: %w", object, blobstore.RedactError(err))
	}
	return nil
}

// open reads an object; a missing one is errNoObject.
func (a *Archive) open(ctx context.Context, object string) (io.ReadCloser, error) {
	r, err := a.bucket.NewReader(ctx, object, nil)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, errNoObject
	}
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", object, err)
	}
	return r, nil
}

var errNoObject = errors.New("no such archive object")

// exists reports whether an object is there.
func (a *Archive) exists(ctx context.Context, object string) (bool, error) {
	ok, err := a.bucket.Exists(ctx, object)
	if err != nil {
		return false, fmt.Errorf("archive %s: %w", object, err)
	}
	return ok, nil
}

// list names the segment objects in the bucket, in name (and so time)
// order.
func (a *Archive) list(ctx context.Context) ([]string, error) {
	var out []string
	it := a.bucket.List(&blob.ListOptions{Prefix: "audit_events_"})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("audit archive: list: %w", err)
		}
		if obj.IsDir || !strings.HasSuffix(obj.Key, ".jsonl") {
			continue
		}
		if len(out) >= maxArchiveObjects {
			return nil, fmt.Errorf("audit archive: more than %d segments", maxArchiveObjects)
		}
		out = append(out, obj.Key)
	}
}

// readSegment reads and checks one segment object (see readSegment).
func (a *Archive) readSegment(ctx context.Context, object string, keys Keys, onEvent func(store.AuditEvent) error) (Segment, error) {
	r, err := a.open(ctx, object)
	if errors.Is(err, errNoObject) {
		return Segment{Object: object}, &SegmentError{Segment: object, Problem: "missing: the object is not in the archive"}
	}
	if err != nil {
		return Segment{Object: object}, err
	}
	defer r.Close()
	return readSegment(r, object, keys, onEvent)
}
