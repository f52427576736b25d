package auth

import (
	"context"
	"errors"
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
	authorize := func(keys ...string) (*Denial, error) {
		t.Helper()
		lookups, looked = 0, 0
		return pol.Authorize(context.Background(), p, &pb.BatchAccessSecretsRequest{Keys: keys}, lookup)
	}

	// The categories of all the keys in one lookup, each key once (it was
	// one query per key named, repeats included).
	var keys []string
	for i := range 50 {
		keys = append(keys, fmt.Sprintf("SLACK_K%d", i), fmt.Sprintf("SLACK_K%d", i))
	}
	if d, err := authorize(keys...); d != nil || err != nil || lookups != 1 || looked != 50 {
		t.Errorf("50 keys named twice: denial %v, %v, %d lookups of %d keys; want none, 1 of 50", d, err, lookups, looked)
	}
	// More keys than any method takes: bad input, refused before any
	// lookup.
	keys = keys[:0]
	for i := range MaxScopedKeys + 1 {
		keys = append(keys, fmt.Sprintf("SLACK_K%d", i))
	}
	var bad *BadRequestError
	if d, err := authorize(keys...); d != nil || !errors.As(err, &bad) || bad.Field != "keys" || lookups != 0 {
		t.Errorf("%d keys: denial %v, error %v after %d lookups; want a bad request, no lookup", len(keys), d, err, lookups)
	}
	// A key that is not a key (up to the message limit) is bad input, not
	// echoed in the error, which goes to the log.
	huge := "SLACK_" + strings.Repeat("a", 200<<10)
	d, err := authorize(huge)
	if d != nil || !errors.As(err, &bad) || bad.Field != "key" || len(err.Error()) > 200 || lookups != 0 {
		t.Errorf("a 200 KiB key: denial %v, a %d-byte error %v, after %d lookups; want a short bad request", d, len(err.Error()), errors.As(err, &bad), lookups)
	}
}
