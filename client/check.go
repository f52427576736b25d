package client

import (
	"context"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// ReasonCheckNeedsSecret is the ErrorInfo reason of a CheckSecret that
// needs another secret that is not set (JIRA_EMAIL, JIRA_BASE_URL).
var ReasonCheckNeedsSecret = ReasonString(pb.ErrorReason_ERROR_REASON_CHECK_NEEDS_SECRET)

// CheckResult is a provider's verdict on a stored credential.
type CheckResult struct {
	Key     string
	Version int64
	// Provider is who was asked: anthropic, openai, google, slack, github
	// or jira.
	Provider string
	// Result is "valid", "invalid", "insufficient_permissions" or
	// "unreachable".
	Result string
	// HTTPStatus is the provider's answer; 0 when none came.
	HTTPStatus int
	// Reason is short text for people; never the value.
	Reason    string
	CheckTime time.Time
}

// CheckSecret asks the provider whether the newest value of key works,
// with a harmless read-only call. The value is never returned.
func (c *Client) CheckSecret(ctx context.Context, key string) (CheckResult, error) {
	res, err := c.secrets.CheckSecret(ctx, &pb.CheckSecretRequest{Key: key})
	if err != nil {
		return CheckResult{}, fromRPC("CheckSecret", err)
	}
	return CheckResult{Key: res.GetKey(), Version: res.GetVersion(), Provider: res.GetProvider(), Result: res.GetResult(),
		HTTPStatus: int(res.GetHttpStatus()), Reason: res.GetReason(), CheckTime: timeOf(res.GetCheckTime())}, nil
}
