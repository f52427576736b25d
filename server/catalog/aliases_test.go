package catalog

import (
	"os"
	"strings"
	"testing"
)

func TestAliasesNameCatalogKeys(t *testing.T) {
	for alias, key := range Aliases() {
		if _, ok := Lookup(key); !ok {
			t.Errorf("alias %s → %s: not a catalog key", alias, key)
		}
		if _, ok := Lookup(alias); ok {
			t.Errorf("alias %s is itself a catalog key", alias)
		}
		if !ValidKey(alias) {
			t.Errorf("alias %s is not a valid key", alias)
		}
	}
}

func TestCanonicalKey(t *testing.T) {
	for _, c := range []struct {
		in, want string
		renamed  bool
	}{
		{"GOOGLE_GEMINI_API_KEY", "GOOGLE_AI_API_KEY", true},
		{"GEMINI_API_KEY", "GOOGLE_AI_API_KEY", true},
		{"JIRA_HOST", "JIRA_BASE_URL", true},
		{"JIRA_BASE_URL", "JIRA_BASE_URL", false},
		{"MY_OWN_KEY", "MY_OWN_KEY", false},
	} {
		got, renamed := CanonicalKey(c.in)
		if got != c.want || renamed != c.renamed {
			t.Errorf("CanonicalKey(%s) = %s, %v; want %s, %v", c.in, got, renamed, c.want, c.renamed)
		}
	}
}

func TestImportCategory(t *testing.T) {
	for _, c := range []struct{ key, label, want string }{
		{"SLACK_BOT_TOKEN", "integrations", CategorySlack}, // the catalog wins for its keys
		{"ANTHROPIC_API_KEY", "", CategoryAI},
		{"MY_MODEL_KEY", "AI Providers", CategoryAI},
		{"MY_HOOK", "Webhooks", CategoryWebhooks},
		{"MY_DB_PASS", "database", CategoryDatabase},
		{"MY_THING", "Billing Tools", "billing-tools"},
		{"MY_THING", "", CategoryCustom},
		{"MY_THING", "!!!", CategoryCustom},
	} {
		if got := ImportCategory(c.key, c.label); got != c.want {
			t.Errorf("ImportCategory(%s, %q) = %q, want %q", c.key, c.label, got, c.want)
		}
	}
}

// The README's import table lists every alias next to its key.
func TestREADMEListsEveryAlias(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // alias -> the table row's key cell
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 4 {
			continue
		}
		for _, a := range strings.Split(cells[1], ",") {
			rows[strings.Trim(strings.TrimSpace(a), "`")] = cells[2]
		}
	}
	for alias, key := range Aliases() {
		if cell, ok := rows[alias]; !ok || !strings.Contains(cell, "`"+key+"`") {
			t.Errorf("README's import table does not map %s to %s", alias, key)
		}
	}
}
