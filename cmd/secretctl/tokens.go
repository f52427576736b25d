package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
)

func (a *app) tokensCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Create, list and revoke bearer tokens (admin)"}
	var nt client.NewToken
	var expires time.Duration
	create := &cobra.Command{
		Use:   "create NAME --role ROLE [--key-pattern P]… [--category C]… [--expires 720h]",
		Short: "Create a token; it is printed once, on stdout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if expires < 0 {
				return fmt.Errorf("%w: --expires must be a positive duration (720h), or 0 for a token that never expires", errUsage)
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			nt.Name = args[0]
			if expires > 0 {
				nt.ExpireTime = time.Now().Add(expires)
			}
			token, info, err := c.CreateToken(cmd.Context(), nt)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"token": token, "token_info": info})
			}
			fmt.Fprintln(a.stdout, token)
			fmt.Fprintf(a.stderr, "token %s (%s) created; it is shown only now\n", info.Name, info.Role)
			return nil
		},
	}
	create.Flags().StringVar(&nt.Role, "role", "", "admin, writer, reader or auditor")
	create.Flags().StringArrayVar(&nt.KeyPatterns, "key-pattern", nil, "limit to keys matching this pattern (e.g. SLACK_*); repeatable")
	create.Flags().StringArrayVar(&nt.Categories, "category", nil, "limit to this category; repeatable")
	create.Flags().DurationVar(&expires, "expires", 0, "expire after this long (default: never)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their values)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			tokens, err := c.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"tokens": tokens})
			}
			t := newTable(a.stdout, "NAME", "ROLE", "SCOPE", "PREFIX", "EXPIRES", "LAST USED", "REVOKED")
			for _, tok := range tokens {
				scope := strings.Join(append(append([]string{}, tok.KeyPatterns...), tok.Categories...), ",")
				t.row(tok.Name, tok.Role, scope, tok.Prefix, tok.ExpireTime, tok.LastUseTime, tok.RevokeTime)
			}
			return t.flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a token: it is refused from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			info, err := c.RevokeToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			fmt.Fprintf(a.stdout, "revoked %s\n", info.Name)
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func (a *app) auditVerifyCommand() *cobra.Command {
	var full bool
	cmd := &cobra.Command{
		Use:   "verify-audit [--full]",
		Short: "Verify the tamper-evident audit log (exit 1 unless intact)",
		Long: "Verify the tamper-evident audit log. By default the walk starts after the newest point an earlier\n" +
			"verification recorded (incremental: events up to it are not re-checked); --full walks every event\n" +
			"in the table.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			var v client.AuditVerification
			if full {
				v, err = verifyAuditFull(cmd.Context(), c)
			} else {
				v, err = c.VerifyAuditLog(cmd.Context())
			}
			if err != nil {
				return err
			}
			if a.output == "json" {
				if err := writeJSON(a.stdout, v); err != nil {
					return err
				}
			} else {
				// The server's sentence says what is only self-attested.
				fmt.Fprintln(a.stdout, v.Summary)
			}
			if !v.Intact {
				return errors.New("audit log not intact")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, "walk every event in the table, not only those after the last verified point")
	return cmd
}
