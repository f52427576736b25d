package blobstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/orient-bot/secrets/internal/blobfake"
	"github.com/orient-bot/secrets/server/blobstore"
)

// secret is planted in URLs: no error may repeat it.
const secret = "S3CR3T-do-not-print"

// TestOpenRefusesBadURLs: what is wrong with a URL is said plainly (the
// supported schemes listed), before any driver runs, and no error repeats
// a credential the URL carried.
func TestOpenRefusesBadURLs(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"", "empty (want file://, s3://, gs://, azblob://)"},
		{"ftp://bucket", `scheme "ftp" is not supported: want file://, s3://, gs://, azblob://`},
		{"mem://", `scheme "mem" is not supported`}, // linked in tests only: not a place to anchor anything
		{"/var/lib/checkpoints", "has no scheme"},
		{"s3:bucket", "has no scheme"},
		{"s3://AKIAEXAMPLE:" + secret + "@bucket?region=eu-west-1", "carries credentials: remove them from the URL"},
		{"azblob://account:" + secret + "@container", "carries credentials"},
		{"s3://?region=eu-west-1", "names no bucket: want s3://BUCKET"},
		{"gs://", "names no bucket: want gs://BUCKET"},
		{"azblob:///path?sig=" + secret, "names no bucket: want azblob://BUCKET"},
		{"s3://bucket\x7f?sig=" + secret, "does not parse"},
		{"s3://b/" + strings.Repeat("x", 5000), "longer than 4096 bytes"},
	} {
		b, err := blobstore.Open(context.Background(), tc.url)
		if err == nil {
			b.Close()
			t.Errorf("%.40q: opened", tc.url)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.40q: %v, want %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%.40q: the error shows the credential: %v", tc.url, err)
		}
	}
}

// TestOpenDriverConfigErrors: each cloud driver is linked (a URL of its
// scheme reaches it) and its own refusal of a bad option comes back with
// the URL redacted, whatever secret the query carried.
func TestOpenDriverConfigErrors(t *testing.T) {
	azuriteEnv(t)
	for _, tc := range []struct{ url, want string }{
		{"s3://bucket?use_path_style=maybe&sig=" + secret, `invalid value for "use_path_style"`},
		{"s3://bucket?region=eu-west-1&token=" + secret, `unknown query parameter "token"`},
		{"gs://bucket?access_id=-&private_key_path=/nonexistent/key.pem&sig=" + secret, `invalid query parameter "sig"`},
		{"gs://bucket?grpc=sometimes&sig=" + secret, "invalid"},
		{"azblob://container?localemu=perhaps", "invalid syntax"},
		{"azblob://container?domain=127.0.0.1:1&sig=" + secret, `unknown query parameter "sig"`},
		{"file:///nonexistent/dir/for/blobstore", "no such file or directory"},
		{"file:///tmp?sig=" + secret, `invalid query parameter "sig"`},
	} {
		b, err := blobstore.Open(context.Background(), tc.url)
		if err == nil {
			b.Close()
			t.Errorf("%s: opened", blobstore.Redact(tc.url))
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", blobstore.Redact(tc.url), err, tc.want)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the secret: %v", blobstore.Redact(tc.url), err)
		}
		if strings.Contains(tc.url, secret) && !strings.Contains(err.Error(), blobstore.Redacted) {
			t.Errorf("%s: the error does not name the redacted URL: %v", blobstore.Redact(tc.url), err)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"file:///var/lib/secrets/checkpoints", "file:///var/lib/secrets/checkpoints"},
		{"s3://bucket?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A9000&use_path_style=true",
			"s3://bucket?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1&use_path_style=true"},
		{"s3://KEY:" + secret + "@bucket/prefix", "s3://REDACTED@bucket/prefix"},
		{"azblob://container?domain=example.net&sv=2024-01-01&sig=" + secret, "azblob://container?domain=example.net&sig=REDACTED&sv=REDACTED"},
		{"gs://bucket?private_key_path=/etc/key.pem&access_id=sa@p.iam.gserviceaccount.com&x=" + secret + "#frag",
			"gs://bucket?access_id=sa%40p.iam.gserviceaccount.com&private_key_path=%2Fetc%2Fkey.pem&x=REDACTED"},
		{"s3://bucket\x7f?sig=" + secret, "s3://REDACTED"},
		{"\x7f" + secret, "(unparsable URL)"},
	} {
		if got := blobstore.Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%.30q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRedactError: a driver's transport error quotes the request URL, with
// an Azure SAS signature or an AWS presigned query in it.
func TestRedactError(t *testing.T) {
	base := fmt.Errorf(`Get "https://acct.blob.core.windows.net/c/k?se=2030&sig=%s&sp=r": dial tcp: refused; `+
		`PUT https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%%2F%s&X-Amz-Signature=%s; https://user:%s@host/`, secret, secret, secret, secret)
	wrapped := fmt.Errorf("outer: %w", gcerrWrap{base})
	err := blobstore.RedactError(wrapped)
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("secret shown: %v", err)
	}
	for _, want := range []string{"sig=REDACTED", "X-Amz-Signature=REDACTED", "X-Amz-Credential=REDACTED", "://REDACTED@host", "se=2030"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v: want %q", err, want)
		}
	}
	if !errors.Is(err, base) {
		t.Error("the redacted error does not unwrap to the driver's")
	}
	if plain := errors.New("blob not found"); blobstore.RedactError(plain) != plain {
		t.Error("an error with nothing to redact is rewrapped")
	}
	if blobstore.RedactError(nil) != nil {
		t.Error("RedactError(nil) != nil")
	}
}

