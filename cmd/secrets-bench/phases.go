package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// valueSize is the size of the secrets the access phases read.
const valueSize = 100

// benchKey names the i-th seeded secret.
func benchKey(i int) string { return fmt.Sprintf("BENCH_%04d", i) }

// randomValue returns n random printable bytes (a token-like value).
func randomValue(rng *rand.Rand, n int) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return b
}

// echoPhase measures the transport's ceiling: grpc.health.v1 Check on a bare
// grpc.Server, with the same workers and connections as the access phase.
func (b *bench) echoPhase(ctx context.Context) error {
	b.progress("ceiling: no-op gRPC (health Check on a bare grpc.Server), concurrency 16")
	r, err := b.host.call(hostCmd{Op: "echo"})
	if err != nil {
		return err
	}
	// The admin token too: the same metadata on the wire as the access
	// calls (the bare server ignores it).
	conns, err := dial(ctx, r.GRPC, b.token, b.cfg.conns)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	clients := make([]healthpb.HealthClient, len(conns))
	for i, c := range conns {
		clients[i] = healthpb.NewHealthClient(c)
	}
	req := &healthpb.HealthCheckRequest{}
	check := func(ctx context.Context, w int, _ *rand.Rand) error {
		_, err := clients[w%len(clients)].Check(ctx, req)
		return err
	}
	runLoad(ctx, 16, b.cfg.warmup, check)
	var res loadResult
	b.observe("echo_c16", func() { res = runLoad(ctx, 16, b.cfg.duration, check) })
	b.detail("echo c16", res)
	b.res.EchoRPS = num1(res.RPS)
	b.res.EchoP50ms, b.res.EchoP99ms = num3(msf(res.P50)), num3(msf(res.P99))
	return nil
}

// secretClients dials b.cfg.conns connections to the first replica.
func (b *bench) secretClients(ctx context.Context) ([]pb.SecretServiceClient, func(), error) {
	conns, err := dial(ctx, b.replicas[0].GRPC, b.token, b.cfg.conns)
	if err != nil {
		return nil, nil, err
	}
	clients := make([]pb.SecretServiceClient, len(conns))
	for i, c := range conns {
		clients[i] = pb.NewSecretServiceClient(c)
	}
	return clients, func() { closeAll(conns) }, nil
}

