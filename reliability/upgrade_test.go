package reliability

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/auditlog"
)

// envUpgradeFrom names the git revision whose secretsd plays the previous
// release in TestRollingUpgrade; HEAD~1 (the first parent: on main, the
// state before the last merge) by default.
const envUpgradeFrom = "UPGRADE_FROM"

// buildPrevious builds secretsd as it was at the previous release (from git
// history, with `git archive`, so the checkout is not touched) and says
// which commit that is.
func buildPrevious(t *testing.T) (bin, commit string) {
	t.Helper()
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	rev := os.Getenv(envUpgradeFrom)
	if rev == "" {
		rev = "HEAD~1"
	}
	out, err := exec.Command("git", "-C", root, "log", "-1", "--format=%h %s", rev+"^{commit}").Output()
	if err != nil {
		t.Skipf("rolling upgrade: no git history to build %s from (a shallow clone?): %v", rev, err)
	}
	commit = strings.TrimSpace(string(out))
	dir := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", root, rev, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	bin = filepath.Join(dir, "secretsd-previous")
	build := exec.Command("go", "build", "-o", bin, "./cmd/secretsd")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building secretsd at %s: %v\n%s", commit, err, out)
	}
	return bin, commit
}

// upgradeWatcher follows one replica's change stream from its header.
type upgradeWatcher struct {
	name   string
	mu     sync.Mutex
	header int64
	events []*pb.ChangeEvent
	err    error
}

func (w *upgradeWatcher) run(ctx context.Context, sc pb.SecretServiceClient, ready chan<- struct{}) {
	stream, err := sc.WatchChanges(ctx, &pb.WatchChangesRequest{})
	if err != nil {
		w.fail(err)
		close(ready)
		return
	}
	first := true
	for {
		msg, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				w.fail(err)
			}
			if first {
				close(ready)
			}
			return
		}
		w.mu.Lock()
		if h := msg.GetHeader(); h != nil {
			w.header = h.GetRevision()
		}
		if ev := msg.GetEvent(); ev != nil {
			w.events = append(w.events, ev)
		}
		w.mu.Unlock()
		if first {
			first = false
			close(ready)
		}
	}
}

func (w *upgradeWatcher) fail(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

func (w *upgradeWatcher) last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := len(w.events); n > 0 {
		return w.events[n-1].GetRevision()
	}
	return w.header
}

