package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/internal/testserver"
)

// token is the example servers' admin token.
const token = testserver.DefaultAdminToken

// A service loads its Slack token and restarts when it changes: the cache
// reads it once, follows the change stream, and calls back on a
// restart-required change (Slack tokens are restart-required in the
// catalog).
func Example_slackBot() {
	addr, stop := exampleServer() // a throwaway secretsd for this example
	defer stop()
	admin, _ := client.New(context.Background(), addr, client.WithToken(token))
	defer admin.Close()
	admin.PutSecret(context.Background(), "SLACK_BOT_TOKEN", []byte("xoxb-1"))

	ctx, restart := context.WithCancel(context.Background())
	c, err := client.New(ctx, addr, client.WithToken(token), client.WithConsumer("orient-slack-bot", "host-1"))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	cache, err := c.NewCache(ctx, client.CacheKeys("SLACK_BOT_TOKEN"),
		client.OnRestartRequired(func(ch client.Change) { restart() }))
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	slackToken, err := cache.Get("SLACK_BOT_TOKEN")
	fmt.Println("started with", slackToken, err)

	admin.PutSecret(context.Background(), "SLACK_BOT_TOKEN", []byte("xoxb-2")) // someone rotates it
	<-ctx.Done()                                                               // a real service exits here and is restarted
	fmt.Println("restart required")
	// Output:
	// started with xoxb-1 <nil>
	// restart required
}

// Resolve tells where a value came from: the database beats the
// environment, which beats the defaults file.
func ExampleClient_Resolve() {
	addr, stop := exampleServer()
	defer stop()
	defaults := exampleDefaults("JIRA_BASE_URL: https://example.atlassian.net\nJIRA_EMAIL: bot@example.com\n")
	defer os.Remove(defaults)
	env := map[string]string{"JIRA_EMAIL": "ops@example.com"}

	ctx := context.Background()
	c, err := client.New(ctx, addr, client.WithToken(token), client.WithDefaultsFile(defaults),
		client.WithEnvironment(func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.PutSecret(ctx, "JIRA_API_TOKEN", []byte("jira-token"))

	for _, key := range []string{"JIRA_API_TOKEN", "JIRA_EMAIL", "JIRA_BASE_URL"} {
		r, err := c.Resolve(ctx, key)
		fmt.Println(key, "from", r.Describe(), err)
	}
	_, err = c.Resolve(ctx, "JIRA_USER")
	fmt.Println(errors.Is(err, client.ErrNotConfigured))
	// Output:
	// JIRA_API_TOKEN from database v1 <nil>
	// JIRA_EMAIL from environment <nil>
	// JIRA_BASE_URL from default <nil>
	// true
}

// Load fills a config struct from resolved values with go-envconfig tags.
func ExampleClient_Load() {
	addr, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, err := client.New(ctx, addr, client.WithToken(token),
		client.WithEnvironment(func(string) (string, bool) { return "", false }))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.PutSecret(ctx, "ANTHROPIC_API_KEY", []byte("sk-ant-example"))

	var cfg struct {
		AnthropicKey string        `env:"ANTHROPIC_API_KEY,required"`
		Timeout      time.Duration `env:"LLM_TIMEOUT,default=30s"`
	}
	sources, err := c.Load(ctx, &cfg)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(cfg.AnthropicKey) > 0, cfg.Timeout, sources["ANTHROPIC_API_KEY"].Source)
	// Output: true 30s database
}

// Watch delivers changes (never values) and resumes by itself after a
// disconnect.
func ExampleClient_Watch() {
	addr, stop := exampleServer()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := client.New(ctx, addr, client.WithToken(token))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	changes := c.Watch(ctx, client.WatchCategories("github"))
	<-changes // the first response (Created) says the watch is in place
	c.PutSecret(ctx, "GITHUB_TOKEN", []byte("ghp-example"))
	c.PutSecret(ctx, "OPENAI_API_KEY", []byte("sk-example")) // another category
	c.DeleteSecret(ctx, "GITHUB_TOKEN")

	for n := 0; n < 2; {
		r := <-changes
		if r.RelistRequired() {
			return // load again, then watch from the new revision
		}
		for _, e := range r.Events {
			fmt.Println(e.Kind, e.Key, e.RestartRequired)
			n++
		}
	}
	// Output:
	// value_added GITHUB_TOKEN false
	// secret_deleted GITHUB_TOKEN false
}

// Errors are matched with errors.Is and errors.As, never by message.
func ExampleError() {
	addr, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, err := client.New(ctx, addr, client.WithToken(token))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	s, _ := c.PutSecret(ctx, "CUSTOM_WEBHOOK", []byte("v1"))
	c.PutSecret(ctx, "CUSTOM_WEBHOOK", []byte("v2"))

	_, err = c.PutSecret(ctx, "CUSTOM_WEBHOOK", []byte("v3"), client.WithEtag(s.Etag))
	var e *client.Error
	fmt.Println(errors.Is(err, client.ErrConflict), errors.As(err, &e) && e.Reason == client.ReasonEtagMismatch)
	_, err = c.GetSecret(ctx, "CUSTOM_NONE")
	fmt.Println(errors.Is(err, client.ErrNotFound))
	// Output:
	// true true
	// true
}
