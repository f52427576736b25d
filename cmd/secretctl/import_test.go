package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orient-bot/secrets/client"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// orientEncrypt encrypts as Orient's encryptSecret does.
func orientEncrypt(t *testing.T, masterKey, plaintext string) (enc, iv, tag string) {
	t.Helper()
	key, err := orientKey([]byte(masterKey))
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCMWithNonceSize(block, 16)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 16)
	rand.Read(nonce)
	sealed := aead.Seal(nil, nonce, []byte(plaintext), nil)
	ct, tg := sealed[:len(sealed)-16], sealed[len(sealed)-16:]
	return hex.EncodeToString(ct), hex.EncodeToString(nonce), hex.EncodeToString(tg)
}

type orientRow struct {
	key, value, category, description string
	masterKey                         string // "" = the test's master key
}

// writeOrientDB builds a SQLite file with Orient's secrets table (the
// drizzle schema: integer timestamps, nullable category and description).
func writeOrientDB(t *testing.T, masterKey string, rows []orientRow) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "orient.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE secrets (
		key TEXT PRIMARY KEY NOT NULL,
		encrypted_value TEXT NOT NULL,
		iv TEXT NOT NULL,
		auth_tag TEXT NOT NULL,
		category TEXT,
		description TEXT,
		created_at INTEGER,
		updated_at INTEGER)`); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		mk := r.masterKey
		if mk == "" {
			mk = masterKey
		}
		enc, iv, tag := orientEncrypt(t, mk, r.value)
		var cat, desc any
		if r.category != "" {
			cat = r.category
		}
		if r.description != "" {
			desc = r.description
		}
		if _, err := db.Exec(`INSERT INTO secrets VALUES (?, ?, ?, ?, ?, ?, 1733000000, 1733000000)`,
			r.key, enc, iv, tag, cat, desc); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

const testMasterKey = "test-orient-master-key-0123456789abcdef"

func TestImportOrient(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := context.Background()
	pemValue := "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecretpem\n-----END RSA PRIVATE KEY-----\n"
	rows := []orientRow{
		{key: "ANTHROPIC_API_KEY", value: "sk-ant-orient-1", category: "ai", description: "Claude for the bots"},
		{key: "GEMINI_API_KEY", value: "gemini-alias-value", category: "ai"},
		{key: "GOOGLE_GEMINI_API_KEY", value: "gemini-other-alias", category: "ai"},
		{key: "JIRA_HOST", value: "https://example.atlassian.net", category: "jira"},
		{key: "GITHUB_APP_PRIVATE_KEY", value: pemValue, category: "github"},
		{key: "BILLING_API_KEY", value: "billing-value-9", category: "Billing Tools", description: "Stripe-like"},
		{key: "SLACK_BOT_TOKEN", value: "not-a-bot-token", category: "slack"},
		{key: "WRONG_KEY_ROW", value: "wrong-key-value", category: "custom", masterKey: "another-master-key-0123456789abcdefgh"},
	}
	db := writeOrientDB(t, testMasterKey, rows)
	env := map[string]string{"ORIENT_MASTER_KEY": testMasterKey}
	values := []string{"sk-ant-orient-1", "gemini-alias-value", "gemini-other-alias", "example.atlassian", "MIIEsecretpem",
		"billing-value-9", "not-a-bot-token", "wrong-key-value", testMasterKey}
	noValues := func(r result) {
		t.Helper()
		for _, v := range values {
			if strings.Contains(r.stdout+r.stderr, v) {
				t.Errorf("output shows a value (%q):\n%s%s", v, r.stdout, r.stderr)
			}
		}
	}

	// Dry run: reports, writes nothing.
	r := cli(t, ctx, srv.GRPCAddr(), "", env, "import", "orient", "--db", db, "--dry-run")
	noValues(r)
	if r.code != 1 || !strings.Contains(r.stdout, "dry run, nothing written: would have imported 5, unchanged 0, skipped 3") {
		t.Fatalf("dry run: %+v", r)
	}
	for _, want := range []string{"would create", "GEMINI_API_KEY", "GOOGLE_AI_API_KEY", "JIRA_BASE_URL",
		"WRONG_KEY_ROW", "does not decrypt", "SLACK_BOT_TOKEN must start with xoxb-", "GOOGLE_AI_API_KEY is taken from GEMINI_API_KEY"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "list", "--configured"); strings.Contains(r.stdout, "ANTHROPIC") {
		t.Fatalf("dry run wrote: %s", r.stdout)
	}

	// Import.
	r = cli(t, ctx, srv.GRPCAddr(), "", env, "import", "orient", "--db", db)
	noValues(r)
	if r.code != 1 || !strings.Contains(r.stdout, "imported 5, unchanged 0, skipped 3") {
		t.Fatalf("import: %+v", r)
	}
	for key, want := range map[string]string{
		"ANTHROPIC_API_KEY": "sk-ant-orient-1", "GOOGLE_AI_API_KEY": "gemini-alias-value",
		"JIRA_BASE_URL": "https://example.atlassian.net", "GITHUB_APP_PRIVATE_KEY": pemValue, "BILLING_API_KEY": "billing-value-9",
	} {
		if g := cli(t, ctx, srv.GRPCAddr(), "", nil, "get", key); g.stdout != want {
			t.Errorf("get %s = %q, want %q", key, g.stdout, want)
		}
	}
	for _, key := range []string{"WRONG_KEY_ROW", "SLACK_BOT_TOKEN"} {
		if g := cli(t, ctx, srv.GRPCAddr(), "", nil, "get", key); g.code == 0 {
			t.Errorf("%s was imported: %q", key, g.stdout)
		}
	}
	get := func(key string) *pb.Secret {
		t.Helper()
		res, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return res.GetSecret()
	}
	if s := get("ANTHROPIC_API_KEY"); s.GetDescription() != "Claude for the bots" || s.GetCategory() != "ai" {
		t.Errorf("ANTHROPIC_API_KEY: description %q category %q", s.GetDescription(), s.GetCategory())
	}
	if s := get("BILLING_API_KEY"); s.GetDescription() != "Stripe-like" || s.GetCategory() != "billing-tools" {
		t.Errorf("BILLING_API_KEY: description %q category %q", s.GetDescription(), s.GetCategory())
	}

	// Twice: nothing changes, no new version.
	r = cli(t, ctx, srv.GRPCAddr(), "", env, "import", "orient", "--db", db)
	if !strings.Contains(r.stdout, "imported 0, unchanged 5, skipped 3") {
		t.Fatalf("second import: %+v", r)
	}
	if v := get("ANTHROPIC_API_KEY").GetCurrentVersion(); v != 1 {
		t.Errorf("ANTHROPIC_API_KEY at version %d after two imports, want 1", v)
	}

	// A value changed in the service since is put back as a new version.
	cli(t, ctx, srv.GRPCAddr(), "sk-ant-changed-in-service\n", nil, "put", "ANTHROPIC_API_KEY")
	r = cli(t, ctx, srv.GRPCAddr(), "", env, "import", "orient", "--db", db)
	if !strings.Contains(r.stdout, "imported 1, unchanged 4, skipped 3") {
		t.Fatalf("import after a change: %+v", r)
	}
	if s := get("ANTHROPIC_API_KEY"); s.GetCurrentVersion() != 3 {
		t.Errorf("ANTHROPIC_API_KEY at version %d, want 3", s.GetCurrentVersion())
	}

	// The wrong master key decrypts nothing and imports nothing.
	r = cli(t, ctx, srv.GRPCAddr(), "", map[string]string{"ORIENT_MASTER_KEY": "a-wrong-master-key-0123456789abcdefgh"}, "import", "orient", "--db", db)
	if !strings.Contains(r.stdout, "imported 0, unchanged 0, skipped 8") {
		t.Fatalf("wrong master key: %+v", r)
	}
}

func TestImportOrientMasterKeySources(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := context.Background()
	db := writeOrientDB(t, orientDevMasterKey, []orientRow{{key: "CUSTOM_DEV", value: "dev-value"}})
	// No key: usage error, nothing read.
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "orient", "--db", db); r.code != 2 || !strings.Contains(r.stderr, "ORIENT_MASTER_KEY") {
		t.Fatalf("no master key: %+v", r)
	}
	// A short key is one Orient ignored.
	if r := cli(t, ctx, srv.GRPCAddr(), "", map[string]string{"ORIENT_MASTER_KEY": "short"}, "import", "orient", "--db", db); r.code != 2 || !strings.Contains(r.stderr, "--orient-dev-key") {
		t.Fatalf("short master key: %+v", r)
	}
	// Orient's development key, when asked for.
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "orient", "--db", db, "--orient-dev-key"); r.code != 0 || !strings.Contains(r.stdout, "imported 1, unchanged 0, skipped 0") {
		t.Fatalf("dev key: %+v", r)
	}
	// From a file (trailing newline dropped).
	db2 := writeOrientDB(t, testMasterKey, []orientRow{{key: "CUSTOM_FILE", value: "file-value"}})
	keyFile := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(keyFile, []byte(testMasterKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "orient", "--db", db2, "--master-key-file", keyFile); r.code != 0 || !strings.Contains(r.stdout, "imported 1,") {
		t.Fatalf("key file: %+v", r)
	}
	if g := cli(t, ctx, srv.GRPCAddr(), "", nil, "get", "CUSTOM_FILE"); g.stdout != "file-value" {
		t.Fatalf("get = %+v", g)
	}
	// A missing database file is an error, not an empty import.
	if r := cli(t, ctx, srv.GRPCAddr(), "", map[string]string{"ORIENT_MASTER_KEY": testMasterKey}, "import", "orient", "--db", filepath.Join(t.TempDir(), "missing.db")); r.code != 1 {
		t.Fatalf("missing file: %+v", r)
	}
}

func TestImportExportDotenv(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := context.Background()
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env")
	src := "# Orient\n" +
		"export OPENAI_API_KEY=sk-openai-1\n" +
		"GEMINI_API_KEY='gemini-value'\n" +
		"GITHUB_APP_PRIVATE_KEY=\"-----BEGIN KEY-----\nMIIEdotenvpem\n-----END KEY-----\n\"\n" +
		"SLACK_APP_TOKEN=xoxb-wrong-kind\n" +
		"CUSTOM_QUOTED=\"it's \\\"quoted\\\" $NOT_EXPANDED\"\n" +
		"node_env=production\n" +
		"EMPTY_ONE=\n"
	if err := os.WriteFile(envFile, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	values := []string{"sk-openai-1", "gemini-value", "MIIEdotenvpem", "xoxb-wrong-kind", "NOT_EXPANDED", "production"}

	r := cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "dotenv", envFile, "--dry-run")
	if !strings.Contains(r.stdout, "would have imported 4, unchanged 0, skipped 3") {
		t.Fatalf("dry run: %+v", r)
	}
	r = cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "dotenv", envFile)
	if r.code != 1 || !strings.Contains(r.stdout, "imported 4, unchanged 0, skipped 3") ||
		!strings.Contains(r.stdout, "SLACK_APP_TOKEN must start with xapp-") || !strings.Contains(r.stdout, "not a valid key") ||
		!strings.Contains(r.stdout, "must not be empty") {
		t.Fatalf("import: %+v", r)
	}
	for _, v := range values {
		if strings.Contains(r.stdout+r.stderr, v) {
			t.Errorf("import output shows %q", v)
		}
	}
	for key, want := range map[string]string{
		"OPENAI_API_KEY": "sk-openai-1", "GOOGLE_AI_API_KEY": "gemini-value",
		"GITHUB_APP_PRIVATE_KEY": "-----BEGIN KEY-----\nMIIEdotenvpem\n-----END KEY-----\n",
		"CUSTOM_QUOTED":          `it's "quoted" $NOT_EXPANDED`,
	} {
		if g := cli(t, ctx, srv.GRPCAddr(), "", nil, "get", key); g.stdout != want {
			t.Errorf("get %s = %q, want %q", key, g.stdout, want)
		}
	}
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "dotenv", envFile); !strings.Contains(r.stdout, "imported 0, unchanged 4, skipped 3") {
		t.Fatalf("second import: %+v", r)
	}

	// Export needs --plaintext.
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "export", "dotenv"); r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "--plaintext") {
		t.Fatalf("export without --plaintext: %+v", r)
	}
	exp := cli(t, ctx, srv.GRPCAddr(), "", nil, "export", "dotenv", "--plaintext")
	if exp.code != 0 {
		t.Fatalf("export: %+v", exp)
	}
	// Round trip: the export parses back to the same values, and importing
	// it changes nothing.
	parsed, err := parseDotenv([]byte(exp.stdout))
	if err != nil {
		t.Fatalf("export does not parse: %v\n%s", err, exp.stdout)
	}
	if len(parsed) != 4 {
		t.Fatalf("export has %d entries, want 4:\n%s", len(parsed), exp.stdout)
	}
	for _, e := range parsed {
		if g := cli(t, ctx, srv.GRPCAddr(), "", nil, "get", e.Name); g.stdout != string(e.Value) {
			t.Errorf("exported %s = %q, stored %q", e.Name, e.Value, g.stdout)
		}
	}
	expFile := filepath.Join(dir, "exported.env")
	if err := os.WriteFile(expFile, []byte(exp.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, ctx, srv.GRPCAddr(), "", nil, "import", "dotenv", expFile); r.code != 0 || !strings.Contains(r.stdout, "imported 0, unchanged 4, skipped 0") {
		t.Fatalf("re-import of the export: %+v", r)
	}
	// The export's reads are audited as access.
	ev, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "CUSTOM_QUOTED", Action: "BatchAccessSecrets"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ev.GetEvents()) == 0 {
		t.Error("export's access of CUSTOM_QUOTED not audited")
	}
}

