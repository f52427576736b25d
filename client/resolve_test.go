package client_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sethvargo/go-envconfig"

	"github.com/orient-bot/secrets/client"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolveOrder(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	defaults := writeFile(t, "defaults.yaml", "CUSTOM_ORDER: from-default\nCUSTOM_ONLY_DEFAULT: d\nPORT: 8080\n")
	env := envOf(map[string]string{"CUSTOM_ORDER": "from-env", "CUSTOM_ONLY_ENV": "e"})
	c := dial(t, srv.GRPCAddr(), client.WithEnvironment(env), client.WithDefaultsFile(defaults))
	ctx := context.Background()

	type got struct {
		Value  string
		Source client.Source
	}
	check := func(key string, want got) {
		t.Helper()
		r, err := c.Resolve(ctx, key)
		if err != nil {
			t.Fatalf("Resolve(%s): %v", key, err)
		}
		if diff := cmp.Diff(want, got{r.Value, r.Source}); diff != "" {
			t.Fatalf("Resolve(%s) (-want +got):\n%s", key, diff)
		}
		if r.Fallback() {
			t.Fatalf("Resolve(%s) says the service was unreachable: %v", key, r.ServiceErr)
		}
	}
	// Nothing in the database: the environment beats the default.
	check("CUSTOM_ORDER", got{"from-env", client.SourceEnvironment})
	// A database value beats both.
	put(t, c, "CUSTOM_ORDER", "from-db")
	check("CUSTOM_ORDER", got{"from-db", client.SourceDatabase})
	// Deleted from the database: the environment wins again.
	if _, err := c.DeleteSecret(ctx, "CUSTOM_ORDER"); err != nil {
		t.Fatal(err)
	}
	check("CUSTOM_ORDER", got{"from-env", client.SourceEnvironment})
	check("CUSTOM_ONLY_ENV", got{"e", client.SourceEnvironment})
	check("CUSTOM_ONLY_DEFAULT", got{"d", client.SourceDefault})
	// Not a valid key: never asked of the service, still resolved.
	check("PORT", got{"8080", client.SourceDefault})
	// A disabled latest version is no value: fall through.
	put(t, c, "CUSTOM_ONLY_ENV", "db")
	check("CUSTOM_ONLY_ENV", got{"db", client.SourceDatabase})
	if _, err := c.DisableSecretVersion(ctx, "CUSTOM_ONLY_ENV", client.Latest); err != nil {
		t.Fatal(err)
	}
	check("CUSTOM_ONLY_ENV", got{"e", client.SourceEnvironment})

	_, err := c.Resolve(ctx, "CUSTOM_NOWHERE")
	var nc *client.NotConfiguredError
	if !errors.Is(err, client.ErrNotConfigured) || !errors.As(err, &nc) {
		t.Fatalf("missing key: %v", err)
	}
	want := []string{"the secrets service at " + srv.GRPCAddr(), "environment variable CUSTOM_NOWHERE", "defaults file " + defaults}
	if diff := cmp.Diff(want, nc.Looked); diff != "" {
		t.Fatalf("looked in (-want +got):\n%s", diff)
	}

	all, err := c.ResolveAll(ctx, []string{"CUSTOM_ONLY_ENV", "CUSTOM_ONLY_DEFAULT", "CUSTOM_NOWHERE"})
	if !errors.Is(err, client.ErrNotConfigured) || len(all) != 2 || all["CUSTOM_ONLY_DEFAULT"].Source != client.SourceDefault {
		t.Fatalf("ResolveAll = %v, %v", all, err)
	}
}

