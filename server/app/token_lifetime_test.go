package app_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// An admin token that expires cannot mint a token that outlives it: one
// with no expiry or a later one is INVALID_ARGUMENT on expire_time; one
// expiring no later than the caller is created.
func TestExpiringAdminCannotMintLongerToken(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	callerExpiry := time.Now().Add(time.Minute)
	res, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "temp-admin", Role: "admin",
		ExpireTime: timestamppb.New(callerExpiry)})
	if err != nil {
		t.Fatal(err)
	}
	tc := pb.NewTokenServiceClient(srv.Dial(t, res.Token))
	for name, exp := range map[string]*timestamppb.Timestamp{
		"forever": nil,
		"later":   timestamppb.New(callerExpiry.Add(365 * 24 * time.Hour)),
	} {
		_, err := tc.CreateToken(ctx, &pb.CreateTokenRequest{Name: name, Role: "admin", ExpireTime: exp})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want INVALID_ARGUMENT", name, err)
		}
	}
	if _, err := tc.CreateToken(ctx, &pb.CreateTokenRequest{Name: "shorter", Role: "reader",
		ExpireTime: timestamppb.New(callerExpiry.Add(-time.Second))}); err != nil {
		t.Errorf("a token expiring before its creator: %v", err)
	}
}
