package app_test

import (
	"context"
	"strings"
	"testing"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// The CheckSecret audit event, written before the provider is called, does
// not claim the value was sent: a check can refuse it first (here a JIRA
// site outside the allowed hosts: nothing is sent), and the event must stay
// true then.
func TestCheckAuditDoesNotClaimSending(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	for k, v := range map[string]string{"JIRA_API_TOKEN": "jira-token", "JIRA_EMAIL": "bot@example.com", "JIRA_BASE_URL": "https://jira.example.com"} {
		if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: k, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := srv.Secrets.CheckSecret(ctx, &pb.CheckSecretRequest{Key: "JIRA_API_TOKEN"})
	if err != nil || res.GetResult() != "invalid" {
		t.Fatalf("check: %v %v", res, err)
	}
	ev, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "JIRA_API_TOKEN", Action: "CheckSecret"})
	if err != nil || len(ev.GetEvents()) == 0 {
		t.Fatalf("audit: %v %v", ev, err)
	}
	if d := ev.GetEvents()[0].GetDetail(); strings.HasPrefix(d, "sent to") {
		t.Errorf("audit detail %q says the value was sent, though the check refused it before any call", d)
	}
}
