// Package testdb gives tests real PostgreSQL databases, cheaply: one server per
// test binary (a private throwaway cluster, or the server named by
// TEST_DATABASE_URL), the migrations applied once into a template database,
// and a fresh copy of that template per test (CREATE DATABASE … TEMPLATE),
// dropped when the test ends. Safe for parallel tests.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/pgcluster"
)

// EnvURL names the variable holding an external server's connection string.
// It must name a database the user may connect to, with CREATEDB rights.
const EnvURL = "TEST_DATABASE_URL"

// tempPrefix names the throwaway cluster folders under /tmp.
const tempPrefix = "secrets-testdb-"

var (
	mainCalled atomic.Bool

	setupOnce sync.Once
	mu        sync.Mutex // guards env against teardown
	env       *environment
	envErr    error
)

// environment is the per-binary server and template.
type environment struct {
	cluster  *pgcluster.Cluster // nil with TEST_DATABASE_URL
	tmpDir   string
	admin    string // connection string of the maintenance database
	pool     *pgxpool.Pool
	template string
	// service is the least-privileged role servers under test connect as
	// (see ServiceURL), and servicePassword its password on a shared
	// server (the private cluster trusts its socket).
	service         string
	servicePassword string
}

// Main runs the tests and then stops the cluster (if a test started one) and
// removes its files. Call it from TestMain: os.Exit(testdb.Main(m)).
func Main(m *testing.M) int {
	mainCalled.Store(true)
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintln(os.Stderr, "testdb:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// New returns the connection string of a fresh, migrated database that is
// dropped when t ends.
func New(t testing.TB) string {
	t.Helper()
	e := ready(t)
	name := "secrets_test_" + randomHex()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sql := "CREATE DATABASE " + ident(name) + " TEMPLATE " + ident(e.template)
	if _, err := e.pool.Exec(ctx, sql); err != nil {
		t.Fatalf("testdb: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := e.pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("testdb: drop database %s: %v", name, err)
		}
	})
	s, err := e.connString(name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return s
}

// Admin returns a connection string of the server's maintenance database
// (the one TEST_DATABASE_URL names, else "postgres"), as a superuser on the
// private cluster: for tests that act on the server itself, such as
// pg_terminate_backend.
func Admin(t testing.TB) string {
	t.Helper()
	return ready(t).admin
}

// ready starts the environment on first use.
func ready(t testing.TB) *environment {
	t.Helper()
	if !mainCalled.Load() {
		t.Fatal("testdb: call os.Exit(testdb.Main(m)) from TestMain, so that the database server is cleaned up")
	}
	setupOnce.Do(func() {
		e, err := setup()
		mu.Lock()
		env, envErr = e, err
		mu.Unlock()
	})
	mu.Lock()
	e, err := env, envErr
	mu.Unlock()
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return e
}

// setup starts (or connects to) the server and migrates the template. On
// error it returns what it built so far, for teardown.
func setup() (*environment, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &environment{}
	if u := os.Getenv(EnvURL); u != "" {
		e.admin = u
	} else {
		// Folders of earlier test binaries that were killed (timeout, ^C).
		pgcluster.Sweep(tempPrefix)
		dir, err := pgcluster.TempDir(tempPrefix)
		if err != nil {
			return e, err
		}
		e.tmpDir = dir
		e.cluster, err = pgcluster.Start(ctx, pgcluster.Options{
			DataDir:     dir + "/data",
			ExtraConfig: map[string]string{"max_connections": "300"},
		})
		if err != nil {
			return e, err
		}
		e.admin = e.cluster.ConnString("postgres")
	}
	cfg, err := pgxpool.ParseConfig(e.admin)
	if err != nil {
		return e, fmt.Errorf("%s: invalid connection string", EnvURL) // the error may echo a password
	}
	cfg.MaxConns = 4
	if e.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return e, err
	}
	// A random name: several test binaries may share one TEST_DATABASE_URL.
	template := "secrets_template_" + randomHex()
	if _, err := e.pool.Exec(ctx, "CREATE DATABASE "+ident(template)); err != nil {
		return e, fmt.Errorf("create template database: %w", err)
	}
	e.template = template
	s, err := e.connString(template)
	if err != nil {
		return e, err
	}
	if err := migrations.Up(ctx, s); err != nil {
		return e, err
	}
	// The service role, as secretsd migrate makes it. A shared server gets
	// one per test binary (roles are server-wide), with a password.
	e.service = migrations.DefaultServiceRole
	if e.cluster == nil {
		e.service = "secrets_svc_" + randomHex()
	}
	if _, err := migrations.EnsureServiceRole(ctx, s, e.service); err != nil {
		return e, err
	}
	if e.cluster == nil {
		e.servicePassword = randomHex() + randomHex()
		if _, err := e.pool.Exec(ctx, "ALTER ROLE "+ident(e.service)+" PASSWORD '"+e.servicePassword+"'"); err != nil {
			return e, err
		}
	}
	return e, nil
}

// ServiceURL returns the connection string of the database db (a string
// New returned) as the service role: the least-privileged role secretsd
// runs as, which may only read and append to the audit log.
func ServiceURL(t testing.TB, db string) string {
	t.Helper()
	e := ready(t)
	cfg, err := pgx.ParseConfig(db)
	if err != nil {
		t.Fatal("testdb: ServiceURL: not a connection string from New")
	}
	if e.cluster != nil {
		return e.cluster.ConnStringAs(e.service, cfg.Database)
	}
	u, err := withDatabase(e.admin, cfg.Database)
	if err != nil {
		t.Fatal(err)
	}
	// In keyword/value form the last setting wins; a URL gets them as
	// query parameters, which pgx reads after the user info.
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal("testdb: invalid URL")
		}
		pu.User = url.UserPassword(e.service, e.servicePassword)
		return pu.String()
	}
	return u + " user='" + e.service + "' password='" + e.servicePassword + "'"
}

