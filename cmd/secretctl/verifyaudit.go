package main

import (
	"context"
	"fmt"

	"google.golang.org/grpc/status"

	"github.com/orient-bot/secrets/client"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// verifyAuditFull asks for a full verification (the request's full flag):
// every event in the table is walked, not only those after the point an
// earlier verification recorded. The client's VerifyAuditLog asks for the
// incremental one only, so this calls the RPC over the client's connection
// (its token and retries included).
func verifyAuditFull(ctx context.Context, c *client.Client) (client.AuditVerification, error) {
	res, err := pb.NewAuditServiceClient(c.Conn()).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{Full: true})
	if err != nil {
		st := status.Convert(err)
		return client.AuditVerification{}, fmt.Errorf("VerifyAuditLog: %s: %s", st.Code(), st.Message())
	}
	return client.AuditVerification{Intact: res.GetIntact(), VerifiedThrough: res.GetVerifiedThrough(),
		FirstBadSequence: res.GetFirstBadSequence(), Reason: res.GetReason(), EventsChecked: res.GetEventsChecked(),
		CheckpointsChecked: res.GetCheckpointsChecked(), Signed: res.GetSigned(), Anchored: res.GetAnchored(),
		AnchoredThrough: res.GetAnchoredThrough(), ExternalCheckpointsChecked: res.GetExternalCheckpointsChecked(),
		Summary: res.GetSummary(), EventsWaiting: res.GetEventsWaiting(), OldestWaiting: res.GetOldestWaiting().AsDuration()}, nil
}
