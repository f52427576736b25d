package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// TestSecretExpiredAcrossReplicas: two replicas on one database check every
// 50ms; when a secret's expire_time passes, the change stream carries
// exactly one SECRET_EXPIRED for it (restart_required from the secret's
// flag) and the audit log one SecretExpired event.
func TestSecretExpiredAcrossReplicas(t *testing.T) {
	t.Parallel()
	fast := func(c *app.Config) { c.RotationCheckInterval = 50 * time.Millisecond }
	a := testserver.Start(t, testserver.Options{Configure: fast})
	b := testserver.Start(t, testserver.Options{DatabaseURL: a.DatabaseURL, KEKURL: a.KEKURL, AdminToken: a.AdminToken, Configure: fast})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := a.Secrets
	put(t, c, "CUSTOM_EXPIRING", "v1")
	expire := time.Now().Add(time.Second)
	res, err := c.UpdateSecret(ctx, &pb.UpdateSecretRequest{Secret: &pb.Secret{Key: "CUSTOM_EXPIRING", ExpireTime: timestamppb.New(expire), RestartRequired: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"expire_time", "restart_required"}}})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := b.Secrets.WatchChanges(ctx, &pb.WatchChangesRequest{StartRevision: res.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	var expired *pb.ChangeEvent
	for expired == nil {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v (no SECRET_EXPIRED event)", err)
		}
		if ev := msg.GetEvent(); ev.GetKind() == pb.ChangeKind_CHANGE_KIND_SECRET_EXPIRED {
			expired = ev
		}
	}
	if time.Now().Before(expire) {
		t.Fatalf("SECRET_EXPIRED published before the expire time %v", expire)
	}
	if expired.GetKey() != "CUSTOM_EXPIRING" || expired.GetVersion() != 1 || !expired.GetRestartRequired() || expired.GetCategory() != "custom" ||
		!strings.HasPrefix(expired.GetDetail(), "expire_time=") {
		t.Fatalf("event %v", expired)
	}
	// Give both replicas several more checks, then count: one event on
	// the stream, one audit event.
	time.Sleep(500 * time.Millisecond)
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	again, err := a.Secrets.WatchChanges(sctx, &pb.WatchChangesRequest{StartRevision: res.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		msg, err := again.Recv()
		if err != nil {
			break // the short context ends the replay
		}
		if msg.GetEvent().GetKind() == pb.ChangeKind_CHANGE_KIND_SECRET_EXPIRED {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d SECRET_EXPIRED events on the stream, want exactly one", n)
	}
	events, err := a.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "SecretExpired"})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.GetEvents()) != 1 || events.GetEvents()[0].GetKey() != "CUSTOM_EXPIRING" || events.GetEvents()[0].GetRevision() != expired.GetRevision() ||
		events.GetEvents()[0].GetActor() != "secretsd" {
		t.Fatalf("SecretExpired audit events %v, want exactly one, at revision %d", events.GetEvents(), expired.GetRevision())
	}
}
