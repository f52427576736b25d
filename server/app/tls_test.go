package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509/pkix"
	"math/big"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"crypto/x509"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// TestClientCAProbes: under --client-ca the HTTP listener's public probes
// answer without a client certificate (load balancers and Prometheus have
// none); the REST API still demands one, and a token.
func TestClientCAProbes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	serverCert, serverKey := issue(t, ca, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", serverCert)
	writePEM(t, filepath.Join(dir, "server-key.pem"), "PRIVATE KEY", serverKey)
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		c.TLSCert, c.TLSKey = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
		c.ClientCA = filepath.Join(dir, "ca.pem")
	}})
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	base := strings.Replace(srv.BaseURL, "http://", "https://", 1)
	get := func(hc *http.Client, path string, token string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		if code := get(noCert, p, ""); code != http.StatusOK {
			t.Errorf("GET %s without a client certificate: %d, want 200", p, code)
		}
	}
	if code := get(noCert, "/v1/secrets", srv.AdminToken); code != http.StatusUnauthorized {
		t.Errorf("REST API without a client certificate: %d, want 401", code)
	}
	// A certificate from another CA is refused at the handshake.
	otherCA, otherKey := newCA(t)
	bad, badKey := issue(t, otherCA, otherKey, "intruder", x509.ExtKeyUsageClientAuth)
	k, _ := x509.ParsePKCS8PrivateKey(badKey)
	intruder := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{bad}, PrivateKey: k}}}}}
	if _, err := intruder.Get(base + "/healthz"); err == nil {
		t.Error("a certificate from another CA was accepted")
	}
	good, goodKey := issue(t, ca, caKey, "dashboard", x509.ExtKeyUsageClientAuth)
	gk, _ := x509.ParsePKCS8PrivateKey(goodKey)
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{good}, PrivateKey: gk}}}}}
	if code := get(withCert, "/v1/secrets", srv.AdminToken); code != http.StatusOK {
		t.Errorf("REST API with a client certificate and a token: %d, want 200", code)
	}
}

// TestCertIdentitiesNeedClientCA: a certificate mapping without mutual TLS
// is refused at start.
func TestCertIdentitiesNeedClientCA(t *testing.T) {
	t.Parallel()
	ids := filepath.Join(t.TempDir(), "ids.json")
	if err := os.WriteFile(ids, []byte(`[{"subject": "bot", "role": "reader"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := app.DefaultConfig()
	cfg.DatabaseURL, cfg.KEKURL = testdb.ServiceURL(t, testdb.New(t)), testserver.NewKEKURL(t)
	cfg.AuditSigningKey, cfg.CertIdentities = testserver.AuditSigningKeyFile(t), ids
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--client-ca") {
		t.Fatalf("--cert-identities without --client-ca: %v", err)
	}
}

// TestCertIdentitiesStrictAndEmail: a misspelt field is an error (it would
// silently give an unscoped identity); an email SAN maps to its identity.
func TestCertIdentitiesStrictAndEmail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	serverCert, serverKey := issue(t, ca, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", serverCert)
	writePEM(t, filepath.Join(dir, "server-key.pem"), "PRIVATE KEY", serverKey)
	ids := filepath.Join(dir, "ids.json")
	configure := func(c *app.Config) {
		c.TLSCert, c.TLSKey = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
		c.ClientCA, c.CertIdentities = filepath.Join(dir, "ca.pem"), ids
	}
	if err := os.WriteFile(ids, []byte(`[{"subject": "bot@example.com", "role": "reader", "scope": {"keyPatterns": ["SLACK_*"]}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := app.DefaultConfig()
	configure(&cfg)
	cfg.DatabaseURL, cfg.KEKURL = testdb.ServiceURL(t, testdb.New(t)), testserver.NewKEKURL(t)
	cfg.AuditSigningKey = testserver.AuditSigningKeyFile(t)
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("a misspelt field: %v", err)
	}
	if err := os.WriteFile(ids, []byte(`[{"subject": "bot@example.com", "role": "reader", "scope": {"key_patterns": ["SLACK_*"]}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testserver.Start(t, testserver.Options{Configure: configure})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not-mapped"},
		EmailAddresses: []string{"bot@example.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
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
	defer conn.Close()
	bot := pb.NewSecretServiceClient(conn)
	ctx := context.Background()
	if _, err := bot.GetSecret(ctx, &pb.GetSecretRequest{Key: "SLACK_BOT_TOKEN"}); err != nil {
		t.Fatalf("email SAN identity: %v", err)
	}
	_, err = bot.GetSecret(ctx, &pb.GetSecretRequest{Key: "OPENAI_API_KEY"})
	wantCode(t, err, codes.PermissionDenied)
}
