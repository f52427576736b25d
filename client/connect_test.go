package client_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/internal/testserver"
)

// slowProxy forwards TCP connections to target after holding each one for
// delay, like a slow network or a busy machine during the handshake.
func slowProxy(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				time.Sleep(delay)
				out, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer out.Close()
				go io.Copy(out, in)
				io.Copy(in, out)
			}()
		}
	}()
	return lis.Addr().String()
}

// A connection whose handshake takes longer than the reconnect backoff
// still succeeds: the connect deadline is not the backoff (it was, so a
// 200 ms handshake never connected on the first attempts, and a busy test
// machine saw "use of closed network connection").
func TestSlowHandshakeConnects(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	addr := slowProxy(t, srv.GRPCAddr(), 600*time.Millisecond)
	c, err := client.New(context.Background(), addr, client.WithToken(testserver.DefaultAdminToken),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 1, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := c.ListProviders(ctx); err != nil {
		t.Fatalf("call over a slow handshake: %v", err)
	}
}