func TestResolveWhenServiceUnreachable(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	env := envOf(map[string]string{"CUSTOM_KNOWN": "env-known", "CUSTOM_ENV": "env"})
	c := dial(t, srv.GRPCAddr(), client.WithEnvironment(env), client.WithDefaults(map[string]string{"CUSTOM_DEF": "def"}))
	ctx := context.Background()
	put(t, c, "CUSTOM_KNOWN", "db-known")
	if r, err := c.Resolve(ctx, "CUSTOM_KNOWN"); err != nil || r.Source != client.SourceDatabase {
		t.Fatalf("Resolve while up = %v, %v", r, err)
	}
	srv.Stop()
	time.Sleep(10 * time.Millisecond)

	r, err := c.Resolve(ctx, "CUSTOM_KNOWN")
	if err != nil || r.Source != client.SourceLastKnown || r.Value != "db-known" || r.Age <= 0 || !r.Fallback() || r.Version != 1 {
		t.Fatalf("last known = %v (%q, age %v), %v", r, r.Value, r.Age, err)
	}
	if !errors.Is(r.ServiceErr, client.ErrUnavailable) || !strings.Contains(r.Describe(), "unreachable") {
		t.Fatalf("fallback reason: %v / %s", r.ServiceErr, r.Describe())
	}
	if r, err := c.Resolve(ctx, "CUSTOM_ENV"); err != nil || r.Source != client.SourceEnvironment || !r.Fallback() {
		t.Fatalf("env fallback = %v, %v", r, err)
	}
	if r, err := c.Resolve(ctx, "CUSTOM_DEF"); err != nil || r.Source != client.SourceDefault || !r.Fallback() {
		t.Fatalf("default fallback = %v, %v", r, err)
	}
	_, err = c.Resolve(ctx, "CUSTOM_NOWHERE")
	var nc *client.NotConfiguredError
	if !errors.As(err, &nc) || !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("missing while down: %v", err)
	}
	// A fresh client, as at a service's start: environment and defaults.
	fresh := dial(t, srv.GRPCAddr(), client.WithEnvironment(env))
	if r, err := fresh.Resolve(ctx, "CUSTOM_KNOWN"); err != nil || r.Source != client.SourceEnvironment || r.Value != "env-known" {
		t.Fatalf("fresh client while down = %v, %v", r, err)
	}
}

func TestLoadDefaultsFile(t *testing.T) {
	t.Parallel()
	yml := writeFile(t, "d.yaml", "# defaults\nA: text\nB: 42\nC: true\nD: ~\n")
	got, err := client.LoadDefaultsFile(yml)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"A": "text", "B": "42", "C": "true"}, got); diff != "" {
		t.Fatalf("yaml (-want +got):\n%s", diff)
	}
	js := writeFile(t, "d.json", `{"A": "text", "B": 42}`)
	if got, err := client.LoadDefaultsFile(js); err != nil || got["B"] != "42" {
		t.Fatalf("json = %v, %v", got, err)
	}
	nested := writeFile(t, "n.yaml", "A:\n  b: 1\n")
	if _, err := client.LoadDefaultsFile(nested); err == nil || !strings.Contains(err.Error(), "A must be a plain value") {
		t.Fatalf("nested: %v", err)
	}
	if _, err := client.New(context.Background(), "127.0.0.1:1", client.WithDefaultsFile(filepath.Join(t.TempDir(), "none.yaml"))); err == nil {
		t.Fatal("missing defaults file accepted")
	}
}

type jiraConfig struct {
	Token string `env:"API_TOKEN,required"`
	URL   string `env:"BASE_URL,default=https://jira.example.com"`
}

type botConfig struct {
	SlackToken string        `env:"SLACK_BOT_TOKEN,required"`
	Workers    int           `env:"CUSTOM_WORKERS,default=4"`
	Timeout    time.Duration `env:"CUSTOM_TIMEOUT"`
	Channels   []string      `env:"CUSTOM_CHANNELS"`
	Debug      bool          `env:"CUSTOM_DEBUG"`
	JIRA       jiraConfig    `env:",prefix=JIRA_"`
}

