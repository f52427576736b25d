package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
)

// parsePeriod reads a rotation period: a Go duration ("720h") or a number
// of days ("90d").
func parsePeriod(flag, s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err == nil && days > 0 && days <= 3650 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	return 0, fmt.Errorf("%w: --%s: want a number of days (90d) or a duration (720h), not %q", errUsage, flag, s)
}

// parseTime reads an RFC 3339 time, or a period from now ("30d", "12h").
func parseTime(flag, s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := parsePeriod(flag, s); err == nil {
		return time.Now().Add(d), nil
	}
	return time.Time{}, fmt.Errorf("%w: --%s: want an RFC 3339 time (2026-06-30T00:00:00Z) or a time from now (30d, 12h), not %q", errUsage, flag, s)
}

// rotationCell is a secret's rotation state for the list table: expired,
// due, the next rotation time, or "-".
func rotationCell(s client.Secret) string {
	switch {
	case s.Expired:
		return "expired"
	case s.RotationDue:
		return "due"
	case !s.NextRotationTime.IsZero():
		return s.NextRotationTime.UTC().Format(time.RFC3339)
	}
	return "-"
}

// periodString renders a period in days when it is whole days.
func periodString(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	if d%(24*time.Hour) == 0 {
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	return d.String()
}

func (a *app) rotationCommand() *cobra.Command {
	var period, next, expire, etag string
	var clearSchedule, noExpire, suggested bool
	cmd := &cobra.Command{
		Use:   "rotation KEY",
		Short: "Show or set a secret's rotation reminder and expiry",
		Long: `Show a secret's rotation schedule, or change it:
  --period 90d         remind every 90 days (from now; a new version restarts it)
  --suggested          use the catalog's proposed period for a well-known key
  --next TIME          next reminder at TIME (RFC 3339, or from now: 30d, 12h)
  --clear              no more reminders
  --expire TIME        refuse access after TIME; --no-expire removes it
Due secrets: secretctl list --rotation-due.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []client.WriteOption
			if (period != "" || suggested || next != "") && clearSchedule {
				return fmt.Errorf("%w: --clear with --period, --suggested or --next", errUsage)
			}
			if period != "" && suggested {
				return fmt.Errorf("%w: --period or --suggested, not both", errUsage)
			}
			if expire != "" && noExpire {
				return fmt.Errorf("%w: --expire or --no-expire, not both", errUsage)
			}
			if etag != "" && period == "" && !suggested && next == "" && !clearSchedule && expire == "" && !noExpire {
				return fmt.Errorf("%w: --etag guards a change: give --period, --suggested, --next, --clear, --expire or --no-expire with it", errUsage)
			}
			if period != "" {
				d, err := parsePeriod("period", period)
				if err != nil {
					return err
				}
				opts = append(opts, client.WithRotationPeriod(d))
			}
			if clearSchedule {
				opts = append(opts, client.WithRotationPeriod(0), client.WithNextRotationTime(time.Time{}))
			}
			if next != "" {
				t, err := parseTime("next", next)
				if err != nil {
					return err
				}
				opts = append(opts, client.WithNextRotationTime(t))
			}
			if expire != "" {
				t, err := parseTime("expire", expire)
				if err != nil {
					return err
				}
				opts = append(opts, client.WithExpireTime(t))
			}
			if noExpire {
				opts = append(opts, client.WithExpireTime(time.Time{}))
			}
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			if suggested {
				cur, err := c.GetSecret(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if cur.SuggestedRotationPeriod == 0 {
					return fmt.Errorf("%w: the catalog proposes no rotation period for %s", errUsage, args[0])
				}
				opts = append(opts, client.WithRotationPeriod(cur.SuggestedRotationPeriod))
			}
			var s client.Secret
			if len(opts) == 0 {
				s, err = c.GetSecret(cmd.Context(), args[0])
			} else {
				if etag != "" {
					opts = append(opts, client.WithEtag(etag))
				}
				s, err = c.UpdateSecret(cmd.Context(), args[0], opts...)
			}
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, toSecretJSON(s))
			}
			t := newTable(a.stdout, "KEY", "PERIOD", "NEXT ROTATION", "STATE", "EXPIRES", "SUGGESTED")
			state := rotationCell(s)
			if state != "due" && state != "expired" {
				state = "-"
			}
			t.row(s.Key, periodString(s.RotationPeriod), s.NextRotationTime, state, s.ExpireTime, periodString(s.SuggestedRotationPeriod))
			return t.flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&period, "period", "", "rotation period: days (90d) or a duration (720h), 1h to 10 years")
	f.BoolVar(&suggested, "suggested", false, "set the catalog's proposed period")
	f.StringVar(&next, "next", "", "next rotation time: RFC 3339 or from now (30d)")
	f.BoolVar(&clearSchedule, "clear", false, "remove the rotation schedule")
	f.StringVar(&expire, "expire", "", "refuse access after this time: RFC 3339 or from now (30d)")
	f.BoolVar(&noExpire, "no-expire", false, "remove the expiry")
	f.StringVar(&etag, "etag", "", "change only if the secret still has this etag")
	return cmd
}
