package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// mtlsServer starts a server with mutual TLS and the given certificate
// identities, and returns it with its client CA.
func mtlsServer(t *testing.T, ids string) (*testserver.Server, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	sc, sk := issue(t, ca, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", sc)
	writePEM(t, filepath.Join(dir, "server-key.pem"), "PRIVATE KEY", sk)
	if err := os.WriteFile(filepath.Join(dir, "ids.json"), []byte(ids), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		c.TLSCert, c.TLSKey = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
		c.ClientCA, c.CertIdentities = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ids.json")
	}})
	return srv, ca, caKey
}

// certConn dials srv presenting a client certificate made from tmpl.
func certConn(t *testing.T, srv *testserver.Server, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) *grpc.ClientConn {
	t.Helper()
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A client certificate stops authenticating at its NotAfter even on a
// connection opened before: unary calls are UNAUTHENTICATED and an open
// watch ends, as for an expired token.
func TestCertIdentityEndsAtNotAfter(t *testing.T) {
	srv, ca, caKey := mtlsServer(t, `[{"subject":"bot","role":"reader"}]`)
	notAfter := time.Now().Add(2 * time.Second)
	conn := certConn(t, srv, ca, caKey, &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "bot"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter})
	c := pb.NewSecretServiceClient(conn)
	ctx := context.Background()
	if _, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{}); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := c.WatchChanges(sctx, &pb.WatchChangesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := w.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("watch ended with %v, want UNAUTHENTICATED at the certificate's expiry", err)
		}
		break
	}
	time.Sleep(time.Until(notAfter.Truncate(time.Second).Add(time.Second))) // x509 keeps whole seconds
	if _, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unary call after the certificate expired: %v, want UNAUTHENTICATED", err)
	}
}

// An identity matches only names of its own type: a SPIFFE URI identity is
// not granted to a certificate whose CN spells it (with or without SANs),
// and the CN of a certificate that has SANs is not used.
func TestCertIdentityMatchesNameType(t *testing.T) {
	srv, ca, caKey := mtlsServer(t, `[{"subject":"spiffe://example.org/ns/prod/sa/admin","role":"admin"},{"subject":"ops","role":"admin"}]`)
	spiffe, _ := url.Parse("spiffe://example.org/ns/prod/sa/admin")
	hour := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name string
		tmpl *x509.Certificate
		ok   bool
	}{
		{"URI identity as CN, with a DNS SAN", &x509.Certificate{Subject: pkix.Name{CommonName: spiffe.String()}, DNSNames: []string{"intern-laptop.example.org"}}, false},
		{"URI identity as CN, no SAN", &x509.Certificate{Subject: pkix.Name{CommonName: spiffe.String()}}, false},
		{"name identity as CN beside a SAN", &x509.Certificate{Subject: pkix.Name{CommonName: "ops"}, DNSNames: []string{"intern-laptop.example.org"}}, false},
		{"URI identity as URI SAN", &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, URIs: []*url.URL{spiffe}}, true},
		{"name identity as CN, no SAN", &x509.Certificate{Subject: pkix.Name{CommonName: "ops"}}, true},
		{"name identity as DNS SAN", &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"ops"}}, true},
	} {
		tc.tmpl.SerialNumber, tc.tmpl.NotBefore, tc.tmpl.NotAfter = big.NewInt(time.Now().UnixNano()), time.Now().Add(-time.Hour), hour
		_, err := pb.NewTokenServiceClient(certConn(t, srv, ca, caKey, tc.tmpl)).ListTokens(context.Background(), &pb.ListTokensRequest{})
		if tc.ok && err != nil || !tc.ok && status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: ListTokens: %v", tc.name, err)
		}
	}
}