func TestLoad(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	env := envOf(map[string]string{"CUSTOM_TIMEOUT": "3s", "SLACK_BOT_TOKEN": "xoxb-env"})
	c := dial(t, srv.GRPCAddr(), client.WithEnvironment(env), client.WithDefaults(map[string]string{"CUSTOM_CHANNELS": "ops,dev", "CUSTOM_DEBUG": "true"}))
	put(t, c, "SLACK_BOT_TOKEN", "xoxb-db")
	put(t, c, "JIRA_API_TOKEN", "jira-db")

	var cfg botConfig
	sources, err := c.Load(context.Background(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := botConfig{SlackToken: "xoxb-db", Workers: 4, Timeout: 3 * time.Second, Channels: []string{"ops", "dev"}, Debug: true,
		JIRA: jiraConfig{Token: "jira-db", URL: "https://jira.example.com"}}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Fatalf("Load (-want +got):\n%s", diff)
	}
	gotSources := map[string]client.Source{}
	for k, r := range sources {
		gotSources[k] = r.Source
	}
	wantSources := map[string]client.Source{"SLACK_BOT_TOKEN": client.SourceDatabase, "JIRA_API_TOKEN": client.SourceDatabase,
		"CUSTOM_TIMEOUT": client.SourceEnvironment, "CUSTOM_CHANNELS": client.SourceDefault, "CUSTOM_DEBUG": client.SourceDefault}
	if diff := cmp.Diff(wantSources, gotSources); diff != "" {
		t.Fatalf("sources (-want +got):\n%s", diff)
	}

	// A required key that is nowhere names where it looked.
	if _, err := c.DeleteSecret(context.Background(), "JIRA_API_TOKEN"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Load(context.Background(), &botConfig{})
	if !errors.Is(err, client.ErrNotConfigured) || !errors.Is(err, envconfig.ErrMissingRequired) || !strings.Contains(err.Error(), "environment variable JIRA_API_TOKEN") {
		t.Fatalf("missing required: %v", err)
	}
	// A value of the wrong type is an error naming the field.
	bad := dial(t, srv.GRPCAddr(), client.WithEnvironment(envOf(map[string]string{"SLACK_BOT_TOKEN": "x", "JIRA_API_TOKEN": "y", "CUSTOM_WORKERS": "many"})))
	if _, err := bad.Load(context.Background(), &botConfig{}); err == nil || !strings.Contains(err.Error(), "Workers") {
		t.Fatalf("bad int: %v", err)
	}
	// ... and never quotes the value, which is a secret: a token put in the
	// wrong variable, a URL whose password does not parse.
	type withURL struct {
		DB *url.URL `env:"CUSTOM_DATABASE_URL"`
		N  int      `env:"CUSTOM_WORKERS"`
	}
	for _, v := range map[string]string{"CUSTOM_DATABASE_URL": "postgres://orient:s3cr%t@db/x", "CUSTOM_WORKERS": "ghp_leakedToken"} {
		key := "CUSTOM_WORKERS"
		if strings.HasPrefix(v, "postgres") {
			key = "CUSTOM_DATABASE_URL"
		}
		leaky := dial(t, srv.GRPCAddr(), client.WithEnvironment(envOf(map[string]string{key: v})))
		_, err := leaky.Load(context.Background(), &withURL{})
		if err == nil || strings.Contains(err.Error(), "s3cr") || strings.Contains(err.Error(), "leakedToken") || !errors.Is(err, client.ErrDecode) {
			t.Errorf("%s that does not decode: %v; want ErrDecode, the value not shown", key, err)
		}
	}
	if _, err := c.Load(context.Background(), cfg); err == nil {
		t.Fatal("Load accepted a non-pointer")
	}
}

// TestResolveForgetsWhatWasRevoked: a value this client saw deleted, or
// whose version it saw disabled, is not served as the last-known value
// during a later outage (it was, until the next successful read: a
// leaked token revoked by deleting it came back while secretsd
// restarted).
func TestResolveForgetsWhatWasRevoked(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr())
	ctx := context.Background()
	put(t, c, "CUSTOM_LEAKED", "leaked")
	put(t, c, "CUSTOM_KEPT", "kept")
	for _, k := range []string{"CUSTOM_LEAKED", "CUSTOM_KEPT"} {
		if r, err := c.Resolve(ctx, k); err != nil || r.Source != client.SourceDatabase {
			t.Fatalf("Resolve(%s) while up = %v, %v", k, r, err)
		}
	}
	// The client follows the keys (a cache is one of its watches).
	cache, err := c.NewCache(ctx, client.CacheKeys("CUSTOM_LEAKED", "CUSTOM_KEPT"), client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if _, err := c.DeleteSecret(ctx, "CUSTOM_LEAKED"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the cache never saw the delete", func() bool {
		_, err := cache.Get("CUSTOM_LEAKED")
		return err != nil
	})
	srv.Stop()
	time.Sleep(10 * time.Millisecond)
	if r, err := c.Resolve(ctx, "CUSTOM_LEAKED"); err == nil || r.Value == "leaked" {
		t.Errorf("deleted, then the service down: %v (%q), %v; want not configured", r, r.Value, err)
	}
	if r, err := c.Resolve(ctx, "CUSTOM_KEPT"); err != nil || r.Source != client.SourceLastKnown || r.Value != "kept" {
		t.Errorf("untouched, the service down: %v, %v; want the last-known value", r, err)
	}
}
