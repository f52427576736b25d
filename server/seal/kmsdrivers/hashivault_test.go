package kmsdrivers_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/orient-bot/secrets/server/app"
)

// vaultFake is an in-test Vault / OpenBao transit engine: POST
// /v1/transit/encrypt/{key} and /v1/transit/decrypt/{key} with Vault's
// token header and error shapes, reached by the real client library
// (hashicorp/vault/api) through gocloud's hashivault driver, configured as
// in production by VAULT_ADDR and VAULT_TOKEN. Its token may use the key
// orient-kek only (any other key is 403, as a Vault policy limited to that
// key answers).
type vaultFake struct {
	box  *keyBox
	addr string
	mu   sync.Mutex
	srv  *http.Server
}

const vaultToken = "s.test-token-orient"

// newVaultFake starts the fake and points the process's Vault environment at
// it (t.Setenv: the caller must not be parallel).
func newVaultFake(t *testing.T) *vaultFake {
	f := &vaultFake{box: newKeyBox("orient-kek"), addr: "127.0.0.1:0"}
	f.start(t)
	t.Cleanup(func() { f.stop(t) })
	t.Setenv("VAULT_SERVER_URL", "")
	t.Setenv("VAULT_SERVER_TOKEN", "")
	t.Setenv("VAULT_ADDR", "http://"+f.addr)
	t.Setenv("VAULT_TOKEN", vaultToken)
	return f
}

func (f *vaultFake) kekURL() string               { return "hashivault://orient-kek" }
func (f *vaultFake) missingURL() string           { return "hashivault://orient-kek-missing" }
func (f *vaultFake) keyName() string              { return "orient-kek" }
func (f *vaultFake) configure(*app.Config)        {}
func (f *vaultFake) refuse(_ *testing.T, on bool) { f.box.setRefused("orient-kek", on) }

func (f *vaultFake) start(t *testing.T) {
	l := listenAt(t, f.addr)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addr = l.Addr().String()
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve)}
	go f.srv.Serve(l)
}

func (f *vaultFake) stop(*testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		f.srv.Close()
		f.srv = nil
	}
}

func vaultError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string][]string{"errors": {msg}})
}

func (f *vaultFake) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Vault-Token") != vaultToken {
		vaultError(w, http.StatusForbidden, "permission denied")
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/transit/")
	op, name, _ := strings.Cut(rest, "/")
	if !ok || (r.Method != http.MethodPut && r.Method != http.MethodPost) || (op != "encrypt" && op != "decrypt") {
		vaultError(w, http.StatusNotFound, "no handler for route")
		return
	}
	var req struct {
		Plaintext  string `json:"plaintext"`
		Ciphertext string `json:"ciphertext"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		vaultError(w, http.StatusBadRequest, "malformed request")
		return
	}
	if name != "orient-kek" {
		vaultError(w, http.StatusForbidden, "1 error occurred:\n\t* permission denied\n\n")
		return
	}
	var out map[string]any
	var err error
	if op == "encrypt" {
		var pt, ct []byte
		if pt, err = base64.StdEncoding.DecodeString(req.Plaintext); err != nil {
			vaultError(w, http.StatusBadRequest, "failed to base64-decode plaintext")
			return
		}
		if ct, err = f.box.encrypt(name, pt); err == nil {
			out = map[string]any{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(ct), "key_version": 1}
		}
	} else {
		b64, found := strings.CutPrefix(req.Ciphertext, "vault:v1:")
		ct, derr := base64.StdEncoding.DecodeString(b64)
		var pt []byte
		if !found || derr != nil {
			err = errBadCT
		} else if pt, err = f.box.decrypt(name, ct); err == nil {
			out = map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)}
		}
	}
	switch {
	case errors.Is(err, errRefused):
		vaultError(w, http.StatusForbidden, "1 error occurred:\n\t* permission denied\n\n")
		return
	case err != nil:
		vaultError(w, http.StatusBadRequest, "invalid ciphertext: unable to decrypt")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"data": out})
}
