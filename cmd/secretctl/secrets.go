package main

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/server/catalog"
)

func parseVersion(s string) (int64, error) {
	if s == "latest" {
		return client.Latest, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%w: version must be a number from 1 or \"latest\", not %q", errUsage, s)
	}
	return n, nil
}

func (a *app) getCommand() *cobra.Command {
	var version string
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print a secret's value (raw, nothing else) on stdout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := parseVersion(version)
			if err != nil {
				return err
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			val, err := c.AccessSecretVersion(cmd.Context(), args[0], v)
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(val.Data)
			return err
		},
	}
	cmd.Flags().StringVar(&version, "version", "latest", "version number or latest")
	return cmd
}

func (a *app) putCommand() *cobra.Command {
	var fromFile, description, category, etag, period, expire string
	var restart bool
	cmd := &cobra.Command{
		Use:   "put KEY",
		Short: "Store a new value read from stdin or --from-file",
		Long: `Store a new value for KEY, read from stdin (one trailing newline is dropped)
or from --from-file (taken byte for byte). The value is never accepted as an
argument: it would stay in shell history and show in process lists.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("%w: put takes the value from stdin or --from-file, never as an argument (it would be kept in shell history and shown in process lists)", errUsage)
			}
			if len(args) == 0 {
				return fmt.Errorf("%w: put needs a KEY", errUsage)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var value []byte
			var err error
			if fromFile != "" {
				value, err = readValueFile(fromFile)
			} else {
				if f, ok := a.stdin.(*os.File); ok && isTerminal(f) {
					fmt.Fprintln(a.stderr, "Enter the value, then press Ctrl-D:")
				}
				value, err = io.ReadAll(io.LimitReader(a.stdin, 64<<10+2))
				value = trimNewline(value)
			}
			if err != nil {
				return fmt.Errorf("reading the value: %w", err)
			}
			if len(value) == 0 {
				return fmt.Errorf("%w: empty value (give it on stdin or with --from-file)", errUsage)
			}
			opts := []client.WriteOption{}
			if cmd.Flags().Changed("description") {
				opts = append(opts, client.WithDescription(description))
			}
			if cmd.Flags().Changed("category") {
				opts = append(opts, client.WithCategory(category))
			}
			if cmd.Flags().Changed("restart-required") {
				opts = append(opts, client.WithRestartRequired(restart))
			}
			if period != "" {
				d, err := parsePeriod("rotation-period", period)
				if err != nil {
					return err
				}
				opts = append(opts, client.WithRotationPeriod(d))
			}
			if expire != "" {
				t, err := parseTime("expire", expire)
				if err != nil {
					return err
				}
				opts = append(opts, client.WithExpireTime(t))
			}
			if etag != "" {
				opts = append(opts, client.WithEtag(etag))
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			s, err := c.PutSecret(cmd.Context(), args[0], value, opts...)
			clear(value)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, toSecretJSON(s))
			}
			_, err = fmt.Fprintf(a.stdout, "%s: stored version %d (revision %d)\n", s.Key, s.CurrentVersion, s.Revision)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&fromFile, "from-file", "", "read the value from this file, byte for byte")
	f.StringVar(&description, "description", "", "set the description")
	f.StringVar(&category, "category", "", "set the category")
	f.BoolVar(&restart, "restart-required", false, "set whether consumers must restart on a change")
	f.StringVar(&etag, "etag", "", "write only if the secret still has this etag")
	f.StringVar(&period, "rotation-period", "", "remind to rotate every period: days (90d) or a duration (720h)")
	f.StringVar(&expire, "expire", "", "refuse access after this time: RFC 3339 or from now (30d)")
	return cmd
}

// readValueFile reads a value from path, refusing one larger than the
// service accepts before reading more of it (the path may name a device
// or a pipe that never ends).
func readValueFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	value, err := io.ReadAll(io.LimitReader(f, catalog.MaxValueSize+1))
	if err == nil && len(value) > catalog.MaxValueSize {
		clear(value)
		return nil, fmt.Errorf("%s is larger than %d bytes (64 KiB), the most a secret's value may hold", path, catalog.MaxValueSize)
	}
	return value, err
}

func (a *app) listCommand() *cobra.Command {
	var category string
	var configured, due bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List secrets (configured ones and the catalog's empty slots)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			update, done := a.progress("secrets")
			list, _, err := c.ListSecrets(cmd.Context(), client.ListSecretsOptions{Category: category, ConfiguredOnly: configured, RotationDue: due, OnPage: update})
			done()
			if err != nil {
				return err
			}
			if a.output == "json" {
				out := make([]secretJSON, 0, len(list))
				for _, s := range list {
					out = append(out, toSecretJSON(s))
				}
				return writeJSON(a.stdout, map[string]any{"secrets": out})
			}
			t := newTable(a.stdout, "KEY", "CATEGORY", "CONFIGURED", "VERSION", "RESTART", "UPDATED", "ROTATION")
			for _, s := range list {
				t.row(s.Key, s.Category, s.Configured, s.CurrentVersion, s.RestartRequired, s.UpdateTime, rotationCell(s))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&category, "category", "", "only this category")
	cmd.Flags().BoolVar(&configured, "configured", false, "leave out the catalog's empty slots")
	cmd.Flags().BoolVar(&due, "rotation-due", false, "only secrets whose rotation is due")
	return cmd
}

func (a *app) versionsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "versions KEY",
		Short: "List a secret's versions, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			vs, err := c.ListSecretVersions(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.output == "json" {
				out := make([]versionJSON, 0, len(vs))
				for _, v := range vs {
					out = append(out, toVersionJSON(v))
				}
				return writeJSON(a.stdout, map[string]any{"versions": out})
			}
			t := newTable(a.stdout, "VERSION", "STATE", "CREATED", "CREATED BY", "DESTROYED")
			for _, v := range vs {
				t.row(v.Version, v.State.String(), v.CreateTime, v.CreatedBy, v.DestroyTime)
			}
			return t.flush()
		},
	}
}

// versionStateCommand builds disable, enable and destroy.
func (a *app) versionStateCommand(verb string) *cobra.Command {
	var etag string
	short := map[string]string{
		"disable": "Disable a version (keeps its value; it cannot be read until enabled)",
		"enable":  "Enable a disabled version",
		"destroy": "Destroy a version: erase its value for good",
	}[verb]
	cmd := &cobra.Command{
		Use:   verb + " KEY VERSION",
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := parseVersion(args[1])
			if err != nil {
				return err
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			call := map[string]func() (client.VersionChange, error){
				"disable": func() (client.VersionChange, error) {
					return c.DisableSecretVersion(cmd.Context(), args[0], v, client.WithEtag(etag))
				},
				"enable": func() (client.VersionChange, error) {
					return c.EnableSecretVersion(cmd.Context(), args[0], v, client.WithEtag(etag))
				},
				"destroy": func() (client.VersionChange, error) {
					return c.DestroySecretVersion(cmd.Context(), args[0], v, client.WithEtag(etag))
				},
			}[verb]
			ch, err := call()
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"version": toVersionJSON(ch.Version), "secret": toSecretJSON(ch.Secret)})
			}
			_, err = fmt.Fprintf(a.stdout, "%s: version %d %s (revision %d)\n", ch.Version.Key, ch.Version.Version, ch.Version.State, ch.Secret.Revision)
			return err
		},
	}
	cmd.Flags().StringVar(&etag, "etag", "", "change only if the secret still has this etag")
	return cmd
}

func (a *app) deleteCommand() *cobra.Command {
	var etag string
	cmd := &cobra.Command{
		Use:   "delete KEY",
		Short: "Delete a secret with all its versions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			rev, err := c.DeleteSecret(cmd.Context(), args[0], client.WithEtag(etag))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"key": args[0], "revision": rev})
			}
			_, err = fmt.Fprintf(a.stdout, "%s: deleted (revision %d)\n", args[0], rev)
			return err
		},
	}
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the secret still has this etag")
	return cmd
}
