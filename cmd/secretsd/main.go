// Command secretsd is the Orient Secrets server. It only parses flags and
// environment variables and hands them to server/app.
//
//	secretsd            serve (the default)
//	secretsd migrate    apply database migrations and exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/tracing"
)

const usage = `secretsd serves Orient's secrets over gRPC and REST.

Usage:
  secretsd [flags]            serve
  secretsd migrate [--service-role NAME] [--retention-role NAME] [--dry-run]
                              apply database migrations to DATABASE_URL (as the owner
                              role) and create or check the service role; exit
                              (--dry-run: print what would run, change nothing)
  secretsd version            print the version
  secretsd audit verify|export|prune  check the tamper-evident audit log; export it; archive and drop old partitions (see secretsd audit -h)
  secretsd kek status|rotate  KEK rotation: data keys per KEK; re-wrap them under the primary (see secretsd kek -h)

With no DATABASE_URL it runs a private PostgreSQL cluster in --data-dir and,
unless SECRETS_KEK_URL is set, a development key-encryption key stored there.

Environment (flags win over environment):
  DATABASE_URL               PostgreSQL connection URL (secret: never logged)
  SECRETS_BOOTSTRAP_TOKEN    the first admin token's value, on first start (16+ chars;
                             otherwise a random one is shown once on stderr)
  SECRETS_KEK_URL            key-encryption key keeper URL(s), comma-separated, first is
                             primary: awskms://…, gcpkms://…, azurekeyvault://…,
                             hashivault://…, file:///path (a 0600 key file, read once),
                             base64key://… (secret: never logged)
  SECRETS_GRPC_ADDR          same as --grpc-addr
  SECRETS_HTTP_ADDR          same as --http-addr
  SECRETS_DATA_DIR           same as --data-dir
  SECRETS_REFLECTION         same as --reflection
  SECRETS_READ_CACHE_ENTRIES same as --read-cache-entries
  SECRETS_TLS_CERT           same as --tls-cert
  SECRETS_TLS_KEY            same as --tls-key
  SECRETS_CLIENT_CA          same as --client-ca
  SECRETS_CERT_IDENTITIES    same as --cert-identities
  SECRETS_ALLOW_PLAINTEXT    same as --allow-plaintext
  SECRETS_AUDIT_SIGNING_KEY  same as --audit-signing-key
  SECRETS_TRUSTED_PROXIES    same as --trusted-proxies
  SECRETS_CORS_ORIGINS       same as --cors-origins
  SECRETS_LOG_LEVEL          same as --log-level
  SECRETS_LOG_FORMAT         same as --log-format
  SECRETS_KEK_TIMEOUT        same as --kek-timeout
  SECRETS_AUDIT_CHECKPOINT_URL same as --audit-checkpoint-url
  SECRETS_AUDIT_PUBLIC_KEYS  same as --audit-public-keys
  SECRETS_AUDIT_UNSIGNED     same as --audit-unsigned
  SECRETS_AUDIT_RETENTION    same as --audit-retention
  SECRETS_AUDIT_ARCHIVE_URL  same as --audit-archive-url
  SECRETS_ALLOW_OWNER_ROLE   same as --allow-owner-role
  SECRETS_SERVICE_ROLE       the role secretsd migrate creates or checks
  SECRETS_RETENTION_ROLE     the audit retention group role secretsd migrate creates or checks
  SECRETS_PROVIDER_CHECK_URLS same as --provider-check-urls
  SECRETS_PROVIDER_CHECK_JIRA_HOSTS same as --provider-check-jira-hosts
  OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) export OpenTelemetry spans over
                             OTLP/HTTP; the other OTEL_* variables apply (off when unset)

Flags:
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "secretsd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg := app.DefaultConfig()
	var envs envValues
	fs := flag.NewFlagSet("secretsd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", env("SECRETS_GRPC_ADDR", cfg.GRPCAddr), "gRPC listen address")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", env("SECRETS_HTTP_ADDR", cfg.HTTPAddr), "HTTP listen address (REST gateway, /openapi.json, /healthz, /readyz, /metrics)")
	fs.StringVar(&cfg.DataDir, "data-dir", env("SECRETS_DATA_DIR", cfg.DataDir), "data directory of the embedded default (used when DATABASE_URL is empty)")
	fs.BoolVar(&cfg.Reflection, "reflection", envs.bool("SECRETS_REFLECTION", cfg.Reflection), "enable gRPC server reflection (grpcurl)")
	fs.DurationVar(&cfg.KEKTimeout, "kek-timeout", envs.duration("SECRETS_KEK_TIMEOUT", seal.DefaultKMSTimeout), "bound on one KMS call (wrap, unwrap, readiness probe); a call that times out is UNAVAILABLE")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long SIGTERM waits for in-flight requests")
	fs.DurationVar(&cfg.WatchProgressInterval, "watch-progress-interval", cfg.WatchProgressInterval, "how often idle watch streams get a progress message")
	fs.DurationVar(&cfg.WatchPollInterval, "watch-poll-interval", cfg.WatchPollInterval, "how often the change log is polled in case a notification was lost")
	readCache := fs.String("read-cache-entries", env("SECRETS_READ_CACHE_ENTRIES", strconv.Itoa(cfg.ReadCacheEntries)), "sealed newest versions kept in memory so an access needs no database read (kept exact by the change stream; 0: off)")
	fs.BoolVar(&cfg.WatchNoListen, "watch-no-listen", cfg.WatchNoListen, "poll the change log only, without LISTEN/NOTIFY (for poolers in transaction mode)")
	fs.DurationVar(&cfg.ChangeRetention, "change-retention", cfg.ChangeRetention, "how long the change log keeps entries (watchers can resume within it)")
	fs.Int64Var(&cfg.ChangeRetentionCount, "change-retention-count", cfg.ChangeRetentionCount, "how many change log entries are kept at most")
	fs.DurationVar(&cfg.ConsumerStaleAfter, "consumer-stale-after", cfg.ConsumerStaleAfter, "a consumer not seen for this long is shown as stale")
	fs.DurationVar(&cfg.ConsumerGoneAfter, "consumer-gone-after", cfg.ConsumerGoneAfter, "a consumer not seen for this long is shown as gone and leaves the restart banner")
	fs.IntVar(&cfg.MaxStreamsPerToken, "max-streams-per-token", cfg.MaxStreamsPerToken, "concurrent streams (watches) one token may hold on this replica; 0: no bound")
	fs.DurationVar(&cfg.ConsumerDropAfter, "consumer-drop-after", cfg.ConsumerDropAfter, "a consumer not seen for this long is forgotten")
	fs.DurationVar(&cfg.RotationCheckInterval, "rotation-check-interval", cfg.RotationCheckInterval, "how often due rotations and expired secrets are looked for (one ROTATION_DUE or SECRET_EXPIRED event each) and the rotation metric is refreshed")
	fs.StringVar(&cfg.TLSCert, "tls-cert", env("SECRETS_TLS_CERT", ""), "TLS certificate (PEM) for both listeners")
	fs.StringVar(&cfg.TLSKey, "tls-key", env("SECRETS_TLS_KEY", ""), "TLS private key (PEM) for both listeners")
	fs.StringVar(&cfg.ClientCA, "client-ca", env("SECRETS_CLIENT_CA", ""), "CA bundle (PEM): require client certificates signed by it (mutual TLS)")
	fs.StringVar(&cfg.CertIdentities, "cert-identities", env("SECRETS_CERT_IDENTITIES", ""), "JSON file mapping client certificate subjects to roles and scopes")
	fs.BoolVar(&cfg.AllowPlaintext, "allow-plaintext", envs.bool("SECRETS_ALLOW_PLAINTEXT", false), "allow plaintext listeners on non-loopback addresses (behind a TLS proxy)")
	fs.StringVar(&cfg.AuditSigningKey, "audit-signing-key", env("SECRETS_AUDIT_SIGNING_KEY", ""), "Ed25519 key file (base64 seed) that signs audit checkpoints; keep it away from the database")
	fs.DurationVar(&cfg.AuditCheckpointInterval, "audit-checkpoint-interval", cfg.AuditCheckpointInterval, "how often the audit chain head is signed")
	fs.DurationVar(&cfg.AuditPartitionPeriod, "audit-partition-period", cfg.AuditPartitionPeriod, "length of the audit log's time partitions (1s to 8784h), created two periods ahead")
	fs.DurationVar(&cfg.AuditMaxDelay, "audit-max-delay", cfg.AuditMaxDelay, "audit sequencing delay past which audited reads are held back until the sequencer catches up (100ms to 1h)")
	checkURLs := fs.String("provider-check-urls", env("SECRETS_PROVIDER_CHECK_URLS", ""), "CheckSecret: comma-separated provider=URL overrides of the providers' API roots (anthropic, openai, google, slack, github), e.g. for an egress proxy")
	jiraHosts := fs.String("provider-check-jira-hosts", env("SECRETS_PROVIDER_CHECK_JIRA_HOSTS", "*.atlassian.net"), "CheckSecret: comma-separated hosts JIRA_BASE_URL may name (*.example.com for subdomains); the JIRA token is sent only there")
	fs.DurationVar(&cfg.ProviderChecks.Timeout, "provider-check-timeout", 5*time.Second, "CheckSecret: how long one provider call may take")
	fs.StringVar(&cfg.AuditCheckpointURL, "audit-checkpoint-url", env("SECRETS_AUDIT_CHECKPOINT_URL", ""), "blob URL (file://, s3://, gs://, azblob://) where every signed checkpoint is also written, outside the database (embedded default: <data-dir>/audit-checkpoints)")
	var auditPublic keyList
	_ = auditPublic.Set(env("SECRETS_AUDIT_PUBLIC_KEYS", ""))
	fs.Var(&auditPublic, "audit-public-keys", "earlier audit signing keys' public halves (base64, comma-separated): their checkpoints still verify after a key rotation")
	fs.BoolVar(&cfg.AuditUnsigned, "audit-unsigned", envs.bool("SECRETS_AUDIT_UNSIGNED", false), "run with DATABASE_URL and no audit signing key (logged: a rewrite of the whole audit chain goes unseen)")
	var retention retentionFlag
	if err := retention.Set(env("SECRETS_AUDIT_RETENTION", "0")); err != nil {
		return fmt.Errorf("SECRETS_AUDIT_RETENTION: %w", err)
	}
	fs.Var(&retention, "audit-retention", "how long audit events stay in the database (e.g. 90d, 720h); older partitions are archived to --audit-archive-url, read back, then dropped. 0: keep everything")
	fs.StringVar(&cfg.AuditArchiveURL, "audit-archive-url", env("SECRETS_AUDIT_ARCHIVE_URL", ""), "blob URL (file://, s3://, gs://, azblob://) where --audit-retention writes signed archive segments before dropping partitions")
	fs.DurationVar(&cfg.AuditRetentionInterval, "audit-retention-interval", 10*time.Minute, "how often the retention job looks for partitions that are due")
	fs.BoolVar(&cfg.AllowOwnerRole, "allow-owner-role", envs.bool("SECRETS_ALLOW_OWNER_ROLE", false), "serve while connected as the tables' owner or a superuser (who can rewrite the audit log), with a warning")
	corsOrigins := fs.String("cors-origins", env("SECRETS_CORS_ORIGINS", ""), "comma-separated browser origins allowed to call the REST API (CORS), e.g. https://dash.example.com; none by default")
	trusted := fs.String("trusted-proxies", env("SECRETS_TRUSTED_PROXIES", ""), "comma-separated CIDRs of proxies whose X-Forwarded-For is believed (for the audit log's peer)")
	logLevel := fs.String("log-level", env("SECRETS_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", env("SECRETS_LOG_FORMAT", "text"), "log format: text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := envs.err(); err != nil {
		return err
	}
	if cfg.KEKTimeout <= 0 {
		return fmt.Errorf("--kek-timeout: %s is not a positive duration", cfg.KEKTimeout)
	}
	n, err := strconv.Atoi(strings.TrimSpace(*readCache))
	if err != nil || n < 0 {
		return fmt.Errorf("--read-cache-entries (SECRETS_READ_CACHE_ENTRIES): %q is not a whole number ≥ 0", *readCache)
	}
	cfg.ReadCacheEntries = n
	for _, c := range strings.Split(*trusted, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return fmt.Errorf("--trusted-proxies: %w", err)
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, p)
	}
	for _, kv := range strings.Split(*checkURLs, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		id, u, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("--provider-check-urls: want provider=URL, got %q", kv)
		}
		if cfg.ProviderChecks.BaseURLs == nil {
			cfg.ProviderChecks.BaseURLs = map[string]string{}
		}
		cfg.ProviderChecks.BaseURLs[strings.TrimSpace(id)] = strings.TrimSpace(u)
	}
	for _, h := range strings.Split(*jiraHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.ProviderChecks.JIRAHosts = append(cfg.ProviderChecks.JIRAHosts, h)
		}
	}
	cfg.AuditPublicKeys = auditPublic
	cfg.AuditRetention = time.Duration(retention)
	for _, o := range strings.Split(*corsOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			cfg.CORSOrigins = append(cfg.CORSOrigins, o)
		}
	}
	cfg.DatabaseURL = os.Getenv("DATABASE_URL")
	cfg.KEKURL = os.Getenv("SECRETS_KEK_URL")
	cfg.BootstrapToken = os.Getenv("SECRETS_BOOTSTRAP_TOKEN")

	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch fs.Arg(0) {
	case "":
	case "migrate":
		return runMigrate(ctx, cfg.DatabaseURL, log, fs.Args()[1:], os.Stdout)
	case "version":
		fmt.Println(buildVersion())
		return nil
	case "audit":
		return runAudit(ctx, cfg.DatabaseURL, cfg.DataDir, cfg.AuditSigningKey, cfg.AuditCheckpointURL, cfg.AuditArchiveURL, log, fs.Args()[1:])
	case "kek":
		return runKEK(ctx, cfg.DatabaseURL, cfg.KEKURL, cfg.KEKTimeout, log, fs.Args()[1:])
	default:
		return fmt.Errorf("unknown command %q (see secretsd -h)", fs.Arg(0))
	}

	tp, err := tracing.FromEnv(ctx, buildVersion(), os.Getenv)
	if err != nil {
		return err
	}
	if tp != nil {
		cfg.TracerProvider = tp
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("OpenTelemetry", "error", err) }))
		defer func() {
			// After the server has drained: its last spans go out too.
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("OpenTelemetry: flushing spans at exit", "error", err)
			}
		}()
		log.Info("OpenTelemetry tracing on: spans exported over OTLP/HTTP as OTEL_EXPORTER_OTLP_* say")
	}
	srv, err := app.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// envValues reads typed environment variables and keeps what did not
// parse: a value that is set but wrong is an error at start, never a
// silent default (SECRETS_KEK_TIMEOUT=30 is not 30 s).
type envValues struct{ errs []error }

func (e *envValues) bad(name, v, want string) {
	if len(v) > 64 {
		v = v[:64] + "…"
	}
	e.errs = append(e.errs, fmt.Errorf("%s: %q is not %s", name, v, want))
}

func (e *envValues) duration(name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		e.bad(name, v, "a positive duration with a unit (e.g. 30s)")
		return def
	}
	return d
}

func (e *envValues) bool(name string, def bool) bool {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.bad(name, v, "true or false")
		return def
	}
	return b
}

func (e *envValues) err() error { return errors.Join(e.errs...) }

func newLogger(level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, got %q", format)
}
