// Package catalog owns the built-in knowledge about Orient's secrets: the
// well-known keys with their category, description, restart flag and value
// shape, the AI providers and the use cases they serve. It is pure data and
// checks; it stores nothing.
package catalog

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Category ids. Keys outside the catalog default to CategoryCustom.
const (
	CategoryAI       = "ai"
	CategorySlack    = "slack"
	CategoryWhatsApp = "whatsapp"
	CategoryGoogle   = "google"
	CategoryGitHub   = "github"
	CategoryJIRA     = "jira"
	CategoryWebhooks = "webhooks"
	CategoryDatabase = "database"
	CategoryCustom   = "custom"
)

// Entry describes one well-known secret.
type Entry struct {
	Key             string
	Category        string
	Description     string
	RestartRequired bool
	// Prefix is the value's required prefix, or "" when any value is accepted.
	// Only prefix checks: real tokens change format, so nothing stricter.
	Prefix string
	// SuggestedRotation is the rotation period the catalog proposes for
	// the key (0: none, e.g. identifiers that are not credentials). A
	// proposal shown to people, never applied or enforced.
	SuggestedRotation time.Duration
}

// Proposed rotation periods: personal and API tokens rotate often (90 days,
// the usual policy for personal access tokens); WhatsApp's long-lived user
// tokens last 60 days; credentials whose rotation means reinstalling an app
// or redeploying (Slack, OAuth client secrets, signing keys) yearly.
const (
	day           = 24 * time.Hour
	rotateToken   = 90 * day
	rotateYearly  = 365 * day
	rotateDBCreds = 180 * day
)

var entries = []Entry{
	{Key: "ANTHROPIC_API_KEY", Category: CategoryAI, Description: "Anthropic API key (Claude models)", Prefix: "sk-ant-", SuggestedRotation: rotateToken},
	{Key: "OPENAI_API_KEY", Category: CategoryAI, Description: "OpenAI API key", Prefix: "sk-", SuggestedRotation: rotateToken},
	{Key: "GOOGLE_AI_API_KEY", Category: CategoryAI, Description: "Google AI (Gemini) API key", SuggestedRotation: rotateToken},
	{Key: "SLACK_BOT_TOKEN", Category: CategorySlack, Description: "Slack bot token (xoxb-)", RestartRequired: true, Prefix: "xoxb-", SuggestedRotation: rotateYearly},
	{Key: "SLACK_APP_TOKEN", Category: CategorySlack, Description: "Slack app-level token for Socket Mode (xapp-)", RestartRequired: true, Prefix: "xapp-", SuggestedRotation: rotateYearly},
	{Key: "SLACK_SIGNING_SECRET", Category: CategorySlack, Description: "Slack request signing secret", RestartRequired: true, SuggestedRotation: rotateYearly},
	{Key: "SLACK_USER_TOKEN", Category: CategorySlack, Description: "Slack user token (xoxp-)", RestartRequired: true, Prefix: "xoxp-", SuggestedRotation: rotateYearly},
	{Key: "WHATSAPP_ACCESS_TOKEN", Category: CategoryWhatsApp, Description: "WhatsApp Business API access token", RestartRequired: true, SuggestedRotation: 60 * day},
	{Key: "GOOGLE_OAUTH_CLIENT_ID", Category: CategoryGoogle, Description: "Google OAuth client id", RestartRequired: true},
	{Key: "GOOGLE_OAUTH_CLIENT_SECRET", Category: CategoryGoogle, Description: "Google OAuth client secret", RestartRequired: true, SuggestedRotation: rotateYearly},
	{Key: "GITHUB_TOKEN", Category: CategoryGitHub, Description: "GitHub personal access or installation token", SuggestedRotation: rotateToken},
	{Key: "GITHUB_APP_ID", Category: CategoryGitHub, Description: "GitHub App id", RestartRequired: true},
	{Key: "GITHUB_APP_PRIVATE_KEY", Category: CategoryGitHub, Description: "GitHub App private key (PEM)", RestartRequired: true, SuggestedRotation: rotateYearly},
	{Key: "JIRA_API_TOKEN", Category: CategoryJIRA, Description: "JIRA API token", SuggestedRotation: rotateToken},
	{Key: "JIRA_EMAIL", Category: CategoryJIRA, Description: "Email of the JIRA account the token belongs to"},
	{Key: "JIRA_BASE_URL", Category: CategoryJIRA, Description: "JIRA site URL, e.g. https://example.atlassian.net", RestartRequired: true},
	{Key: "GITHUB_WEBHOOK_SECRET", Category: CategoryWebhooks, Description: "Secret that signs GitHub webhook deliveries", SuggestedRotation: rotateYearly},
	{Key: "ORIENT_WEBHOOK_SECRET", Category: CategoryWebhooks, Description: "Secret that signs incoming Orient webhooks", SuggestedRotation: rotateYearly},
	{Key: "DATABASE_URL", Category: CategoryDatabase, Description: "Orient's PostgreSQL connection URL", RestartRequired: true, SuggestedRotation: rotateDBCreds},
	{Key: "DATABASE_PASSWORD", Category: CategoryDatabase, Description: "Password of Orient's database user", RestartRequired: true, SuggestedRotation: rotateDBCreds},
}

