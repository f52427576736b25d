package api

import (
	"testing"

	"github.com/orient-bot/secrets/server/store"
)

// TestWatchFilterNamesNothing: a watch that names no keys and no categories
// holds no maps (match, run for every stream at every change, then loads
// nothing but the filter itself), and still passes every change its scope
// allows; named keys and categories still filter.
func TestWatchFilterNamesNothing(t *testing.T) {
	f, _, err := parseWatchScope(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.keys != nil || f.categories != nil {
		t.Fatalf("a filter naming nothing holds maps: keys %v, categories %v", f.keys, f.categories)
	}
	if !f.match(&store.Change{Key: "SLACK_BOT_TOKEN", Category: "slack"}) {
		t.Fatal("a filter naming nothing dropped a change")
	}

	f, _, err = parseWatchScope([]string{"SLACK_BOT_TOKEN"}, []string{"slack"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key, category string
		want          bool
	}{
		{"SLACK_BOT_TOKEN", "slack", true},
		{"GITHUB_TOKEN", "slack", false},
		{"SLACK_BOT_TOKEN", "github", false},
	} {
		if got := f.match(&store.Change{Key: c.key, Category: c.category}); got != c.want {
			t.Errorf("match(%s, %s) = %v, want %v", c.key, c.category, got, c.want)
		}
	}
}
