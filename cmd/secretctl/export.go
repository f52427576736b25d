package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
)

func (a *app) exportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export secrets (plaintext; only with --plaintext)",
	}
	cmd.AddCommand(a.exportDotenvCommand())
	return cmd
}

func (a *app) exportDotenvCommand() *cobra.Command {
	var plaintext bool
	var keys []string
	var category string
	cmd := &cobra.Command{
		Use:   "dotenv --plaintext",
		Short: "Print configured secrets as a .env file on stdout",
		Long: `Print the newest values of the configured secrets (or of --keys, or of
one --category) as .env assignments on stdout, quoted so that
"secretctl import dotenv" and Node's dotenv read them back exactly (a value
that Node's dotenv cannot read back is still written, with a warning naming
its key).
Every value read is audited as an access. It refuses to run without
--plaintext: the output holds every value in clear.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !plaintext {
				return fmt.Errorf("%w: export writes every value in clear; pass --plaintext to confirm", errUsage)
			}
			if len(keys) > 0 && category != "" {
				return fmt.Errorf("%w: --keys or --category, not both", errUsage)
			}
			ctx := cmd.Context()
			c, err := a.connect(ctx)
			if err != nil {
				return err
			}
			if len(keys) == 0 {
				list, _, err := c.ListSecrets(ctx, client.ListSecretsOptions{Category: category, ConfiguredOnly: true})
				if err != nil {
					return err
				}
				for _, s := range list {
					keys = append(keys, s.Key)
				}
			}
			slices.Sort(keys)
			keys = slices.Compact(keys)
			if len(keys) == 0 {
				fmt.Fprintln(a.stderr, "secretctl: no configured secrets to export")
				return nil
			}
			values, _, err := c.BatchAccess(ctx, keys)
			if err != nil {
				return err
			}
			var out strings.Builder
			failed := 0
			for _, k := range keys {
				r := values[k]
				switch {
				case r.Err != nil:
					failed++
					fmt.Fprintf(a.stderr, "secretctl: %s: left out: %v\n", k, r.Err)
				case !dotenvSafe(r.Value.Data):
					failed++
					fmt.Fprintf(a.stderr, "secretctl: %s: left out: the value is not text (a .env file cannot hold it)\n", k)
				default:
					line, portable := formatDotenv(k, r.Value.Data)
					out.WriteString(line)
					if !portable {
						fmt.Fprintf(a.stderr, "secretctl: %s: written with backslash escapes that only secretctl import dotenv reads back exactly (Node's dotenv keeps the backslashes)\n", k)
					}
				}
				clear(r.Value.Data)
			}
			if _, err := a.stdout.Write([]byte(out.String())); err != nil {
				return err
			}
			if failed > 0 {
				return exitError{1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&plaintext, "plaintext", false, "confirm that the output holds values in clear")
	f.StringSliceVar(&keys, "keys", nil, "only these keys (comma-separated)")
	f.StringVar(&category, "category", "", "only this category")
	return cmd
}
