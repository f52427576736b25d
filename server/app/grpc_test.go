package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

func ptr[T any](v T) *T { return &v }

// put stores value under key and fails the test on error.
func put(t *testing.T, c pb.SecretServiceClient, key, value string) *pb.PutSecretResponse {
	t.Helper()
	res, err := c.PutSecret(context.Background(), &pb.PutSecretRequest{Key: key, Value: []byte(value)})
	if err != nil {
		t.Fatalf("PutSecret(%s): %v", key, err)
	}
	return res
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("code = %v (%v), want %v", got, err, want)
	}
}

func badField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			return br.FieldViolations[0].Field
		}
	}
	return ""
}

func TestSecretServiceCodes(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	put(t, c, "CUSTOM_A", "alpha")
	v2 := put(t, c, "CUSTOM_DISABLED", "one")
	put(t, c, "CUSTOM_DISABLED", "two")
	if _, err := c.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: "CUSTOM_DISABLED", Version: "2"}); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 64<<10)

	tests := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"put ok", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "NEW_KEY", Value: []byte("v")})
			return err
		}, codes.OK, ""},
		{"put max size", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "BIG", Value: []byte(big)})
			return err
		}, codes.OK, ""},
		{"put over max", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "BIG", Value: []byte(big + "x")})
			return err
		}, codes.InvalidArgument, "value"},
		{"put bad key", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "lower", Value: []byte("v")})
			return err
		}, codes.InvalidArgument, "key"},
		{"put key too long", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "A" + strings.Repeat("B", 128), Value: []byte("v")})
			return err
		}, codes.InvalidArgument, "key"},
		{"put empty value", func() error { _, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "EMPTY"}); return err }, codes.InvalidArgument, "value"},
		{"put wrong shape", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "ANTHROPIC_API_KEY", Value: []byte("sk-openai")})
			return err
		}, codes.InvalidArgument, "value"},
		{"put stale etag", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "CUSTOM_DISABLED", Value: []byte("x"), Etag: v2.Secret.Etag})
			return err
		}, codes.Aborted, ""},
		{"put etag on missing secret", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "NOPE_X", Value: []byte("x"), Etag: "r1"})
			return err
		}, codes.Aborted, ""},
		{"put malformed etag", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "CUSTOM_A", Value: []byte("x"), Etag: "garbage"})
			return err
		}, codes.InvalidArgument, "etag"},
		{"put bad category", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "CUSTOM_A", Value: []byte("x"), Category: ptr("bad category!")})
			return err
		}, codes.InvalidArgument, "category"},
		{"put bad request id", func() error {
			_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "CUSTOM_A", Value: []byte("x"), RequestId: "has space"})
			return err
		}, codes.InvalidArgument, "request_id"},
		{"get ok", func() error { _, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "CUSTOM_A"}); return err }, codes.OK, ""},
		{"get empty slot", func() error { _, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "SLACK_APP_TOKEN"}); return err }, codes.OK, ""},
		{"get missing", func() error { _, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "MISSING"}); return err }, codes.NotFound, ""},
		{"get bad key", func() error { _, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "a-b"}); return err }, codes.InvalidArgument, "key"},
		{"access latest", func() error {
			_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_A", Version: "latest"})
			return err
		}, codes.OK, ""},
		{"access missing key", func() error {
			_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "MISSING", Version: "latest"})
			return err
		}, codes.NotFound, ""},
		{"access missing version", func() error {
			_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_A", Version: "9"})
			return err
		}, codes.NotFound, ""},
		{"access bad version", func() error {
			_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_A", Version: "-1"})
			return err
		}, codes.InvalidArgument, "version"},
		{"access disabled", func() error {
			_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_DISABLED", Version: "latest"})
			return err
		}, codes.FailedPrecondition, ""},
		{"access older enabled", func() error {
			_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_DISABLED", Version: "1"})
			return err
		}, codes.OK, ""},
		{"list versions missing", func() error {
			_, err := c.ListSecretVersions(ctx, &pb.ListSecretVersionsRequest{Key: "MISSING"})
			return err
		}, codes.NotFound, ""},
		{"list negative page size", func() error { _, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{PageSize: -1}); return err }, codes.InvalidArgument, "page_size"},
		{"list bad token", func() error { _, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{PageToken: "!!"}); return err }, codes.InvalidArgument, "page_token"},
		{"disable missing version", func() error {
			_, err := c.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: "CUSTOM_A", Version: "7"})
			return err
		}, codes.NotFound, ""},
		{"enable missing secret", func() error {
			_, err := c.EnableSecretVersion(ctx, &pb.EnableSecretVersionRequest{Key: "MISSING", Version: "1"})
			return err
		}, codes.NotFound, ""},
		{"update without mask", func() error {
			_, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "CUSTOM_A"}})
			return err
		}, codes.InvalidArgument, "update_mask"},
		{"update unknown field", func() error {
			_, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "CUSTOM_A"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"current_version"}}})
			return err
		}, codes.InvalidArgument, "update_mask"},
		{"update missing", func() error {
			_, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "MISSING", Description: "d"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
			return err
		}, codes.NotFound, ""},
		{"batch none", func() error { _, err := c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{}); return err }, codes.InvalidArgument, "keys"},
		{"batch duplicate", func() error {
			_, err := c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"CUSTOM_A", "CUSTOM_A"}})
			return err
		}, codes.InvalidArgument, "keys[1]"},
		{"batch too many", func() error {
			keys := make([]string, 101)
			for i := range keys {
				keys[i] = fmt.Sprintf("K%d", i)
			}
			_, err := c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: keys})
			return err
		}, codes.InvalidArgument, "keys"},
		{"delete missing", func() error { _, err := c.DeleteSecret(ctx, &pb.DeleteSecretRequest{Key: "MISSING"}); return err }, codes.NotFound, ""},
		{"delete stale etag", func() error {
			_, err := c.DeleteSecret(ctx, &pb.DeleteSecretRequest{Key: "CUSTOM_DISABLED", Etag: v2.Secret.Etag})
			return err
		}, codes.Aborted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			wantCode(t, err, tt.code)
			if tt.field != "" {
				if got := badField(err); got != tt.field {
					t.Errorf("BadRequest field = %q, want %q (%v)", got, tt.field, err)
				}
			}
		})
	}
}

