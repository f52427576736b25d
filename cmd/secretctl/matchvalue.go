package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// matchValueCommand is `secretctl audit match-value`: the leak check. The
// candidate comes from stdin only (never an argument: shell history,
// process lists), as put's value does.
func (a *app) matchValueCommand() *cobra.Command {
	var key string
	cmd := &cobra.Command{
		Use:   "match-value",
		Short: "Which secret versions held a value read from stdin (leak check; exit 1 if any)",
		Long: `Read a candidate value from stdin (one trailing newline is dropped) and ask
the service which secret versions, if any, were written with it. The service
compares HMACs under its sealed audit key and never logs or stores the value;
the question is audited. Exits 1 when the value matches a version.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f, ok := a.stdin.(*os.File); ok && isTerminal(f) {
				fmt.Fprintln(a.stderr, "Enter the value, then press Ctrl-D:")
			}
			value, err := io.ReadAll(io.LimitReader(a.stdin, 64<<10+2))
			if err != nil {
				return fmt.Errorf("reading the value: %w", err)
			}
			value = trimNewline(value)
			if len(value) == 0 {
				return fmt.Errorf("%w: empty value (give it on stdin)", errUsage)
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			matches, err := c.MatchValue(cmd.Context(), value, key)
			clear(value)
			if err != nil {
				return err
			}
			if a.output == "json" {
				if err := writeJSON(a.stdout, map[string]any{"matches": matches}); err != nil {
					return err
				}
			} else if len(matches) == 0 {
				fmt.Fprintln(a.stdout, "no secret version was written with this value")
			} else {
				t := newTable(a.stdout, "KEY", "VERSION", "WRITTEN", "BY", "AUDIT SEQ")
				for _, m := range matches {
					t.row(m.Key, m.Version, m.Time, m.Actor, m.Sequence)
				}
				if err := t.flush(); err != nil {
					return err
				}
			}
			if len(matches) > 0 {
				return errors.New("the value matches a secret version")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "only versions of this key")
	return cmd
}