// seed writes the secrets the read phases use.
func (b *bench) seed(ctx context.Context, clients []pb.SecretServiceClient) error {
	b.progress(fmt.Sprintf("seeding %d secrets of %d bytes", b.cfg.keys, valueSize))
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(1, uint64(w)))
			for {
				i := int(next.Add(1) - 1)
				if i >= b.cfg.keys {
					return
				}
				_, err := clients[w%len(clients)].PutSecret(ctx, &pb.PutSecretRequest{Key: benchKey(i), Value: randomValue(rng, valueSize)})
				if err != nil {
					errc <- fmt.Errorf("seeding %s: %w", benchKey(i), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// accessPhase measures AccessSecretVersion (latest) of a random key per
// call at concurrency 16 and 64. Every read is audited by the server (the
// access audit event commits before the value is returned).
func (b *bench) accessPhase(ctx context.Context, clients []pb.SecretServiceClient) error {
	call := func(ctx context.Context, w int, rng *rand.Rand) error {
		resp, err := clients[w%len(clients)].AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{
			Key: benchKey(rng.IntN(b.cfg.keys)), Version: "latest"})
		if err == nil && len(resp.GetValue()) != valueSize {
			err = fmt.Errorf("got %d bytes, want %d", len(resp.GetValue()), valueSize)
		}
		return err
	}
	b.progress("access: AccessSecretVersion, random key, concurrency 16")
	runLoad(ctx, 16, b.cfg.warmup, call)
	var stopProfile func()
	if b.cfg.profileDir != "" {
		var err error
		if stopProfile, err = b.startProfile("access-c16", "access c16", min(10*time.Second, b.cfg.duration)); err != nil {
			return err
		}
	}
	var c16 loadResult
	var groups auditGroups
	var groupsOK bool
	wal16 := b.observe("access_c16", func() {
		groups, groupsOK = b.auditGroupsDuring(func() { c16 = runLoad(ctx, 16, b.cfg.duration, call) })
	})
	if stopProfile != nil {
		stopProfile()
	}
	b.detail("access c16", c16)
	b.walDetail("access c16", wal16, c16.RPS)
	if groupsOK {
		// The cycle a read waits for: the group in progress, then its own.
		b.progressf("  access c16: %.0f audit groups/s of %.1f reads, each committed in %.2fms (WAL fsync %.2fms of it)",
			groups.perSec, groups.callersPerGroup, groups.commitMs, wal16.avgMs)
		b.res.AccessC16AuditGroupsPerS, b.res.AccessC16AuditReadsPerGroup = num1(groups.perSec), num1(groups.callersPerGroup)
		b.res.AccessC16AuditGroupCommitMs = num3(groups.commitMs)
	}
	b.res.AccessC16WALSyncsPerS, b.res.AccessC16WALSyncAvgMs = wal16.num()
	b.res.AccessC16WALBytesPerCall, b.res.AccessC16WALFPIPerCall = wal16.perCall(c16.RPS)
	b.res.AccessC16RPS = num1(c16.RPS)
	b.res.AccessC16P50ms, b.res.AccessC16P99ms = num3(msf(c16.P50)), num3(msf(c16.P99))
	if b.res.EchoRPS != nil && *b.res.EchoRPS > 0 {
		b.res.AccessToEchoRatio = num3(c16.RPS / *b.res.EchoRPS)
	}

	b.progress("access: AccessSecretVersion, random key, concurrency 64")
	runLoad(ctx, 64, b.cfg.warmup/2, call)
	var c64 loadResult
	delaysBefore := b.sequencingDelays()
	wal64 := b.observe("access_c64", func() { c64 = runLoad(ctx, 64, b.cfg.duration, call) })
	b.detail("access c64", c64)
	if delaysBefore != nil {
		// The sequencer catches up within its merge delay: wait that long.
		time.Sleep(200 * time.Millisecond)
		if after := b.sequencingDelays(); after != nil {
			d := after.since(delaysBefore)
			if p99 := d.quantile(0.99); !math.IsNaN(p99) {
				b.res.AuditSequencingC64P50ms = num3(d.quantile(0.5) * 1000)
				b.res.AuditSequencingC64P99ms = num3(p99 * 1000)
				b.progressf("  access c64: audit sequencing delay p50 %.1fms, p99 %.1fms (%.0f events)", d.quantile(0.5)*1000, p99*1000, d.count())
			}
		}
	}
	b.walDetail("access c64", wal64, c64.RPS)
	b.res.AccessC64WALSyncsPerS, b.res.AccessC64WALSyncAvgMs = wal64.num()
	b.res.AccessC64RPS = num1(c64.RPS)
	b.res.AccessC64P50ms, b.res.AccessC64P99ms = num3(msf(c64.P50)), num3(msf(c64.P99))
	b.check("access", c16, c64)
	return nil
}

// batchPhase measures BatchAccessSecrets of 20 distinct random keys at
// concurrency 16 (calls per second; each call audits 20 reads).
func (b *bench) batchPhase(ctx context.Context, clients []pb.SecretServiceClient) error {
	b.progress("batch: BatchAccessSecrets of 20 random keys, concurrency 16")
	idx := make([][]int, 16)
	for w := range idx {
		idx[w] = make([]int, b.cfg.keys)
		for i := range idx[w] {
			idx[w][i] = i
		}
	}
	batch := func(ctx context.Context, w int, rng *rand.Rand) error {
		perm := idx[w]
		keys := make([]string, 20)
		for i := range keys { // partial Fisher-Yates: 20 distinct keys
			j := i + rng.IntN(len(perm)-i)
			perm[i], perm[j] = perm[j], perm[i]
			keys[i] = benchKey(perm[i])
		}
		resp, err := clients[w%len(clients)].BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: keys})
		if err == nil {
			for _, r := range resp.GetResults() {
				if r.GetError() != nil {
					return fmt.Errorf("%s: %s", r.GetKey(), r.GetError().GetMessage())
				}
			}
		}
		return err
	}
	runLoad(ctx, 16, b.cfg.warmup/2, batch)
	var res loadResult
	b.observe("batch20_c16", func() { res = runLoad(ctx, 16, b.cfg.duration, batch) })
	b.detail("batch20 c16", res)
	b.res.Batch20RPS = num1(res.RPS)
	b.res.Batch20P99ms = num3(msf(res.P99))
	b.check("batch20", res)
	return nil
}

