package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// Bounded work under real use: a resume over a full change log, and a KEK
// rotation behind a slow KMS while others write.

// seedChanges fills the change log of the service database (dsn) up to n
// entries in one transaction, as n committed writes would have, and returns
// the oldest and newest revision.
func seedChanges(ctx context.Context, dsn string, n int) (hostReply, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return hostReply{}, err
	}
	defer conn.Close(ctx)
	var r hostReply
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var rev, have int64
		if err := tx.QueryRow(ctx, `SELECT revision FROM revision_counter FOR UPDATE`).Scan(&rev); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM change_log`).Scan(&have); err != nil {
			return err
		}
		// Up to n retained in all: retention (1,000,000 by default) must not
		// compact what the streams are about to read.
		add := max(int64(n)-have, 0)
		if _, err := tx.Exec(ctx, `INSERT INTO change_log (revision, time, kind, key, version, category, restart_required, detail)
			SELECT $1 + g, now(), 1, 'BENCH_' || lpad((g % 1000)::text, 4, '0'), g, 'custom', false, ''
			FROM generate_series(1, $2::bigint) g`, rev, add); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE revision_counter SET revision = revision + $1`, add); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT min(revision), max(revision) FROM change_log`).Scan(&r.Oldest, &r.Revision)
	})
	return r, err
}

// catchUpPhase: resume 5 streams from before the oldest retained change
// (the log holding catchUpChanges entries) at once, on one replica. Figures:
// the slowest stream's time to its first event, the server's heap growth
// (sampled after GC while they catch up), and whether every stream got every
// change exactly once, in order.
func (b *bench) catchUpPhase(ctx context.Context) error {
	n, streams := b.cfg.catchUpChanges, 5
	b.progressf("catch-up: filling the change log to %d entries", n)
	seeded, err := b.host.call(hostCmd{Op: "seed-changes", DSN: b.cluster.DSN, N: n})
	if err != nil {
		return err
	}
	// Let the hub publish the new entries first: the figure is the streams'
	// cost, not the hub's.
	time.Sleep(3 * time.Second)
	base, err := b.host.mem()
	if err != nil {
		return err
	}
	conns, err := dial(ctx, b.replicas[0].GRPC, b.token, streams)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	// start_revision 0 means "from now": a log that starts at 1 is read
	// from 2.
	from := max(seeded.Oldest-1, 1)
	b.progressf("catch-up: %d streams from revision %d to %d", streams, from, seeded.Revision)
	var peak atomic.Uint64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if h, err := b.host.mem(); err == nil && h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-sampling:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	first := make([]time.Duration, streams)
	errs := make([]error, streams)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			// A stream stuck for good must not hang the bench.
			sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
			defer cancel()
			t0 := time.Now()
			ws, err := pb.NewSecretServiceClient(conns[i]).WatchChanges(sctx, &pb.WatchChangesRequest{StartRevision: from})
			if err != nil {
				errs[i] = err
				return
			}
			last := from
			for last < seeded.Revision {
				m, err := ws.Recv()
				if err != nil {
					errs[i] = fmt.Errorf("after revision %d: %w", last, err)
					return
				}
				ev := m.GetEvent()
				if ev == nil {
					continue
				}
				if first[i] == 0 {
					first[i] = time.Since(t0)
				}
				if ev.GetRevision() != last+1 {
					errs[i] = fmt.Errorf("got revision %d after %d: out of order", ev.GetRevision(), last)
					return
				}
				last = ev.GetRevision()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(sampling)
	<-sampled
	inOrder := errors.Join(errs...) == nil
	var slowest time.Duration
	for _, d := range first {
		slowest = max(slowest, d)
	}
	growth := float64(int64(peak.Load())-int64(base)) / (1 << 20)
	b.res.CatchUpChanges = int(seeded.Revision - from)
	b.res.CatchUpStreams = streams
	b.res.CatchUpFirstEventMs = num3(msf(slowest))
	b.res.CatchUpHeapGrowthMiB = num1(growth)
	b.res.CatchUpSeconds = num1(elapsed.Seconds())
	b.res.CatchUpInOrder = &inOrder
	b.progressf("  %d streams × %d changes in %s: first event after %s (slowest stream), server heap +%.1f MiB, in order: %v",
		streams, b.res.CatchUpChanges, elapsed.Round(time.Millisecond), ms(slowest), growth, inOrder)
	if !inOrder {
		return errors.Join(errs...)
	}
	return nil
}

// rotationPhase: with a 300 ms KMS as the new primary KEK, the p99 of
// unrelated writes (metadata-only UpdateSecret) while a KEK rotation runs,
// against their p99 just before it. Meanwhile one writer disables and
// enables versions, touching the rows the rotation re-wraps.
func (b *bench) rotationPhase(ctx context.Context) error {
	const kmsDelay = 300 * time.Millisecond
	b.progressf("rotation: a replica whose primary KEK is a KMS with %v per call", kmsDelay)
	slow, err := b.host.call(hostCmd{Op: "app", DSN: b.cluster.DSN, KEK: "slowkms://bench?delay=" + kmsDelay.String() + "," + b.kek,
		Token: b.token, LogPath: filepath.Join(b.tmp, "server.log")})
	if err != nil {
		return err
	}
	conns, err := dial(ctx, b.replicas[0].GRPC, b.token, 4)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	d := max(b.cfg.duration, 5*time.Second)
	load := func() (loadResult, loadResult) {
		var touch loadResult
		var wg sync.WaitGroup
		wg.Go(func() {
			touch = runLoad(ctx, 1, d, func(ctx context.Context, _ int, rng *rand.Rand) error {
				c := pb.NewSecretServiceClient(conns[0])
				// The first keys: those the rotation (in key order) works on
				// during the window.
				key := benchKey(rng.IntN(min(40, b.cfg.keys)))
				if _, err := c.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{Key: key, Version: "1"}); err != nil {
					return err
				}
				_, err := c.EnableSecretVersion(ctx, &pb.EnableSecretVersionRequest{Key: key, Version: "1"})
				return err
			})
		})
		writes := runLoad(ctx, 8, d, func(ctx context.Context, w int, rng *rand.Rand) error {
			_, err := pb.NewSecretServiceClient(conns[w%len(conns)]).UpdateSecret(ctx, &pb.UpdateSecretRequest{
				Secret:     &pb.Secret{Key: benchKey(rng.IntN(b.cfg.keys)), Description: fmt.Sprintf("bench %d", rng.Uint64())},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
			return err
		})
		wg.Wait()
		return writes, touch
	}
	before, _ := load()
	b.detail("unrelated writes, no rotation", before)
	kc, err := dial(ctx, slow.GRPC, b.token, 1)
	if err != nil {
		return err
	}
	defer closeAll(kc)
	keys := pb.NewKeyServiceClient(kc[0])
	// Batches of 10: a batch takes 10 KMS round trips (3 s) before it
	// stores anything, so progress shows within the window.
	if _, err := keys.RotateKEK(ctx, &pb.RotateKEKRequest{BatchSize: 10}); err != nil {
		return err
	}
	during, touch := load()
	st, err := keys.GetKEKStatus(ctx, &pb.GetKEKStatusRequest{})
	if err != nil {
		return err
	}
	p := st.GetRotation()
	b.detail("unrelated writes, rotating", during)
	b.detail("disable/enable of rotating rows", touch)
	overlapped := p.GetRunning() && p.GetDone() > 0
	b.progressf("  rotation after the window: %d/%d data keys, running %v", p.GetDone(), p.GetTotal(), p.GetRunning())
	b.check("rotation", before, during)
	b.res.RotationKMSDelayMs = num1(msf(kmsDelay))
	b.res.RotationWritesP99BeforeMs = num3(msf(before.P99))
	b.res.RotationWritesP99DuringMs = num3(msf(during.P99))
	b.res.RotationRewrappedInWindow = num1(float64(p.GetDone()))
	b.res.RotationOverlapped = &overlapped
	if before.P99 > 0 {
		b.res.RotationP99Ratio = num3(float64(during.P99) / float64(before.P99))
	}
	if !overlapped {
		return fmt.Errorf("the rotation did not run through the measured window (%d/%d, running %v)", p.GetDone(), p.GetTotal(), p.GetRunning())
	}
	return nil
}

// slowKMS is a KMS stand-in for the rotation phase, registered as
// slowkms://NAME?delay=D: every call takes D, as a remote KMS's round trip
// does; it "wraps" by prefixing its name.
type slowKMS struct {
	prefix []byte
	delay  time.Duration
}

type slowKMSOpener struct{}

func (slowKMSOpener) OpenKeeperURL(_ context.Context, u *url.URL) (*secrets.Keeper, error) {
	d, err := time.ParseDuration(u.Query().Get("delay"))
	if err != nil {
		return nil, fmt.Errorf("slowkms: delay: %w", err)
	}
	return secrets.NewKeeper(slowKMS{prefix: []byte("slowkms:" + u.Host + ":"), delay: d}), nil
}

func (k slowKMS) wait(ctx context.Context) error {
	t := time.NewTimer(k.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k slowKMS) Encrypt(ctx context.Context, pt []byte) ([]byte, error) {
	if err := k.wait(ctx); err != nil {
		return nil, err
	}
	return append(bytes.Clone(k.prefix), pt...), nil
}

func (k slowKMS) Decrypt(ctx context.Context, ct []byte) ([]byte, error) {
	if err := k.wait(ctx); err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(ct, k.prefix) {
		return nil, errors.New("slowkms: not my ciphertext")
	}
	return bytes.Clone(ct[len(k.prefix):]), nil
}

func (slowKMS) Close() error                       { return nil }
func (slowKMS) ErrorAs(error, any) bool            { return false }
func (slowKMS) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.Unknown }

func init() { secrets.DefaultURLMux().RegisterKeeper("slowkms", slowKMSOpener{}) }
