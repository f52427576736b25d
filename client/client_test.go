package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/internal/testserver"
)

func TestSecretCalls(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr())
	ctx := context.Background()

	s := put(t, c, "CUSTOM_CALLS", "one", client.WithDescription("for tests"), client.WithCategory("custom"), client.WithRestartRequired(true))
	if s.Key != "CUSTOM_CALLS" || s.CurrentVersion != 1 || !s.RestartRequired || s.Description != "for tests" || s.Revision == 0 || s.CreateTime.IsZero() {
		t.Fatalf("PutSecret = %+v", s)
	}
	s2 := put(t, c, "CUSTOM_CALLS", "two", client.WithEtag(s.Etag))
	if s2.CurrentVersion != 2 || s2.Revision <= s.Revision {
		t.Fatalf("second put = %+v", s2)
	}
	got, err := c.GetSecret(ctx, "CUSTOM_CALLS")
	if err != nil || got.Etag != s2.Etag || got.Revision < s2.Revision || !got.Configured {
		t.Fatalf("GetSecret = %+v, %v", got, err)
	}
	v, err := c.Access(ctx, "CUSTOM_CALLS")
	if err != nil || v.Text() != "two" || v.Version != 2 || v.Revision < s2.Revision {
		t.Fatalf("Access = %v %q, %v", v, v.Text(), err)
	}
	if v1, err := c.AccessSecretVersion(ctx, "CUSTOM_CALLS", 1); err != nil || v1.Text() != "one" {
		t.Fatalf("AccessSecretVersion(1) = %q, %v", v1.Text(), err)
	}
	if u, err := c.UpdateSecret(ctx, "CUSTOM_CALLS", client.WithRestartRequired(false)); err != nil || u.RestartRequired {
		t.Fatalf("UpdateSecret = %+v, %v", u, err)
	}
	if _, err := c.UpdateSecret(ctx, "CUSTOM_CALLS"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("UpdateSecret without fields: %v", err)
	}

	if ch, err := c.DisableSecretVersion(ctx, "CUSTOM_CALLS", 1); err != nil || ch.Version.State != client.VersionDisabled || ch.Secret.Revision == 0 {
		t.Fatalf("Disable = %+v, %v", ch, err)
	}
	if _, err := c.AccessSecretVersion(ctx, "CUSTOM_CALLS", 1); !errors.Is(err, client.ErrVersionNotEnabled) {
		t.Fatalf("access disabled: %v", err)
	}
	if ch, err := c.EnableSecretVersion(ctx, "CUSTOM_CALLS", 1); err != nil || ch.Version.State != client.VersionEnabled {
		t.Fatalf("Enable = %+v, %v", ch, err)
	}
	if ch, err := c.DestroySecretVersion(ctx, "CUSTOM_CALLS", 1); err != nil || ch.Version.State != client.VersionDestroyed {
		t.Fatalf("Destroy = %+v, %v", ch, err)
	}
	vs, err := c.ListSecretVersions(ctx, "CUSTOM_CALLS")
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, v := range vs {
		states = append(states, v.State.String())
	}
	if diff := cmp.Diff([]string{"enabled", "destroyed"}, states); diff != "" {
		t.Fatalf("versions (-want +got):\n%s", diff)
	}

	put(t, c, "CUSTOM_OTHER", "x")
	res, rev, err := c.BatchAccess(ctx, []string{"CUSTOM_CALLS", "CUSTOM_OTHER", "CUSTOM_MISSING"})
	if err != nil || rev == 0 {
		t.Fatalf("BatchAccess: %v (rev %d)", err, rev)
	}
	if res["CUSTOM_CALLS"].Value.Text() != "two" || res["CUSTOM_OTHER"].Value.Text() != "x" || !errors.Is(res["CUSTOM_MISSING"].Err, client.ErrNotFound) {
		t.Fatalf("BatchAccess results: %v", res)
	}

	list, listRev, err := c.ListSecrets(ctx, client.ListSecretsOptions{ConfiguredOnly: true})
	if err != nil || listRev == 0 {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range list {
		keys = append(keys, s.Key)
	}
	if diff := cmp.Diff([]string{"CUSTOM_CALLS", "CUSTOM_OTHER"}, keys); diff != "" {
		t.Fatalf("ListSecrets (-want +got):\n%s", diff)
	}
	all, _, err := c.ListSecrets(ctx, client.ListSecretsOptions{Category: "slack"})
	if err != nil || len(all) == 0 || all[0].Category != "slack" || all[0].Configured {
		t.Fatalf("ListSecrets(slack) = %+v, %v", all, err)
	}

	if rev, err := c.DeleteSecret(ctx, "CUSTOM_OTHER"); err != nil || rev == 0 {
		t.Fatalf("DeleteSecret: %v", err)
	}
	if _, err := c.GetSecret(ctx, "CUSTOM_OTHER"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("GetSecret after delete: %v", err)
	}

	providers, err := c.ListProviders(ctx)
	if err != nil || len(providers) == 0 || providers[0].Key == "" {
		t.Fatalf("ListProviders = %+v, %v", providers, err)
	}
	d, prev, err := c.UpdateProviderDefault(ctx, "chat", "openai", "gpt-5")
	if err != nil || d.Provider != "openai" || prev == 0 {
		t.Fatalf("UpdateProviderDefault = %+v, %v", d, err)
	}
	defs, _, err := c.GetProviderDefaults(ctx)
	if err != nil || !slices.ContainsFunc(defs, func(d client.ProviderDefault) bool { return d.UseCase == "chat" && d.Model == "gpt-5" }) {
		t.Fatalf("GetProviderDefaults = %+v, %v", defs, err)
	}

	events, err := c.ListAuditEvents(ctx, client.AuditFilter{Key: "CUSTOM_CALLS", Action: "PutSecret"})
	if err != nil || len(events) != 2 || events[0].Outcome != "OK" || events[0].Time.IsZero() {
		t.Fatalf("ListAuditEvents = %+v, %v", events, err)
	}
	if limited, err := c.ListAuditEvents(ctx, client.AuditFilter{Limit: 3}); err != nil || len(limited) != 3 {
		t.Fatalf("ListAuditEvents(limit 3) = %d events, %v", len(limited), err)
	}
}