// An import after a delete writes again: the same value (whose first
// create's request id would replay "created" and write nothing) and a
// different one (whose id would be refused as reused for 24 h), for a
// custom key and a catalog key alike, and again after a second delete.
func TestImportAfterDelete(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := context.Background()
	addr := srv.GRPCAddr()
	c := testClient(t, srv)
	envFile := filepath.Join(t.TempDir(), ".env")
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(envFile, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	deleteAll := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, err := c.DeleteSecret(ctx, k); err != nil {
				t.Fatalf("delete %s: %v", k, err)
			}
		}
	}
	check := func(step string, want map[string]string) {
		t.Helper()
		for k, v := range want {
			if g := cli(t, ctx, addr, "", nil, "get", k); g.code != 0 || g.stdout != v {
				t.Errorf("%s: get %s = %+v, want %q", step, k, g, v)
			}
		}
	}
	keys := []string{"CUSTOM_SAME", "CUSTOM_CHANGED", "OPENAI_API_KEY"}

	write("CUSTOM_SAME=foo\nCUSTOM_CHANGED=one\nOPENAI_API_KEY=sk-first\n")
	if r := cli(t, ctx, addr, "", nil, "import", "dotenv", envFile); r.code != 0 || !strings.Contains(r.stdout, "imported 3, unchanged 0, skipped 0") {
		t.Fatalf("first import: %+v", r)
	}
	deleteAll(keys...)
	write("CUSTOM_SAME=foo\nCUSTOM_CHANGED=two\nOPENAI_API_KEY=sk-second\n")
	r := cli(t, ctx, addr, "", nil, "import", "dotenv", envFile)
	if r.code != 0 || !strings.Contains(r.stdout, "imported 3, unchanged 0, skipped 0") {
		t.Errorf("import after a delete: %+v", r)
	}
	check("after a delete", map[string]string{"CUSTOM_SAME": "foo", "CUSTOM_CHANGED": "two", "OPENAI_API_KEY": "sk-second"})

	// Twice more: the replayed answers are followed from one deletion to
	// the next, and a value seen before comes back.
	for i, src := range []string{
		"CUSTOM_SAME=foo\nCUSTOM_CHANGED=one\nOPENAI_API_KEY=sk-first\n",
		"CUSTOM_SAME=foo\nCUSTOM_CHANGED=two\nOPENAI_API_KEY=sk-second\n",
	} {
		deleteAll(keys...)
		write(src)
		if r := cli(t, ctx, addr, "", nil, "import", "dotenv", envFile); r.code != 0 || !strings.Contains(r.stdout, "imported 3,") {
			t.Errorf("import %d after deletes: %+v", i+3, r)
		}
		entries, _ := parseDotenv([]byte(src))
		want := map[string]string{}
		for _, e := range entries {
			want[e.Name] = string(e.Value)
		}
		check(fmt.Sprintf("import %d", i+3), want)
	}
	for _, k := range keys {
		if s, err := c.GetSecret(ctx, k); err != nil || s.CurrentVersion != 1 {
			t.Errorf("%s: version %d (%v), want 1: each import after a delete wrote once", k, s.CurrentVersion, err)
		}
	}
}

