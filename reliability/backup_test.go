package reliability

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/orient-bot/secrets/migrations"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/orient-bot/secrets/client"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/pgcluster"
)

// valueAck is an acknowledged PutSecret with its value and when the answer
// arrived.
type valueAck struct {
	key      string
	version  int64
	revision int64
	value    []byte
	at       time.Time
}

// putLoad runs writers that put random values on a few keys each until ctx
// ends, and keeps every acknowledged write.
type putLoad struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	acks []valueAck
	errs codeCounter
}

func (l *putLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

func startPutLoad(ctx context.Context, sc pb.SecretServiceClient, prefix string, writers, keys int) *putLoad {
	l := &putLoad{}
	for w := range writers {
		l.wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				key := fmt.Sprintf("%s_W%d_K%d", prefix, w, n%keys)
				v := randomValue(48)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				res, err := sc.PutSecret(cctx, &pb.PutSecretRequest{Key: key, Value: v})
				cancel()
				if err != nil {
					if ctx.Err() == nil {
						l.errs.add(err)
					}
					continue
				}
				l.mu.Lock()
				l.acks = append(l.acks, valueAck{key: key, version: res.GetSecret().GetCurrentVersion(),
					revision: res.GetRevision(), value: v, at: time.Now()})
				l.mu.Unlock()
			}
		})
	}
	return l
}

// pgTool runs one of PostgreSQL's client programs from the cluster's
// binaries.
func pgTool(t *testing.T, name string, args ...string) {
	t.Helper()
	bin, err := pgcluster.FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = serverEnv() // no PG* variables from the caller
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}

// readmeCreatedb runs the createdb line of the README's restore runbook as
// written (its OWNER placeholder replaced by owner), as the cluster's
// superuser, in cluster.
func readmeCreatedb(t *testing.T, cluster *pgcluster.Cluster, owner string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "**Restore**, into an empty database:\n\n```sh\n")
	block, _, _ = strings.Cut(block, "```")
	var line string
	for l := range strings.Lines(block) {
		if strings.HasPrefix(l, "createdb ") {
			line = strings.TrimSpace(l)
		}
	}
	if !ok || line == "" {
		t.Fatalf("README's restore runbook has no createdb line")
	}
	bin, err := pgcluster.FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", strings.ReplaceAll(line, "OWNER", owner))
	cmd.Env = serverEnv("PATH="+bin+":"+os.Getenv("PATH"), "PGHOST="+cluster.SocketDir(),
		fmt.Sprintf("PGPORT=%d", cluster.Port()), "PGUSER=postgres")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("README: %s: %v\n%s", line, err, out)
	}
}

// startExpectingFailure runs bin and expects it to exit with an error
// before serving; it returns the output.
func startExpectingFailure(t *testing.T, bin string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("secretsd started (exit %v), want a failure at start:\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("secretsd still running after 60s, want a failure at start:\n%s", out.String())
	}
	if strings.Contains(out.String(), "secretsd serving") {
		t.Fatalf("secretsd served before failing:\n%s", out.String())
	}
	return out.String()
}

var primaryKEKRe = regexp.MustCompile(`primary=(kek-[0-9a-f]+)`)

