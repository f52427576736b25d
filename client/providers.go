package client

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// ListProviders lists the AI providers, configured or not.
func (c *Client) ListProviders(ctx context.Context) ([]Provider, error) {
	res, err := c.providers.ListProviders(ctx, &pb.ListProvidersRequest{})
	if err != nil {
		return nil, fromRPC("ListProviders", err)
	}
	out := make([]Provider, 0, len(res.GetProviders()))
	for _, p := range res.GetProviders() {
		out = append(out, Provider{ID: p.GetProvider(), DisplayName: p.GetDisplayName(), Key: p.GetKey(),
			Configured: p.GetConfigured(), Models: p.GetModels()})
	}
	return out, nil
}

// GetProviderDefaults returns each use case's provider and model, and the
// revision the answer reflects.
func (c *Client) GetProviderDefaults(ctx context.Context) ([]ProviderDefault, int64, error) {
	res, err := c.providers.GetProviderDefaults(ctx, &pb.GetProviderDefaultsRequest{})
	if err != nil {
		return nil, 0, fromRPC("GetProviderDefaults", err)
	}
	out := make([]ProviderDefault, 0, len(res.GetDefaults()))
	for _, d := range res.GetDefaults() {
		out = append(out, providerDefaultFrom(d))
	}
	return out, res.GetRevision(), nil
}

// UpdateProviderDefault sets a use case's provider and model and returns
// the new default and the change's revision. Only WithRequestID applies.
func (c *Client) UpdateProviderDefault(ctx context.Context, useCase, provider, model string, opts ...WriteOption) (ProviderDefault, int64, error) {
	w := writeOpts(opts)
	res, err := c.providers.UpdateProviderDefault(ctx, &pb.UpdateProviderDefaultRequest{
		UseCase: useCase, Provider: provider, Model: model, RequestId: w.requestID})
	if err != nil {
		return ProviderDefault{}, 0, fromRPC("UpdateProviderDefault", err)
	}
	return providerDefaultFrom(res.GetProviderDefault()), res.GetRevision(), nil
}

// AuditFilter selects audit events. Zero fields do not filter.
type AuditFilter struct {
	Key    string
	Actor  string
	Action string
	// Since keeps events at or after this time; Until those before it.
	Since time.Time
	Until time.Time
	// Limit caps the number of events returned (0: all).
	Limit int
	// OnPage, if set, is called after each page with the count so far.
	OnPage func(count int)
}

// ListAuditEvents lists audit events, newest first, across pages.
func (c *Client) ListAuditEvents(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	req := &pb.ListAuditEventsRequest{Key: f.Key, Actor: f.Actor, Action: f.Action, PageSize: 1000}
	if !f.Since.IsZero() {
		req.StartTime = timestamppb.New(f.Since)
	}
	if !f.Until.IsZero() {
		req.EndTime = timestamppb.New(f.Until)
	}
	if f.Limit > 0 && f.Limit < 1000 {
		req.PageSize = int32(f.Limit)
	}
	var out []AuditEvent
	for {
		res, err := c.audit.ListAuditEvents(ctx, req)
		if err != nil {
			return nil, fromRPC("ListAuditEvents", err)
		}
		for _, e := range res.GetEvents() {
			out = append(out, auditFrom(e))
			if f.Limit > 0 && len(out) >= f.Limit {
				return out, nil
			}
		}
		if f.OnPage != nil {
			f.OnPage(len(out))
		}
		if res.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = res.GetNextPageToken()
	}
}
