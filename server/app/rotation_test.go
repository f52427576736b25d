package app_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

func grpcReason(err error) pb.ErrorReason {
	return pb.ErrorReason(pb.ErrorReason_value["ERROR_REASON_"+reasonOfErr(err)])
}

const day = 24 * time.Hour

// TestRotationValidation: rotation fields are bounded, every refusal is
// INVALID_ARGUMENT naming the field with reason INVALID_ARGUMENT, and a
// period set alone schedules the next rotation from now.
func TestRotationValidation(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	put(t, c, "CUSTOM_ROT", "v1")
	now := time.Now()
	update := func(sec *pb.Secret, paths ...string) error {
		sec.Key = "CUSTOM_ROT"
		_, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: sec, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		return err
	}
	putWith := func(p *durationpb.Duration, exp *timestamppb.Timestamp) error {
		_, err := c.PutSecret(ctx, &pb.PutSecretRequest{Key: "CUSTOM_ROT", Value: []byte("v"), RotationPeriod: p, ExpireTime: exp})
		return err
	}
	for _, tc := range []struct {
		name, field string
		call        func() error
	}{
		{"period under an hour", "secret.rotation_period", func() error {
			return update(&pb.Secret{RotationPeriod: durationpb.New(59 * time.Minute)}, "rotation_period")
		}},
		{"period over 10 years", "secret.rotation_period", func() error {
			return update(&pb.Secret{RotationPeriod: durationpb.New(3651 * day)}, "rotation_period")
		}},
		{"period not whole seconds", "secret.rotation_period", func() error {
			return update(&pb.Secret{RotationPeriod: &durationpb.Duration{Seconds: 7200, Nanos: 5}}, "rotation_period")
		}},
		{"negative period", "secret.rotation_period", func() error {
			return update(&pb.Secret{RotationPeriod: &durationpb.Duration{Seconds: -7200}}, "rotation_period")
		}},
		{"next rotation in the past", "secret.next_rotation_time", func() error {
			return update(&pb.Secret{NextRotationTime: timestamppb.New(now.Add(-time.Hour))}, "next_rotation_time")
		}},
		{"next rotation too far", "secret.next_rotation_time", func() error {
			return update(&pb.Secret{NextRotationTime: timestamppb.New(now.Add(3651 * day))}, "next_rotation_time")
		}},
		{"expire in the past", "secret.expire_time", func() error {
			return update(&pb.Secret{ExpireTime: timestamppb.New(now.Add(-time.Minute))}, "expire_time")
		}},
		{"malformed expire", "secret.expire_time", func() error {
			return update(&pb.Secret{ExpireTime: &timestamppb.Timestamp{Seconds: 1, Nanos: -1}}, "expire_time")
		}},
		{"put period under an hour", "rotation_period", func() error { return putWith(durationpb.New(time.Minute), nil) }},
		{"put expire in the past", "expire_time", func() error { return putWith(nil, timestamppb.New(now.Add(-time.Hour))) }},
	} {
		err := tc.call()
		if status.Code(err) != codes.InvalidArgument || badField(err) != tc.field || grpcReason(err) != pb.ErrorReason_ERROR_REASON_INVALID_ARGUMENT {
			t.Errorf("%s: %v (field %q, reason %v), want INVALID_ARGUMENT on %s", tc.name, err, badField(err), grpcReason(err), tc.field)
		}
	}

	// A period alone schedules now + period; clearing the next time while
	// the period stays is refused; a stored past time sent back unchanged
	// is no error (checked below with the due secret).
	res, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "CUSTOM_ROT", RotationPeriod: durationpb.New(90 * day)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rotation_period"}}})
	if err != nil {
		t.Fatal(err)
	}
	next := res.GetSecret().GetNextRotationTime().AsTime()
	if res.GetSecret().GetRotationPeriod().AsDuration() != 90*day || next.Before(now.Add(90*day-time.Minute)) || next.After(time.Now().Add(90*day+time.Minute)) || res.GetSecret().GetRotationDue() {
		t.Fatalf("after setting the period: %v", res.GetSecret())
	}
	err = update(&pb.Secret{}, "next_rotation_time")
	if status.Code(err) != codes.InvalidArgument || grpcReason(err) != pb.ErrorReason_ERROR_REASON_INVALID_ARGUMENT {
		t.Fatalf("clearing next_rotation_time with a period: %v, want INVALID_ARGUMENT", err)
	}

	// The catalog proposes a period for well-known keys, never applies it.
	got, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "GITHUB_TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetSecret().GetSuggestedRotationPeriod().AsDuration() != 90*day {
		t.Fatalf("GITHUB_TOKEN suggested period %v, want 90 days", got.GetSecret().GetSuggestedRotationPeriod())
	}
	stored := put(t, c, "GITHUB_TOKEN", "ghp_x")
	if stored.GetSecret().GetRotationPeriod() != nil || stored.GetSecret().GetSuggestedRotationPeriod().AsDuration() != 90*day {
		t.Fatalf("the proposal was applied or lost: %v", stored.GetSecret())
	}
}

