package catalog

import "strings"

// aliases maps names other tools (Orient's own secrets panel, .env files,
// SDK conventions) use for the catalog's keys. The importers rename through
// it; the README's import table is this table.
var aliases = map[string]string{
	"CLAUDE_API_KEY":                "ANTHROPIC_API_KEY",
	"GOOGLE_GEMINI_API_KEY":         "GOOGLE_AI_API_KEY",
	"GEMINI_API_KEY":                "GOOGLE_AI_API_KEY",
	"GOOGLE_GENERATIVE_AI_API_KEY":  "GOOGLE_AI_API_KEY",
	"SLACK_TOKEN":                   "SLACK_BOT_TOKEN",
	"WHATSAPP_TOKEN":                "WHATSAPP_ACCESS_TOKEN",
	"GOOGLE_CLIENT_ID":              "GOOGLE_OAUTH_CLIENT_ID",
	"GOOGLE_CLIENT_SECRET":          "GOOGLE_OAUTH_CLIENT_SECRET",
	"GH_TOKEN":                      "GITHUB_TOKEN",
	"GITHUB_PAT":                    "GITHUB_TOKEN",
	"GITHUB_PRIVATE_KEY":            "GITHUB_APP_PRIVATE_KEY",
	"JIRA_HOST":                     "JIRA_BASE_URL",
	"JIRA_URL":                      "JIRA_BASE_URL",
	"JIRA_TOKEN":                    "JIRA_API_TOKEN",
	"JIRA_USER_EMAIL":               "JIRA_EMAIL",
	"GITHUB_WEBHOOK_SIGNING_SECRET": "GITHUB_WEBHOOK_SECRET",
}

// Aliases returns the alias table (alias → catalog key). The caller must
// not modify it.
func Aliases() map[string]string { return aliases }

// CanonicalKey returns the catalog key an imported name stands for, and
// whether it was renamed. Names that are not aliases come back unchanged.
func CanonicalKey(name string) (string, bool) {
	if k, ok := aliases[name]; ok {
		return k, true
	}
	return name, false
}

// categoryAliases maps the category labels Orient's panel and similar
// tools use (compared lowercased, without spaces, dashes or underscores)
// onto the catalog's category ids.
var categoryAliases = map[string]string{
	"ai": CategoryAI, "aiproviders": CategoryAI, "aiprovider": CategoryAI, "llm": CategoryAI,
	"models": CategoryAI, "providers": CategoryAI,
	"slack":    CategorySlack,
	"whatsapp": CategoryWhatsApp,
	"google":   CategoryGoogle, "googleoauth": CategoryGoogle, "oauth": CategoryGoogle,
	"github": CategoryGitHub,
	"jira":   CategoryJIRA, "atlassian": CategoryJIRA,
	"webhook": CategoryWebhooks, "webhooks": CategoryWebhooks,
	"database": CategoryDatabase, "db": CategoryDatabase, "postgres": CategoryDatabase,
	"custom": CategoryCustom, "other": CategoryCustom, "general": CategoryCustom,
}

// ImportCategory maps another tool's category label for key onto a
// category id: the catalog's own category for catalog keys (whatever the
// label says), a known label's id, else the label normalized when it is a
// valid id, else "custom".
func ImportCategory(key, label string) string {
	if e, ok := byKey[key]; ok {
		return e.Category
	}
	folded := strings.NewReplacer(" ", "", "-", "", "_", "").Replace(strings.ToLower(strings.TrimSpace(label)))
	if c, ok := categoryAliases[folded]; ok {
		return c
	}
	if c, err := NormalizeCategory(strings.ReplaceAll(strings.TrimSpace(label), " ", "-")); err == nil {
		return c
	}
	return CategoryCustom
}