// putPhase measures PutSecret (a new 100-byte version of a random seeded
// key, unconditional) at concurrency 16 and 64.
func (b *bench) putPhase(ctx context.Context, clients []pb.SecretServiceClient) error {
	b.progress("writes: PutSecret, random key, concurrency 16")
	put := func(ctx context.Context, w int, rng *rand.Rand) error {
		_, err := clients[w%len(clients)].PutSecret(ctx, &pb.PutSecretRequest{
			Key: benchKey(rng.IntN(b.cfg.keys)), Value: randomValue(rng, valueSize)})
		return err
	}
	runLoad(ctx, 16, b.cfg.warmup/2, put)
	var stopProfile func()
	if b.cfg.profileDir != "" {
		var err error
		if stopProfile, err = b.startProfile("put-c16", "put c16", min(10*time.Second, b.cfg.duration)); err != nil {
			return err
		}
	}
	var res loadResult
	wal := b.observe("put_c16", func() { res = runLoad(ctx, 16, b.cfg.duration, put) })
	if stopProfile != nil {
		stopProfile()
	}
	b.detail("put c16", res)
	b.walDetail("put c16", wal, res.RPS)
	b.res.PutC16WALSyncsPerS, b.res.PutC16WALSyncAvgMs = wal.num()
	b.res.PutC16WALBytesPerCall, b.res.PutC16WALFPIPerCall = wal.perCall(res.RPS)
	b.res.PutC16RPS = num1(res.RPS)
	b.res.PutC16P50ms, b.res.PutC16P99ms = num3(msf(res.P50)), num3(msf(res.P99))
	if b.res.PgbenchTPCBTPS != nil && *b.res.PgbenchTPCBTPS > 0 {
		b.res.PutToTPCBRatio = num3(res.RPS / *b.res.PgbenchTPCBTPS)
	}

	b.progress("writes: PutSecret, random key, concurrency 64")
	var c64 loadResult
	wal64 := b.observe("put_c64", func() { c64 = runLoad(ctx, 64, b.cfg.duration, put) })
	b.detail("put c64", c64)
	b.walDetail("put c64", wal64, c64.RPS)
	b.res.PutC64RPS = num1(c64.RPS)
	b.res.PutC64P50ms, b.res.PutC64P99ms = num3(msf(c64.P50)), num3(msf(c64.P99))
	b.check("put", res, c64)
	return nil
}

// walStats are the cluster's WAL fsyncs during a phase, and the WAL
// bytes and full-page images written (pg_stat_wal).
type walStats struct {
	ok                   bool
	perSec, avgMs        float64
	bytesPerS, fpiPerSec float64
}

// perCall is the WAL written per call at rps calls a second: bytes, and
// full-page images (a page's first change after a checkpoint logs the
// whole page). It moves far less with the machine's speed than the
// rates, though it counts the whole cluster's WAL over the window
// (autovacuum and checkpoints too) and the sequencer's lag moves some
// chaining across a phase's edges (bench/README.md).
func (w walStats) perCall(rps float64) (bytes, fpi *float64) {
	if !w.ok || rps <= 0 {
		return nil, nil
	}
	return num1(w.bytesPerS / rps), num3(w.fpiPerSec / rps)
}

func (w walStats) num() (*float64, *float64) {
	if !w.ok {
		return nil, nil
	}
	return num1(w.perSec), num3(w.avgMs)
}

// walDuring runs fn and returns the WAL fsyncs per second during it and
// their mean duration: every audited read and every write waits for one.
func (b *bench) walDuring(fn func()) walStats {
	before, err := b.host.call(hostCmd{Op: "wal"})
	t0 := time.Now()
	fn()
	el := time.Since(t0)
	after, err2 := b.host.call(hostCmd{Op: "wal"})
	if err != nil || err2 != nil || el <= 0 {
		return walStats{}
	}
	n := float64(after.WALSyncs - before.WALSyncs)
	w := walStats{ok: true, perSec: n / el.Seconds(),
		bytesPerS: float64(after.WALBytes-before.WALBytes) / el.Seconds(),
		fpiPerSec: float64(after.WALFPI-before.WALFPI) / el.Seconds()}
	if n > 0 {
		w.avgMs = (after.WALSyncMs - before.WALSyncMs) / n
	}
	return w
}

