package app_test

import (
	"context"
	"net/netip"
	"testing"

	"google.golang.org/grpc/metadata"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// A caller inside --trusted-proxies cannot make the audit peer free text
// (or imitate the gateway's "(rest)" marker): only hops that are IP
// addresses count, and the walk stops at the last good one.
func TestForwardedPeerAcceptsOnlyAddresses(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}})
	ctx := context.Background()
	for key, xff := range map[string]string{
		"XFF_TEXT": "ops-bastion.corp (rest)",
		"XFF_ZONE": "fe80::1%ops (rest)",
		"XFF_MIX":  "203.0.113.9, ops-bastion.corp (rest)",
	} {
		md := metadata.Pairs("x-forwarded-for", xff)
		if _, err := srv.Secrets.PutSecret(metadata.NewOutgoingContext(ctx, md), &pb.PutSecretRequest{Key: key, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
		res, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range res.GetEvents() {
			if _, err := netip.ParseAddr(e.Peer); err != nil {
				t.Errorf("x-forwarded-for %q: audit peer %q is not an address", xff, e.Peer)
			}
		}
	}
}