func TestVersionLifecycle(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	first := put(t, c, "SLACK_BOT_TOKEN", "xoxb-first")
	if !first.Secret.RestartRequired || first.Secret.Category != "slack" || !first.Secret.Configured || first.Secret.CurrentVersion != 1 {
		t.Fatalf("catalog defaults not applied: %v", first.Secret)
	}
	second, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "SLACK_BOT_TOKEN", Value: []byte("xoxb-second"),
		Etag: first.Secret.Etag, Description: ptr("the bot")})
	if err != nil {
		t.Fatal(err)
	}
	if second.Secret.CurrentVersion != 2 || second.Secret.Description != "the bot" || second.Secret.Category != "slack" {
		t.Fatalf("second put: %v", second.Secret)
	}
	if second.Revision <= first.Revision {
		t.Fatalf("revision did not increase: %d then %d", first.Revision, second.Revision)
	}
	acc, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "1"})
	if err != nil || string(acc.Value) != "xoxb-first" || acc.Version != 1 || acc.DataCrc32C == 0 {
		t.Fatalf("access v1 = %v, %v", acc, err)
	}
	if _, err := c.DestroySecretVersion(ctx, &pb.DestroySecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "1"})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = c.EnableSecretVersion(ctx, &pb.EnableSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "1"})
	wantCode(t, err, codes.FailedPrecondition)

	dis, err := c.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "latest"})
	if err != nil || dis.Secret.Configured || dis.Version.State != pb.VersionState_VERSION_STATE_DISABLED {
		t.Fatalf("disable latest = %v, %v", dis, err)
	}
	en, err := c.EnableSecretVersion(ctx, &pb.EnableSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "2", Etag: dis.Secret.Etag})
	if err != nil || !en.Secret.Configured {
		t.Fatalf("enable = %v, %v", en, err)
	}
	vs, err := c.ListSecretVersions(ctx, &pb.ListSecretVersionsRequest{Key: "SLACK_BOT_TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, v := range vs.Versions {
		states = append(states, fmt.Sprintf("%d:%s", v.Version, v.State))
		if v.KekId == "" || v.CreateTime == nil {
			t.Errorf("version %d lacks kek id or time: %v", v.Version, v)
		}
	}
	if diff := cmp.Diff([]string{"2:VERSION_STATE_ENABLED", "1:VERSION_STATE_DESTROYED"}, states); diff != "" {
		t.Errorf("versions (-want +got):\n%s", diff)
	}
	upd, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{
		Secret:     &pb.Secret{Key: "SLACK_BOT_TOKEN", RestartRequired: false, Category: "Chat", Etag: en.Secret.Etag},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"restart_required", "category"}},
	})
	if err != nil || upd.Secret.RestartRequired || upd.Secret.Category != "chat" || upd.Secret.Description != "the bot" || upd.Secret.CurrentVersion != 2 {
		t.Fatalf("update = %v, %v", upd, err)
	}
	del, err := c.DeleteSecret(ctx, &pb.DeleteSecretRequest{Key: "SLACK_BOT_TOKEN", Etag: upd.Secret.Etag})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "SLACK_BOT_TOKEN"})
	if err != nil || got.Secret.Configured || got.Secret.Category != "slack" || got.Revision != del.Revision {
		t.Fatalf("after delete the catalog slot should be empty at revision %d: %v, %v", del.Revision, got, err)
	}
}

