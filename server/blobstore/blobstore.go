// Package blobstore owns the one way the service opens a blob bucket from
// a URL (gocloud.dev/blob): the drivers linked into the binary, the schemes
// accepted, and the redaction of whatever secret a URL or a driver's error
// may carry. The audit checkpoint anchor (--audit-checkpoint-url) opens its
// bucket here, and so should anything else that writes to a bucket.
//
// Credentials never come from the URL: each driver reads its provider's
// standard environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a
// profile or role for s3://, GOOGLE_APPLICATION_CREDENTIALS or the metadata
// server for gs://, AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN,
// AZURE_STORAGE_CONNECTION_STRING or an Azure identity for azblob://). A
// URL with a user or password is refused.
package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/fileblob"  // file://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/s3blob"    // s3://
)

// Schemes are the URL schemes Open accepts, one per linked driver.
var Schemes = []string{"file", "s3", "gs", "azblob"}

// maxURL bounds a bucket URL (it comes from a flag or the environment, but
// is echoed, redacted, in errors).
const maxURL = 4 << 10

// Open opens the bucket that rawURL names. The scheme must be one of
// Schemes; a cloud URL must name its bucket (or container) as the host and
// carry no user or password. Errors name the URL only in its redacted form
// (Redact), and driver errors are scrubbed of secrets (RedactError).
func Open(ctx context.Context, rawURL string) (*blob.Bucket, error) {
	u, err := Parse(rawURL)
	if err != nil {
		return nil, err
	}
	b, err := blob.OpenBucket(ctx, rawURL)
	if err != nil {
		// Drivers put the whole URL in their errors ("open bucket <url>:
		// ..."): replace it with its redacted form before anything else
		// can print it.
		msg := err.Error()
		for _, s := range []string{rawURL, u.String()} {
			msg = strings.ReplaceAll(msg, s, Redact(rawURL))
		}
		return nil, &redactedError{msg: "blob URL " + Redact(rawURL) + ": cannot open the bucket: " + scrub(msg), err: err}
	}
	return b, nil
}