// TestRollingUpgrade runs the previous release (HEAD~1, or UPGRADE_FROM)
// and this one side by side on one database migrated by this one, as a
// rolling upgrade does: migrations must be expand-only, so the old replica
// keeps working on the new schema. Writes go through either replica, each
// read back through both (the other at the write's revision); a watch on
// each replica sees every revision, from both writers, in order and without
// a gap; no call fails; the audit chain, appended by both, verifies.
// `secretsd migrate --dry-run` has nothing left to apply.
func TestRollingUpgrade(t *testing.T) {
	gate(t)
	oldBin, commit := buildPrevious(t)
	newBin := buildSecretsd(t)
	t.Logf("previous release: %s", commit)
	db := testdb.New(t) // migrated by this release's migrations
	kek := testserver.NewKEKURL(t)
	keyFile := filepath.Join(t.TempDir(), "audit-signing.key")
	if _, _, err := auditlog.GenerateSigner(keyFile); err != nil {
		t.Fatal(err)
	}
	env := serverEnv("SECRETS_ALLOW_OWNER_ROLE=true", "DATABASE_URL="+db, "SECRETS_KEK_URL="+kek, "SECRETS_BOOTSTRAP_TOKEN="+adminToken)

	dry := exec.Command(newBin, "migrate", "--dry-run")
	dry.Env = env
	out, err := dry.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("nothing to apply")) {
		t.Fatalf("secretsd migrate --dry-run on a migrated database: %v\n%s", err, out)
	}

	args := []string{"--audit-signing-key", keyFile, "--watch-poll-interval", "200ms"}
	oldP := startSecretsd(t, oldBin, env, append([]string{"--data-dir", t.TempDir()}, args...)...)
	newP := startSecretsd(t, newBin, env, append([]string{"--data-dir", t.TempDir()}, args...)...)
	replicas := []struct {
		name string
		sc   pb.SecretServiceClient
	}{{"previous", pb.NewSecretServiceClient(oldP.dial(t))}, {"new", pb.NewSecretServiceClient(newP.dial(t))}}

	ctx := withTimeout(t, 5*time.Minute)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var watchers []*upgradeWatcher
	var wwg sync.WaitGroup
	for _, r := range replicas {
		w := &upgradeWatcher{name: r.name}
		watchers = append(watchers, w)
		ready := make(chan struct{})
		wwg.Go(func() { w.run(wctx, r.sc, ready) })
		<-ready
	}

	type put struct {
		key      string
		version  int64
		revision int64
	}
	var mu sync.Mutex
	var puts []put
	var errs []string
	writes := size(40, 300)
	var wg sync.WaitGroup
	for i, r := range replicas {
		other := replicas[1-i]
		wg.Go(func() {
			for n := range writes {
				key := fmt.Sprintf("UPGRADE_%s_%d", strings.ToUpper(r.name), n%7)
				v := randomValue(40)
				res, err := r.sc.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: v})
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("put via %s: %v", r.name, err))
					mu.Unlock()
					continue
				}
				rev := res.GetRevision()
				for _, via := range []struct {
					name string
					sc   pb.SecretServiceClient
				}{r, other} {
					got, err := via.sc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: key, Version: "latest", MinRevision: rev})
					if err != nil || !bytes.Equal(got.GetValue(), v) {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("read of %s (written via %s) via %s: err %v, value matches %v", key, r.name, via.name, err, err == nil && bytes.Equal(got.GetValue(), v)))
						mu.Unlock()
					}
				}
				mu.Lock()
				puts = append(puts, put{key, res.GetSecret().GetCurrentVersion(), rev})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for i, e := range errs {
		if i < 10 {
			t.Error(e)
		}
	}
	var maxRev int64
	for _, p := range puts {
		maxRev = max(maxRev, p.revision)
	}
	if !waitFor(30*time.Second, 20*time.Millisecond, func() bool {
		return watchers[0].last() >= maxRev && watchers[1].last() >= maxRev
	}) {
		t.Errorf("watchers reached revisions %d and %d, want %d", watchers[0].last(), watchers[1].last(), maxRev)
	}
	stopWatch()
	wwg.Wait()
	for _, w := range watchers {
		if w.err != nil {
			t.Errorf("watch on the %s replica: %v", w.name, w.err)
		}
		seen := map[int64]*pb.ChangeEvent{}
		next := w.header + 1
		for _, ev := range w.events {
			if ev.GetRevision() != next {
				t.Errorf("watch on the %s replica: revision %d after %d", w.name, ev.GetRevision(), next-1)
				break
			}
			seen[ev.GetRevision()] = ev
			next++
		}
		for _, p := range puts {
			ev, ok := seen[p.revision]
			if !ok || ev.GetKey() != p.key || ev.GetVersion() != p.version {
				t.Errorf("watch on the %s replica: revision %d (%s v%d) missing or different: %v", w.name, p.revision, p.key, p.version, ev)
				break
			}
		}
	}
	ver, err := pb.NewAuditServiceClient(newP.dial(t)).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !ver.GetIntact() {
		t.Errorf("audit chain written by both releases: %v %+v", err, ver)
	}
	for _, p := range []*secretsd{oldP, newP} {
		p.terminate(t)
		if err := p.wait(t, 30*time.Second); err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, p.stderr.Tail(20))
		}
	}
	t.Logf("previous (%s) and new replicas: %d writes, each read back through both; both watches saw revisions %d..%d in order",
		commit, len(puts), watchers[0].header+1, maxRev)
}