func TestListSecretsMergesCatalogAndPages(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	for _, k := range []string{"AAA_CUSTOM", "OPENAI_API_KEY", "ZZZ_CUSTOM", "SLACK_SIGNING_SECRET"} {
		v := "value-" + k
		if k == "OPENAI_API_KEY" {
			v = "sk-test"
		}
		put(t, c, k, v)
	}
	// Walk every page of size 3 and check each key appears once, in order.
	var keys []string
	configured := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		if pages > 50 {
			t.Fatal("paging does not end")
		}
		res, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Secrets) > 3 {
			t.Fatalf("page of %d > 3", len(res.Secrets))
		}
		for _, s := range res.Secrets {
			keys = append(keys, s.Key)
			configured[s.Key] = s.Configured
		}
		if token = res.NextPageToken; token == "" {
			break
		}
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1] >= keys[i] {
			t.Fatalf("keys not strictly ordered: %v", keys)
		}
	}
	if !configured["OPENAI_API_KEY"] || !configured["AAA_CUSTOM"] || configured["ANTHROPIC_API_KEY"] {
		t.Fatalf("configured flags wrong: %v", configured)
	}
	if _, ok := configured["SLACK_BOT_TOKEN"]; !ok {
		t.Fatalf("empty catalog slot missing from %v", keys)
	}
	// Category filter: slack slots and the stored slack secret, nothing else.
	res, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{Category: "SLACK"})
	if err != nil {
		t.Fatal(err)
	}
	var slack []string
	for _, s := range res.Secrets {
		if s.Category != "slack" {
			t.Errorf("category filter leaked %s (%s)", s.Key, s.Category)
		}
		slack = append(slack, s.Key)
	}
	want := []string{"SLACK_APP_TOKEN", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_USER_TOKEN"}
	if diff := cmp.Diff(want, slack); diff != "" {
		t.Errorf("slack keys (-want +got):\n%s", diff)
	}
	only, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{ConfiguredOnly: true})
	if err != nil || len(only.Secrets) != 4 {
		t.Fatalf("configured_only = %d secrets, %v", len(only.Secrets), err)
	}
	_, err = c.ListSecrets(ctx, &pb.ListSecretsRequest{PageSize: 2, PageToken: token, Category: "ai"})
	wantCode(t, err, codes.OK) // empty token: fine
	first, _ := c.ListSecrets(ctx, &pb.ListSecretsRequest{PageSize: 2})
	_, err = c.ListSecrets(ctx, &pb.ListSecretsRequest{PageSize: 2, PageToken: first.NextPageToken, Category: "ai"})
	wantCode(t, err, codes.InvalidArgument)
}

