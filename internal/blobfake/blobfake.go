// Package blobfake runs local stand-ins for the cloud blob stores, so the
// s3://, gs:// and azblob:// drivers linked by server/blobstore are tested
// end to end without the internet: gofakes3 (S3) and fake-gcs-server (GCS)
// in process, on loopback listeners, and Azurite (Azure Blob Storage,
// Microsoft's emulator, installed from the npm registry by
// scripts/ensure-azurite.sh) as a child process.
//
// Each fake sets the standard environment its driver reads credentials
// and endpoints from (t.Setenv: the calling test cannot be parallel), and
// returns a bucket URL whose query carries the local addressing options.
// Only tests import this package.
package blobfake

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Fake is one running stand-in with one empty bucket.
type Fake struct {
	// URL opens the bucket with blobstore.Open.
	URL string
	// Env is what the driver reads from the environment (already set in
	// this process; pass it to a child process).
	Env []string
}

func setenv(t *testing.T, f *Fake, kv ...string) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		t.Setenv(kv[i], kv[i+1])
		f.Env = append(f.Env, kv[i]+"="+kv[i+1])
	}
}

// S3 serves gofakes3 on loopback. The URL names the endpoint with
// path-style addressing over plain HTTP, as for MinIO or any S3-compatible
// store; the credentials come from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, as in production.
func S3(t *testing.T, bucket string) *Fake {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	f := &Fake{}
	// The shared config and credential files must not change what the
	// test sees, nor the instance metadata service be asked.
	setenv(t, f,
		"AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE",
		"AWS_SECRET_ACCESS_KEY", "fake-secret-access-key",
		"AWS_SESSION_TOKEN", "",
		"AWS_PROFILE", "",
		"AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"),
		"AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"),
		"AWS_EC2_METADATA_DISABLED", "true",
		"AWS_ENDPOINT_URL", "",
		"AWS_ENDPOINT_URL_S3", "",
	)
	q := url.Values{}
	q.Set("endpoint", srv.URL)
	q.Set("use_path_style", "true")
	q.Set("region", "us-east-1")
	q.Set("disable_https", "true")
	f.URL = "s3://" + bucket + "?" + q.Encode()
	return f
}

// GCS serves fake-gcs-server's JSON API on loopback. gcsblob (like every
// Google Cloud client) talks to STORAGE_EMULATOR_HOST, unauthenticated,
// when it is set; the URL is the production one.
func GCS(t *testing.T, bucket string) *Fake {
	t.Helper()
	// The listener comes first: the server must know its own address to
	// serve media downloads, which arrive as GET http://HOST/BUCKET/OBJECT.
	srv := httptest.NewUnstartedServer(nil)
	addr := srv.Listener.Addr().String()
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, Scheme: "http",
		PublicHost: addr, ExternalURL: "http://" + addr, Writer: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gcs.Stop)
	gcs.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: bucket})
	srv.Config.Handler = gcs.HTTPHandler()
	srv.Start()
	t.Cleanup(srv.Close)
	f := &Fake{URL: "gs://" + bucket}
	setenv(t, f, "STORAGE_EMULATOR_HOST", strings.TrimPrefix(srv.URL, "http://"))
	return f
}

// Azurite's well-known development account (published in Microsoft's
// documentation; it opens nothing but a local emulator).
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// AzuriteBinary finds azurite-blob: $AZURITE_BLOB, the project's
// tools/azurite (scripts/ensure-azurite.sh), or PATH.
func AzuriteBinary() (string, bool) {
	if p := os.Getenv("AZURITE_BLOB"); p != "" {
		return p, true
	}
	_, file, _, _ := runtime.Caller(0)
	if p := filepath.Join(filepath.Dir(file), "..", "..", "tools", "azurite", "node_modules", ".bin", "azurite-blob"); fileExists(p) {
		return p, true
	}
	if p, err := exec.LookPath("azurite-blob"); err == nil {
		return p, true
	}
	return "", false
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Azure starts Azurite's blob service on a free loopback port, in memory,
// creates the container, and points azureblob at it with the standard
// AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY. Without Azurite the test is
// skipped, saying how to install it, unless REQUIRE_API_TOOLS is set (CI),
// when it fails.
func Azure(t *testing.T, container string) *Fake {
	t.Helper()
	bin, ok := AzuriteBinary()
	if !ok {
		msg := "Azurite not installed: run scripts/ensure-azurite.sh (npm ci in tools/azurite) to test the azblob:// driver"
		if os.Getenv("REQUIRE_API_TOOLS") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	port := freePort(t)
	cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port),
		"--inMemoryPersistence", "--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry")
	cmd.Dir = t.TempDir() // its debug and extent files, if any
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start azurite: %v", err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	// Keep its output for a failure message, and drain the pipe.
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		cmd.Wait()
		close(exited)
	}()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(60 * time.Second) // node starts slowly on a loaded machine
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		var gone bool
		select {
		case <-exited:
			gone = true
		default:
		}
		if gone || time.Now().After(deadline) {
			var got []string
			for len(lines) > 0 {
				got = append(got, <-lines)
			}
			t.Fatalf("azurite did not listen on %s: %v\n%s", addr, err, strings.Join(got, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	f := &Fake{}
	setenv(t, f,
		"AZURE_STORAGE_ACCOUNT", AzuriteAccount,
		"AZURE_STORAGE_KEY", AzuriteKey,
		"AZURE_STORAGE_SAS_TOKEN", "",
		"AZURE_STORAGE_CONNECTION_STRING", "",
		"AZURE_STORAGEBLOB_CONNECTIONSTRING", "",
		"AZURE_STORAGE_DOMAIN", "",
		"AZURE_STORAGE_PROTOCOL", "",
		"AZURE_STORAGE_IS_LOCAL_EMULATOR", "",
	)
	createAzureContainer(t, addr, container)
	q := url.Values{}
	q.Set("protocol", "http")
	q.Set("domain", addr)
	f.URL = "azblob://" + container + "?" + q.Encode()
	return f
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// createAzureContainer creates the container with the Azure SDK, as an
// operator would before pointing the service at it.
func createAzureContainer(t *testing.T, addr, container string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cred, err := azblob.NewSharedKeyCredential(AzuriteAccount, AzuriteKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := azblob.NewClientWithSharedKeyCredential("http://"+addr+"/"+AzuriteAccount, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateContainer(ctx, container, nil); err != nil {
		t.Fatalf("create container on azurite: %v", err)
	}
}