// TestBackupRestore is the backup-and-restore drill of the README, run for
// real: under write load it takes a backup with pg_dump (custom format),
// restores it into a fresh PostgreSQL cluster with pg_restore, and starts
// the real binary on it with the same KEK and audit signing key. It asserts
// that every value acknowledged before the backup began reads back byte for
// byte (and a write acknowledged later is either there with its value or
// absent, never different); that the audit chain and its signed checkpoints
// verify through the backup's head; that a watch resumed from a revision
// before the backup delivers every later revision the backup holds, and one
// resumed from a revision the backup does not hold (written after it) gets
// OUT_OF_RANGE with reason REVISION_AHEAD; and that a start with a wrong or
// a missing KEK fails before serving, naming the fingerprint of the KEK the
// backup needs.
func TestBackupRestore(t *testing.T) {
	gate(t)
	bin := buildSecretsd(t)
	src := testdb.New(t)
	kek := testserver.NewKEKURL(t)
	work := t.TempDir()
	keyFile := filepath.Join(work, "audit-signing.key")
	_, _, err := auditlog.GenerateSigner(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--data-dir", t.TempDir(), "--audit-signing-key", keyFile, "--audit-checkpoint-interval", "100ms"}
	p := startSecretsd(t, bin, serverEnv("SECRETS_ALLOW_OWNER_ROLE=true", "DATABASE_URL="+src, "SECRETS_KEK_URL="+kek, "SECRETS_BOOTSTRAP_TOKEN="+adminToken), args...)
	m := primaryKEKRe.FindStringSubmatch(string(p.stderr.Bytes()))
	if m == nil {
		t.Fatalf("no KEK fingerprint in the log:\n%s", p.stderr.Tail(20))
	}
	fingerprint := m[1]
	sc := pb.NewSecretServiceClient(p.dial(t))

	// Write load, the backup in the middle of it.
	ctx := withTimeout(t, 5*time.Minute)
	lctx, stopLoad := context.WithCancel(ctx)
	load := startPutLoad(lctx, sc, "BACKUP", size(4, 8), 5)
	// Enough acknowledged writes first (the machine's speed varies a lot),
	// and a signed checkpoint of them in the database: on a fast machine
	// the writes were there before the first checkpoint (100 ms), and the
	// backup had none to verify.
	if !waitFor(2*time.Minute, 20*time.Millisecond, func() bool { return load.count() >= size(20, 300) }) {
		t.Fatalf("only %d writes acknowledged in 2 minutes", load.count())
	}
	srcConn := connect(t, src)
	if !waitFor(time.Minute, 20*time.Millisecond, func() bool {
		var n int
		return srcConn.QueryRow(ctx, `SELECT count(*) FROM audit_checkpoints`).Scan(&n) == nil && n > 0
	}) {
		t.Fatalf("no signed audit checkpoint in a minute")
	}
	dump := filepath.Join(work, "secrets.dump")
	dumpStart := time.Now()
	pgTool(t, "pg_dump", "--format=custom", "--file="+dump, "--dbname="+src)
	dumpTook := time.Since(dumpStart)
	// And some after it (they must not be in the restore).
	after := load.count()
	if !waitFor(2*time.Minute, 20*time.Millisecond, func() bool { return load.count() >= after+size(10, 100) }) {
		t.Fatalf("no writes acknowledged after the backup")
	}
	stopLoad()
	load.wg.Wait()
	if others := load.errs.others(); len(others) > 0 {
		t.Errorf("writes failed during the backup: %v", others)
	}
	acks := load.acks
	var before int
	var lastRev int64
	for _, a := range acks {
		if a.at.Before(dumpStart) {
			before++
		}
		lastRev = max(lastRev, a.revision)
	}
	p.terminate(t)
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("source server: %v", err)
	}
	info, _ := os.Stat(dump)

	// A fresh cluster, the backup restored into it.
	dir, err := pgcluster.TempDir(tempPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cluster, err := pgcluster.Start(withTimeout(t, time.Minute), pgcluster.Options{DataDir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop(context.Background()) })
	admin := connect(t, cluster.ConnString("postgres"))
	// As the README's runbook: the tables' owner is a role of its own, not
	// a superuser (`secretsd` refuses to serve as either), and the empty
	// database is created by the README's own createdb line, which must
	// make it owned by that role: on PostgreSQL 15+ only the database's
	// owner may create in schema public, so a database created by another
	// role refuses the restore.
	if _, err := admin.Exec(ctx, `CREATE ROLE secrets_owner LOGIN CREATEROLE`); err != nil {
		t.Fatal(err)
	}
	readmeCreatedb(t, cluster, "secrets_owner")
	restored := cluster.ConnStringAs("secrets_owner", "secrets")
	restoreStart := time.Now()
	// Roles belong to the cluster, not the dump: restore without the
	// grants, then `secretsd migrate` creates the service role and grants
	// it again (the README's runbook), and the server connects as it.
	pgTool(t, "pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "--dbname="+restored, dump)
	restoreTook := time.Since(restoreStart)
	mig := exec.Command(bin, "migrate")
	mig.Env = serverEnv("DATABASE_URL=" + restored)
	if out, err := mig.CombinedOutput(); err != nil {
		t.Fatalf("secretsd migrate on the restored database: %v\n%s", err, out)
	}
	restoredOwner := restored
	restored = cluster.ConnStringAs(migrations.DefaultServiceRole, "secrets")
	var backupRev, backupHead int64
	if err := connect(t, restoredOwner).QueryRow(ctx, `SELECT (SELECT revision FROM revision_counter), (SELECT sequence FROM audit_head)`).Scan(&backupRev, &backupHead); err != nil {
		t.Fatal(err)
	}
	if backupRev >= lastRev {
		t.Fatalf("the backup holds revision %d, the source reached %d: no write came after the backup", backupRev, lastRev)
	}

	// A wrong KEK, and none at all: refused at start, naming the KEK needed.
	wrong := startExpectingFailure(t, bin, serverEnv("DATABASE_URL="+restored, "SECRETS_KEK_URL="+testserver.NewKEKURL(t)), args...)
	if !strings.Contains(wrong, fingerprint) {
		t.Errorf("a start with the wrong KEK does not name %s:\n%s", fingerprint, wrong)
	}
	missing := startExpectingFailure(t, bin, serverEnv("DATABASE_URL="+restored), args...)
	if !strings.Contains(missing, fingerprint) || !strings.Contains(missing, "SECRETS_KEK_URL") {
		t.Errorf("a start without SECRETS_KEK_URL does not name %s:\n%s", fingerprint, missing)
	}

	// The right KEK and signing key.
	r := startSecretsd(t, bin, serverEnv("DATABASE_URL="+restored, "SECRETS_KEK_URL="+kek), args...)
	conn := r.dial(t)
	rc := pb.NewSecretServiceClient(conn)
	var present, absent int
	for _, a := range acks {
		res, err := rc.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: a.key, Version: fmt.Sprint(a.version)})
		switch {
		case a.revision <= backupRev && err != nil:
			t.Errorf("%s v%d (revision %d, in the backup): %v", a.key, a.version, a.revision, err)
		case a.revision <= backupRev && !bytes.Equal(res.GetValue(), a.value):
			t.Errorf("%s v%d: restored value differs from the acknowledged one", a.key, a.version)
		case a.revision <= backupRev:
			present++
		case err == nil:
			t.Errorf("%s v%d (revision %d, after the backup's %d) is in the restore", a.key, a.version, a.revision, backupRev)
		case !isCode(err, codes.NotFound):
			t.Errorf("%s v%d (after the backup): %v, want NOT_FOUND", a.key, a.version, err)
		default:
			absent++
		}
		if a.at.Before(dumpStart) && a.revision > backupRev {
			t.Errorf("%s v%d was acknowledged before the backup began but is not in it", a.key, a.version)
		}
	}

	// The audit chain, signed checkpoints included, verifies through the
	// backup's head (and past it: the restored server's own reads).
	ver, err := pb.NewAuditServiceClient(conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !ver.GetIntact() || ver.GetVerifiedThrough() < backupHead || !ver.GetSigned() || ver.GetCheckpointsChecked() == 0 {
		t.Errorf("audit verify after restore: %+v, want intact and signed through %d", ver, backupHead)
	}

	// A watch from before the backup delivers every revision it holds.
	from := backupRev / 2
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := rc.WatchChanges(wctx, &pb.WatchChangesRequest{StartRevision: from})
	if err != nil {
		t.Fatal(err)
	}
	byRev := map[int64]valueAck{}
	for _, a := range acks {
		byRev[a.revision] = a
	}
	next := from + 1
	for next <= backupRev {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch from %d: %v after revision %d (backup holds %d)", from, err, next-1, backupRev)
		}
		ev := msg.GetEvent()
		if ev == nil {
			continue
		}
		if ev.GetRevision() != next {
			t.Fatalf("watch from %d: revision %d, want %d", from, ev.GetRevision(), next)
		}
		if a, ok := byRev[next]; ok && (a.key != ev.GetKey() || a.version != ev.GetVersion()) {
			t.Errorf("revision %d: event %s v%d, acknowledged %s v%d", next, ev.GetKey(), ev.GetVersion(), a.key, a.version)
		}
		next++
	}
	cancel()

	// A watch from a revision the backup does not hold: a clear answer.
	ahead, err := rc.WatchChanges(ctx, &pb.WatchChangesRequest{StartRevision: lastRev})
	if err == nil {
		_, err = ahead.Recv()
	}
	if !isCode(err, codes.OutOfRange) || reason(err) != client.ReasonRevisionAhead {
		t.Errorf("watch from revision %d (after the backup's %d): %v, want OUT_OF_RANGE %s", lastRev, backupRev, err, client.ReasonRevisionAhead)
	}

	// It takes writes again, after the backup's last revision.
	res, err := rc.PutSecret(ctx, &pb.PutSecretRequest{Key: "AFTER_RESTORE", Value: []byte("v")})
	if err != nil || res.GetRevision() != backupRev+1 {
		t.Errorf("first write after restore: revision %d (%v), want %d", res.GetRevision(), err, backupRev+1)
	}
	t.Logf("%d writes acknowledged (%d before the backup began); backup of %d KiB at revision %d in %v, restored in %v; "+
		"%d values read back byte for byte, %d later ones absent; audit verified through %d (%d checkpoints)",
		len(acks), before, info.Size()>>10, backupRev, dumpTook.Round(time.Millisecond), restoreTook.Round(time.Millisecond),
		present, absent, ver.GetVerifiedThrough(), ver.GetCheckpointsChecked())

}
