package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// fastRetry keeps tests that talk to a stopped server short.
var fastRetry = client.RetryPolicy{MaxAttempts: 2, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Multiplier: 2}

// progressInterval is the test servers' watch progress interval.
const progressInterval = 300 * time.Millisecond

type serverOpts struct {
	addr        string // fixed gRPC address; empty for any free port
	databaseURL string
	kekURL      string
	configure   func(*app.Config)
}

func startServer(t testing.TB, o serverOpts) *testserver.Server {
	t.Helper()
	return testserver.Start(t, testserver.Options{DatabaseURL: o.databaseURL, KEKURL: o.kekURL, Configure: func(c *app.Config) {
		c.WatchPollInterval = 200 * time.Millisecond
		c.WatchProgressInterval = progressInterval
		c.ShutdownTimeout = time.Second
		if o.addr != "" {
			c.GRPCAddr = o.addr
		}
		if o.configure != nil {
			o.configure(c)
		}
	}})
}

// freeAddr reserves a loopback port for a server that must come back on
// the same address after a restart.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func dial(t testing.TB, target string, opts ...client.Option) *client.Client {
	t.Helper()
	opts = append([]client.Option{client.WithRetry(fastRetry), client.WithTimeout(5 * time.Second),
		client.WithEnvironment(envOf(nil)), client.WithToken(testserver.DefaultAdminToken)}, opts...)
	c, err := client.New(context.Background(), target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// envOf is a fake environment, so tests never read or change the real one.
func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func put(t testing.TB, c *client.Client, key, value string, opts ...client.WriteOption) client.Secret {
	t.Helper()
	// A fresh server (or connection) can be briefly unreachable, or slow to
	// answer, on a loaded machine: retry with one request id, so a write
	// that did commit is replayed, not repeated.
	opts = append([]client.WriteOption{client.WithRequestID(fmt.Sprintf("test-%s-%d", key, time.Now().UnixNano()))}, opts...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := c.PutSecret(context.Background(), key, []byte(value), opts...)
		if err == nil {
			return s
		}
		if !(errors.Is(err, client.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)) || time.Now().After(deadline) {
			t.Fatalf("PutSecret(%s): %v", key, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exampleServer starts a throwaway server for an Example function (which
// has no *testing.T) and returns its address and a stop function.
func exampleServer() (addr string, stop func()) {
	tb := &exampleTB{}
	srv := startServer(tb, serverOpts{})
	return srv.GRPCAddr(), tb.cleanup
}

// exampleTB is the part of testing.TB the test harness uses.
type exampleTB struct {
	testing.TB
	cleanups []func()
}

func (e *exampleTB) Helper()                   {}
func (e *exampleTB) Cleanup(f func())          { e.cleanups = append(e.cleanups, f) }
func (e *exampleTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (e *exampleTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (e *exampleTB) Errorf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
func (e *exampleTB) cleanup() {
	for _, f := range slices.Backward(e.cleanups) {
		f()
	}
}

// exampleDefaults writes a defaults file for an example.
func exampleDefaults(content string) string {
	f, err := os.CreateTemp("", "secrets-example-*.yaml")
	if err != nil {
		panic(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		panic(err)
	}
	return f.Name()
}
