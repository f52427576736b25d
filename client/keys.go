package client

import (
	"context"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// KEKInfo is one key-encryption key and how many data keys it wraps.
type KEKInfo struct {
	KEKID      string `json:"kek_id"`
	DataKeys   int64  `json:"data_keys"`
	Primary    bool   `json:"primary"`
	Configured bool   `json:"configured"`
}

// KEKRotation is the progress of a KEK rotation on the replica that
// answered.
type KEKRotation struct {
	Running       bool          `json:"running"`
	Done          int64         `json:"done"`
	Total         int64         `json:"total"`
	RatePerSecond float64       `json:"rate_per_second"`
	ETA           time.Duration `json:"eta,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	PrimaryKEKID  string        `json:"primary_kek_id,omitempty"`
	StartTime     time.Time     `json:"start_time,omitzero"`
	EndTime       time.Time     `json:"end_time,omitzero"`
}

func kekRotationFrom(p *pb.KEKRotationProgress) KEKRotation {
	r := KEKRotation{Running: p.GetRunning(), Done: p.GetDone(), Total: p.GetTotal(), RatePerSecond: p.GetRatePerSecond(),
		LastError: p.GetLastError(), PrimaryKEKID: p.GetPrimaryKekId()}
	if p.GetEta() != nil {
		r.ETA = p.GetEta().AsDuration()
	}
	if p.GetStartTime() != nil {
		r.StartTime = p.GetStartTime().AsTime()
	}
	if p.GetEndTime() != nil {
		r.EndTime = p.GetEndTime().AsTime()
	}
	return r
}

// RotateKEK starts a rotation (re-wrapping every data key under the primary
// KEK) on the replica that serves the call, or joins the one running there
// (started is false then); admin only. batchSize 0 is the server's default.
func (c *Client) RotateKEK(ctx context.Context, batchSize int32) (started bool, progress KEKRotation, err error) {
	res, err := c.keys.RotateKEK(ctx, &pb.RotateKEKRequest{BatchSize: batchSize})
	if err != nil {
		return false, KEKRotation{}, fromRPC("RotateKEK", err)
	}
	return res.GetStarted(), kekRotationFrom(res.GetProgress()), nil
}

// GetKEKStatus reports the data keys per KEK and this replica's rotation
// progress; admin only.
func (c *Client) GetKEKStatus(ctx context.Context) ([]KEKInfo, KEKRotation, error) {
	res, err := c.keys.GetKEKStatus(ctx, &pb.GetKEKStatusRequest{})
	if err != nil {
		return nil, KEKRotation{}, fromRPC("GetKEKStatus", err)
	}
	var keks []KEKInfo
	for _, k := range res.GetKeks() {
		keks = append(keks, KEKInfo{KEKID: k.GetKekId(), DataKeys: k.GetDataKeys(), Primary: k.GetPrimary(), Configured: k.GetConfigured()})
	}
	return keks, kekRotationFrom(res.GetRotation()), nil
}
