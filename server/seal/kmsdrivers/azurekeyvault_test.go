package kmsdrivers_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/azurekeyvault"

	"github.com/orient-bot/secrets/server/app"
)

const azureVault = "orient-test.vault.azure.net"

// azureFake is an in-test Azure Key Vault: the keys encrypt and decrypt REST
// calls (with Key Vault's bearer challenge), over TLS, reached by the real
// client library (azkeys, azcore's pipeline with its retry and challenge
// policies) through gocloud's azurekeyvault driver. Only the credential and
// the connection's destination differ from production.
type azureFake struct {
	box  *keyBox
	addr string
	tls  *tls.Config
	mu   sync.Mutex
	srv  *httptest.Server
	mux  *secrets.URLMux
}

func newAzureFake(t *testing.T) *azureFake {
	f := &azureFake{box: newKeyBox("orient-kek"), addr: "127.0.0.1:0"}
	f.start(t)
	t.Cleanup(func() { f.stop(t) })
	pool := x509.NewCertPool()
	pool.AddCert(f.srv.Certificate())
	dialer := &net.Dialer{Timeout: time.Second}
	hc := &http.Client{Transport: &http.Transport{
		// Every Key Vault host name leads to the stand-in, whose test
		// certificate is for example.com.
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, f.addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "example.com"},
	}}
	maker := func(vaultURI string) (*azkeys.Client, error) {
		return azkeys.NewClient(vaultURI, fakeAzureCredential{}, &azkeys.ClientOptions{ClientOptions: policy.ClientOptions{
			Transport: hc,
			Retry:     policy.RetryOptions{RetryDelay: 50 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond},
		}})
	}
	f.mux = new(secrets.URLMux)
	f.mux.RegisterKeeper(azurekeyvault.Scheme, &azurekeyvault.URLOpener{ClientMaker: maker})
	return f
}

type fakeAzureCredential struct{}

func (fakeAzureCredential) GetToken(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(opts.Scopes) != 1 || opts.Scopes[0] != "https://vault.azure.net/.default" {
		return azcore.AccessToken{}, errors.New("unexpected token scopes")
	}
	return azcore.AccessToken{Token: "fake-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (f *azureFake) kekURL() string     { return "azurekeyvault://" + azureVault + "/keys/orient-kek" }
func (f *azureFake) missingURL() string { return "azurekeyvault://" + azureVault + "/keys/missing-kek" }
func (f *azureFake) keyName() string    { return azureVault }
func (f *azureFake) configure(cfg *app.Config) {
	cfg.KEKMux = f.mux
}
func (f *azureFake) refuse(_ *testing.T, on bool) { f.box.setRefused("orient-kek", on) }

func (f *azureFake) start(t *testing.T) {
	l := listenAt(t, f.addr)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addr = l.Addr().String()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.Listener.Close()
	srv.Listener = l
	srv.TLS = f.tls // the same certificate after a restart
	srv.StartTLS()
	f.tls = srv.TLS
	f.srv = srv
}

func (f *azureFake) stop(*testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		f.srv.Close()
		f.srv = nil
	}
}

// serve answers POST /keys/{name}[/{version}]/{encrypt|decrypt}.
func (f *azureFake) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer fake-token" {
		w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"`)
		azureError(w, http.StatusUnauthorized, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.Method != http.MethodPost || len(parts) < 3 || parts[0] != "keys" {
		azureError(w, http.StatusNotFound, "NotFound", "no such operation")
		return
	}
	name, op := parts[1], parts[len(parts)-1]
	var req struct {
		Alg   string `json:"alg"`
		Value string `json:"value"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Alg != "RSA-OAEP-256" {
		azureError(w, http.StatusBadRequest, "BadParameter", "malformed request")
		return
	}
	in, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(req.Value, "="))
	if err != nil {
		azureError(w, http.StatusBadRequest, "BadParameter", "value is not base64url")
		return
	}
	var out []byte
	switch op {
	case "encrypt":
		out, err = f.box.encrypt(name, in)
	case "decrypt":
		out, err = f.box.decrypt(name, in)
	default:
		azureError(w, http.StatusNotFound, "NotFound", "no such operation")
		return
	}
	switch {
	case errors.Is(err, errNoKey):
		azureError(w, http.StatusNotFound, "KeyNotFound", "A key with (name/id) "+name+" was not found in this key vault.")
		return
	case errors.Is(err, errRefused):
		azureError(w, http.StatusForbidden, "Forbidden", "The user, group or application does not have keys "+op+" permission on key vault '"+azureVault+"'.")
		return
	case err != nil:
		azureError(w, http.StatusBadRequest, "BadParameter", "Error while decrypting: the ciphertext is invalid.")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{
		"kid":   "https://" + azureVault + "/keys/" + name + "/0123456789abcdef",
		"value": base64.RawURLEncoding.EncodeToString(out),
	})
}

func azureError(w http.ResponseWriter, code int, errCode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": errCode, "message": msg}})
}
