package client

import (
	"context"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// ValueMatch is a recorded write whose value equals a candidate.
type ValueMatch struct {
	Key      string    `json:"key"`
	Version  int64     `json:"version"`
	Sequence int64     `json:"sequence"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor"`
}

// MatchValue answers which secret versions, if any, held a candidate value
// (a leak check; auditor or admin). key limits it to one secret ("" for
// all). The server compares HMACs and never logs or stores the value; the
// question is audited.
func (c *Client) MatchValue(ctx context.Context, value []byte, key string) ([]ValueMatch, error) {
	res, err := c.audit.MatchValue(ctx, &pb.MatchValueRequest{Value: value, Key: key})
	if err != nil {
		return nil, fromRPC("MatchValue", err)
	}
	out := []ValueMatch{}
	for _, m := range res.GetMatches() {
		out = append(out, ValueMatch{Key: m.GetKey(), Version: m.GetVersion(), Sequence: m.GetSequence(),
			Time: m.GetTime().AsTime(), Actor: m.GetActor()})
	}
	return out, nil
}