// observe runs fn (a measured run) and records the WAL fsyncs and the CPU
// split meanwhile (the latter under name in cpu_cores).
func (b *bench) observe(name string, fn func()) walStats {
	var cpu cpuSplit
	w := b.walDuring(func() { cpu = b.cpuDuring(fn) })
	b.res.CPU[name] = cpu
	b.progressf("  %s: %s", name, cpu)
	return w
}

func (b *bench) walDetail(name string, w walStats, rps float64) {
	if w.ok && w.perSec > 0 && rps > 0 {
		bytes, fpi := w.perCall(rps)
		b.progressf("  %s: %.0f WAL fsyncs/s (mean %.2fms), %.1f calls per fsync; %.0f B of WAL and %.3f full-page images per call",
			name, w.perSec, w.avgMs, rps/w.perSec, *bytes, *fpi)
	}
}

// check records a note when a phase had errors.
func (b *bench) check(phase string, rs ...loadResult) {
	for _, r := range rs {
		if r.Errors > 0 {
			b.note(fmt.Sprintf("%s: %d failed calls (first: %v)", phase, r.Errors, r.FirstErr))
		}
	}
}

// startProfile starts a CPU profile of the server host, saved as
// server-cpu-<name>.pprof, and one of this process (the load generator:
// on 2 shared cores its cost delays the servers as much as their own), saved
// as loadgen-cpu-<name>.pprof, for at most d (0: no limit) or until the
// returned stop is called.
func (b *bench) startProfile(name, title string, d time.Duration) (stop func(), err error) {
	if err := os.MkdirAll(b.cfg.profileDir, 0o755); err != nil {
		return nil, err
	}
	path, _ := filepath.Abs(filepath.Join(b.cfg.profileDir, "server-cpu-"+name+".pprof"))
	if _, err := b.host.call(hostCmd{Op: "profile-start", Path: path}); err != nil {
		return nil, err
	}
	b.progress(fmt.Sprintf("  profiling the server (%s) -> %s", title, path))
	local := strings.Replace(path, "server-cpu-", "loadgen-cpu-", 1)
	f, err := os.Create(local)
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			f.Close()
			f = nil
		}
	}
	if err != nil {
		b.note("load generator profile: " + err.Error())
	}
	var once sync.Once
	stopNow := func() {
		once.Do(func() {
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
			}
			if _, err := b.host.call(hostCmd{Op: "profile-stop"}); err != nil {
				b.note("profile: " + err.Error())
				return
			}
			b.profiles = append(b.profiles, profile{path, title})
		})
	}
	if d > 0 {
		timer := time.AfterFunc(d, stopNow)
		return func() { timer.Stop(); stopNow() }, nil
	}
	return stopNow, nil
}

type profile struct{ path, title string }

// reportProfiles prints each profile's top 15 functions by cumulative time
// and by own (flat) time, after the run, so that pprof's CPU use does not
// disturb a phase; the listings are saved next to the profiles.
func (b *bench) reportProfiles() {
	exe, _ := os.Executable()
	for _, p := range b.profiles {
		var all []byte
		for _, v := range []struct{ title, flag string }{{"cumulative", "-cum"}, {"own (flat)", "-flat"}} {
			out, err := exec.Command("go", "tool", "pprof", "-top", v.flag, "-nodecount=15", exe, p.path).CombinedOutput()
			if err != nil {
				b.note(fmt.Sprintf("go tool pprof: %v: %s", err, strings.TrimSpace(string(out))))
				return
			}
			section := fmt.Sprintf("\nServer CPU profile during %s (%s), top 15 by %s time:\n%s", p.title, p.path, v.title, out)
			fmt.Print(section)
			all = append(all, section...)
		}
		os.WriteFile(strings.TrimSuffix(p.path, ".pprof")+"-top.txt", all, 0o644)
	}
}
