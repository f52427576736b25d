package client

import (
	"testing"

	"google.golang.org/grpc/codes"
)

// A Resolve in flight when the value is revoked lands after the revocation:
// what it read is older than the revocation and must not become the
// last-known value an outage would serve.
func TestLastKnownRevocationOutlivesAnOlderRead(t *testing.T) {
	c := &Client{lastKnown: map[string]lastKnown{}, opts: defaultOptions()}
	down := &Error{Op: "AccessSecretVersion", Code: codes.Unavailable, Message: "down"}
	served := func() (string, bool) {
		r, err := c.resolveResult("CUSTOM_K", Value{}, down)
		return r.Value, err == nil && r.Source == SourceLastKnown
	}
	c.remember("CUSTOM_K", Value{Data: []byte("v1"), Version: 1, Revision: 5})
	if v, ok := served(); !ok || v != "v1" {
		t.Fatalf("before the revocation: %q, %v", v, ok)
	}
	c.forget("CUSTOM_K", 1, 7)                                                 // version 1 disabled at revision 7
	c.remember("CUSTOM_K", Value{Data: []byte("v1"), Version: 1, Revision: 6}) // a read from before it, landing late
	if v, ok := served(); ok {
		t.Fatalf("a revoked value served as last known: %q", v)
	}
	c.remember("CUSTOM_K", Value{Data: []byte("v2"), Version: 2, Revision: 8}) // a read after it
	if v, ok := served(); !ok || v != "v2" {
		t.Fatalf("after a newer read: %q, %v", v, ok)
	}
	// Disabling another version leaves the last known alone.
	c.forget("CUSTOM_K", 1, 9)
	if v, ok := served(); !ok || v != "v2" {
		t.Fatalf("after another version's revocation: %q, %v", v, ok)
	}
}
