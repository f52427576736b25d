package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/orient-bot/secrets/server/auth"
)

// BootstrapTokenName is the name (audit actor) of the first admin token.
const BootstrapTokenName = "admin"

// bootstrap creates the first admin token when no token exists: the value of
// SECRETS_BOOTSTRAP_TOKEN, or a random one shown once on stderr (and, on the
// embedded default, written to a 0600 file in the data directory).
func (s *Server) bootstrap(ctx context.Context) error {
	token := s.cfg.BootstrapToken
	generated := token == ""
	if generated {
		var err error
		if token, err = auth.NewToken(); err != nil {
			return err
		}
	} else if err := checkBootstrapToken(token); err != nil {
		return err
	}
	// An operator-chosen token may be guessable from a few characters:
	// only a generated one has a display prefix.
	prefix := ""
	if generated {
		prefix = auth.DisplayPrefix(token)
	}
	created, err := s.store.BootstrapToken(ctx, BootstrapTokenName, prefix, auth.Hash(token))
	if err != nil {
		return fmt.Errorf("bootstrap token: %w", err)
	}
	if !created {
		return nil
	}
	if !generated {
		s.log.Info("first admin token created from SECRETS_BOOTSTRAP_TOKEN", "name", BootstrapTokenName)
		return nil
	}
	out := s.cfg.BootstrapOut
	if out == nil {
		out = os.Stderr
	}
	fmt.Fprintf(out, "\n  First admin token (shown once; store it now): %s\n\n", token)
	if s.cluster != nil {
		file := filepath.Join(filepath.Dir(s.cluster.DataDir()), "admin-token")
		if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", file, err)
		}
		s.log.Info("first admin token written", "file", file)
	}
	return nil
}

// checkBootstrapToken refuses a SECRETS_BOOTSTRAP_TOKEN that no caller
// could present: stored as given, a value with a trailing newline (a
// Kubernetes secret made from a file) or other surrounding whitespace,
// control characters or non-ASCII would be an admin token nobody can send,
// and, a token row existing, never bootstrapped again. The error names the
// variable, never the value.
func checkBootstrapToken(token string) error {
	if len(token) < 16 {
		return fmt.Errorf("SECRETS_BOOTSTRAP_TOKEN must be at least 16 characters")
	}
	if strings.TrimSpace(token) != token {
		return fmt.Errorf("SECRETS_BOOTSTRAP_TOKEN has leading or trailing whitespace (a trailing newline from the file it was made from?); remove it")
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("SECRETS_BOOTSTRAP_TOKEN must be printable ASCII (it holds a control or non-ASCII character at byte %d)", i)
		}
	}
	return nil
}