type gcerrWrap struct{ error }

func (e gcerrWrap) Unwrap() error { return e.error }

// azuriteEnv sets the environment the azblob driver reads once per process
// (gocloud caches it on first use), the same in every test of this binary.
func azuriteEnv(t *testing.T) {
	t.Setenv("AZURE_STORAGE_ACCOUNT", blobfake.AzuriteAccount)
	t.Setenv("AZURE_STORAGE_KEY", blobfake.AzuriteKey)
}

// TestDrivers: every cloud driver, against its local stand-in: write
// without replacing (the anchor's append-only rule: a second write of the
// same key is refused with FailedPrecondition and leaves the first), list
// by prefix, read back, delete.
func TestDrivers(t *testing.T) {
	for _, tc := range []struct {
		name string
		fake func(t *testing.T, bucket string) *blobfake.Fake
	}{
		{"s3", blobfake.S3},
		{"gs", blobfake.GCS},
		{"azblob", func(t *testing.T, bucket string) *blobfake.Fake { azuriteEnv(t); return blobfake.Azure(t, bucket) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.fake(t, "orient-audit")
			if !strings.HasPrefix(f.URL, tc.name+"://") {
				t.Fatalf("fake URL %q", f.URL)
			}
			ctx := context.Background()
			b, err := blobstore.Open(ctx, f.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			roundTrip(t, ctx, b)
			streamed(t, ctx, b)
		})
	}
}

func roundTrip(t *testing.T, ctx context.Context, b *blob.Bucket) {
	t.Helper()
	once := &blob.WriterOptions{ContentType: "application/json", IfNotExist: true}
	for i := range 3 {
		if err := blobstore.WriteAll(ctx, b, fmt.Sprintf("p-%d.json", i), []byte(fmt.Sprintf(`{"n":%d}`, i)), once); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := blobstore.WriteAll(ctx, b, "other.json", []byte("{}"), once); err != nil {
		t.Fatal(err)
	}
	err := blobstore.WriteAll(ctx, b, "p-1.json", []byte(`{"n":"replaced"}`), once)
	if gcerrors.Code(err) != gcerrors.FailedPrecondition {
		t.Errorf("second write of p-1.json: %v (code %v), want FailedPrecondition", err, gcerrors.Code(err))
	}
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: "p-"})
	for {
		o, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, o.Key)
	}
	if got := strings.Join(keys, ","); got != "p-0.json,p-1.json,p-2.json" {
		t.Errorf("list: %s", got)
	}
	got, err := b.ReadAll(ctx, "p-1.json")
	if err != nil || string(got) != `{"n":1}` {
		t.Errorf("read p-1.json: %q, %v", got, err)
	}
	if err := b.Delete(ctx, "p-1.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadAll(ctx, "p-1.json"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("read after delete: %v", err)
	}
}

// streamed exercises WriteStream: a large object in pieces, written once;
// a fill that fails leaves no object behind.
func streamed(t *testing.T, ctx context.Context, b *blob.Bucket) {
	t.Helper()
	once := &blob.WriterOptions{ContentType: "application/jsonl", IfNotExist: true}
	line := strings.Repeat("x", 1023) + "\n"
	fill := func(w io.Writer) error {
		for range 3 << 10 { // 3 MiB, several of any driver's buffers
			if _, err := io.WriteString(w, line); err != nil {
				return err
			}
		}
		return nil
	}
	if err := blobstore.WriteStream(ctx, b, "seg.jsonl", fill, once); err != nil {
		t.Fatalf("stream: %v", err)
	}
	got, err := b.ReadAll(ctx, "seg.jsonl")
	if err != nil || len(got) != 3<<20 {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	if err := blobstore.WriteStream(ctx, b, "seg.jsonl", fill, once); gcerrors.Code(err) != gcerrors.FailedPrecondition {
		t.Errorf("second stream of seg.jsonl: %v (code %v), want FailedPrecondition", err, gcerrors.Code(err))
	}
	boom := errors.New("export failed")
	err = blobstore.WriteStream(ctx, b, "broken.jsonl", func(w io.Writer) error {
		if _, err := io.WriteString(w, line); err != nil {
			return err
		}
		return boom
	}, once)
	if !errors.Is(err, boom) {
		t.Errorf("failing fill: %v, want its error", err)
	}
	if ok, err := b.Exists(ctx, "broken.jsonl"); err != nil || ok {
		t.Errorf("a failed stream left an object: %v, %v", ok, err)
	}
}
