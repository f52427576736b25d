package api

import (
	"context"
	"strings"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/catalog"
	"github.com/orient-bot/secrets/server/store"
)

// ProviderService implements the ProviderService RPCs.
type ProviderService struct {
	pb.UnimplementedProviderServiceServer
	Deps
}

// NewProviderService returns the ProviderService handlers.
func NewProviderService(d Deps) *ProviderService { return &ProviderService{Deps: d} }

func (s *ProviderService) ListProviders(ctx context.Context, _ *pb.ListProvidersRequest) (*pb.ListProvidersResponse, error) {
	providers := catalog.Providers()
	keys := make([]string, len(providers))
	for i, p := range providers {
		keys[i] = p.Key
	}
	res, err := s.Store.ListSecrets(ctx, store.ListParams{Limit: 0, AlsoKeys: keys})
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	out := &pb.ListProvidersResponse{}
	for _, p := range providers {
		sec, ok := res.Also[p.Key]
		out.Providers = append(out.Providers, &pb.Provider{
			Provider:    p.ID,
			DisplayName: p.DisplayName,
			Key:         p.Key,
			Configured:  ok && toSecret(sec).Configured,
			Models:      p.Models,
		})
	}
	return out, nil
}

func (s *ProviderService) GetProviderDefaults(ctx context.Context, _ *pb.GetProviderDefaultsRequest) (*pb.GetProviderDefaultsResponse, error) {
	stored, rev, err := s.Store.ProviderDefaults(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	byUseCase := make(map[string]store.ProviderDefault, len(stored))
	for _, d := range stored {
		byUseCase[d.UseCase] = d
	}
	out := &pb.GetProviderDefaultsResponse{Revision: rev}
	for _, u := range catalog.UseCases() {
		d, ok := byUseCase[u.ID]
		if !ok {
			d = store.ProviderDefault{UseCase: u.ID, Provider: u.DefaultProvider, Model: u.DefaultModel}
		}
		out.Defaults = append(out.Defaults, toProviderDefault(d))
	}
	return out, nil
}

func toProviderDefault(d store.ProviderDefault) *pb.ProviderDefault {
	return &pb.ProviderDefault{UseCase: d.UseCase, Provider: d.Provider, Model: d.Model, UpdateTime: ts(d.UpdateTime), UpdatedBy: d.UpdatedBy}
}

const maxModelName = 200

func (s *ProviderService) UpdateProviderDefault(ctx context.Context, req *pb.UpdateProviderDefaultRequest) (*pb.UpdateProviderDefaultResponse, error) {
	if _, ok := catalog.LookupUseCase(req.GetUseCase()); !ok {
		return nil, invalidArg("use_case", "must be one of: "+strings.Join(catalog.UseCaseIDs(), ", "))
	}
	if _, ok := catalog.LookupProvider(req.GetProvider()); !ok {
		return nil, invalidArg("provider", "must be one of: "+strings.Join(catalog.ProviderIDs(), ", "))
	}
	model := strings.TrimSpace(req.GetModel())
	if model == "" {
		return nil, invalidArg("model", "required")
	}
	if err := checkText("model", model, maxModelName, false); err != nil {
		return nil, err
	}
	if err := checkRequestID(req.GetRequestId()); err != nil {
		return nil, err
	}
	res, err := s.Store.SetProviderDefault(ctx, metaFor(ctx, "UpdateProviderDefault", req.GetRequestId(), req), req.GetUseCase(), req.GetProvider(), model)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	return &pb.UpdateProviderDefaultResponse{ProviderDefault: toProviderDefault(res.Default), Revision: res.Revision}, nil
}