func TestBatchAccess(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	put(t, c, "ONE", "1")
	put(t, c, "TWO", "2")
	put(t, c, "GONE", "x")
	if _, err := c.DestroySecretVersion(ctx, &pb.DestroySecretVersionRequest{Key: "GONE", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	res, err := c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"TWO", "MISSING", "ONE", "GONE"}})
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Key, Value string
		Code       codes.Code
	}
	var got []row
	for _, r := range res.Results {
		got = append(got, row{r.Key, string(r.Value), codes.Code(r.GetError().GetCode())})
	}
	want := []row{{"TWO", "2", codes.OK}, {"MISSING", "", codes.NotFound}, {"ONE", "1", codes.OK}, {"GONE", "", codes.FailedPrecondition}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("batch (-want +got):\n%s", diff)
	}
	if res.Revision == 0 {
		t.Error("batch response lacks its revision")
	}
	// 60 values of 64 KiB exceed the response bound: refused, not truncated.
	big := strings.Repeat("v", 64<<10)
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("BIG_%d", i)
		put(t, c, keys[i], big)
	}
	_, err = c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: keys})
	wantCode(t, err, codes.InvalidArgument)
}

func TestProviders(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	put(t, srv.Secrets, "OPENAI_API_KEY", "sk-abc")
	lp, err := srv.Providers.ListProviders(ctx, &pb.ListProvidersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	configured := map[string]bool{}
	for _, p := range lp.Providers {
		configured[p.Provider] = p.Configured
	}
	if diff := cmp.Diff(map[string]bool{"anthropic": false, "openai": true, "google": false}, configured); diff != "" {
		t.Errorf("configured (-want +got):\n%s", diff)
	}
	// A provider whose key is not set yet is allowed; the model is free text.
	upd, err := srv.Providers.UpdateProviderDefault(ctx, &pb.UpdateProviderDefaultRequest{UseCase: "summary", Provider: "google", Model: "gemini-next"})
	if err != nil {
		t.Fatal(err)
	}
	defs, err := srv.Providers.GetProviderDefaults(ctx, &pb.GetProviderDefaultsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range defs.Defaults {
		got[d.UseCase] = d.Provider + "/" + d.Model
	}
	if got["summary"] != "google/gemini-next" || got["chat"] == "" || got["code"] == "" || len(got) != 3 {
		t.Errorf("defaults = %v", got)
	}
	if defs.Revision != upd.Revision {
		t.Errorf("defaults revision %d, want %d", defs.Revision, upd.Revision)
	}
	for _, tt := range []struct {
		req   *pb.UpdateProviderDefaultRequest
		field string
	}{
		{&pb.UpdateProviderDefaultRequest{UseCase: "poetry", Provider: "openai", Model: "m"}, "use_case"},
		{&pb.UpdateProviderDefaultRequest{UseCase: "chat", Provider: "acme", Model: "m"}, "provider"},
		{&pb.UpdateProviderDefaultRequest{UseCase: "chat", Provider: "openai", Model: " "}, "model"},
		{&pb.UpdateProviderDefaultRequest{UseCase: "chat", Provider: "openai", Model: "a\nb"}, "model"},
	} {
		_, err := srv.Providers.UpdateProviderDefault(ctx, tt.req)
		wantCode(t, err, codes.InvalidArgument)
		if f := badField(err); f != tt.field {
			t.Errorf("%v: field %q, want %q", tt.req, f, tt.field)
		}
	}
}

func TestAuditEvents(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	put(t, c, "AUDITED", "top-secret-value")
	if _, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "AUDITED", Version: "latest"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "AUDITED", Version: "5"})
	wantCode(t, err, codes.NotFound)
	put(t, c, "OTHER", "x")

	res, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "AUDITED"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range res.Events {
		got = append(got, e.Action+":"+e.Outcome)
		if e.Actor != "admin" || e.Peer == "" || e.Time == nil {
			t.Errorf("event lacks actor, peer or time: %v", e)
		}
		if strings.Contains(e.String(), "top-secret-value") {
			t.Fatal("audit event holds the value")
		}
	}
	want := []string{"AccessSecretVersion:NOT_FOUND", "AccessSecretVersion:OK", "PutSecret:OK"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events newest first (-want +got):\n%s", diff)
	}
	// Paging by one visits the same events.
	var paged []string
	token := ""
	for {
		r, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "AUDITED", PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Events {
			paged = append(paged, e.Action+":"+e.Outcome)
		}
		if token = r.NextPageToken; token == "" {
			break
		}
	}
	if diff := cmp.Diff(want, paged, protocmp.Transform()); diff != "" {
		t.Errorf("paged events (-want +got):\n%s", diff)
	}
	byAction, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "PutSecret"})
	if err != nil || len(byAction.Events) != 2 {
		t.Fatalf("action filter: %d events, %v", len(byAction.Events), err)
	}
}
