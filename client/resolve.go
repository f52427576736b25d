package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
)

// Source says where a resolved value came from.
type Source int

// Sources, in priority order. SourceLastKnown stands in for SourceDatabase
// while the service is unreachable.
const (
	SourceNone Source = iota
	SourceDatabase
	SourceLastKnown
	SourceEnvironment
	SourceDefault
)

func (s Source) String() string {
	switch s {
	case SourceDatabase:
		return "database"
	case SourceLastKnown:
		return "last-known"
	case SourceEnvironment:
		return "environment"
	case SourceDefault:
		return "default"
	}
	return "none"
}

// Resolved is a value with its provenance. String never prints the value.
type Resolved struct {
	Key    string
	Value  string
	Source Source
	// Version is the database version (SourceDatabase, SourceLastKnown).
	Version int64
	// Revision is the revision the database read reflected.
	Revision int64
	// Age is how old a SourceLastKnown value is.
	Age time.Duration
	// ServiceErr is why the service was not consulted: set when the value
	// is a fallback because the service was unreachable.
	ServiceErr error
}

// Fallback reports whether the value stands in for an unreachable service.
func (r Resolved) Fallback() bool { return r.ServiceErr != nil }

// Describe says where the value came from, for logs and status pages:
// "database v3", "environment (secrets service unreachable)",
// "last-known database v3, 2m0s old (secrets service unreachable)".
func (r Resolved) Describe() string {
	var d string
	switch r.Source {
	case SourceDatabase:
		d = fmt.Sprintf("database v%d", r.Version)
	case SourceLastKnown:
		d = fmt.Sprintf("last-known database v%d, %s old", r.Version, r.Age.Round(time.Second))
	default:
		d = r.Source.String()
	}
	if r.ServiceErr != nil {
		d += " (secrets service unreachable)"
	}
	return d
}

func (r Resolved) String() string { return r.Key + " from " + r.Describe() + " [value redacted]" }

// GoString keeps %#v from printing the value.
func (r Resolved) GoString() string { return "client.Resolved{" + r.String() + "}" }

// LogValue keeps log/slog (any handler) from printing the value.
func (r Resolved) LogValue() slog.Value { return slog.StringValue(r.String()) }

// MarshalJSON keeps encoding/json (and slog's JSON handler, also inside a
// Change) from writing the value: it writes String's redaction.
func (r Resolved) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

type lastKnown struct {
	value    string
	version  int64
	revision int64
	at       time.Time
	// revoked marks a value forgotten at revision (deleted, disabled,
	// expired): never served, and a read older than the revocation that
	// lands after it is not remembered.
	revoked bool
}