// ServiceRole names the role ServiceURL connects as.
func ServiceRole(t testing.TB) string { return ready(t).service }

// teardown drops the template and stops the cluster, if setup ran.
func teardown() error {
	mu.Lock()
	defer mu.Unlock()
	e := env
	env, envErr = nil, errors.New("testdb: used after Main returned")
	if e == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	// A private cluster is thrown away whole; only a shared server needs it.
	if e.cluster == nil && e.pool != nil && e.template != "" {
		if _, err := e.pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(e.template)+" WITH (FORCE)"); err != nil {
			errs = append(errs, fmt.Errorf("drop template: %w", err))
		}
	}
	if e.cluster == nil && e.pool != nil && e.service != "" {
		// Every database it had privileges in is gone by now.
		if _, err := e.pool.Exec(ctx, "DROP ROLE IF EXISTS "+ident(e.service)); err != nil {
			fmt.Fprintln(os.Stderr, "testdb: drop service role (a test left a database behind?):", err)
		}
	}
	if e.pool != nil {
		e.pool.Close()
	}
	if e.cluster != nil {
		if err := e.cluster.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.tmpDir != "" {
		if err := os.RemoveAll(e.tmpDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// connString returns the admin connection string pointed at database db.
func (e *environment) connString(db string) (string, error) {
	if e.cluster != nil {
		return e.cluster.ConnString(db), nil
	}
	return withDatabase(e.admin, db)
}

// withDatabase replaces the database of a URL or keyword/value connection
// string.
func withDatabase(connString, db string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("%s: invalid URL", EnvURL) // the error may echo a password
		}
		u.Path = "/" + db
		u.RawPath = ""
		q := u.Query()
		if q.Has("dbname") {
			q.Del("dbname")
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	// In keyword/value form the last setting wins.
	return connString + " dbname='" + db + "'", nil
}

// ident quotes an SQL identifier.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// randomHex returns 16 random hex digits: names unique across test binaries
// and runs sharing a server.
func randomHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