// makeDue moves a secret's schedule into the past, as time would: the API
// refuses a past next_rotation_time.
func makeDue(t *testing.T, databaseURL, key string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE secrets SET rotation_period_seconds = 3600,
		next_rotation_time = now() - interval '1 minute' WHERE key = $1`, key); err != nil {
		t.Fatal(err)
	}
}

// TestRotationDueAcrossReplicas: two replicas on one database check for due
// rotations every 50ms; the change stream carries exactly one ROTATION_DUE
// for the due secret, ListSecrets' rotation_due finds it, the metric counts
// it, and a new version answers it.
func TestRotationDueAcrossReplicas(t *testing.T) {
	t.Parallel()
	fast := func(c *app.Config) { c.RotationCheckInterval = 50 * time.Millisecond }
	a := testserver.Start(t, testserver.Options{Configure: fast})
	b := testserver.Start(t, testserver.Options{DatabaseURL: a.DatabaseURL, KEKURL: a.KEKURL, AdminToken: a.AdminToken, Configure: fast})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := a.Secrets
	put(t, c, "CUSTOM_DUE", "v1")
	start := put(t, c, "CUSTOM_FRESH", "v1").GetRevision()
	stream, err := b.Secrets.WatchChanges(ctx, &pb.WatchChangesRequest{StartRevision: start})
	if err != nil {
		t.Fatal(err)
	}
	makeDue(t, a.DatabaseURL, "CUSTOM_DUE")

	var due *pb.ChangeEvent
	for due == nil {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v (no ROTATION_DUE event)", err)
		}
		if ev := msg.GetEvent(); ev.GetKind() == pb.ChangeKind_CHANGE_KIND_ROTATION_DUE {
			due = ev
		}
	}
	if due.GetKey() != "CUSTOM_DUE" || due.GetVersion() != 1 || due.GetRestartRequired() || !strings.HasPrefix(due.GetDetail(), "next_rotation_time=") {
		t.Fatalf("event %v", due)
	}
	// Give both replicas several more checks, then count.
	time.Sleep(500 * time.Millisecond)
	events, err := a.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "RotationDue"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(events.GetEvents()); n != 1 || events.GetEvents()[0].GetKey() != "CUSTOM_DUE" || events.GetEvents()[0].GetRevision() != due.GetRevision() {
		t.Fatalf("RotationDue audit events %v, want exactly one, at revision %d", events.GetEvents(), due.GetRevision())
	}

	list, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{RotationDue: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetSecrets()) != 1 || list.GetSecrets()[0].GetKey() != "CUSTOM_DUE" || !list.GetSecrets()[0].GetRotationDue() {
		t.Fatalf("rotation_due list %v, want CUSTOM_DUE only", list.GetSecrets())
	}
	// The same over REST, and a PATCH that sets a period.
	loadServedDocument(t, a.BaseURL)
	rc := restClient{t: t, base: a.BaseURL, hc: &http.Client{Timeout: 30 * time.Second}, token: a.AdminToken}
	got := rc.must(http.StatusOK, "GET", "/v1/secrets?rotationDue=true", nil)
	if due := arr(t, got["secrets"], "secrets"); len(due) != 1 || obj(t, due[0], "secrets[0]")["key"] != "CUSTOM_DUE" || obj(t, due[0], "secrets[0]")["rotationDue"] != true {
		t.Fatalf("REST rotationDue list: %v", got)
	}
	patched := obj(t, rc.must(http.StatusOK, "PATCH", "/v1/secrets/CUSTOM_FRESH", map[string]any{"rotationPeriod": "7776000s"})["secret"], "secret")
	if patched["rotationPeriod"] != "7776000s" || patched["nextRotationTime"] == nil || patched["rotationDue"] != false {
		t.Fatalf("REST PATCH rotationPeriod: %v", patched)
	}
	// The due secret's state sent back unchanged with an edit is accepted
	// (its past next_rotation_time is the stored one).
	sec := list.GetSecrets()[0]
	sec.Description = "edited"
	if _, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: sec, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"*"}}}); err != nil {
		t.Fatalf("update sending back a due schedule: %v", err)
	}

	metric := `secrets_rotation_secrets{state="due"} 1`
	deadline := time.Now().Add(10 * time.Second)
	for body := scrape(t, b.BaseURL); !strings.Contains(body, metric); body = scrape(t, b.BaseURL) {
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q", metric)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A new version answers the reminder.
	res := put(t, c, "CUSTOM_DUE", "v2")
	if res.GetSecret().GetRotationDue() || res.GetSecret().GetNextRotationTime().AsTime().Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("after a new version: %v", res.GetSecret())
	}
	list, err = c.ListSecrets(ctx, &pb.ListSecretsRequest{RotationDue: true})
	if err != nil || len(list.GetSecrets()) != 0 {
		t.Fatalf("rotation_due list after the new version: %v, %v", list.GetSecrets(), err)
	}
}

func scrape(t *testing.T, baseURL string) string {
	t.Helper()
	res, err := http.Get(baseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExpiredSecretRefused: once expire_time passes, access fails as for a
// disabled version, also when the value sits in the read cache.
func TestExpiredSecretRefused(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	c := srv.Secrets
	put(t, c, "CUSTOM_EXP", "v1")
	expire := time.Now().Add(1500 * time.Millisecond)
	if _, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "CUSTOM_EXP", ExpireTime: timestamppb.New(expire)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"expire_time"}}}); err != nil {
		t.Fatal(err)
	}
	// Read twice before the expiry: the second read may come from the cache.
	for range 2 {
		if _, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_EXP", Version: "latest"}); err != nil {
			t.Fatalf("access before expiry: %v", err)
		}
	}
	time.Sleep(time.Until(expire) + 100*time.Millisecond)
	_, err := c.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "CUSTOM_EXP", Version: "latest"})
	if status.Code(err) != codes.FailedPrecondition || grpcReason(err) != pb.ErrorReason_ERROR_REASON_VERSION_NOT_ENABLED {
		t.Fatalf("access after expiry: %v (reason %v), want FAILED_PRECONDITION VERSION_NOT_ENABLED", err, grpcReason(err))
	}
	batch, err := c.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{"CUSTOM_EXP"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := batch.GetResults()[0]; r.GetError().GetCode() != int32(codes.FailedPrecondition) || len(r.GetValue()) != 0 {
		t.Fatalf("batch access after expiry: %v", r)
	}
	got, err := c.GetSecret(ctx, &pb.GetSecretRequest{Key: "CUSTOM_EXP"})
	if err != nil || !got.GetSecret().GetExpired() {
		t.Fatalf("GetSecret after expiry: %v, %v; want expired", got.GetSecret(), err)
	}
}
