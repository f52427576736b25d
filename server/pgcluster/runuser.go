package pgcluster

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// runUser is the OS account the cluster runs as. PostgreSQL refuses to run as
// root, so a root process runs it as the "postgres" account; anyone else runs
// it as themselves.
type runUser struct {
	name     string
	uid, gid int
	// cred is nil when no switch is needed (we are not root).
	cred *syscall.Credential
}

func lookupRunUser() (runUser, error) {
	if os.Geteuid() != 0 {
		return runUser{name: currentName(), uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return runUser{}, fmt.Errorf("pgcluster: running as root, PostgreSQL must run as the \"postgres\" OS user, "+
			"which was not found (%v); `%s` creates it, or run as a non-root user", err, installHint)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return runUser{}, fmt.Errorf("pgcluster: user postgres: bad uid %q", u.Uid)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return runUser{}, fmt.Errorf("pgcluster: user postgres: bad gid %q", u.Gid)
	}
	return runUser{
		name: "postgres", uid: uid, gid: gid,
		// Empty Groups drops root's supplementary groups: the server gets exactly
		// the postgres uid/gid and nothing more.
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}, nil
}

func currentName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Geteuid())
}

// switching reports whether the cluster runs as another user than this process.
func (u runUser) switching() bool { return u.cred != nil }

// chown gives path to the run user (a no-op when not switching).
func (u runUser) chown(path string) error {
	if !u.switching() {
		return nil
	}
	return os.Lchown(path, u.uid, u.gid)
}

// chownTree gives every file under root to the run user.
func (u runUser) chownTree(root string) error {
	if !u.switching() {
		return nil
	}
	return filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, u.uid, u.gid)
	})
}

// checkTraverse verifies that the run user can search every directory from /
// down to dir (inclusive) on its way to target, by their mode bits. The account has no
// supplementary groups (see lookupRunUser), so only owner, primary group and
// other bits apply; ACLs are not consulted.
func (u runUser) checkTraverse(dir, target, purpose string) error {
	if !u.switching() || u.uid == 0 {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgcluster: %s: %w", purpose, err)
		}
		if !u.canSearch(fi) {
			hint := "choose another socket directory"
			if purpose == "data directory" {
				hint = "choose another --data-dir outside it, e.g. under /var/lib"
			}
			return fmt.Errorf("pgcluster: the %s user cannot reach the %s %s: directory %s (mode %04o) "+
				"is not searchable by it; %s", u.name, purpose, target, d, uint32(fi.Mode().Perm()), hint)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func (u runUser) canSearch(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // unknown: let the server report it
	}
	perm := fi.Mode().Perm()
	switch {
	case int(st.Uid) == u.uid:
		return perm&0o100 != 0
	case int(st.Gid) == u.gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// owner returns the uid owning fi.
func owner(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
