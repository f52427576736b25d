package app_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

func consumerState(t *testing.T, srv *testserver.Server, service, instance string, pendingOnly bool) *pb.ConsumerState {
	t.Helper()
	res, err := srv.Secrets.ListConsumers(context.Background(), &pb.ListConsumersRequest{PendingOnly: pendingOnly})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Consumers {
		if c.Consumer.Service == service && c.Consumer.Instance == instance {
			return c
		}
	}
	return nil
}

// Restart tracking tells the truth: only a change to what a consumer loads
// (the newest version of a declared key) needs a restart; a report without
// keys keeps the declared ones; a consumer unseen for long is gone and
// leaves the banner; an admin can dismiss one; reports and dismissals are on
// the change stream.
func TestRestartTrackingTruth(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	ctx := context.Background()
	put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-1")
	rev := put(t, srv.Secrets, "SLACK_BOT_TOKEN", "xoxb-2").Revision
	bot := &pb.Consumer{Service: "slack-bot", Instance: "pod-1"}
	st, _ := startWatch(t, ctx, srv.Secrets, &pb.WatchChangesRequest{})
	if _, err := srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, LoadedRevision: rev, Keys: []string{"SLACK_BOT_TOKEN"}}); err != nil {
		t.Fatal(err)
	}
	evs, err := collect(st, 1, 5*time.Second)
	if err != nil || evs[0].Kind != pb.ChangeKind_CHANGE_KIND_CONSUMER_CHANGED {
		t.Fatalf("a report is not on the change stream: %v %v", evs, err)
	}

	// Disabling the older version changes nothing the bot loads.
	if _, err := srv.Secrets.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	if c := consumerState(t, srv, "slack-bot", "pod-1", false); c == nil || len(c.Pending) != 0 {
		t.Fatalf("disabling an old version made the bot pending: %v", c)
	}
	// A report without keys keeps the declared key: a change to another
	// restart-required key does not concern it.
	if _, err := srv.Secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{Consumer: bot, LoadedRevision: rev}); err != nil {
		t.Fatal(err)
	}
	put(t, srv.Secrets, "SLACK_APP_TOKEN", "xapp-1")
	c := consumerState(t, srv, "slack-bot", "pod-1", false)
	if c == nil || !slices.Equal(c.Keys, []string{"SLACK_BOT_TOKEN"}) || len(c.Pending) != 0 {
		t.Fatalf("a report without keys: %v", c)
	}
	// Disabling the newest version does change what it loads.
	if _, err := srv.Secrets.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: "SLACK_BOT_TOKEN", Version: "2"}); err != nil {
		t.Fatal(err)
	}
	if c := consumerState(t, srv, "slack-bot", "pod-1", true); c == nil || len(c.Pending) != 1 {
		t.Fatalf("disabling the newest version: %v", c)
	}

	// Unseen for longer than --consumer-gone-after (6 h): gone, and out of
	// the banner's list.
	conn, err := pgx.Connect(ctx, srv.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE consumers SET last_seen = now() - interval '7 hours'`); err != nil {
		t.Fatal(err)
	}
	if c := consumerState(t, srv, "slack-bot", "pod-1", false); c == nil || !c.Gone {
		t.Fatalf("a consumer unseen for 7 h is not gone: %v", c)
	}
	if c := consumerState(t, srv, "slack-bot", "pod-1", true); c != nil {
		t.Fatalf("a gone consumer still needs a restart: %v", c)
	}

	// An admin dismisses it: gone from the list, audited, on the stream.
	if _, err := srv.Secrets.DismissConsumer(ctx, &pb.DismissConsumerRequest{Consumer: bot}); err != nil {
		t.Fatal(err)
	}
	if c := consumerState(t, srv, "slack-bot", "pod-1", false); c != nil {
		t.Fatalf("dismissed consumer still listed: %v", c)
	}
	ev, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "DismissConsumer"})
	if err != nil || len(ev.Events) != 1 {
		t.Fatalf("dismissal not audited: %v %v", ev, err)
	}
}
