package api

import (
	"context"
	"fmt"
	"regexp"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// TokenStore manages tokens.
type TokenStore interface {
	CreateToken(ctx context.Context, meta store.Meta, t store.Token, hash []byte) (store.Token, error)
	RevokeToken(ctx context.Context, meta store.Meta, name string) (store.Token, error)
	ListTokens(ctx context.Context) ([]store.Token, error)
}

// TokenService implements the TokenService RPCs (admin only, enforced by
// the server's interceptors).
type TokenService struct {
	pb.UnimplementedTokenServiceServer
	Deps
	Tokens TokenStore
	// Forget drops a revoked token from this replica's lookup cache.
	Forget func(name string)
}

var tokenNamePattern = regexp.MustCompile(`^[a-z][a-z0-9._-]{0,63}$`)

func (s *TokenService) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	if !tokenNamePattern.MatchString(req.GetName()) {
		return nil, invalidArg("name", "must match ^[a-z][a-z0-9._-]{0,63}$ (e.g. slack-bot)")
	}
	role, err := auth.ParseRole(req.GetRole())
	if err != nil {
		return nil, invalidArg("role", err.Error())
	}
	t := store.Token{Name: req.GetName(), Role: string(role)}
	for i, p := range req.GetScope().GetKeyPatterns() {
		if !auth.ValidPattern(p) {
			return nil, invalidArg(fmt.Sprintf("scope.key_patterns[%d]", i), "must be a key with optional * wildcards, e.g. SLACK_*")
		}
		t.KeyPatterns = append(t.KeyPatterns, p)
	}
	for i, c := range req.GetScope().GetCategories() {
		n, err := normalizeCategory(fmt.Sprintf("scope.categories[%d]", i), c)
		if err != nil {
			return nil, err
		}
		t.Categories = append(t.Categories, n)
	}
	if req.ExpireTime != nil {
		if err := req.GetExpireTime().CheckValid(); err != nil || !req.GetExpireTime().AsTime().After(time.Now()) {
			return nil, invalidArg("expire_time", "must be a time in the future")
		}
		t.ExpireTime = req.GetExpireTime().AsTime()
	}
	// A token never outlives the one that made it: an admin token that
	// expires cannot mint one that does not, or one that expires later.
	if caller, ok := auth.FromContext(ctx); ok && !caller.ExpireTime.IsZero() {
		until := caller.ExpireTime.UTC().Format(time.RFC3339)
		if t.ExpireTime.IsZero() {
			return nil, invalidArg("expire_time", "required: the calling token expires at "+until+", and a token may not outlive its creator")
		}
		if t.ExpireTime.After(caller.ExpireTime) {
			return nil, invalidArg("expire_time", "must not be after "+until+", when the calling token expires")
		}
	}
	token, err := auth.NewToken()
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	t.Prefix = auth.DisplayPrefix(token)
	created, err := s.Tokens.CreateToken(ctx, metaFor(ctx, "CreateToken", "", nil), t, auth.Hash(token))
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	return &pb.CreateTokenResponse{Token: token, TokenInfo: toTokenInfo(created)}, nil
}

func (s *TokenService) ListTokens(ctx context.Context, _ *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	list, err := s.Tokens.ListTokens(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	out := &pb.ListTokensResponse{}
	for _, t := range list {
		out.Tokens = append(out.Tokens, toTokenInfo(t))
	}
	return out, nil
}

func (s *TokenService) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	if !tokenNamePattern.MatchString(req.GetName()) {
		return nil, invalidArg("name", "must match ^[a-z][a-z0-9._-]{0,63}$")
	}
	t, err := s.Tokens.RevokeToken(ctx, metaFor(ctx, "RevokeToken", "", nil), req.GetName())
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	if s.Forget != nil {
		s.Forget(t.Name)
	}
	return &pb.RevokeTokenResponse{TokenInfo: toTokenInfo(t)}, nil
}

func toTokenInfo(t store.Token) *pb.TokenInfo {
	info := &pb.TokenInfo{
		Name:        t.Name,
		Role:        t.Role,
		ExpireTime:  ts(t.ExpireTime),
		CreateTime:  ts(t.CreateTime),
		CreatedBy:   t.CreatedBy,
		LastUseTime: ts(t.LastUseTime),
		RevokeTime:  ts(t.RevokeTime),
		Prefix:      t.Prefix,
	}
	if len(t.KeyPatterns) > 0 || len(t.Categories) > 0 {
		info.Scope = &pb.TokenScope{KeyPatterns: t.KeyPatterns, Categories: t.Categories}
	}
	return info
}

// scopeOf returns the caller's scope (empty: everything).
func scopeOf(ctx context.Context) auth.Scope {
	p, _ := auth.FromContext(ctx)
	return p.Scope
}
