package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orient-bot/secrets/internal/testserver"
)

// openPTY opens a pseudo-terminal: its master (the terminal's side) and
// its slave (the programs' side).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	var n uint32
	err = ptyControl(master, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil { // unlockpt
			return err
		}
		n, err = unix.IoctlGetUint32(fd, unix.TIOCGPTN) // ptsname
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return master, slave
}

// ptyControl runs fn on f's descriptor without putting it in blocking
// mode (as Fd would: a blocked Read could then outlive Close).
func ptyControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// lockedBuffer collects a terminal's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// On a terminal, run's command shares secretctl's process group, the
// terminal's foreground group: the kernel delivers ^C and a window size
// change to both. secretctl must not pass them on as well: the command
// gets one SIGINT for one ^C (a second often means "quit now, skip the
// graceful stop") and one SIGWINCH per resize.
func TestRunOnTerminalDoesNotRepeatTerminalSignals(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	putValue(t, testClient(t, srv), "CUSTOM_X", "foo")
	master, slave := openPTY(t)
	env, logPath := childEnvFor(t, "interrupt", "CUSTOM_X")
	cmd := exec.Command(os.Args[0], "run", "--keys", "CUSTOM_X", "--", os.Args[0])
	cmd.Env = append(os.Environ(), "SECRETCTL_TEST_MAIN=1", "SECRETS_ADDR="+srv.GRPCAddr(), "SECRETS_TOKEN="+testserver.DefaultAdminToken)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// A session of its own with the terminal as its controlling terminal:
	// secretctl's group is the terminal's foreground group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var screen lockedBuffer
	go io.Copy(&screen, master) // ends with EIO once every process has left the terminal
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	count := func(event string) int {
		return countPrefix(childLog(t, logPath), event+" ")
	}
	waitLog(t, logPath, 2*childStart, "the command to start", func(lines []string) bool {
		return countPrefix(lines, "start ") == 1
	})

	// A resize: the kernel sends SIGWINCH to the foreground group.
	if err := ptyControl(master, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 100})
	}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logPath, 5*time.Second, "SIGWINCH", func(lines []string) bool { return countPrefix(lines, "window changed ") > 0 })
	time.Sleep(300 * time.Millisecond) // time for a second one to arrive
	if n := count("window changed"); n != 1 {
		t.Errorf("one resize: the command got %d SIGWINCH, want 1", n)
	}

	// ^C: the kernel sends SIGINT to the foreground group.
	if _, err := master.Write([]byte{0x03}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("secretctl ended with %v, want the command's status 0\n%s", waitErr, screen.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("secretctl still runs 15 s after ^C\nterminal: %q\nlog: %q", screen.String(), childLog(t, logPath))
	}
	if n := count("interrupt"); n != 1 {
		t.Errorf("one ^C: the command got %d SIGINT, want 1\nlog: %q", n, childLog(t, logPath))
	}
	if count("stopped") != 1 {
		t.Errorf("the command did not finish its graceful stop\nlog: %q\nterminal: %q", childLog(t, logPath), screen.String())
	}
	if out := screen.String(); strings.Contains(out, "panic") {
		t.Errorf("terminal: %q", out)
	}
}
