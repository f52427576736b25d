package client

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// TokenInfo is a token's metadata; the token itself is only ever returned
// by CreateToken.
type TokenInfo struct {
	Name        string    `json:"name"`
	Role        string    `json:"role"`
	KeyPatterns []string  `json:"key_patterns,omitempty"`
	Categories  []string  `json:"categories,omitempty"`
	ExpireTime  time.Time `json:"expire_time,omitzero"`
	CreateTime  time.Time `json:"create_time,omitzero"`
	CreatedBy   string    `json:"created_by,omitempty"`
	LastUseTime time.Time `json:"last_use_time,omitzero"`
	RevokeTime  time.Time `json:"revoke_time,omitzero"`
	Prefix      string    `json:"prefix,omitempty"`
}

func tokenInfoFrom(t *pb.TokenInfo) TokenInfo {
	return TokenInfo{Name: t.GetName(), Role: t.GetRole(), KeyPatterns: t.GetScope().GetKeyPatterns(),
		Categories: t.GetScope().GetCategories(), ExpireTime: timeOf(t.GetExpireTime()), CreateTime: timeOf(t.GetCreateTime()),
		CreatedBy: t.GetCreatedBy(), LastUseTime: timeOf(t.GetLastUseTime()), RevokeTime: timeOf(t.GetRevokeTime()), Prefix: t.GetPrefix()}
}

// NewToken describes a token to create.
type NewToken struct {
	Name        string
	Role        string // admin, writer, reader, auditor
	KeyPatterns []string
	Categories  []string
	// ExpireTime is optional (zero: never).
	ExpireTime time.Time
}

// CreateToken creates a token (admin only) and returns it with its
// metadata. The token is shown only here.
func (c *Client) CreateToken(ctx context.Context, t NewToken) (string, TokenInfo, error) {
	req := &pb.CreateTokenRequest{Name: t.Name, Role: t.Role}
	if len(t.KeyPatterns) > 0 || len(t.Categories) > 0 {
		req.Scope = &pb.TokenScope{KeyPatterns: t.KeyPatterns, Categories: t.Categories}
	}
	if !t.ExpireTime.IsZero() {
		req.ExpireTime = timestamppb.New(t.ExpireTime)
	}
	res, err := c.tokens.CreateToken(ctx, req)
	if err != nil {
		return "", TokenInfo{}, fromRPC("CreateToken", err)
	}
	return res.GetToken(), tokenInfoFrom(res.GetTokenInfo()), nil
}

// ListTokens lists every token's metadata (admin only).
func (c *Client) ListTokens(ctx context.Context) ([]TokenInfo, error) {
	res, err := c.tokens.ListTokens(ctx, &pb.ListTokensRequest{})
	if err != nil {
		return nil, fromRPC("ListTokens", err)
	}
	out := make([]TokenInfo, 0, len(res.GetTokens()))
	for _, t := range res.GetTokens() {
		out = append(out, tokenInfoFrom(t))
	}
	return out, nil
}

// RevokeToken revokes a token by name (admin only).
func (c *Client) RevokeToken(ctx context.Context, name string) (TokenInfo, error) {
	res, err := c.tokens.RevokeToken(ctx, &pb.RevokeTokenRequest{Name: name})
	if err != nil {
		return TokenInfo{}, fromRPC("RevokeToken", err)
	}
	return tokenInfoFrom(res.GetTokenInfo()), nil
}

// AuditVerification is the verdict on the audit hash chain.
type AuditVerification struct {
	Intact             bool   `json:"intact"`
	VerifiedThrough    int64  `json:"verified_through"`
	FirstBadSequence   int64  `json:"first_bad_sequence,omitempty"`
	Reason             string `json:"reason,omitempty"`
	EventsChecked      int64  `json:"events_checked"`
	CheckpointsChecked int32  `json:"checkpoints_checked"`
	Signed             bool   `json:"signed"`
	// Anchored: external checkpoints (outside the database) were checked;
	// events after AnchoredThrough are only self-attested.
	Anchored                   bool   `json:"anchored"`
	AnchoredThrough            int64  `json:"anchored_through"`
	ExternalCheckpointsChecked int32  `json:"external_checkpoints_checked"`
	Summary                    string `json:"summary"`
	// EventsWaiting were committed but not yet sequenced into the chain
	// (verified once they are); OldestWaiting is how long the oldest of
	// them has waited.
	EventsWaiting int64         `json:"events_waiting"`
	OldestWaiting time.Duration `json:"oldest_waiting_ns,omitempty"`
}

// VerifyAuditLog walks the audit hash chain (admin or auditor).
func (c *Client) VerifyAuditLog(ctx context.Context) (AuditVerification, error) {
	res, err := c.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil {
		return AuditVerification{}, fromRPC("VerifyAuditLog", err)
	}
	return AuditVerification{Intact: res.GetIntact(), VerifiedThrough: res.GetVerifiedThrough(),
		FirstBadSequence: res.GetFirstBadSequence(), Reason: res.GetReason(), EventsChecked: res.GetEventsChecked(),
		CheckpointsChecked: res.GetCheckpointsChecked(), Signed: res.GetSigned(), Anchored: res.GetAnchored(),
		AnchoredThrough: res.GetAnchoredThrough(), ExternalCheckpointsChecked: res.GetExternalCheckpointsChecked(),
		Summary: res.GetSummary(), EventsWaiting: res.GetEventsWaiting(), OldestWaiting: res.GetOldestWaiting().AsDuration()}, nil
}
