package auth

import (
	"context"
	"fmt"
	"strings"
	"testing"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// The scope check runs before a handler validates the request: what it
// spends, and what it echoes, must not grow with what a scoped caller
// sends.
func TestAuthorizeBoundsWhatACallerSends(t *testing.T) {
	pol, ok := PolicyFor("/orient.secrets.v1.SecretService/BatchAccessSecrets")
	if !ok {
		t.Fatal("no policy for BatchAccessSecrets")
	}
	p := Principal{Name: "slack-bot", Role: RoleReader, Scope: Scope{Categories: []string{"slack"}}}
	var lookups, looked int
	lookup := func(_ context.Context, keys []string) (map[string]string, error) {
		lookups++
		looked += len(keys)
		out := map[string]string{}
		for _, k := range keys {
			out[k] = "slack"
		}
		return out, nil
	}
	authorize := func(keys ...string) *Denial {
		t.Helper()
		lookups, looked = 0, 0
		d, err := pol.Authorize(context.Background(), p, &pb.BatchAccessSecretsRequest{Keys: keys}, lookup)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	// The categories of all the keys in one lookup, each key once (it was
	// one query per key named, repeats included).
	var keys []string
	for i := range 50 {
		keys = append(keys, fmt.Sprintf("SLACK_K%d", i), fmt.Sprintf("SLACK_K%d", i))
	}
	if d := authorize(keys...); d != nil || lookups != 1 || looked != 50 {
		t.Errorf("50 keys named twice: denial %v, %d lookups of %d keys; want none, 1 of 50", d, lookups, looked)
	}
	// More keys than any method takes: refused before any lookup.
	keys = keys[:0]
	for i := range MaxScopedKeys + 1 {
		keys = append(keys, fmt.Sprintf("SLACK_K%d", i))
	}
	if d := authorize(keys...); d == nil || lookups != 0 {
		t.Errorf("%d keys: denial %v after %d lookups; want a denial and no lookup", len(keys), d, lookups)
	}
	// A key that is not a key (up to the message limit) is not echoed in
	// the denial, which goes to the log and the audit log.
	huge := "SLACK_" + strings.Repeat("a", 200<<10)
	d := authorize(huge)
	if d == nil {
		t.Fatal("a 200 KiB key was allowed")
	}
	if lookups != 0 || len(d.Message) > 200 || len(d.Key) > 128 {
		t.Errorf("a 200 KiB key: denial with a %d-byte message and a %d-byte key after %d lookups", len(d.Message), len(d.Key), lookups)
	}
}