var keyPattern = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,127}$`)

// ValidKey reports whether key is a valid secret key. Other names (e.g.
// "port") are never looked up in the service, only in the environment and
// defaults.
func ValidKey(key string) bool { return keyPattern.MatchString(key) }

// Resolve returns key's value from the first source that has one: the
// service's database, the environment variable of the same name, the
// config defaults. While the service is unreachable, the last value this
// client read from it stands in for the database (SourceLastKnown, with its
// age), and the result's ServiceErr says the service was not consulted. A
// key found nowhere fails with a *NotConfiguredError (ErrNotConfigured).
// Other service errors (ErrPermissionDenied, ErrDataLoss, ...) are
// returned: falling back then could run a service with the wrong value.
// While the service is down, Resolve retries it for at most the fallback
// wait (WithFallbackWait, default 1 s) before falling back.
func (c *Client) Resolve(ctx context.Context, key string) (Resolved, error) {
	if !ValidKey(key) {
		return c.fallback(key, nil, false)
	}
	v, err := c.Access(withRetryBudget(ctx, c.opts.fallbackWait), key)
	return c.resolveResult(key, v, err)
}

// ResolveAll resolves several keys with one BatchAccess per 100 keys and
// returns the values by key. Keys found nowhere are left out of the map and
// named in a joined error of *NotConfiguredError; other errors fail the
// whole call.
func (c *Client) ResolveAll(ctx context.Context, keys []string) (map[string]Resolved, error) {
	var valid []string
	for _, k := range keys {
		if ValidKey(k) {
			valid = append(valid, k)
		}
	}
	var results map[string]BatchResult
	var batchErr error
	if len(valid) > 0 {
		results, _, batchErr = c.BatchAccess(withRetryBudget(ctx, c.opts.fallbackWait), valid)
		if batchErr != nil && !unreachable(batchErr) {
			return nil, batchErr
		}
	}
	out := make(map[string]Resolved, len(keys))
	var missing []error
	for _, k := range keys {
		var r Resolved
		var err error
		switch br, ok := results[k]; {
		case !ValidKey(k):
			r, err = c.fallback(k, nil, false)
		case batchErr != nil:
			r, err = c.resolveResult(k, Value{}, batchErr)
		case !ok:
			r, err = c.resolveResult(k, Value{}, &Error{Op: "BatchAccessSecrets", Code: codes.NotFound, Message: k + " missing from the answer"})
		default:
			r, err = c.resolveResult(k, br.Value, br.Err)
		}
		switch {
		case errors.Is(err, ErrNotConfigured):
			missing = append(missing, err)
		case err != nil:
			return nil, err
		default:
			out[k] = r
		}
	}
	return out, errors.Join(missing...)
}

// resolveResult turns a database read into a Resolved, falling back as
// Resolve documents.
func (c *Client) resolveResult(key string, v Value, err error) (Resolved, error) {
	switch {
	case err == nil:
		c.remember(key, v)
		return Resolved{Key: key, Value: string(v.Data), Source: SourceDatabase, Version: v.Version, Revision: v.Revision}, nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrVersionNotEnabled):
		// The database answered: it has no usable value now.
		c.forget(key, 0, 0)
		return c.fallback(key, nil, true)
	case unreachable(err):
		c.mu.Lock()
		lk, ok := c.lastKnown[key]
		c.mu.Unlock()
		if ok && !lk.revoked {
			return Resolved{Key: key, Value: lk.value, Source: SourceLastKnown, Version: lk.version,
				Revision: lk.revision, Age: time.Since(lk.at), ServiceErr: err}, nil
		}
		return c.fallback(key, err, true)
	}
	return Resolved{}, err
}

func (c *Client) remember(key string, v Value) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.lastKnown[key]; ok && prev.revision > v.Revision {
		return // a slower read of an older state
	}
	c.lastKnown[key] = lastKnown{value: string(v.Data), version: v.Version, revision: v.Revision, at: time.Now()}
}

// forget revokes key's last-known value as of revision: any, or
// (version > 0) only that version's. The mark stays, so that a read older
// than the revocation that lands after it (a Resolve in flight) is not
// remembered either.
func (c *Client) forget(key string, version, revision int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, ok := c.lastKnown[key]
	if ok && version != 0 && prev.version != version {
		return // another version is the last known
	}
	c.lastKnown[key] = lastKnown{version: version, revision: max(revision, prev.revision), revoked: true}
}

// fallback resolves key from the environment, then the defaults.
func (c *Client) fallback(key string, serviceErr error, askedService bool) (Resolved, error) {
	if v, ok := c.opts.lookupEnv(key); ok && v != "" {
		return Resolved{Key: key, Value: v, Source: SourceEnvironment, ServiceErr: serviceErr}, nil
	}
	if v, ok := c.opts.defaults[key]; ok {
		return Resolved{Key: key, Value: v, Source: SourceDefault, ServiceErr: serviceErr}, nil
	}
	return Resolved{}, c.notConfigured(key, serviceErr, askedService)
}

func (c *Client) notConfigured(key string, serviceErr error, askedService bool) error {
	var looked []string
	if askedService {
		looked = append(looked, "the secrets service at "+c.target)
	}
	looked = append(looked, "environment variable "+key)
	switch {
	case c.opts.defaultsFile != "":
		looked = append(looked, "defaults file "+c.opts.defaultsFile)
	case c.opts.defaults != nil:
		looked = append(looked, "config defaults")
	}
	return &NotConfiguredError{Key: key, Looked: looked, ServiceErr: serviceErr}
}

// LoadDefaultsFile reads config defaults from a YAML or JSON file (JSON is
// YAML): a mapping of KEY to a scalar value. Numbers and booleans are kept
// as written; nested mappings and lists are refused.
func LoadDefaultsFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("defaults file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("defaults file %s: %w", path, err)
	}
	out := map[string]string{}
	if len(doc.Content) == 0 {
		return out, nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("defaults file %s: want a mapping of KEY: value", path)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("defaults file %s: line %d: %s must be a plain value, not a list or mapping", path, v.Line, k.Value)
		}
		if v.Tag == "!!null" {
			continue
		}
		out[k.Value] = v.Value
	}
	return out, nil
}
