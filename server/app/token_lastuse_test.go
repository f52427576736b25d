package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// Last use is recorded by token hash, not name: a token re-created under a
// revoked token's name does not inherit the revoked token's last use.
func TestLastUseIsNotInheritedByName(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	old := scopedToken(t, srv, "bot", "reader", nil)
	if _, err := pb.NewSecretServiceClient(srv.Dial(t, old)).ListSecrets(ctx, &pb.ListSecretsRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Tokens.RevokeToken(ctx, &pb.RevokeTokenRequest{Name: "bot"}); err != nil {
		t.Fatal(err)
	}
	scopedToken(t, srv, "bot", "reader", nil) // never used
	srv.Stop()                                // flushes last-use times
	conn, err := pgx.Connect(ctx, srv.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var used *time.Time
	if err := conn.QueryRow(ctx, `SELECT last_use_time FROM tokens WHERE name='bot'`).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if used != nil {
		t.Errorf("the never-used token bot shows last use %v (the revoked token's)", used)
	}
}

// A used token's last use is recorded (by its hash).
func TestLastUseIsRecorded(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	tok := scopedToken(t, srv, "bot", "reader", nil)
	if _, err := pb.NewSecretServiceClient(srv.Dial(t, tok)).ListSecrets(ctx, &pb.ListSecretsRequest{}); err != nil {
		t.Fatal(err)
	}
	srv.Stop() // flushes last-use times
	conn, err := pgx.Connect(ctx, srv.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var used *time.Time
	if err := conn.QueryRow(ctx, `SELECT last_use_time FROM tokens WHERE name='bot'`).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if used == nil {
		t.Errorf("a used token shows no last use")
	}
}
