package app

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"
)

// tlsSetup is the TLS material of both listeners and of the gateway's own
// connection to the gRPC listener.
type tlsSetup struct {
	server *tls.Config // nil: plaintext
	// http is the HTTP listener's: under mutual TLS a client certificate is
	// verified if given but not demanded at the handshake, so the public
	// probes (/healthz, /readyz, /metrics, /openapi.json) answer without
	// one; requireCert demands it for the API.
	http *tls.Config
	// gateway is the client side of the gateway's connection: it pins the
	// server's own certificate and, under mutual TLS, presents an ephemeral
	// certificate that identifies the gateway and grants no role.
	gateway     *tls.Config
	gatewayCert []byte
}

func loadTLS(cfg Config) (*tlsSetup, error) {
	if cfg.CertIdentities != "" && cfg.ClientCA == "" {
		// Without verified client certificates a mapping would grant roles
		// to nobody, or to whoever presents an unverified name.
		return nil, errors.New("--cert-identities needs --client-ca (mutual TLS)")
	}
	if cfg.TLSCert == "" && cfg.TLSKey == "" {
		if cfg.ClientCA != "" {
			return nil, errors.New("--client-ca needs --tls-cert and --tls-key")
		}
		for _, addr := range []string{cfg.GRPCAddr, cfg.HTTPAddr} {
			if !isLoopback(addr) && !cfg.AllowPlaintext {
				return nil, fmt.Errorf("refusing to serve plaintext on %s (not loopback): set --tls-cert/--tls-key, or --allow-plaintext behind a TLS-terminating proxy", addr)
			}
		}
		return &tlsSetup{}, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	own := cert.Certificate[0]
	setup := &tlsSetup{
		server: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		gateway: &tls.Config{
			MinVersion: tls.VersionTLS12,
			// The gateway dials its own listener: it trusts exactly the
			// server's certificate, whatever name it carries.
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				if len(raw) == 0 || !bytes.Equal(raw[0], own) {
					return errors.New("gateway: unexpected server certificate")
				}
				return nil
			},
		},
	}
	if cfg.ClientCA != "" {
		pem, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("--client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("--client-ca: no PEM certificate found")
		}
		gw, err := selfSigned()
		if err != nil {
			return nil, err
		}
		leaf, _ := x509.ParseCertificate(gw.Certificate[0])
		pool.AddCert(leaf)
		setup.gatewayCert = gw.Certificate[0]
		setup.gateway.Certificates = []tls.Certificate{gw}
		setup.server.ClientCAs = pool
		setup.server.ClientAuth = tls.RequireAndVerifyClientCert
	}
	setup.http = setup.server.Clone()
	if cfg.ClientCA != "" {
		setup.http.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return setup, nil
}

// requireCert demands a verified client certificate for next under mutual
// TLS (the handshake no longer does on the HTTP listener).
func (t *tlsSetup) requireCert(next http.Handler) http.Handler {
	if t.server == nil || t.server.ClientAuth != tls.RequireAndVerifyClientCert {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeJSON(w, http.StatusUnauthorized, map[string]any{"code": 16, "message": "a client certificate is required (mutual TLS)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// selfSigned makes the gateway's ephemeral client certificate.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "secretsd-gateway"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
