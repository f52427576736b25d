package app_test

import (
	"strings"
	"testing"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// A SECRETS_BOOTSTRAP_TOKEN no caller could present (a trailing newline
// from a file-made Kubernetes secret, surrounding spaces, a control or
// non-ASCII character) is refused at start, naming the variable and never
// the value, instead of becoming an admin token nobody can send.
func TestBootstrapTokenRefusesUnpresentableValues(t *testing.T) {
	t.Parallel()
	const tok = "osk_test-admin-token-0123456789abcdef"
	db, kek := testdb.ServiceURL(t, testdb.New(t)), testserver.NewKEKURL(t)
	for _, bad := range []string{tok + "\n", tok + "\r\n", " " + tok, tok + "\t", "osk_test\x01admin-token-0123", "osk_test-admin-tökén-0123456789"} {
		cfg := app.DefaultConfig()
		cfg.DatabaseURL, cfg.KEKURL, cfg.AuditSigningKey, cfg.BootstrapToken = db, kek, testserver.AuditSigningKeyFile(t), bad
		err := startCfg(t, cfg)
		if err == nil || !strings.Contains(err.Error(), "SECRETS_BOOTSTRAP_TOKEN") {
			t.Errorf("%q: start gave %v, want it refused naming SECRETS_BOOTSTRAP_TOKEN", bad, err)
			continue
		}
		if strings.Contains(err.Error(), "osk_test") {
			t.Errorf("the error shows the value: %v", err)
		}
	}
}