var byKey = func() map[string]Entry {
	m := make(map[string]Entry, len(entries))
	for _, e := range entries {
		m[e.Key] = e
	}
	return m
}()

func init() {
	slices.SortFunc(entries, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
}

// Lookup returns the catalog entry of key, if key is well known.
func Lookup(key string) (Entry, bool) {
	e, ok := byKey[key]
	return e, ok
}

// Entries returns every catalog entry, ordered by key. The caller must not
// modify the slice.
func Entries() []Entry { return entries }

// MaxValueSize is the largest value accepted, in bytes.
const MaxValueSize = 64 << 10

var keyPattern = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,127}$`)

// ValidKey reports whether key is a well-formed secret key.
func ValidKey(key string) bool { return keyPattern.MatchString(key) }

// KeyRule is the human form of the key pattern, for error messages.
const KeyRule = "must match ^[A-Z][A-Z0-9_]{0,127}$ (e.g. ANTHROPIC_API_KEY)"

var categoryPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// NormalizeCategory lowercases and trims a category id and checks its form.
func NormalizeCategory(s string) (string, error) {
	c := strings.ToLower(strings.TrimSpace(s))
	if !categoryPattern.MatchString(c) {
		return "", fmt.Errorf("must be a lowercase id matching ^[a-z][a-z0-9_-]{0,63}$ (e.g. %q)", CategorySlack)
	}
	return c, nil
}

// CheckValue checks a value's size and, for catalog keys, its shape. The
// error never repeats the value.
func CheckValue(key string, value []byte) error {
	switch {
	case len(value) == 0:
		return fmt.Errorf("must not be empty")
	case len(value) > MaxValueSize:
		return fmt.Errorf("must be at most %d bytes, got %d", MaxValueSize, len(value))
	}
	if e, ok := byKey[key]; ok && e.Prefix != "" && !bytes.HasPrefix(value, []byte(e.Prefix)) {
		return fmt.Errorf("%s must start with %s", key, e.Prefix)
	}
	return nil
}

// Provider is an AI provider Orient can use.
type Provider struct {
	ID          string
	DisplayName string
	Key         string
	Models      []string
}

var providers = []Provider{
	{ID: "anthropic", DisplayName: "Anthropic", Key: "ANTHROPIC_API_KEY",
		Models: []string{"claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"}},
	{ID: "openai", DisplayName: "OpenAI", Key: "OPENAI_API_KEY",
		Models: []string{"gpt-5", "gpt-5-mini", "gpt-4.1"}},
	{ID: "google", DisplayName: "Google", Key: "GOOGLE_AI_API_KEY",
		Models: []string{"gemini-2.5-pro", "gemini-2.5-flash"}},
}

// Providers returns the known AI providers.
func Providers() []Provider { return providers }

// LookupProvider returns the provider with the given id.
func LookupProvider(id string) (Provider, bool) {
	for _, p := range providers {
		if p.ID == id {
			return p, true
		}
	}
	return Provider{}, false
}

// UseCase is something Orient asks a model to do, with its built-in default.
type UseCase struct {
	ID              string
	DefaultProvider string
	DefaultModel    string
}

var useCases = []UseCase{
	{ID: "chat", DefaultProvider: "anthropic", DefaultModel: "claude-sonnet-4-5"},
	{ID: "code", DefaultProvider: "anthropic", DefaultModel: "claude-sonnet-4-5"},
	{ID: "summary", DefaultProvider: "anthropic", DefaultModel: "claude-haiku-4-5"},
}

// UseCases returns the use cases in display order.
func UseCases() []UseCase { return useCases }

// LookupUseCase returns the use case with the given id.
func LookupUseCase(id string) (UseCase, bool) {
	for _, u := range useCases {
		if u.ID == id {
			return u, true
		}
	}
	return UseCase{}, false
}

// ProviderIDs and UseCaseIDs list the ids, for error messages.
func ProviderIDs() []string {
	ids := make([]string, len(providers))
	for i, p := range providers {
		ids[i] = p.ID
	}
	return ids
}

// UseCaseIDs lists the use case ids, for error messages.
func UseCaseIDs() []string {
	ids := make([]string, len(useCases))
	for i, u := range useCases {
		ids[i] = u.ID
	}
	return ids
}
