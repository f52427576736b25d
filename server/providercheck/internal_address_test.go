package providercheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// loopbackListener counts the connections made to a 127.0.0.1 port.
func loopbackListener(t *testing.T) (port int, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}

// A JIRA_BASE_URL naming an IP literal, even one whose IPv6 zone ends in an
// allowed suffix ("[::ffff:127.0.0.1%25.atlassian.net]"), is refused before
// anything is dialled: a writer of JIRA_* cannot aim checks at internal
// addresses and ports.
func TestJIRAHostRefusesIPLiterals(t *testing.T) {
	port, accepted := loopbackListener(t)
	c, err := New(Config{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, base := range []string{
		fmt.Sprintf("https://[::ffff:127.0.0.1%%25.atlassian.net]:%d", port),
		fmt.Sprintf("https://[::ffff:127.0.0.1%%25.atlassian.net]:%d", port+1),
		"https://[::ffff:169.254.169.254%25.atlassian.net]:443",
		fmt.Sprintf("https://[::1]:%d", port),
		fmt.Sprintf("https://127.0.0.1:%d", port),
	} {
		out := c.Check(context.Background(), "JIRA_API_TOKEN", map[string][]byte{
			"JIRA_API_TOKEN": []byte("tok"), "JIRA_EMAIL": []byte("a@b.c"), "JIRA_BASE_URL": []byte(base)})
		if out.Result != Invalid || !strings.Contains(out.Reason, "JIRA_BASE_URL") {
			t.Errorf("%s: got %+v, want invalid naming JIRA_BASE_URL", base, out)
		}
	}
	if n := accepted.Load(); n > 0 {
		t.Errorf("the checker connected to 127.0.0.1 %d times", n)
	}
}

// Hosts the operator did not name (the providers' public APIs, JIRA sites
// matched by a wildcard) are dialled only at public addresses, judged
// after DNS resolution ("localhost" here); operator-named hosts (base URL
// overrides, exact JIRA hosts) are dialled as configured.
func TestChecksRefuseInternalAddresses(t *testing.T) {
	port, accepted := loopbackListener(t)
	ctx := context.Background()
	c, err := New(Config{JIRAHosts: []string{"*.atlassian.net"}})
	if err != nil {
		t.Fatal(err)
	}
	dial := c.client.Transport.(*http.Transport).DialContext
	for _, addr := range []string{
		fmt.Sprintf("localhost:%d", port), fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::ffff:127.0.0.1]:%d", port),
		"169.254.169.254:80", "10.0.0.1:443", "192.168.1.1:443", "[fe80::1]:443", "0.0.0.0:443",
	} {
		conn, err := dial(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
		}
		if !errors.Is(err, errInternalAddress) {
			t.Errorf("dial %s: got %v, want it refused as internal", addr, err)
		}
		if got := transportReason(err); err != nil && got != "internal address refused" {
			t.Errorf("dial %s: reason %q", addr, got)
		}
	}
	if n := accepted.Load(); n > 0 {
		t.Errorf("the checker connected to 127.0.0.1 %d times", n)
	}

	named, err := New(Config{BaseURLs: map[string]string{OpenAI: fmt.Sprintf("http://127.0.0.1:%d", port)}, JIRAHosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	dial = named.client.Transport.(*http.Transport).DialContext
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("localhost:%d", port)} {
		conn, err := dial(ctx, "tcp", addr)
		if err != nil {
			t.Errorf("dial of the operator-named %s: %v", addr, err)
			continue
		}
		conn.Close()
	}
}
