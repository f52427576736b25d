package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
)

func (a *app) providersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "providers",
		Short: "List AI providers and each use case's default (subcommand: set-default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			ps, err := c.ListProviders(cmd.Context())
			if err != nil {
				return err
			}
			defs, _, err := c.GetProviderDefaults(cmd.Context())
			if err != nil {
				return err
			}
			if a.output == "json" {
				type prov struct {
					Provider    string   `json:"provider"`
					DisplayName string   `json:"displayName"`
					Key         string   `json:"key"`
					Configured  bool     `json:"configured"`
					Models      []string `json:"models"`
				}
				type def struct {
					UseCase    string     `json:"useCase"`
					Provider   string     `json:"provider"`
					Model      string     `json:"model"`
					UpdateTime *time.Time `json:"updateTime,omitempty"`
					UpdatedBy  string     `json:"updatedBy,omitempty"`
				}
				out := struct {
					Providers []prov `json:"providers"`
					Defaults  []def  `json:"defaults"`
				}{}
				for _, p := range ps {
					out.Providers = append(out.Providers, prov{p.ID, p.DisplayName, p.Key, p.Configured, p.Models})
				}
				for _, d := range defs {
					out.Defaults = append(out.Defaults, def{d.UseCase, d.Provider, d.Model, timePtr(d.UpdateTime), d.UpdatedBy})
				}
				return writeJSON(a.stdout, out)
			}
			t := newTable(a.stdout, "PROVIDER", "NAME", "KEY", "CONFIGURED")
			for _, p := range ps {
				t.row(p.ID, p.DisplayName, p.Key, p.Configured)
			}
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout)
			t = newTable(a.stdout, "USE CASE", "PROVIDER", "MODEL", "UPDATED", "BY")
			for _, d := range defs {
				t.row(d.UseCase, d.Provider, d.Model, d.UpdateTime, d.UpdatedBy)
			}
			return t.flush()
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "set-default USE_CASE PROVIDER MODEL",
		Short: "Set the default provider and model of a use case (chat, code, summary)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			d, rev, err := c.UpdateProviderDefault(cmd.Context(), args[0], args[1], args[2])
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"useCase": d.UseCase, "provider": d.Provider, "model": d.Model, "revision": rev})
			}
			_, err = fmt.Fprintf(a.stdout, "%s: %s %s (revision %d)\n", d.UseCase, d.Provider, d.Model, rev)
			return err
		},
	})
	return cmd
}

// parseSince accepts a duration ago ("15m") or an RFC 3339 time.
func parseSince(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: --since wants a duration (15m) or an RFC 3339 time", errUsage)
	}
	return t, nil
}

func (a *app) auditCommand() *cobra.Command {
	var f client.AuditFilter
	var since string
	var follow bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List audit events, newest first (--follow: the last --limit oldest first, then new ones as they come, like tail -f)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if f.Since, err = parseSince(since); err != nil {
				return err
			}
			if follow && interval <= 0 {
				return fmt.Errorf("%w: --interval must be a positive duration (2s)", errUsage)
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			update, done := a.progress("audit events")
			f.OnPage = update
			events, err := c.ListAuditEvents(cmd.Context(), f)
			done()
			if err != nil {
				return err
			}
			if !follow {
				if a.output == "json" {
					out := make([]auditJSON, 0, len(events))
					for _, e := range events {
						out = append(out, toAuditJSON(e))
					}
					return writeJSON(a.stdout, map[string]any{"events": out})
				}
				t := newTable(a.stdout, auditHeader...)
				for _, e := range events {
					auditRow(t, e)
				}
				return t.flush()
			}
			// Following prints oldest first, like tail -f.
			slices.Reverse(events)
			return a.followAudit(cmd.Context(), c, f, events, interval)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Key, "key", "", "only events about this key")
	fl.StringVar(&f.Actor, "actor", "", "only events by this actor")
	fl.StringVar(&f.Action, "action", "", "only this action (RPC name, e.g. PutSecret)")
	fl.StringVar(&since, "since", "", "only events since a duration ago (15m) or an RFC 3339 time")
	fl.IntVar(&f.Limit, "limit", 100, "at most this many events (0: all)")
	fl.BoolVarP(&follow, "follow", "f", false, "print the last --limit events oldest first, then new ones until interrupted")
	fl.DurationVar(&interval, "interval", 2*time.Second, "with --follow, how often to look for new events")
	cmd.AddCommand(a.matchValueCommand())
	return cmd
}

var auditHeader = []string{"SEQ", "TIME", "ACTOR", "ACTION", "KEY", "VERSION", "OUTCOME", "PEER"}

func auditRow(t *table, e client.AuditEvent) {
	t.row(e.Sequence, e.Time, e.Actor, e.Action, e.Key, e.Version, e.Outcome, e.Peer)
}

