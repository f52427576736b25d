package kmsdrivers_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/orient-bot/secrets/server/app"
)

// localKMS is nsmithuk/local-kms, a local AWS KMS, run as a process and
// reached by the real AWS SDK (aws-sdk-go-v2) through gocloud's awskms
// driver, configured as in production by the SDK's standard environment
// (AWS_ENDPOINT_URL, AWS_REGION, credentials). scripts/ensure-local-kms.sh
// builds it (make test runs it).
type localKMS struct {
	bin, dataDir, port string
	cmd                *exec.Cmd
	client             *kms.Client
	keyID              string
}

// localKMSBinary finds local-kms: $LOCAL_KMS, the project's .build/bin, or
// PATH; "" when it is not there.
func localKMSBinary() string {
	if p := os.Getenv("LOCAL_KMS"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	if p := filepath.Join(filepath.Dir(file), "..", "..", "..", ".build", "bin", "local-kms"); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath("local-kms"); err == nil {
		return p
	}
	return ""
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// newLocalKMS starts local-kms with one key (alias/orient-kek) and points the
// process's AWS environment at it (t.Setenv: the caller must not be
// parallel). Without the binary it returns nil and why.
func newLocalKMS(t *testing.T) (*localKMS, string) {
	bin := localKMSBinary()
	if bin == "" {
		return nil, "local-kms not found: run ./scripts/ensure-local-kms.sh (make test does)"
	}
	l := listenAt(t, "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	f := &localKMS{bin: bin, dataDir: t.TempDir(), port: port}
	f.start(t)
	t.Cleanup(func() { f.stop(t) })

	// The SDK's standard environment, as an operator would set it (plus
	// isolation from this machine's own AWS configuration).
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:"+port)
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOCALKMSTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local-kms-accepts-any-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(f.dataDir, "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(f.dataDir, "no-credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_MAX_ATTEMPTS", "1")

	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.client = kms.NewFromConfig(cfg)
	key, err := f.client.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("orient secrets KEK (test)")})
	if err != nil {
		t.Fatalf("local-kms CreateKey: %v", err)
	}
	f.keyID = *key.KeyMetadata.KeyId
	if _, err := f.client.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/orient-kek"), TargetKeyId: key.KeyMetadata.KeyId}); err != nil {
		t.Fatalf("local-kms CreateAlias: %v", err)
	}
	return f, ""
}

func (f *localKMS) kekURL() string        { return "awskms://alias/orient-kek" }
func (f *localKMS) missingURL() string    { return "awskms://alias/orient-kek-missing" }
func (f *localKMS) keyName() string       { return "orient-kek" }
func (f *localKMS) configure(*app.Config) {}

// refuse disables the key in local-kms (AWS answers DisabledException).
func (f *localKMS) refuse(t *testing.T, on bool) {
	ctx := context.Background()
	var err error
	if on {
		_, err = f.client.DisableKey(ctx, &kms.DisableKeyInput{KeyId: &f.keyID})
	} else {
		_, err = f.client.EnableKey(ctx, &kms.EnableKeyInput{KeyId: &f.keyID})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (f *localKMS) start(t *testing.T) {
	cmd := exec.Command(f.bin)
	cmd.Env = append(os.Environ(), "PORT="+f.port, "KMS_DATA_PATH="+f.dataDir, "KMS_REGION=eu-west-1",
		"KMS_ACCOUNT_ID=111122223333", "KMS_SEED_PATH="+filepath.Join(f.dataDir, "no-seed.yaml"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.cmd = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+f.port, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			f.stop(t)
			t.Fatalf("local-kms did not listen on %s: %v", f.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills local-kms (its keys stay in its data folder).
func (f *localKMS) stop(*testing.T) {
	if f.cmd == nil {
		return
	}
	_ = f.cmd.Process.Kill()
	err := f.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		fmt.Fprintln(os.Stderr, "local-kms:", err)
	}
	f.cmd = nil
}