// Runs of the same import that planned against the same state write once,
// after a delete too: each run's write of a deleted secret follows the
// stale answer to the same new request id, whatever revision it listed at.
func TestImportWriteOnceAfterDelete(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := context.Background()
	c := testClient(t, srv)
	a := &app{}
	it := importItem{Source: "CUSTOM_ONCE", Key: "CUSTOM_ONCE", Value: []byte("v")}
	_, rev, err := c.ListSecrets(ctx, client.ListSecretsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if reason := a.importWrite(ctx, c, "dotenv", it, "", rev); reason != "" {
		t.Fatalf("first write: %s", reason)
	}
	if _, err := c.DeleteSecret(ctx, "CUSTOM_ONCE"); err != nil {
		t.Fatal(err)
	}
	// Two runs list after the delete, at different revisions (something
	// else was written between their listings), then both write.
	_, rev1, err := c.ListSecrets(ctx, client.ListSecretsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	putValue(t, c, "CUSTOM_UNRELATED", "x")
	_, rev2, err := c.ListSecrets(ctx, client.ListSecretsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rev1 == rev2 {
		t.Fatalf("the listings share revision %d", rev1)
	}
	for i, listed := range []int64{rev1, rev2, rev1} {
		if reason := a.importWrite(ctx, c, "dotenv", it, "", listed); reason != "" {
			t.Fatalf("run %d: %s", i+1, reason)
		}
	}
	s, err := c.GetSecret(ctx, "CUSTOM_ONCE")
	if err != nil || s.CurrentVersion != 1 {
		t.Fatalf("CUSTOM_ONCE at version %d (%v) after three runs of one plan, want 1", s.CurrentVersion, err)
	}
	if g := cli(t, ctx, srv.GRPCAddr(), "", nil, "get", "CUSTOM_ONCE"); g.stdout != "v" {
		t.Fatalf("get = %+v", g)
	}
}