// followAudit prints events as they appear. The audit log has no stream,
// so it polls for the events after the highest sequence printed.
//
// The sequence, not the time, is the cursor: the sequencer numbers events
// as it chains them, one transaction after another under the chain head's
// lock, so an event that becomes visible later always has a higher
// sequence than every event visible before it. Its time may well be
// earlier (a write batch commits its events after later reads', replicas'
// clocks differ, a backlog is chained late), so polling by time (events
// at or after the newest time seen) would never print it.
func (a *app) followAudit(ctx context.Context, c *client.Client, f client.AuditFilter, first []client.AuditEvent, interval time.Duration) error {
	var last int64
	headerDone := false
	print := func(events []client.AuditEvent) error {
		var t *table
		if a.output == "table" {
			if headerDone {
				t = newTable(a.stdout)
			} else {
				t, headerDone = newTable(a.stdout, auditHeader...), true
			}
		}
		for _, e := range events {
			if e.Sequence <= last {
				continue
			}
			last = e.Sequence
			if a.output == "json" {
				if err := writeJSON(a.stdout, toAuditJSON(e)); err != nil {
					return err
				}
				continue
			}
			auditRow(t, e)
		}
		if t == nil {
			return nil
		}
		return t.flush()
	}
	if err := print(first); err != nil {
		return err
	}
	f.OnPage = nil
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		events, err := auditEventsAfter(ctx, c, f, last)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintln(a.stderr, "secretctl: audit:", err)
			continue
		}
		if err := print(events); err != nil {
			return err
		}
	}
}

// auditEventsAfter returns the events of f whose sequence is above last,
// oldest first. ListAuditEvents filters by time, not by sequence, so it
// asks for the newest 16, 32, 64, … events until the answer reaches back
// to last (or to the first event): twice the new events at most.
func auditEventsAfter(ctx context.Context, c *client.Client, f client.AuditFilter, last int64) ([]client.AuditEvent, error) {
	for n := 16; ; n *= 2 {
		f.Limit = n
		events, err := c.ListAuditEvents(ctx, f)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(events, func(e client.AuditEvent) bool { return e.Sequence <= last })
		if i >= 0 || len(events) < n {
			if i >= 0 {
				events = events[:i]
			}
			slices.Reverse(events)
			return events, nil
		}
	}
}

func (a *app) watchCommand() *cobra.Command {
	var keys, categories []string
	var from int64
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print changes as they commit (never values), until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			opts := []client.WatchOption{client.WatchKeys(keys...), client.WatchCategories(categories...), client.WatchFromRevision(from)}
			header := true
			for r := range c.Watch(cmd.Context(), opts...) {
				if r.Err != nil {
					if r.RelistRequired() {
						return fmt.Errorf("%w (start from a newer --from revision)", r.Err)
					}
					return r.Err
				}
				if r.Created && a.output == "table" {
					fmt.Fprintf(a.stderr, "watching from revision %d\n", r.Revision)
				}
				for _, e := range r.Events {
					if a.output == "json" {
						if err := writeJSONLine(a, toEventJSON(e)); err != nil {
							return err
						}
						continue
					}
					t := newTable(a.stdout)
					if header {
						t = newTable(a.stdout, "REVISION", "TIME", "KIND", "KEY", "VERSION", "CATEGORY", "RESTART")
						header = false
					}
					t.row(e.Revision, e.Time, e.Kind.String(), e.Key, e.Version, e.Category, e.RestartRequired)
					if err := t.flush(); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&keys, "keys", nil, "only these keys (comma-separated)")
	cmd.Flags().StringSliceVar(&categories, "category", nil, "only these categories")
	cmd.Flags().Int64Var(&from, "from", 0, "the last revision already seen: print every later change (default: from now)")
	return cmd
}

// writeJSONLine prints one compact JSON document per line (for streams).
func writeJSONLine(a *app, v any) error {
	b, err := jsonMarshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", b)
	return err
}

func (a *app) consumersCommand() *cobra.Command {
	var pending bool
	cmd := &cobra.Command{
		Use:   "consumers",
		Short: "List consumer instances and the restarts they still need",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			list, rev, err := c.ListConsumers(cmd.Context(), pending)
			if err != nil {
				return err
			}
			if a.output == "json" {
				out := make([]consumerJSON, 0, len(list))
				for _, s := range list {
					p := s.Pending
					if p == nil {
						p = []client.PendingChange{}
					}
					out = append(out, consumerJSON{Service: s.Consumer.Service, Instance: s.Consumer.Instance, LoadedRevision: s.LoadedRevision,
						LastSeen: timePtr(s.LastSeen), Stale: s.Stale, Pending: p, Keys: s.Keys, Categories: s.Categories})
				}
				return writeJSON(a.stdout, map[string]any{"consumers": out, "revision": rev})
			}
			t := newTable(a.stdout, "SERVICE", "INSTANCE", "LOADED", "LAST SEEN", "STALE", "RESTART NEEDED FOR")
			for _, s := range list {
				var keys []string
				for _, p := range s.Pending {
					keys = append(keys, fmt.Sprintf("%s@%d", p.Key, p.Revision))
				}
				t.row(s.Consumer.Service, s.Consumer.Instance, s.LoadedRevision, s.LastSeen, s.Stale, strings.Join(keys, ","))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&pending, "pending", false, "only consumers that must restart")
	return cmd
}
