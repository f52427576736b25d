package app_test

import (
	"os"
	execpkg "os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/orient-bot/secrets/internal/testserver"
)

// apiTools is tools/api-check/node_modules/.bin (scripts/ensure-api-tools.sh
// installs it from the pinned lock file); without it the test skips, unless
// REQUIRE_API_TOOLS is set (CI).
func apiTools(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "tools", "api-check", "node_modules", ".bin")
	if _, err := os.Stat(filepath.Join(dir, "redocly")); err != nil {
		if os.Getenv("REQUIRE_API_TOOLS") != "" {
			t.Fatal("the OpenAPI tools are not installed: run scripts/ensure-api-tools.sh")
		}
		t.Skip("the OpenAPI tools are not installed (scripts/ensure-api-tools.sh)")
	}
	return dir
}

// TestServedOpenAPIPassesRealTools lints the document a server serves at
// /openapi.json with Redocly and Spectral (zero errors), and compiles a
// client generated from it by openapi-typescript with tsc --strict: what a
// dashboard team does first.
func TestServedOpenAPIPassesRealTools(t *testing.T) {
	t.Parallel()
	bin := apiTools(t)
	srv := testserver.Start(t, testserver.Options{})
	resp, body := rawDo(t, "GET", srv.BaseURL+"/openapi.json", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/openapi.json: %d", resp.StatusCode)
	}
	dir := t.TempDir()
	doc := filepath.Join(dir, "openapi.json")
	if err := os.WriteFile(doc, body, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := execpkg.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "REDOCLY_TELEMETRY=off", "REDOCLY_SUPPRESS_UPDATE_NOTICE=true")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("redocly", "lint", "--format=stylish", doc)
	if err := os.WriteFile(filepath.Join(dir, ".spectral.yaml"), []byte("extends: [\"spectral:oas\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("spectral", "lint", "--fail-severity=error", "--ruleset", filepath.Join(dir, ".spectral.yaml"), doc)
	run("openapi-typescript", doc, "-o", filepath.Join(dir, "api.d.ts"))
	client := `import type { paths, components } from "./api";
type Secret = components["schemas"]["Secret"];
type GetSecret = paths["/v1/secrets/{key}"]["get"]["responses"]["200"]["content"]["application/json"];
export function describe(s: GetSecret): string {
  const sec: Secret | undefined = s.secret;
  return (sec?.key ?? "") + " v" + (sec?.currentVersion ?? "0");
}

// A typed call: path parameters in the path, the body without them (the
// gateway takes them from the path).
type Body<P extends keyof paths, M extends keyof paths[P]> =
  paths[P][M] extends { requestBody: { content: { "application/json": infer B } } } ? B : never;
type PathOf<P extends keyof paths, M extends keyof paths[P]> =
  paths[P][M] extends { parameters: { path: infer A } } ? A : never;
declare function call<P extends keyof paths, M extends keyof paths[P]>(
  path: P, method: M, params: PathOf<P, M>, body: Body<P, M>): Promise<void>;

export async function writes(): Promise<void> {
  await call("/v1/secrets/{key}", "put", { key: "SLACK_BOT_TOKEN" }, { value: "eG94Yi0xMjM=" });
  await call("/v1/secrets/{key}", "patch", { key: "SLACK_BOT_TOKEN" }, { description: "prod bot" });
  await call("/v1/secrets/{key}/versions/{version}:disable", "post", { key: "SLACK_BOT_TOKEN", version: "1" }, {});
  await call("/v1/secrets/{key}:check", "post", { key: "SLACK_BOT_TOKEN" }, {});
  await call("/v1/providers/defaults/{useCase}", "put", { useCase: "chat" }, { provider: "anthropic", model: "claude-sonnet-4-5" });
  // @ts-expect-error: the key is the path's, not the body's
  await call("/v1/secrets/{key}", "put", { key: "SLACK_BOT_TOKEN" }, { key: "SLACK_BOT_TOKEN", value: "eG94Yi0xMjM=" });
  // @ts-expect-error: the use case is the path's, not the body's
  await call("/v1/providers/defaults/{useCase}", "put", { useCase: "chat" }, { useCase: "chat", provider: "anthropic" });
}
`
	if err := os.WriteFile(filepath.Join(dir, "client.ts"), []byte(client), 0o644); err != nil {
		t.Fatal(err)
	}
	run("tsc", "--strict", "--noEmit", "--target", "es2022", "--moduleResolution", "node", filepath.Join(dir, "client.ts"))
}
