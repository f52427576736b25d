package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func (a *app) checkCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check KEY",
		Short: "Ask the provider whether a stored credential works (never shows the value)",
		Long: `Ask the provider whether the newest value of KEY works, with a harmless
read-only call made by the service: list models (ANTHROPIC_API_KEY,
OPENAI_API_KEY, GOOGLE_AI_API_KEY), auth.test (SLACK_BOT_TOKEN,
SLACK_USER_TOKEN), GET /user (GITHUB_TOKEN), myself (JIRA_API_TOKEN, with
JIRA_EMAIL and JIRA_BASE_URL). Needs the writer or admin role. The exit
status is 0 only when the result is "valid".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.connect(cmd.Context())
			if err != nil {
				return err
			}
			r, err := c.CheckSecret(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.output == "json" {
				err = writeJSON(a.stdout, map[string]any{"key": r.Key, "version": r.Version, "provider": r.Provider,
					"result": r.Result, "httpStatus": r.HTTPStatus, "reason": r.Reason, "checkTime": r.CheckTime.Format(time.RFC3339Nano)})
			} else {
				status := "no answer"
				if r.HTTPStatus != 0 {
					status = fmt.Sprintf("HTTP %d", r.HTTPStatus)
				}
				_, err = fmt.Fprintf(a.stdout, "%s (version %d): %s — %s: %s, %s\n", r.Key, r.Version, r.Result, r.Provider, r.Reason, status)
			}
			if err != nil {
				return err
			}
			if r.Result != "valid" {
				return exitError{1}
			}
			return nil
		},
	}
}
