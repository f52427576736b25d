package client

import (
	"context"
	"errors"
	"fmt"
	"go/token"
	"reflect"
	"strings"

	"github.com/sethvargo/go-envconfig"
)

// Load fills the struct target points to from resolved values, using
// go-envconfig's `env` struct tags: `env:"SLACK_BOT_TOKEN,required"`,
// `env:"PORT,default=8080"`, nested structs with `env:",prefix=JIRA_"`,
// type conversion of numbers, durations, slices, maps and custom decoders.
// Each key resolves as Resolve does (database, environment, config
// defaults); a tag default applies only when none of those has the key.
// Values are read with as few BatchAccess calls as the struct allows.
//
// It returns how every key found was resolved. A missing required key fails
// with an error that matches ErrNotConfigured and envconfig.ErrMissingRequired.
func (c *Client) Load(ctx context.Context, target any) (map[string]Resolved, error) {
	if v := reflect.ValueOf(target); v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, errors.New("secrets: Load needs a non-nil pointer to a struct")
	}
	l := &resolvingLookuper{c: c, ctx: ctx, known: map[string]Resolved{}, missing: map[string]error{}}
	// Discover the keys a first pass asks for and fetch them in one batch;
	// repeat, because a required key that is missing ends envconfig's pass
	// early. Keys still unknown after that are resolved one by one.
	for range 4 {
		l.discovered = nil
		scratch := reflect.New(reflect.TypeOf(target).Elem()).Interface()
		_ = envconfig.ProcessWith(ctx, &envconfig.Config{Target: scratch, Lookuper: l.discovery()})
		if len(l.discovered) == 0 {
			break
		}
		res, err := c.ResolveAll(ctx, l.discovered)
		if err != nil && !errors.Is(err, ErrNotConfigured) {
			return nil, err
		}
		for _, k := range l.discovered {
			if r, ok := res[k]; ok {
				l.known[k] = r
			} else {
				l.missing[k] = c.notConfigured(k, nil, ValidKey(k))
			}
		}
	}
	err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: target, Lookuper: l})
	if l.err != nil {
		return nil, l.err
	}
	if err != nil {
		if errors.Is(err, envconfig.ErrMissingRequired) && l.lastMissing != nil {
			return nil, fmt.Errorf("secrets: %w; %w", err, l.lastMissing)
		}
		return nil, decodeError(err)
	}
	used := make(map[string]Resolved, len(l.used))
	for k := range l.used {
		used[k] = l.known[k]
	}
	return used, nil
}

// resolvingLookuper answers envconfig from resolved values.
type resolvingLookuper struct {
	c          *Client
	ctx        context.Context
	known      map[string]Resolved
	missing    map[string]error
	discovered []string
	used       map[string]bool
	// lastMissing is the last key found nowhere: the one a missing-required
	// error is about, since envconfig stops there.
	lastMissing error
	err         error
}

// discovery records keys it has not resolved yet and answers from what is
// known so far.
func (l *resolvingLookuper) discovery() envconfig.Lookuper {
	return envconfig.LookuperFunc(func(key string) (string, bool) {
		if r, ok := l.known[key]; ok {
			return r.Value, true
		}
		if _, ok := l.missing[key]; !ok {
			l.discovered = append(l.discovered, key)
		}
		return "", false
	})
}

func (l *resolvingLookuper) Lookup(key string) (string, bool) {
	r, ok := l.known[key]
	if !ok {
		if err, missing := l.missing[key]; missing {
			l.lastMissing = err
			return "", false
		}
		var err error
		r, err = l.c.Resolve(l.ctx, key)
		switch {
		case errors.Is(err, ErrNotConfigured):
			l.missing[key], l.lastMissing = err, err
			return "", false
		case err != nil:
			if l.err == nil {
				l.err = err
			}
			return "", false
		}
		l.known[key] = r
	}
	if l.used == nil {
		l.used = map[string]bool{}
	}
	l.used[key] = true
	return r.Value, true
}

// Lookuper adapts the cache to envconfig, for decoding with options Load
// does not expose. Keys outside the cache's set, and values it cannot serve
// (stale, refused, not configured), are reported as not found.
func (c *Cache) Lookuper() envconfig.Lookuper {
	return envconfig.LookuperFunc(func(key string) (string, bool) {
		v, err := c.Get(key)
		return v, err == nil
	})
}

// Load fills the struct target points to from the cache's current values,
// as Client.Load does (go-envconfig `env` tags). A value the cache cannot
// serve fails the load with Get's error (ErrStale, a refusal); a key
// outside the cache's set or configured nowhere is left to the tag (its
// default, or a missing-required error).
func (c *Cache) Load(ctx context.Context, target any) error {
	var first error
	err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: target, Lookuper: envconfig.LookuperFunc(func(key string) (string, bool) {
		v, err := c.Get(key)
		if err != nil && !errors.Is(err, ErrNotConfigured) && !errors.Is(err, ErrNotCached) && first == nil {
			first = err
		}
		return v, err == nil
	})})
	if first != nil {
		return first
	}
	if err != nil {
		return decodeError(err)
	}
	return nil
}

// ErrDecode is what Load fails with when a value does not decode into its
// field (a number, a duration, a URL, a map item that does not parse).
var ErrDecode = errors.New("a value does not decode into its field")

// decodeError turns go-envconfig's error into one that names the field but
// not the value: its decoders' errors quote what they could not parse
// (strconv, url.Parse, a map item), which here is a secret, and a
// start-up error ends up in a log. A missing required key names only the
// key, and passes as is.
func decodeError(err error) error {
	// Mistakes in the struct, not in a value: their messages hold only
	// field names and tags.
	for _, e := range []error{envconfig.ErrMissingRequired, envconfig.ErrUnknownOption, envconfig.ErrRequiredAndDefault,
		envconfig.ErrPrivateField, envconfig.ErrInvalidEnvvarName, envconfig.ErrNoInitNotPtr, envconfig.ErrRecursivePointer} {
		if errors.Is(err, e) {
			return fmt.Errorf("secrets: %w", err)
		}
	}
	// go-envconfig prefixes its errors with the Go field's name.
	field, _, ok := strings.Cut(err.Error(), ": ")
	if !ok || !token.IsIdentifier(field) {
		return fmt.Errorf("secrets: %w (the value is not shown)", ErrDecode)
	}
	return fmt.Errorf("secrets: field %s: %w (the value is not shown)", field, ErrDecode)
}
