package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob"

	"github.com/orient-bot/secrets/internal/blobfake"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/blobstore"
)

// TestAuditCheckpointsInCloudBuckets: --audit-checkpoint-url with s3://,
// gs:// and azblob://, each against its local stand-in (gofakes3,
// fake-gcs-server, Azurite), with credentials from the providers' standard
// environment. A server anchors its signed checkpoints in the bucket; the
// real `secretsd audit verify --checkpoints URL` vouches for every event
// against them. Then, in the bucket, the newest checkpoint object is
// tampered with (NOT INTACT, exit 1), and every object is deleted (the
// verdict says the chain is only self-attested); in the database, the
// chain is cut back behind the restored anchor (NOT INTACT, exit 1).
// Not parallel: each fake sets the process environment.
func TestAuditCheckpointsInCloudBuckets(t *testing.T) {
	bin := kekBuildSecretsd(t)
	for _, tc := range []struct {
		name string
		fake func(t *testing.T, bucket string) *blobfake.Fake
	}{
		{"s3", blobfake.S3},
		{"gs", blobfake.GCS},
		{"azblob", blobfake.Azure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			fake := tc.fake(t, "orient-audit-"+tc.name)
			db := testdb.New(t)
			srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: func(c *app.Config) {
				c.AuditCheckpointInterval = 20 * time.Millisecond
				c.AuditCheckpointURL = fake.URL
			}})
			put(t, srv.Secrets, "CLOUD_A", "a1")
			access(srv.Secrets, "CLOUD_A", "latest")
			put(t, srv.Secrets, "CLOUD_A", "a2")
			head := waitAnchored(t, dbConn(t, db), fake.URL)
			srv.Stop() // signs a last checkpoint (of the same head)

			keyFile := testserver.AuditSigningKeyFile(t)
			env := append([]string{"DATABASE_URL=" + testdb.ServiceURL(t, db)}, fake.Env...)
			verify := func() (string, int) {
				t.Helper()
				cmd := kekCommand(bin, env, "audit", "verify", "--checkpoints", fake.URL, "--audit-signing-key", keyFile)
				out, err := cmd.Output()
				var ee *osexec.ExitError
				switch {
				case err == nil:
					return string(out), 0
				case errors.As(err, &ee):
					return string(out) + string(ee.Stderr), ee.ExitCode()
				}
				t.Fatal(err)
				return "", -1
			}
			if out, code := verify(); code != 0 || !strings.Contains(out, "every event is covered by an external checkpoint") {
				t.Fatalf("verify against the %s bucket: exit %d: %q", tc.name, code, out)
			}

			b, err := blobstore.Open(ctx, fake.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			objects := readAll(t, ctx, b)
			if len(objects) == 0 {
				t.Fatalf("%d checkpoint objects in the bucket", len(objects))
			}
			newest := objects[len(objects)-1]
			var line map[string]any
			if err := json.Unmarshal(newest.data, &line); err != nil || line["sequence"] != float64(head) {
				t.Fatalf("newest object %s: %s (%v), want sequence %d", newest.key, newest.data, err, head)
			}

			// The newest checkpoint's hash changed in place: its signature
			// no longer holds.
			line["hash"] = strings.Repeat("00", 32)
			forged, _ := json.Marshal(line)
			overwrite(t, ctx, b, newest.key, append(forged, '\n'))
			if out, code := verify(); code != 1 || !strings.Contains(out, "NOT INTACT") || !strings.Contains(out, "not signed by a trusted key") {
				t.Errorf("verify with a tampered object: exit %d: %q", code, out)
			}

			// Every object deleted: nothing anchors the chain any more, and
			// the verdict says so instead of "intact".
			for _, o := range objects {
				if err := b.Delete(ctx, o.key); err != nil {
					t.Fatal(err)
				}
			}
			if out, code := verify(); code != 0 || !strings.Contains(out, "the external checkpoints cover nothing yet") || !strings.Contains(out, "only self-attested") {
				t.Errorf("verify with the objects deleted: exit %d: %q", code, out)
			}

			// The objects restored, the chain cut back behind them.
			for _, o := range objects {
				overwrite(t, ctx, b, o.key, o.data)
			}
			c := dbConn(t, db)
			exec(t, c, `SET session_replication_role = replica`)
			exec(t, c, `DELETE FROM audit_events WHERE sequence > 1`)
			exec(t, c, `DELETE FROM audit_checkpoints WHERE sequence > 1`)
			exec(t, c, `UPDATE audit_head SET sequence = 1, hash = (SELECT hash FROM audit_events WHERE sequence = 1)`)
			if out, code := verify(); code != 1 || !strings.HasPrefix(out, "NOT INTACT: first bad sequence 2: deleted") {
				t.Errorf("verify of a cut-back chain: exit %d: %q", code, out)
			}
		})
	}
}

type object struct {
	key  string
	data []byte
}

// readAll reads every checkpoint object, in key (= sequence) order.
func readAll(t *testing.T, ctx context.Context, b *blob.Bucket) []object {
	t.Helper()
	var out []object
	it := b.List(&blob.ListOptions{Prefix: "audit-checkpoint-"})
	for {
		o, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := b.ReadAll(ctx, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, object{o.Key, data})
	}
}

func overwrite(t *testing.T, ctx context.Context, b *blob.Bucket, key string, data []byte) {
	t.Helper()
	if err := blobstore.WriteAll(ctx, b, key, data, &blob.WriterOptions{ContentType: "application/json"}); err != nil {
		t.Fatal(err)
	}
}
