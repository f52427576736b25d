package auth

import (
	"os"
	"path/filepath"
	"testing"
)

// A certificate identity's role and categories are normalised as a
// token's are: "Admin" is admin (not a role no policy lists), "Slack" is
// the category slack, and a category CreateToken would refuse is refused.
func TestCertIdentitiesNormaliseRoleAndCategories(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ids.json")
	if err := os.WriteFile(file, []byte(`[{"subject":"bot","role":"Admin"},{"subject":"svc","role":"reader","scope":{"categories":["Slack"]}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	ids, err := LoadCertIdentities(file)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	pol, _ := PolicyFor("/orient.secrets.v1.SecretService/ListSecrets")
	if !pol.Allows(ids[0].Role) {
		t.Errorf("identity with role %q is allowed nothing", ids[0].Role)
	}
	if !ids[1].Scope.Allows("SLACK_BOT_TOKEN", "slack") {
		t.Errorf("category %q never matches category \"slack\"", ids[1].Scope.Categories[0])
	}
	if err := os.WriteFile(file, []byte(`[{"subject":"svc","role":"reader","scope":{"categories":["no such/category!"]}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCertIdentities(file); err == nil {
		t.Errorf("a malformed category was accepted")
	}
}
