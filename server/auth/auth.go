// Package auth owns who a caller is and what it may do: bearer tokens
// (generation, hashing, a short-lived lookup cache, batched last-use
// records), client-certificate identities, roles, scopes and the per-RPC
// policy. It decides; the server's interceptors enforce.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Role is what a principal may do.
type Role string

// Roles.
const (
	RoleAdmin   Role = "admin"   // everything, including tokens
	RoleWriter  Role = "writer"  // read and change secrets within scope
	RoleReader  Role = "reader"  // read metadata and values within scope
	RoleAuditor Role = "auditor" // the audit log only
)

// Roles lists every role.
var Roles = []Role{RoleAdmin, RoleWriter, RoleReader, RoleAuditor}

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Roles, r) {
		return r, nil
	}
	return "", fmt.Errorf("must be one of admin, writer, reader, auditor")
}

// Scope limits a principal to some keys. Empty means every key. A key is in
// scope when it matches one of the key patterns (if any are listed) and its
// category is one of the categories (if any are listed): each list narrows,
// neither widens.
type Scope struct {
	KeyPatterns []string `json:"key_patterns,omitempty"`
	Categories  []string `json:"categories,omitempty"`
}

// Empty reports whether the scope allows every key.
func (s Scope) Empty() bool { return len(s.KeyPatterns) == 0 && len(s.Categories) == 0 }

// Allows reports whether key (of the given category; "" for a key that has
// none, which no category list contains) is in scope.
func (s Scope) Allows(key, category string) bool {
	return s.AllowsKey(key) && (len(s.Categories) == 0 || slices.Contains(s.Categories, category))
}

// AllowsKey reports whether key matches the scope's key patterns (true when
// it has none): the part of the scope that needs no lookup.
func (s Scope) AllowsKey(key string) bool {
	if len(s.KeyPatterns) == 0 {
		return true
	}
	for _, p := range s.KeyPatterns {
		if ok, _ := path.Match(p, key); ok {
			return true
		}
	}
	return false
}

// NeedsCategory reports whether judging a key needs its category.
func (s Scope) NeedsCategory() bool { return len(s.Categories) > 0 }

// Governs reports whether the scope has authority over a whole category:
// only an empty scope or one that lists the category. Moving a secret into
// or out of a category needs it, so a key-pattern scope cannot hand its
// keys to another category's readers.
func (s Scope) Governs(category string) bool {
	return s.Empty() || slices.Contains(s.Categories, category)
}

// ValidPattern checks a key pattern: a key, optionally with * wildcards.
func ValidPattern(p string) bool {
	if p == "" || len(p) > 128 {
		return false
	}
	if _, err := path.Match(p, ""); err != nil {
		return false
	}
	for _, c := range p {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '*') {
			return false
		}
	}
	return true
}

// Principal is an authenticated caller.
type Principal struct {
	// Name is the actor recorded in the audit log.
	Name  string
	Role  Role
	Scope Scope
	// ExpireTime is when the credentials stop working (zero: never); a
	// stream open at that time is ended.
	ExpireTime time.Time
}

type principalKey struct{}

// WithPrincipal attaches the caller to ctx.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the caller, if authenticated.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// TokenPrefix starts every generated token, so secret scanners can find a
// leaked one.
const TokenPrefix = "osk_"

// NewToken returns a fresh token: the prefix and 256 random bits.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// Hash is what the database stores of a token: high-entropy tokens need no
// slow hash.
func Hash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// DisplayPrefix is the part of a token shown to recognise it.
func DisplayPrefix(token string) string {
	n := len(TokenPrefix) + 4
	if len(token) < n+8 {
		return ""
	}
	return token[:n]
}

// Errors of authentication. Callers all get the same message; the
// distinction is for the audit log.
var (
	ErrNoCredentials = errors.New("no credentials")
	ErrUnknownToken  = errors.New("unknown token")
	ErrExpired       = errors.New("token expired")
	ErrRevoked       = errors.New("token revoked")
)