func TestErrorsAreTyped(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr())
	ctx := context.Background()
	first := put(t, c, "CUSTOM_TYPED", "v1")
	put(t, c, "CUSTOM_TYPED", "v2")

	_, errMissing := c.GetSecret(ctx, "CUSTOM_NOPE")
	_, errStale := c.PutSecret(ctx, "CUSTOM_TYPED", []byte("v3"), client.WithEtag(first.Etag))
	_, errBadKey := c.PutSecret(ctx, "lower", []byte("v"))
	_, errDeleteStale := c.DeleteSecret(ctx, "CUSTOM_TYPED", client.WithEtag(first.Etag))
	for _, tc := range []struct {
		name     string
		err      error
		sentinel error
		code     codes.Code
		reason   string
	}{
		{"not found", errMissing, client.ErrNotFound, codes.NotFound, client.ReasonNotFound},
		{"stale etag", errStale, client.ErrConflict, codes.Aborted, client.ReasonEtagMismatch},
		{"bad key", errBadKey, client.ErrInvalidArgument, codes.InvalidArgument, client.ReasonInvalidArgument},
		{"stale delete", errDeleteStale, client.ErrConflict, codes.Aborted, client.ReasonEtagMismatch},
	} {
		if !errors.Is(tc.err, tc.sentinel) {
			t.Errorf("%s: %v does not match %v", tc.name, tc.err, tc.sentinel)
		}
		var e *client.Error
		if !errors.As(tc.err, &e) || e.Code != tc.code || e.Reason != tc.reason {
			t.Errorf("%s: got %#v, want code %v reason %s", tc.name, e, tc.code, tc.reason)
		}
		if client.Code(tc.err) != tc.code || client.Reason(tc.err) != tc.reason {
			t.Errorf("%s: Code/Reason = %v/%s", tc.name, client.Code(tc.err), client.Reason(tc.err))
		}
		if errors.Is(tc.err, client.ErrPermissionDenied) || errors.Is(tc.err, client.ErrUnavailable) {
			t.Errorf("%s: matches unrelated sentinels", tc.name)
		}
	}
	var e *client.Error
	if errors.As(errBadKey, &e); len(e.Fields) == 0 || e.Fields[0].Field != "key" {
		t.Errorf("bad key fields = %+v", e.Fields)
	}
}

func TestUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	c := dial(t, freeAddr(t))
	start := time.Now()
	_, err := c.GetSecret(context.Background(), "CUSTOM_X")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("GetSecret on a closed port: %v", err)
	}
	// Two attempts with a 20 ms backoff: well under the 5 s timeout.
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

func TestTokenIsSent(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	// Loopback: plaintext is allowed to carry the token.
	c := dial(t, srv.GRPCAddr(), client.WithToken(testserver.DefaultAdminToken))
	if _, err := c.ListProviders(context.Background()); err != nil {
		t.Fatalf("loopback call with token: %v", err)
	}
	bad := dial(t, srv.GRPCAddr(), client.WithToken("osk_wrong"))
	if _, err := bad.ListProviders(context.Background()); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("bad token: %v", err)
	}
	// Elsewhere, gRPC refuses to send the token in the clear.
	if _, err := client.New(context.Background(), "dns:///secrets.invalid:9090", client.WithToken("t0ken"), client.WithInsecure()); err == nil {
		t.Fatal("a client that would send its token over plaintext to a non-loopback target was created")
	}
}

func TestIsLoopback(t *testing.T) {
	for target, want := range map[string]bool{
		"127.0.0.1:9090": true, "localhost:9090": true, "[::1]:9090": true, "dns:///localhost:9090": true,
		"unix:///tmp/s.sock": true, "passthrough:///127.0.0.2:1": true,
		"10.0.0.1:9090": false, "secrets.example.com:443": false, "dns:///secrets:9090": false,
	} {
		if got := client.IsLoopback(target); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", target, got, want)
		}
	}
}

func TestValueNeverPrinted(t *testing.T) {
	v := client.Value{Key: "K", Version: 2, Data: []byte("s3cret")}
	r := client.Resolved{Key: "K", Value: "s3cret", Source: client.SourceDatabase, Version: 2}
	for _, s := range []string{fmt.Sprint(v), fmt.Sprintf("%v %+v %#v %s", r, r, r, r), fmt.Sprintf("%+v %#v", v, v)} {
		if strings.Contains(s, "s3cret") {
			t.Errorf("printed the value: %s", s)
		}
	}
}