// Parse checks a bucket URL without opening it: its length, that it
// parses, its scheme, that a cloud URL names a bucket, and that it holds no
// credentials. The error names the URL only in its redacted form.
func Parse(rawURL string) (*url.URL, error) {
	if rawURL == "" {
		return nil, errors.New("blob URL is empty (want " + schemeList() + ")")
	}
	if len(rawURL) > maxURL {
		return nil, fmt.Errorf("blob URL is longer than %d bytes", maxURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error quotes the whole URL: say only what is wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("blob URL %s does not parse: %s", Redact(rawURL), scrub(err.Error()))
	}
	if u.Scheme == "" || u.Opaque != "" {
		return nil, fmt.Errorf("blob URL %s has no scheme: want %s", Redact(rawURL), schemeList())
	}
	if !slices.Contains(Schemes, u.Scheme) {
		return nil, fmt.Errorf("blob URL scheme %q is not supported: want %s", truncate(u.Scheme, 32), schemeList())
	}
	if u.User != nil {
		return nil, fmt.Errorf("blob URL %s carries credentials: remove them from the URL; the %s driver reads them from the environment (see the README)", Redact(rawURL), u.Scheme)
	}
	if u.Scheme != "file" && u.Host == "" {
		return nil, fmt.Errorf("blob URL %s names no bucket: want %s://BUCKET", Redact(rawURL), u.Scheme)
	}
	return u, nil
}

func schemeList() string {
	s := make([]string, len(Schemes))
	for i, sc := range Schemes {
		s[i] = sc + "://"
	}
	return strings.Join(s, ", ")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// safeParams are the query parameters whose values Redact shows: the
// drivers' addressing options, never a credential. Any other parameter's
// value is replaced, whatever its name.
var safeParams = map[string]bool{
	// s3blob and gocloud.dev/aws
	"region": true, "endpoint": true, "use_path_style": true, "s3ForcePathStyle": true,
	"disable_https": true, "dualstack": true, "fips": true, "accelerate": true,
	"awssdk": true, "hostname_immutable": true, "profile": true, "ssetype": true,
	"anonymous": true, "rate_limiter_capacity": true,
	"request_checksum_calculation": true, "response_checksum_validation": true,
	// gcsblob
	"universe_domain": true, "grpc": true, "zonal": true, "access_id": true, "private_key_path": true,
	// azureblob
	"domain": true, "protocol": true, "cdn": true, "localemu": true, "storage_account": true,
	// fileblob
	"create_dir": true, "no_tmp_dir": true, "metadata": true, "dir_file_mode": true,
	// blob's own
	"prefix": true,
}

// Redacted stands in for a secret in a URL or an error.
const Redacted = "REDACTED"

// Redact returns rawURL fit for a log or an error: a user and password are
// replaced, and so is the value of every query parameter that is not a
// known addressing option (a SAS signature, a token, a key). A URL that
// does not parse is reduced to its scheme.
func Redact(rawURL string) string {
	u, err := url.Parse(truncate(rawURL, maxURL))
	if err != nil {
		scheme, _, ok := strings.Cut(rawURL, "://")
		if !ok || len(scheme) > 32 {
			return "(unparsable URL)"
		}
		return scheme + "://" + Redacted
	}
	if u.User != nil {
		u.User = url.User(Redacted)
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k, vs := range q {
			if !safeParams[k] {
				for i := range vs {
					vs[i] = Redacted
				}
			}
		}
		u.RawQuery = q.Encode()
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// secretInText matches what a driver's error text (a *url.Error quotes a
// request URL with its query) may carry of a credential: a password in a
// URL, and the value of a query parameter or connection-string field that
// signs or authenticates (Azure SAS "sig", AWS and GCS presigned URLs,
// tokens, account keys).
var (
	userinfoInText = regexp.MustCompile(`(://)[^/@\s"?#]+@`)
	secretInText   = regexp.MustCompile(`(?i)\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|token|access_token|sas|sastoken|accountkey|sharedaccesssignature|password|secret|key|client_secret)=[^&\s";]+`)
)

func scrub(s string) string {
	s = userinfoInText.ReplaceAllString(s, "${1}"+Redacted+"@")
	return secretInText.ReplaceAllString(s, "${1}="+Redacted)
}

// RedactError returns err with any credential scrubbed from its text (see
// secretInText), keeping it for errors.Is/As and gcerrors.Code. Use it on
// every error from a bucket opened here before it is logged or returned.
func RedactError(err error) error {
	if err == nil {
		return nil
	}
	var r *redactedError
	if errors.As(err, &r) && r == err {
		return err
	}
	msg := err.Error()
	if s := scrub(msg); s != msg {
		return &redactedError{msg: s, err: err}
	}
	return err
}

// redactedError prints a scrubbed message but unwraps to the driver's
// error, so a caller can still ask for its code.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// WriteAll writes p to key in one request, through Bucket.Upload: the
// only write path safe on every linked driver. gocloud.dev v0.47.0's
// azureblob streaming writer (NewWriter/Write/Close, which
// Bucket.WriteAll uses) dereferences a nil pipe when the upload fails, so
// an ordinary refusal (IfNotExist on an existing blob, a 403, a network
// error) panics the process instead of returning the error. Upload takes
// the driver's one-shot path. The cost: no Content-MD5 check, which the
// transport's own integrity (TLS) makes up for on small objects. A
// ContentType is required (Upload does not sniff); it defaults to
// application/octet-stream.
func WriteAll(ctx context.Context, b *blob.Bucket, key string, p []byte, opts *blob.WriterOptions) error {
	return b.Upload(ctx, key, bytes.NewReader(p), uploadOptions(opts))
}

// uploadOptions completes opts for Bucket.Upload: a content type (Upload
// does not sniff) and no MD5 (with one, Upload falls back to the writer
// WriteAll exists to avoid).
func uploadOptions(opts *blob.WriterOptions) *blob.WriterOptions {
	o := blob.WriterOptions{}
	if opts != nil {
		o = *opts
	}
	if o.ContentType == "" {
		o.ContentType = "application/octet-stream"
	}
	o.ContentMD5 = nil
	return &o
}

// WriteStream writes what fill produces to key through Bucket.Upload (see
// WriteAll for why not the streaming writer), piped, so an object of any
// size is written in bounded memory. If fill fails the upload is aborted
// and the object is not created.
func WriteStream(ctx context.Context, b *blob.Bucket, key string, fill func(io.Writer) error, opts *blob.WriterOptions) error {
	o := uploadOptions(opts)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	fillErr := make(chan error, 1)
	go func() {
		err := fill(pw)
		if err != nil {
			// Before the pipe ends: the upload must not see a clean EOF
			// and commit a truncated object.
			cancel()
		}
		pw.CloseWithError(err)
		fillErr <- err
	}()
	err := b.Upload(ctx, key, pr, o)
	pr.CloseWithError(io.ErrClosedPipe) // unblocks fill if Upload stopped reading
	if ferr := <-fillErr; ferr != nil {
		return ferr
	}
	return err
}
