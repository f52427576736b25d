package deploy

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/orient-bot/secrets/migrations"
)

// composeFile is the part of the Compose specification compose.yaml uses.
// Decoded with unknown fields as errors: a misspelled key is an error here,
// not a setting compose silently ignores.
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
}

type composeService struct {
	Image     string `yaml:"image"`
	Restart   string `yaml:"restart"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck *struct {
		Test     []string `yaml:"test"`
		Interval string   `yaml:"interval"`
		Timeout  string   `yaml:"timeout"`
		Retries  int      `yaml:"retries"`
	} `yaml:"healthcheck"`
	Secrets     []string `yaml:"secrets"`
	Ports       []string `yaml:"ports"`
	ReadOnly    bool     `yaml:"read_only"`
	Tmpfs       []string `yaml:"tmpfs"`
	SecurityOpt []string `yaml:"security_opt"`
	CapDrop     []string `yaml:"cap_drop"`
}

var composeVar = regexp.MustCompile(`\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|[A-Za-z_][A-Za-z0-9_]*)`)

// interpolate does compose's variable substitution ($$, $VAR, ${VAR},
// ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}).
func interpolate(s string, env map[string]string) (string, error) {
	var err error
	out := composeVar.ReplaceAllStringFunc(s, func(m string) string {
		sub := composeVar.FindStringSubmatch(m)
		if sub[1] == "$" {
			return "$"
		}
		name := sub[2]
		if name == "" {
			name = sub[1]
		}
		v, set := env[name]
		empty := !set || (strings.HasPrefix(sub[3], ":") && v == "")
		switch strings.TrimPrefix(sub[3], ":") {
		case "-":
			if empty {
				return sub[4]
			}
		case "?":
			if empty {
				err = fmt.Errorf("%s: %s", name, sub[4])
			}
		}
		return v
	})
	return out, err
}

// loadCompose decodes compose.yaml strictly and interpolates every string
// of its services with env.
func loadCompose(t *testing.T, env map[string]string) composeFile {
	t.Helper()
	raw, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	sub := func(where string, s *string) {
		v, err := interpolate(*s, env)
		if err != nil {
			t.Fatalf("compose.yaml %s: %v", where, err)
		}
		*s = v
	}
	for name, svc := range f.Services {
		sub(name+".image", &svc.Image)
		for i := range svc.Command {
			sub(name+".command", &svc.Command[i])
		}
		for k, v := range svc.Environment {
			sub(name+".environment."+k, &v)
			svc.Environment[k] = v
		}
		f.Services[name] = svc
	}
	return f
}

// TestCompose checks what `compose up` needs to end with a serving
// secretsd: a one-shot `secretsd migrate` as the tables' owner, the service
// role's password set from the environment, and secretsd connecting as
// that role (it refuses the owner and superusers) only after both
// completed.
func TestCompose(t *testing.T) {
	env := map[string]string{
		"POSTGRES_PASSWORD":        "owner-Pw_1",
		"SECRETS_SERVICE_PASSWORD": "service-Pw_2",
		"SECRETS_KEK_URL":          "base64key://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
	}
	f := loadCompose(t, env)
	pg, ok := f.Services["postgres"]
	if !ok {
		t.Fatal("no postgres service")
	}
	owner, db := pg.Environment["POSTGRES_USER"], pg.Environment["POSTGRES_DB"]
	if owner == "" || db == "" {
		t.Fatalf("postgres: POSTGRES_USER %q, POSTGRES_DB %q", owner, db)
	}
	server, ok := f.Services["secretsd"]
	if !ok {
		t.Fatal("no secretsd service")
	}
	serviceRole := migrations.DefaultServiceRole

	// dbURL parses a service's DATABASE_URL and checks it names the
	// compose database.
	dbURL := func(svc string) *url.URL {
		t.Helper()
		u, err := url.Parse(f.Services[svc].Environment["DATABASE_URL"])
		if err != nil || u.User == nil {
			t.Fatalf("%s: DATABASE_URL is not a URL with a user (%v); are the passwords URL-safe?", svc, err)
		}
		if u.Hostname() != "postgres" || u.Path != "/"+db {
			t.Errorf("%s: DATABASE_URL names %s%s, want the postgres service's database %s", svc, u.Host, u.Path, db)
		}
		return u
	}

	// The server: the service role, with its password.
	su := dbURL("secretsd")
	if su.User.Username() != serviceRole {
		t.Errorf("secretsd connects as %q, want the service role %q: it refuses %q, the image's superuser and the tables' owner", su.User.Username(), serviceRole, owner)
	}
	servicePassword, _ := su.User.Password()
	if servicePassword != env["SECRETS_SERVICE_PASSWORD"] {
		t.Errorf("secretsd's database password is %q, want SECRETS_SERVICE_PASSWORD's", servicePassword)
	}

	// The migration: the server's image, `migrate`, as the owner.
	var migrate string
	for name, svc := range f.Services {
		if svc.Image == server.Image && slices.Equal(svc.Command, []string{"migrate"}) {
			migrate = name
		}
	}
	if migrate == "" {
		t.Fatalf("no service runs `secretsd migrate` (the server's image with command [migrate]): a service role cannot migrate, and secretsd refuses to start on a schema behind it")
	}
	mu := dbURL(migrate)
	if p, _ := mu.User.Password(); mu.User.Username() != owner || p != env["POSTGRES_PASSWORD"] {
		t.Errorf("%s connects as %q, want the tables' owner %q with POSTGRES_PASSWORD", migrate, mu.User.Username(), owner)
	}

	// The password: a one-shot psql that reads it from its environment and
	// quotes it, after the migration created the role.
	setPassword := regexp.MustCompile(`(?m)^\\getenv (\w+) (\w+)\nALTER ROLE ` + serviceRole + ` PASSWORD :'(\w+)';$`)
	var pwService string
	for name, svc := range f.Services {
		m := setPassword.FindStringSubmatch(strings.Join(svc.Command, " "))
		if m == nil {
			continue
		}
		pwService = name
		if m[1] != m[3] {
			t.Errorf("%s: \\getenv sets %s but ALTER ROLE uses %s", name, m[1], m[3])
		}
		if got := svc.Environment[m[2]]; got != servicePassword {
			t.Errorf("%s sets the password from %s (%q), secretsd connects with %q", name, m[2], got, servicePassword)
		}
		if svc.Environment["PGUSER"] != owner || svc.Environment["PGHOST"] != "postgres" || svc.Environment["PGDATABASE"] != db ||
			svc.Environment["PGPASSWORD"] != env["POSTGRES_PASSWORD"] {
			t.Errorf("%s: psql must connect to %s on postgres as %s with POSTGRES_PASSWORD (PGUSER, PGHOST, PGDATABASE, PGPASSWORD)", name, db, owner)
		}
		if svc.DependsOn[migrate].Condition != "service_completed_successfully" {
			t.Errorf("%s must wait for %s to complete (it creates the role)", name, migrate)
		}
	}
	if pwService == "" {
		t.Fatalf("no service sets %s's password (\\getenv VAR ENV, then ALTER ROLE %s PASSWORD :'VAR';)", serviceRole, serviceRole)
	}
	for _, dep := range []string{migrate, pwService} {
		if c := server.DependsOn[dep].Condition; c != "service_completed_successfully" {
			t.Errorf("secretsd depends on %s with condition %q, want service_completed_successfully", dep, c)
		}
	}
	for _, name := range []string{migrate, pwService} {
		if r := f.Services[name].Restart; r != "on-failure" && r != "no" && r != "" {
			t.Errorf("%s: restart %q would run the one-shot again after it succeeded", name, r)
		}
	}

	// The audit signing key: a compose secret, where the flag says.
	keyOK := false
	for _, s := range server.Secrets {
		if _, ok := f.Secrets[s]; ok && slices.Contains(server.Command, "--audit-signing-key=/run/secrets/"+s) {
			keyOK = true
		}
	}
	if !keyOK {
		t.Errorf("--audit-signing-key must name a compose secret of secretsd (/run/secrets/NAME)")
	}
	for _, p := range server.Ports {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("port %s is published beyond loopback", p)
		}
	}
}

// TestComposeHeader: every variable compose.yaml requires is generated by
// the commands at its top, and the passwords that go into database URLs
// are generated URL-safe (standard base64 has '/', which ends a URL's host).
func TestComposeHeader(t *testing.T) {
	raw, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	exports := map[string]string{}
	for line := range strings.Lines(string(raw)) {
		if m := regexp.MustCompile(`^#\s+export (\w+)=(.*)$`).FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			exports[m[1]] = m[2]
		}
	}
	required := regexp.MustCompile(`\$\{(\w+):\?`).FindAllStringSubmatch(string(raw), -1)
	for _, m := range required {
		if _, ok := exports[m[1]]; !ok {
			t.Errorf("compose.yaml requires %s but its header does not export it", m[1])
		}
	}
	inURL := regexp.MustCompile(`postgres://\w+:\$\{(\w+)`).FindAllStringSubmatch(string(raw), -1)
	if len(inURL) == 0 {
		t.Fatal("no database URL with a password variable")
	}
	for _, m := range inURL {
		if gen := exports[m[1]]; !strings.Contains(gen, "tr '+/' '-_'") {
			t.Errorf("%s goes into a database URL but is generated as %q: make it URL-safe (| tr '+/' '-_')", m[1], gen)
		}
	}
}
