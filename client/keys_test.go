package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
)

// TestKeyServiceAndMatchValue: the client covers KeyService and the leak
// check with Go types.
func TestKeyServiceAndMatchValue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr())
	put(t, c, "ROTATED_KEY", "value-one")

	keks, _, err := c.GetKEKStatus(ctx)
	if err != nil || len(keks) != 1 || !keks[0].Primary || !keks[0].Configured || keks[0].DataKeys < 1 {
		t.Fatalf("GetKEKStatus: %+v, %v", keks, err)
	}
	started, _, err := c.RotateKEK(ctx, 0)
	if err != nil || !started {
		t.Fatalf("RotateKEK: %v, %v", started, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, rot, err := c.GetKEKStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !rot.Running && !rot.EndTime.IsZero() {
			if rot.LastError != "" || rot.PrimaryKEKID != keks[0].KEKID {
				t.Fatalf("rotation: %+v", rot)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation still running: %+v", rot)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, _, err := c.RotateKEK(ctx, 5000); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("RotateKEK(batch 5000): %v, want ErrInvalidArgument", err)
	}

	matches, err := c.MatchValue(ctx, []byte("value-one"), "")
	if err != nil || len(matches) != 1 || matches[0].Key != "ROTATED_KEY" || matches[0].Version != 1 || matches[0].Time.IsZero() {
		t.Fatalf("MatchValue: %+v, %v", matches, err)
	}
	if matches, err := c.MatchValue(ctx, []byte("other"), "ROTATED_KEY"); err != nil || len(matches) != 0 {
		t.Fatalf("MatchValue(other): %+v, %v", matches, err)
	}
}
