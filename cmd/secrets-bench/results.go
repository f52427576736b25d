package main

import (
	"bufio"
	"fmt"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// results is the JSON document. Figures are null when their phase was
// skipped or failed (see notes). Latencies are milliseconds.
type results struct {
	Mode         string  `json:"mode"` // "full" or "quick"
	Time         string  `json:"time"`
	Cores        int     `json:"cores"`
	GoVersion    string  `json:"go_version"`
	GOOSArch     string  `json:"goos_goarch"`
	CPUModel     string  `json:"cpu_model,omitempty"`
	MemoryGiB    float64 `json:"memory_gib,omitempty"`
	PhaseSeconds float64 `json:"phase_seconds"`
	WarmupSecs   float64 `json:"warmup_seconds"`
	ClientConns  int     `json:"client_conns"`
	Keys         int     `json:"keys"`
	ValueBytes   int     `json:"value_bytes"`
	WatchSmallN  int     `json:"watch_1k_streams"`
	WatchLargeN  int     `json:"watch_10k_streams"`
	WatchConns   int     `json:"watch_conns"`
	WatchWrites  int     `json:"watch_writes"`
	IdleConns    int     `json:"idle_conns"`
	PgbenchScale int     `json:"pgbench_scale"`
	// 1-minute load averages: other work on the machine skews the figures.
	LoadAvgStart float64 `json:"load_avg_start"`
	LoadAvgEnd   float64 `json:"load_avg_end"`

	EchoRPS          *float64 `json:"echo_rps"`
	EchoP50ms        *float64 `json:"echo_p50_ms"`
	EchoP99ms        *float64 `json:"echo_p99_ms"`
	PgbenchSelectTPS *float64 `json:"pgbench_select_tps"`
	// pgbench's default TPC-B-like script at c16: the cluster's write
	// ceiling, at scale pgbench_scale.
	PgbenchTPCBTPS *float64 `json:"pgbench_tpcb_c16_tps"`

	AccessC16RPS      *float64 `json:"access_c16_rps"`
	AccessC16P50ms    *float64 `json:"access_c16_p50_ms"`
	AccessC16P99ms    *float64 `json:"access_c16_p99_ms"`
	AccessC64RPS      *float64 `json:"access_c64_rps"`
	AccessC64P50ms    *float64 `json:"access_c64_p50_ms"`
	AccessC64P99ms    *float64 `json:"access_c64_p99_ms"`
	AccessToEchoRatio *float64 `json:"access_to_echo_ratio"`
	// WAL fsyncs of the cluster during the phase and their mean time: the
	// durable audit (reads) and commits (writes) wait for them.
	AccessC16WALSyncsPerS *float64 `json:"access_c16_wal_fsyncs_per_s"`
	AccessC16WALSyncAvgMs *float64 `json:"access_c16_wal_fsync_avg_ms"`
	AccessC64WALSyncsPerS *float64 `json:"access_c64_wal_fsyncs_per_s"`
	AccessC64WALSyncAvgMs *float64 `json:"access_c64_wal_fsync_avg_ms"`
	// WAL written per call during c16 (the sequencer's share included):
	// bytes, and full-page images.
	AccessC16WALBytesPerCall *float64 `json:"access_c16_wal_bytes_per_call"`
	AccessC16WALFPIPerCall   *float64 `json:"access_c16_wal_fpi_per_call"`
	// The access audits' group commit during c16 (the servers' metrics):
	// groups a second, reads per group, and a group's mean commit (round
	// trip and WAL flush), the cycle an audited read waits for.
	AccessC16AuditGroupsPerS    *float64 `json:"access_c16_audit_groups_per_s"`
	AccessC16AuditReadsPerGroup *float64 `json:"access_c16_audit_reads_per_group"`
	AccessC16AuditGroupCommitMs *float64 `json:"access_c16_audit_group_commit_ms"`
	// Audit sequencing delay under the c64 read load: an access event's
	// commit to the intake until the sequencer chained it.
	AuditSequencingC64P50ms *float64 `json:"audit_sequencing_c64_p50_ms"`
	AuditSequencingC64P99ms *float64 `json:"audit_sequencing_c64_p99_ms"`

	RestAccessC16RPS   *float64 `json:"rest_access_c16_rps"`
	RestAccessC16P50ms *float64 `json:"rest_access_c16_p50_ms"`
	RestAccessC16P99ms *float64 `json:"rest_access_c16_p99_ms"`
	Batch20RPS         *float64 `json:"batch20_rps"`
	Batch20P99ms       *float64 `json:"batch20_p99_ms"`

	PutC16RPS          *float64 `json:"put_c16_rps"`
	PutC16P50ms        *float64 `json:"put_c16_p50_ms"`
	PutC16P99ms        *float64 `json:"put_c16_p99_ms"`
	PutC16WALSyncsPerS *float64 `json:"put_c16_wal_fsyncs_per_s"`
	PutC16WALSyncAvgMs *float64 `json:"put_c16_wal_fsync_avg_ms"`
	// WAL written per put during c16 (the sequencer's share included).
	PutC16WALBytesPerCall *float64 `json:"put_c16_wal_bytes_per_call"`
	PutC16WALFPIPerCall   *float64 `json:"put_c16_wal_fpi_per_call"`
	// PutSecret c16 ÷ pgbench TPC-B c16.
	PutToTPCBRatio *float64 `json:"put_c16_to_pgbench_tpcb_ratio"`
	PutC64RPS      *float64 `json:"put_c64_rps"`
	PutC64P50ms    *float64 `json:"put_c64_p50_ms"`
	PutC64P99ms    *float64 `json:"put_c64_p99_ms"`

	Watch1kP50ms  *float64 `json:"watch_1k_p50_ms"`
	Watch1kP99ms  *float64 `json:"watch_1k_p99_ms"`
	Watch10kP50ms *float64 `json:"watch_10k_p50_ms"`
	Watch10kP99ms *float64 `json:"watch_10k_p99_ms"`
	// The same streams received by frame-level receivers (a goroutine per
	// connection, framewatch.go), so that the load generator's receiving
	// takes little of the cores the servers share with it.
	Watch10kFramesP50ms           *float64 `json:"watch_10k_frames_p50_ms"`
	Watch10kFramesP99ms           *float64 `json:"watch_10k_frames_p99_ms"`
	WatchBytesPerIdleWatcher      *float64 `json:"watch_bytes_per_idle_watcher"`
	WatchSmallBytesPerIdleWatcher *float64 `json:"watch_1k_bytes_per_idle_watcher"`
	WatchBytesPerIdleConnection   *float64 `json:"watch_bytes_per_idle_connection"`
	// Subscriptions that overflowed their buffer during the phase (they
	// catch up from the change log: the fan-out fell behind).
	Watch1kLagged  *float64 `json:"watch_1k_lagged"`
	Watch10kLagged *float64 `json:"watch_10k_lagged"`

	// Catch-up: streams resuming from before the oldest of catchup_changes
	// retained changes, all at once.
	CatchUpChanges       int      `json:"catchup_changes"`
	CatchUpStreams       int      `json:"catchup_streams"`
	CatchUpFirstEventMs  *float64 `json:"catchup_first_event_ms"`
	CatchUpHeapGrowthMiB *float64 `json:"catchup_heap_growth_mib"`
	CatchUpSeconds       *float64 `json:"catchup_seconds"`
	CatchUpInOrder       *bool    `json:"catchup_in_order"`

	// Rotation behind a slow KMS: p99 of unrelated writes before and during.
	RotationKMSDelayMs        *float64 `json:"rotation_kms_delay_ms"`
	RotationWritesP99BeforeMs *float64 `json:"rotation_writes_p99_before_ms"`
	RotationWritesP99DuringMs *float64 `json:"rotation_writes_p99_during_ms"`
	RotationP99Ratio          *float64 `json:"rotation_writes_p99_ratio"`
	RotationRewrappedInWindow *float64 `json:"rotation_rewrapped_in_window"`
	RotationOverlapped        *bool    `json:"rotation_overlapped"`

	CacheGetNs     *float64 `json:"cache_get_ns"`
	CacheGetAllocs *float64 `json:"cache_get_allocs"`
	CacheGetBytes  *float64 `json:"cache_get_bytes"`

	EmbeddedStartS *float64 `json:"embedded_start_s"`
	RestartStartS  *float64 `json:"restart_start_s"`

	// The audit log at scale (issue 17): bytes of database (audit_events'
	// partitions with their indexes) per audited event, measured on the
	// bench's database after the access phases (audit_events_measured
	// events); the size of a day's partition at access_c16_rps; and, on a
	// log of audit_verify_events synthetic events, the retention job's
	// export rate and verify times (full and archives+table per million
	// events; incremental: the walk after audit_verify_incremental_new
	// new events, whatever the log's size).
	AuditBytesPerEvent        *float64 `json:"audit_bytes_per_read"`
	AuditEventsMeasured       int      `json:"audit_events_measured"`
	AuditDayPartitionGiB      *float64 `json:"audit_day_partition_gib"`
	AuditVerifyEvents         int      `json:"audit_verify_events"`
	AuditRetentionRowsPerS    *float64 `json:"audit_retention_export_rows_per_s"`
	AuditVerifyFullSPerM      *float64 `json:"audit_verify_full_s_per_million"`
	AuditVerifyIncrementalS   *float64 `json:"audit_verify_incremental_s"`
	AuditVerifyIncrementalNew int      `json:"audit_verify_incremental_new"`
	AuditVerifyArchivesSPerM  *float64 `json:"audit_verify_archives_s_per_million"`

	// Where the machine's CPU went during each measured run, in cores.
	CPU map[string]cpuSplit `json:"cpu_cores"`
	// How long the sequencer took, after a phase's load stopped, to chain
	// the audit events it left waiting (the next phase starts after).
	IntakeDrain map[string]intakeDrain `json:"intake_drain,omitempty"`

	TotalSeconds float64  `json:"total_seconds"`
	Notes        []string `json:"notes"`
}

func newResults(c config) *results {
	mode := "full"
	if c.quick {
		mode = "quick"
	}
	r := &results{
		Mode: mode, Time: time.Now().UTC().Format(time.RFC3339),
		Cores: runtime.NumCPU(), GoVersion: goVersion(), GOOSArch: runtime.GOOS + "/" + runtime.GOARCH,
		CPUModel: cpuModel(), MemoryGiB: memoryGiB(),
		PhaseSeconds: c.duration.Seconds(), WarmupSecs: c.warmup.Seconds(), ClientConns: c.conns,
		Keys: c.keys, ValueBytes: valueSize, WatchSmallN: c.watchSmall, WatchLargeN: c.watchLarge,
		WatchConns: c.watchConns, WatchWrites: c.watchWrites, IdleConns: c.idleConns,
		PgbenchScale: c.pgbenchScale, LoadAvgStart: loadAvg(),
		Notes: []string{}, CPU: map[string]cpuSplit{}, IntakeDrain: map[string]intakeDrain{},
	}
	return r
}

func boolNum(b *bool) *float64 {
	if b == nil {
		return nil
	}
	v := 0.0
	if *b {
		v = 1
	}
	return &v
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }
func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// num1 and num3 round a figure; one that could not be measured (a division
// by zero: NaN or infinite) is absent, not a value JSON cannot hold.
func num1(x float64) *float64 { return finite(round1(x)) }
func num3(x float64) *float64 { return finite(round3(x)) }

func finite(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// printTable prints the figures, grouped, on stdout.
func (b *bench) printTable() {
	r := b.res
	type row struct {
		label, key string
		v          *float64
		unit       string
	}
	wl := func(n int) string {
		if n%1000 == 0 {
			return fmt.Sprintf("%dk", n/1000)
		}
		return strconv.Itoa(n)
	}
	sections := []struct {
		title string
		rows  []row
	}{
		{"Ceiling", []row{
			{"no-op gRPC (health Check), c16", "echo_rps", r.EchoRPS, "req/s"},
			{"  p99", "echo_p99_ms", r.EchoP99ms, "ms"},
			{"pgbench -S -c 16 -j 2 (unix socket)", "pgbench_select_tps", r.PgbenchSelectTPS, "tps"},
			{fmt.Sprintf("pgbench TPC-B -c 16 -j 2 (scale %d)", r.PgbenchScale), "pgbench_tpcb_c16_tps", r.PgbenchTPCBTPS, "tps"},
		}},
		{"Access (AccessSecretVersion, random key, audited)", []row{
			{"c16", "access_c16_rps", r.AccessC16RPS, "req/s"},
			{"  p50", "access_c16_p50_ms", r.AccessC16P50ms, "ms"},
			{"  p99", "access_c16_p99_ms", r.AccessC16P99ms, "ms"},
			{"c64", "access_c64_rps", r.AccessC64RPS, "req/s"},
			{"  p50", "access_c64_p50_ms", r.AccessC64P50ms, "ms"},
			{"  p99", "access_c64_p99_ms", r.AccessC64P99ms, "ms"},
			{"c16 / no-op ceiling", "access_to_echo_ratio", r.AccessToEchoRatio, ""},
			{"audit sequencing delay under c64, p50", "audit_sequencing_c64_p50_ms", r.AuditSequencingC64P50ms, "ms"},
			{"  p99 (target ≤ 100)", "audit_sequencing_c64_p99_ms", r.AuditSequencingC64P99ms, "ms"},
			{"WAL fsyncs during c16", "access_c16_wal_fsyncs_per_s", r.AccessC16WALSyncsPerS, "/s"},
			{"  mean fsync", "access_c16_wal_fsync_avg_ms", r.AccessC16WALSyncAvgMs, "ms"},
			{"  WAL per call", "access_c16_wal_bytes_per_call", r.AccessC16WALBytesPerCall, "B"},
			{"  full-page images per call", "access_c16_wal_fpi_per_call", r.AccessC16WALFPIPerCall, ""},
			{"audit groups during c16", "access_c16_audit_groups_per_s", r.AccessC16AuditGroupsPerS, "/s"},
			{"  reads per group", "access_c16_audit_reads_per_group", r.AccessC16AuditReadsPerGroup, ""},
			{"  commit per group (round trip + fsync)", "access_c16_audit_group_commit_ms", r.AccessC16AuditGroupCommitMs, "ms"},
			{"REST (wrk -c16) GET …/versions/latest:access", "rest_access_c16_rps", r.RestAccessC16RPS, "req/s"},
			{"  p99", "rest_access_c16_p99_ms", r.RestAccessC16P99ms, "ms"},
			{"BatchAccessSecrets of 20 keys, c16", "batch20_rps", r.Batch20RPS, "calls/s"},
		}},
		{"Writes (PutSecret, random key)", []row{
			{"c16", "put_c16_rps", r.PutC16RPS, "req/s"},
			{"  p50", "put_c16_p50_ms", r.PutC16P50ms, "ms"},
			{"  p99", "put_c16_p99_ms", r.PutC16P99ms, "ms"},
			{"WAL fsyncs during c16", "put_c16_wal_fsyncs_per_s", r.PutC16WALSyncsPerS, "/s"},
			{"  mean fsync", "put_c16_wal_fsync_avg_ms", r.PutC16WALSyncAvgMs, "ms"},
			{"  WAL per put", "put_c16_wal_bytes_per_call", r.PutC16WALBytesPerCall, "B"},
			{"  full-page images per put", "put_c16_wal_fpi_per_call", r.PutC16WALFPIPerCall, ""},
			{"c16 / pgbench TPC-B c16", "put_c16_to_pgbench_tpcb_ratio", r.PutToTPCBRatio, ""},
			{"c64", "put_c64_rps", r.PutC64RPS, "req/s"},
			{"  p50", "put_c64_p50_ms", r.PutC64P50ms, "ms"},
			{"  p99", "put_c64_p99_ms", r.PutC64P99ms, "ms"},
		}},
		{"Change stream (2 replicas, PutSecret returned → event received)", []row{
			{wl(r.WatchSmallN) + " streams p50", "watch_1k_p50_ms", r.Watch1kP50ms, "ms"},
			{wl(r.WatchSmallN) + " streams p99", "watch_1k_p99_ms", r.Watch1kP99ms, "ms"},
			{wl(r.WatchLargeN) + " streams p50", "watch_10k_p50_ms", r.Watch10kP50ms, "ms"},
			{wl(r.WatchLargeN) + " streams p99", "watch_10k_p99_ms", r.Watch10kP99ms, "ms"},
			{wl(r.WatchLargeN) + " streams p50, frame-level receivers", "watch_10k_frames_p50_ms", r.Watch10kFramesP50ms, "ms"},
			{wl(r.WatchLargeN) + " streams p99, frame-level receivers", "watch_10k_frames_p99_ms", r.Watch10kFramesP99ms, "ms"},
			{"server heap per idle stream (" + wl(r.WatchLargeN) + ")", "watch_bytes_per_idle_watcher", r.WatchBytesPerIdleWatcher, "B"},
			{"server heap per idle connection", "watch_bytes_per_idle_connection", r.WatchBytesPerIdleConnection, "B"},
		}},
		{fmt.Sprintf("Catch-up (%d streams resume over %d retained changes)", r.CatchUpStreams, r.CatchUpChanges), []row{
			{"time to first event (slowest stream)", "catchup_first_event_ms", r.CatchUpFirstEventMs, "ms"},
			{"server heap growth", "catchup_heap_growth_mib", r.CatchUpHeapGrowthMiB, "MiB"},
			{"all streams to the end", "catchup_seconds", r.CatchUpSeconds, "s"},
			{"every change once and in order (1 = yes)", "catchup_in_order", boolNum(r.CatchUpInOrder), ""},
		}},
		{"KEK rotation behind a slow KMS (unrelated UpdateSecret, c8)", []row{
			{"KMS delay per call", "rotation_kms_delay_ms", r.RotationKMSDelayMs, "ms"},
			{"p99 without rotation", "rotation_writes_p99_before_ms", r.RotationWritesP99BeforeMs, "ms"},
			{"p99 during rotation", "rotation_writes_p99_during_ms", r.RotationWritesP99DuringMs, "ms"},
			{"  during / without", "rotation_writes_p99_ratio", r.RotationP99Ratio, ""},
			{"data keys re-wrapped in the window", "rotation_rewrapped_in_window", r.RotationRewrappedInWindow, ""},
		}},
		{fmt.Sprintf("Audit log at scale (verify and retention over %d events)", r.AuditVerifyEvents), []row{
			{"database bytes per audited read (table + indexes)", "audit_bytes_per_read", r.AuditBytesPerEvent, "B"},
			{"a day's partition at access_c16_rps", "audit_day_partition_gib", r.AuditDayPartitionGiB, "GiB"},
			{"retention export (write, read back, drop)", "audit_retention_export_rows_per_s", r.AuditRetentionRowsPerS, "rows/s"},
			{"full verify, per million events", "audit_verify_full_s_per_million", r.AuditVerifyFullSPerM, "s"},
			{"incremental verify (10k new events)", "audit_verify_incremental_s", r.AuditVerifyIncrementalS, "s"},
			{"verify archives + table, per million events", "audit_verify_archives_s_per_million", r.AuditVerifyArchivesSPerM, "s"},
		}},
		{"Client cache (go test -bench BenchmarkCacheGet)", []row{
			{"Get", "cache_get_ns", r.CacheGetNs, "ns/op"},
			{"  allocations", "cache_get_allocs", r.CacheGetAllocs, "allocs/op"},
		}},
		{"Start-up (secretsd binary, embedded PostgreSQL)", []row{
			{"fresh --data-dir to /readyz 200", "embedded_start_s", r.EmbeddedStartS, "s"},
			{"restart on the same dir", "restart_start_s", r.RestartStartS, "s"},
		}},
	}
	fmt.Printf("\nOrient Secrets bench (%s: %s per load phase after %s warm-up; %d cores, %s, %s)\n",
		r.Mode, b.cfg.duration, b.cfg.warmup, r.Cores, r.GoVersion, r.CPUModel)
	for _, s := range sections {
		fmt.Printf("\n%s\n", s.title)
		for _, x := range s.rows {
			val := "—"
			if x.v != nil {
				val = formatNum(*x.v)
			}
			fmt.Printf("  %-48s %12s %-9s %s\n", x.label, val, x.unit, x.key)
		}
	}
	if len(r.CPU) > 0 {
		fmt.Printf("\nCPU during the measured runs, in cores of %d (cpu_cores)\n", r.Cores)
		fmt.Printf("  %-14s %8s %9s %9s %7s %6s\n", "", "server", "postgres", "load gen", "other", "idle")
		for _, name := range []string{"echo_c16", "access_c16", "access_c64", "batch20_c16", "rest_c16", "put_c16", "put_c64", "watch_1k", "watch_10k", "watch_10k_frames"} {
			if c, ok := r.CPU[name]; ok {
				fmt.Printf("  %-14s %8.2f %9.2f %9.2f %7.2f %6.2f\n", name, c.Server, c.Postgres, c.LoadGen, c.Other, c.Idle)
			}
		}
	}
	if len(r.IntakeDrain) > 0 {
		fmt.Println("\nAudit events left waiting when a phase's load stopped, and the time to chain them (intake_drain)")
		for _, name := range slices.Sorted(maps.Keys(r.IntakeDrain)) {
			d := r.IntakeDrain[name]
			fmt.Printf("  %-14s %8d events %8.1f s\n", name, d.Events, d.Seconds)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Println("\nNotes:")
		for _, n := range r.Notes {
			fmt.Println("  - " + n)
		}
	}
	fmt.Printf("\nTotal %.0fs. Results: ", r.TotalSeconds)
}

func formatNum(v float64) string {
	switch {
	case v >= 1000 || v <= -1000:
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	case v >= 100 || v <= -100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// loadAvg is the 1-minute load average (0 if unknown).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memoryGiB() float64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return round1(kb / (1 << 20))
		}
	}
	return 0
}
