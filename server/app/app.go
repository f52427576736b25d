// Package app wires the service together: configuration, the database (an
// embedded private cluster or DATABASE_URL), the keyring, the gRPC server with
// its interceptors, reflection and health, and the HTTP listener with the REST
// gateway, OpenAPI document, health and metrics endpoints. cmd/secretsd only
// parses flags and calls Run.
package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"gocloud.dev/secrets"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/kek"
	"github.com/orient-bot/secrets/server/pgcluster"
	"github.com/orient-bot/secrets/server/providercheck"
	"github.com/orient-bot/secrets/server/readcache"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/watch"
)

// Config is the server's configuration. DatabaseURL and KEKURL are secrets:
// never log or print them.
type Config struct {
	GRPCAddr    string
	HTTPAddr    string
	DataDir     string
	DatabaseURL string
	KEKURL      string
	// KEKTimeout bounds one KMS call (seal.DefaultKMSTimeout when zero).
	KEKTimeout time.Duration
	// KEKMux, if set, opens KMS URLs instead of gocloud's default mux (for
	// tests that point a driver's client library at a local stand-in).
	KEKMux *secrets.URLMux
	// HealthInterval is how often a gRPC health Watch re-runs the readiness
	// checks (1 s when zero); Check runs them on every call.
	HealthInterval time.Duration
	// Reflection enables gRPC server reflection (for grpcurl).
	Reflection bool
	// MaxStreamsPerToken bounds the concurrent streams (watches) of one
	// principal on one replica; 0 means no bound.
	MaxStreamsPerToken int
	// MaxRESTWatches bounds the concurrent REST watches of one replica
	// (they share the gateway's in-process gRPC connection, itself bounded
	// by MaxStreamsPerConn); past it a REST watch fails at once with 429
	// RESOURCE_EXHAUSTED. 0 means DefaultMaxRESTWatches.
	MaxRESTWatches int
	// ShutdownTimeout bounds the graceful drain on SIGTERM.
	ShutdownTimeout time.Duration
	// IdempotencyTTL is how long request ids are remembered.
	IdempotencyTTL time.Duration
	// WatchPollInterval bounds how late a change whose notification was
	// lost reaches watchers.
	WatchPollInterval time.Duration
	// WatchProgressInterval is how often idle watch streams get a progress
	// message.
	WatchProgressInterval time.Duration
	// WatchNoListen disables LISTEN/NOTIFY (polling only), for poolers in
	// transaction mode.
	WatchNoListen bool
	// ReadCacheEntries bounds the in-memory cache of sealed newest versions
	// that spares an access its database read; 0 turns it off.
	ReadCacheEntries int
	// ChangeRetention and ChangeRetentionCount bound the change log: older
	// entries, or entries beyond the newest count, are compacted away.
	ChangeRetention      time.Duration
	ChangeRetentionCount int64
	// ConsumerStaleAfter marks consumers not seen for this long as stale;
	// ConsumerDropAfter forgets them.
	ConsumerStaleAfter time.Duration
	ConsumerDropAfter  time.Duration
	// ConsumerGoneAfter shows consumers not seen for this long as gone:
	// they leave the restart banner (they are forgotten at
	// ConsumerDropAfter).
	ConsumerGoneAfter time.Duration
	// MaintenanceInterval is how often compaction and clean-up run.
	MaintenanceInterval time.Duration
	// RotationCheckInterval is how often due rotations are published
	// (ROTATION_DUE, once per due time across replicas), expired secrets
	// are published (SECRET_EXPIRED, once per expire time) and the
	// rotation gauge is refreshed.
	RotationCheckInterval time.Duration

	// TLSCert and TLSKey enable TLS on both listeners; ClientCA requires
	// client certificates (mutual TLS), mapped to roles by CertIdentities.
	TLSCert, TLSKey, ClientCA string
	CertIdentities            string
	// AllowPlaintext permits plaintext listeners on non-loopback addresses.
	AllowPlaintext bool
	// CORSOrigins are the browser origins allowed to call the REST API
	// (e.g. https://dashboard.example.com); none by default.
	CORSOrigins []string
	// TrustedProxies are the proxies whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// BootstrapToken, if set, is the first admin token's value (on first
	// start only); otherwise a random one is generated and shown once.
	BootstrapToken string
	// BootstrapOut receives the generated first admin token (os.Stderr).
	BootstrapOut io.Writer
	// AuditSigningKey is the Ed25519 key file that signs audit checkpoints
	// (the embedded default generates one in its data directory).
	AuditSigningKey string
	// AuditCheckpointInterval is how often the chain head is signed.
	AuditCheckpointInterval time.Duration
	// AuditPartitionPeriod is the length of audit_events' time partitions
	// (1s to 366 days): the sequencer keeps two periods of them created
	// ahead. A new period applies to partitions created from then on.
	AuditPartitionPeriod time.Duration
	// AuditMaxDelay is the audit sequencing delay past which audited reads
	// are held back until the sequencer catches up (auditlog.Sequencer.Admit;
	// 100ms to 1h, default 1s).
	AuditMaxDelay time.Duration
	// TracerProvider, if set, receives OpenTelemetry spans for gRPC, REST
	// and PostgreSQL (see tracing.go); nil leaves tracing out entirely.
	TracerProvider trace.TracerProvider
	// ProviderChecks configures CheckSecret's calls to providers (base
	// URLs, allowed JIRA hosts, timeout).
	ProviderChecks providercheck.Config
	// AuditCheckpointURL is a gocloud.dev blob URL where every signed
	// checkpoint is also written, outside the database (the embedded
	// default: a folder in its data directory).
	AuditCheckpointURL string
	// AuditPublicKeys are earlier signing keys' public halves (base64):
	// their checkpoints still verify after the signing key rotates.
	AuditPublicKeys []string
	// AuditUnsigned runs with DATABASE_URL and no signing key, on purpose.
	AuditUnsigned bool
	// AllowOwnerRole lets the service connect as the tables' owner or a
	// superuser (who can rewrite the audit log), with a warning.
	AllowOwnerRole bool
	// AuditRetention is how long audit events stay in the database; older
	// partitions are archived to AuditArchiveURL (a gocloud.dev blob URL)
	// and dropped, every AuditRetentionInterval. 0 keeps everything.
	AuditRetention         time.Duration
	AuditArchiveURL        string
	AuditRetentionInterval time.Duration
}

// MaxStreamsPerConn bounds the concurrent streams of one gRPC connection;
// clients with more watches spread them over several connections.
const MaxStreamsPerConn = 1000

// DefaultMaxRESTWatches is the replica-wide bound on REST watches: the
// gateway connection's streams, less a few for anything else it carries.
const DefaultMaxRESTWatches = MaxStreamsPerConn - 16

// streamWorkers is how many goroutines the gRPC server keeps to run calls
// on; a call that finds them all busy gets a goroutine of its own. Enough
// for the concurrency a replica serves from its clients' pools; parked,
// they cost their stacks (a few KiB each, shrunk by the GC when idle).
const streamWorkers = 128

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:           "127.0.0.1:9090",
		HTTPAddr:           "127.0.0.1:8080",
		DataDir:            ".secrets-data",
		Reflection:         true,
		MaxStreamsPerToken: 100,
		ShutdownTimeout:    15 * time.Second,
		IdempotencyTTL:     24 * time.Hour,

		WatchPollInterval:     time.Second,
		ReadCacheEntries:      10_000,
		WatchProgressInterval: 5 * time.Second,
		ChangeRetention:       7 * 24 * time.Hour,
		ChangeRetentionCount:  1_000_000,
		ConsumerStaleAfter:    time.Minute,
		ConsumerDropAfter:     7 * 24 * time.Hour,
		ConsumerGoneAfter:     6 * time.Hour,
		MaintenanceInterval:   time.Minute,
		RotationCheckInterval: time.Minute,

		AuditCheckpointInterval: time.Minute,
		AuditPartitionPeriod:    24 * time.Hour,
		AuditMaxDelay:           auditlog.DefaultMaxDelay,
	}
}

// Server is a running secretsd.
type Server struct {
	cfg           Config
	log           *slog.Logger
	cluster       *pgcluster.Cluster
	store         *store.Store
	keyring       *seal.Keyring
	requestMACKey []byte
	kekCheck      cachedCheck
	auditMACKey   []byte
	auditLog      *auditlog.Log
	retention     *auditlog.Retention
	batcher       *auditlog.Batcher
	sequencer     *auditlog.Sequencer
	authn         *auth.Authenticator
	denials       *auditlog.DenialQueue
	tls           *tlsSetup
	hub           *watch.Hub
	rotator       *kek.Rotator
	rotationGauge *prometheus.GaugeVec
	stopAuth      context.CancelFunc
	authDone      sync.WaitGroup
	failureAudits *failureAudits
	stopRotation  context.CancelFunc
	readCache     *readcache.Cache
	feed          *group // the watch hub and what follows it; stopped first
	jobs          *group // maintenance and audit checkpoints; stopped before the store
	grpc          *grpc.Server
	health        *healthServer
	shuttingDown  atomic.Bool
	httpMetrics   *httpMetrics
	http          *http.Server
	gwConn        interface{ Close() error }
	grpcLis       net.Listener
	// gatewayLis is the gRPC server's in-process listener that only the
	// REST gateway's streams (the watch) dial: they skip the loopback TCP
	// hop but pass every interceptor.
	gatewayLis *bufconn.Listener
	// gwDirect is the gateway's in-process connection (unary calls).
	gwDirect  *inProcessConn
	httpLis   net.Listener
	startedAt time.Time
}

// GRPCAddr and HTTPAddr return the bound addresses (useful with port 0).
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr returns the HTTP listener's bound address.
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// Start brings the server up: database, migrations, keyring, listeners. It
// returns once both listeners accept connections; Serve runs them.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, startedAt: time.Now()}
	defer func() {
		if err != nil {
			s.close(context.Background())
		}
	}()
	dsn := cfg.DatabaseURL
	kekURL := cfg.KEKURL
	if dsn == "" {
		if dsn, kekURL, err = s.startEmbedded(ctx); err != nil {
			return nil, err
		}
	} else if kekURL == "" {
		return nil, missingKEK(ctx, dsn, log)
	}
	urls, err := seal.ParseKEKURLs(kekURL)
	if err != nil {
		return nil, err
	}
	kmsTimeout := seal.DefaultKMSTimeout
	if cfg.KEKTimeout > 0 {
		kmsTimeout = cfg.KEKTimeout
	}
	kekOpts := []seal.Option{seal.WithKMSTimeout(kmsTimeout)}
	// A readiness probe makes two KMS calls per KEK, the KEKs side by side.
	s.kekCheck.budget = 2*kmsTimeout + time.Second
	if cfg.KEKMux != nil {
		kekOpts = append(kekOpts, seal.WithKeeperMux(cfg.KEKMux))
	}
	if s.keyring, err = seal.OpenKeyring(ctx, urls, kekOpts...); err != nil {
		return nil, err
	}
	log.Info("key-encryption keys loaded", "primary", s.keyring.PrimaryID(), "count", len(urls))

	mctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if s.cluster != nil {
		if dsn, err = s.migrateEmbedded(mctx, dsn); err != nil {
			return nil, err
		}
	} else if err := s.checkRole(mctx, dsn); err != nil {
		return nil, err
	}
	if s.store, err = store.Open(ctx, dsn, store.Options{MinMaxConns: 16, Logger: log, Tracer: s.queryTracer()}); err != nil {
		return nil, err
	}
	if err := s.checkKEKs(ctx); err != nil {
		return nil, err
	}
	if s.requestMACKey, err = s.serviceKey(ctx, "request-mac"); err != nil {
		return nil, err
	}
	if s.auditMACKey, err = s.serviceKey(ctx, "audit-value-hmac"); err != nil {
		return nil, err
	}
	if err := s.openAuditLog(ctx); err != nil {
		return nil, err
	}
	if err := s.openRetention(ctx); err != nil {
		return nil, err
	}
	if err := s.bootstrap(ctx); err != nil {
		return nil, err
	}
	if err := s.listen(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// migrateEmbedded migrates the embedded cluster as its superuser (the
// tables' owner), makes the service role, and returns the service role's
// connection string: the embedded default runs with the two roles too.
func (s *Server) migrateEmbedded(ctx context.Context, ownerDSN string) (string, error) {
	if err := migrations.Up(ctx, ownerDSN); err != nil {
		return "", fmt.Errorf("database migrations: %w", err)
	}
	if _, err := migrations.EnsureServiceRole(ctx, ownerDSN, migrations.DefaultServiceRole); err != nil {
		return "", err
	}
	if _, err := migrations.EnsureRetentionRole(ctx, ownerDSN, migrations.DefaultRetentionRole); err != nil {
		return "", err
	}
	if s.cfg.AuditRetention > 0 {
		// The embedded default is one operator's: configuring retention is
		// the decision to grant it.
		if err := migrations.GrantRetention(ctx, ownerDSN, migrations.DefaultRetentionRole, migrations.DefaultServiceRole); err != nil {
			return "", err
		}
	}
	dsn := s.cluster.ConnStringAs(migrations.DefaultServiceRole, "postgres")
	role, err := migrations.CurrentRole(ctx, dsn)
	if err != nil {
		return "", err
	}
	if role.Privileged() {
		return "", fmt.Errorf("embedded PostgreSQL: role %s could rewrite the audit log", role.Name)
	}
	s.log.Info("database role", "role", role.Name, "superuser", role.Superuser, "owner", role.Owner)
	return dsn, nil
}

// checkRole refuses a DATABASE_URL role that could rewrite the audit log
// (a superuser, or the tables' owner) unless AllowOwnerRole says so; such a
// role migrates the schema itself, as before. A least-privileged role
// cannot: the schema must be current (secretsd migrate, as the owner).
func (s *Server) checkRole(ctx context.Context, dsn string) error {
	role, err := migrations.CurrentRole(ctx, dsn)
	if err != nil {
		return err
	}
	if role.Privileged() {
		if !s.cfg.AllowOwnerRole {
			return fmt.Errorf("DATABASE_URL connects as %s, which is a superuser or the tables' owner (or the schema does not exist yet): "+
				"it could rewrite the audit log. Run `secretsd migrate` with it once (it creates the service role %q), then connect "+
				"as the service role; or pass --allow-owner-role to serve as it anyway", role.Name, migrations.DefaultServiceRole)
		}
		s.log.Warn("--allow-owner-role: serving as a superuser or the tables' owner, which can disable the audit log's triggers and rewrite it; only external checkpoints can catch that",
			"role", role.Name, "superuser", role.Superuser)
		if err := migrations.Up(ctx, dsn); err != nil {
			return fmt.Errorf("database migrations: %w", err)
		}
		return nil
	}
	s.log.Info("database role", "role", role.Name, "superuser", false, "owner", false)
	pending, err := migrations.Pending(ctx, dsn)
	if err != nil {
		return fmt.Errorf("database migrations: %w", err)
	}
	if pending {
		return fmt.Errorf("the database schema is behind this secretsd: run `secretsd migrate` with the owner role's DATABASE_URL first (role %s may not migrate)", role.Name)
	}
	return nil
}

// startEmbedded starts the private PostgreSQL cluster in the data directory
// and returns its connection string and the KEK URL (SECRETS_KEK_URL if set,
// else the development KEK stored next to the cluster).
func (s *Server) startEmbedded(ctx context.Context) (dsn, kekURL string, err error) {
	dir, err := filepath.Abs(s.cfg.DataDir)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("data directory: %w", err)
	}
	// The cluster may run as another user (postgres, when we are root); it
	// needs to reach its own folder inside ours, nothing else.
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", "", fmt.Errorf("data directory: %w", err)
	}
	t0 := time.Now()
	s.cluster, err = pgcluster.Start(ctx, pgcluster.Options{
		DataDir: filepath.Join(dir, "postgres"),
		Durable: true,
		Logger:  s.log,
	})
	if err != nil {
		return "", "", fmt.Errorf("embedded PostgreSQL: %w", err)
	}
	s.log.Info("embedded PostgreSQL ready", "data_dir", dir, "elapsed", time.Since(t0).Round(time.Millisecond))
	kekURL = s.cfg.KEKURL
	if kekURL == "" {
		var created bool
		kekURL, created, err = seal.GenerateDevKEK(filepath.Join(dir, "dev-kek.key"))
		if err != nil {
			return "", "", err
		}
		s.log.Warn("USING A DEVELOPMENT KEY-ENCRYPTION KEY stored next to the database: anyone who can read the data directory can decrypt every secret. Set SECRETS_KEK_URL to a KMS key for production.",
			"file", filepath.Join(dir, "dev-kek.key"), "created", created)
	}
	return s.cluster.ConnString("postgres"), kekURL, nil
}

func (s *Server) listen(ctx context.Context) error {
	var err error
	if s.tls, err = loadTLS(s.cfg); err != nil {
		return err
	}
	var certIDs []auth.CertIdentity
	if s.cfg.CertIdentities != "" {
		if certIDs, err = auth.LoadCertIdentities(s.cfg.CertIdentities); err != nil {
			return fmt.Errorf("--cert-identities: %w", err)
		}
	}
	if s.grpcLis, err = net.Listen("tcp", s.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	if s.httpLis, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("HTTP listener: %w", err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	gatewaySecret := hex.EncodeToString(secret)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5})))
	reg.MustRegister(metrics, newPoolCollector(s.store))
	auditCounter := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "secrets_access_audit_events_total", Help: "Access audit events recorded, by outcome.",
	}, []string{"result"})
	reg.MustRegister(auditCounter)
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_dek_cache_hits_total", Help: "Data-key unwraps served by the in-memory cache (no KMS call). Hit rate: hits / (hits + misses).",
		}, func() float64 { return float64(s.keyring.DEKCacheStats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_dek_cache_misses_total", Help: "Data-key unwraps that called the KMS (not in the cache).",
		}, func() float64 { return float64(s.keyring.DEKCacheStats().Misses) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "secrets_dek_cache_entries", Help: "Unwrapped data keys held in memory.",
		}, func() float64 { return float64(s.keyring.DEKCacheStats().Entries) }))

	deniedDropped := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "secrets_denials_unaudited_total", Help: "Denied requests not audited: the denial queue was full or their batch could not be written.",
	})
	reg.MustRegister(deniedDropped)
	s.rotationGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "secrets_rotation_secrets", Help: "Secrets whose rotation is due (state=due) or whose expire time has passed (state=expired), as of the last rotation check.",
	}, []string{"state"})
	reg.MustRegister(s.rotationGauge)
	s.httpMetrics = newHTTPMetrics(reg)
	s.authn = auth.NewAuthenticator(s.store, s.log)
	s.denials = auditlog.NewDenialQueue(s.store.RecordDenials, func(n int) { deniedDropped.Add(float64(n)) }, s.log)
	denied := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "secrets_denials_total", Help: "Refused calls, by reason (unauthenticated, role, scope, category, unscoped_only, stream_limit, no_policy).",
	}, []string{"reason"})
	reg.MustRegister(denied)
	authz := &authorizer{authn: s.authn, certs: certIDs, gatewayCert: s.tls.gatewayCert,
		categoryOf: s.store.CategoriesOf, denials: s.denials, denied: denied,
		streams: newStreamLimiter(s.cfg.MaxStreamsPerToken), log: s.log}
	authz.eventsSent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "secrets_watch_events_sent_total",
		Help: "Change events sent to watch streams (not in grpc_server_msg_sent_total: they skip the per-message stream wrappers).",
	})
	reg.MustRegister(authz.eventsSent)
	authz.creds = newCredentialWatch(auth.RecheckInterval, func(ctx context.Context) error {
		_, err := authz.principal(ctx)
		return err
	})

	pi := peerIdentifier{gatewaySecret: gatewaySecret, trustedProxies: s.cfg.TrustedProxies}
	calls := callLog{s.log}
	recoverOpt := recovery.WithRecoveryHandlerContext(recovered(s.log))
	serverOpts := []grpc.ServerOption{
		api.Codec(),
		grpc.MaxRecvMsgSize(MaxBodyBytes),
		// One connection may not hold unbounded streams (a unary call waits
		// for its request message before any interceptor runs).
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		// Calls run on long-lived workers (beyond them, a goroutine each
		// as before): a new goroutine per call grew its stack to the depth
		// of the interceptors and the request log on every call, 10% of
		// the server's CPU under audited reads.
		grpc.NumStreamWorkers(streamWorkers),
	}
	statsHandlers := s.tracingServerHandlers()
	for _, h := range statsHandlers {
		serverOpts = append(serverOpts, grpc.StatsHandler(h))
	}
	if s.tls.server != nil {
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(s.tls.server)))
	}
	// Refusals pass through metrics and logging like every other answer;
	// the failure audit sees the authorized caller and the method's policy.
	s.failureAudits = newFailureAudits(s.store, s.log)
	unary := chainUnary(
		recovery.UnaryServerInterceptor(recoverOpt),
		recordUnary,
		metrics.UnaryServerInterceptor(),
		calls.unary,
		pi.unary,
		authz.unary,
		auditFailures(s.failureAudits),
	)
	s.grpc = grpc.NewServer(append(serverOpts,
		grpc.UnaryInterceptor(unary),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(recoverOpt),
			recordStream,
			metrics.StreamServerInterceptor(),
			calls.stream,
			pi.stream,
			authz.stream,
		),
	)...)
	svc := newServices(s.grpc)
	s.hub = watch.New(s.store, watch.Options{PollInterval: s.cfg.WatchPollInterval, ProgressInterval: s.cfg.WatchProgressInterval,
		NoListen: s.cfg.WatchNoListen, Logger: s.log})
	reg.MustRegister(newHubCollector(s.hub))
	s.sequencer = s.newSequencer(reg)
	s.batcher = auditlog.NewBatcher(s.store, 512, s.sequencer)
	registerBatcherMetrics(reg, s.batcher)
	deps := api.Deps{Store: s.store, Access: countingRecorder{s.batcher, auditCounter}, Keyring: watchedKeyring{s.keyring, &s.kekCheck}, Logger: s.log,
		AuditMAC: valueMAC(s.auditMACKey),
		Hub:      s.hub, Consumers: s.store, ConsumerStaleAfter: s.cfg.ConsumerStaleAfter, ConsumerGoneAfter: s.cfg.ConsumerGoneAfter, ValueMAC: valueMAC(s.requestMACKey)}
	if deps.Checker, err = providercheck.New(s.cfg.ProviderChecks); err != nil {
		return err
	}
	if s.cfg.ReadCacheEntries > 0 {
		s.readCache = readcache.New(s.hub, s.store.LastWriteRevision, s.cfg.ReadCacheEntries, s.log)
		deps.ReadCache = s.readCache
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "secrets_read_cache_entries", Help: "Sealed newest versions held in the read cache.",
			}, func() float64 { return float64(s.readCache.Stats().Entries) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "secrets_read_cache_hits_total", Help: "Reads answered by the read cache (no database read).",
			}, func() float64 { return float64(s.readCache.Stats().Hits) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "secrets_read_cache_misses_total", Help: "Reads the read cache could not answer (not held, or not fresh enough).",
			}, func() float64 { return float64(s.readCache.Stats().Misses) }))
	}
	pb.RegisterSecretServiceServer(svc, api.NewSecretService(deps))
	pb.RegisterProviderServiceServer(svc, api.NewProviderService(deps))
	pb.RegisterAuditServiceServer(svc, &api.AuditService{Deps: deps, Log: s.auditLog, Sequencer: s.sequencer})
	pb.RegisterTokenServiceServer(svc, &api.TokenService{Deps: deps, Tokens: s.store, Forget: s.authn.Forget})
	pb.RegisterKeyServiceServer(svc, s.keyService(ctx, deps))
	if s.cfg.Reflection {
		if err := registerReflection(s.grpc); err != nil {
			return err
		}
	}
	s.health = newHealthServer(s.grpc, func(ctx context.Context) bool { _, ok := s.readiness(ctx); return ok }, s.cfg.HealthInterval)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	metrics.InitializeMetrics(s.grpc)

	s.gatewayLis = bufconn.Listen(gatewayBuffer)
	gw, conn, err := newGateway(ctx, s.gatewayLis.DialContext, func(streams *grpc.ClientConn) grpc.ClientConnInterface {
		s.gwDirect = newInProcessConn(streams, svc, unary, statsHandlers, s.cfg.MaxRESTWatches)
		return s.gwDirect
	}, gatewaySecret, s.tls.gateway, s.log, s.tracingDialOptions()...)
	if err != nil {
		return err
	}
	s.gwConn = conn
	s.http = &http.Server{
		Handler:           s.httpHandler(s.traceHTTP(gw), reg),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         s.tls.http,
		// No WriteTimeout: it would cut off change streams.
	}
	return nil
}

// Serve runs both listeners until ctx is done, then drains gracefully.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 2)
	s.feed = newGroup(ctx)
	s.feed.Go(s.hub.Run)
	if s.readCache != nil {
		s.feed.Go(s.readCache.Run)
	}
	go func() { errc <- s.grpc.Serve(s.grpcLis) }()
	// Ends with the server (GracefulStop closes every listener); its error
	// would be the same as the TCP listener's.
	go func() { _ = s.grpc.Serve(s.gatewayLis) }()
	// Token last-use times and denial audits are flushed when these end,
	// which close does before the store closes.
	authCtx, stopAuth := context.WithCancel(context.WithoutCancel(ctx))
	s.stopAuth = stopAuth
	s.authDone.Go(func() { s.authn.Run(authCtx, 30*time.Second) })
	s.authDone.Go(func() { s.denials.Run(authCtx) })
	go func() {
		serve := s.http.Serve
		if s.tls.http != nil {
			serve = func(l net.Listener) error { return s.http.ServeTLS(l, "", "") }
		}
		if err := serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	s.jobs = newGroup(ctx)
	s.jobs.Go(s.maintain)
	s.jobs.Go(s.checkpoints)
	s.jobs.Go(s.retain)
	s.jobs.Go(s.rotationReminders)
	s.jobs.Go(s.sequencer.Run)
	s.log.Info("secretsd serving", "grpc", s.GRPCAddr(), "http", s.HTTPAddr(),
		"dashboard", s.dashboardURL(), "startup", time.Since(s.startedAt).Round(time.Millisecond))

	var err error
	var clusterDone <-chan struct{}
	if s.cluster != nil {
		clusterDone = s.cluster.Wait()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	case <-clusterDone:
		err = errors.New("embedded PostgreSQL exited unexpectedly; see its log in the data directory")
	}
	s.log.Info("shutting down")
	s.close(context.Background())
	return err
}

// maintain runs periodic housekeeping until ctx is done: change-log
// compaction, forgetting old consumers and idempotency records. Every replica
// runs it; the statements are idempotent.
func (s *Server) maintain(ctx context.Context) {
	interval := s.cfg.MaintenanceInterval
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, job := range []struct {
			name string
			run  func() (int64, error)
		}{
			{"compacted change log entries", func() (int64, error) {
				return s.store.CompactChanges(ctx, s.cfg.ChangeRetention, s.cfg.ChangeRetentionCount)
			}},
			{"dropped consumers", func() (int64, error) { return s.store.DropConsumers(ctx, s.cfg.ConsumerDropAfter) }},
			{"purged idempotency records", func() (int64, error) { return s.store.PurgeIdempotency(ctx, s.cfg.IdempotencyTTL) }},
		} {
			if n, err := job.run(); err != nil && ctx.Err() == nil {
				s.log.Warn("maintenance failed", "job", job.name, "error", err)
			} else if n > 0 {
				s.log.Info("maintenance", "job", job.name, "count", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// close stops everything in order: stop accepting, drain in-flight calls,
// close the pool, then stop the embedded cluster and wait for it.
func (s *Server) close(ctx context.Context) {
	s.shuttingDown.Store(true)
	if s.health != nil {
		s.health.shutdown()
	}
	// End watch streams first (with a resumable status), or the graceful
	// stop below would wait for them forever.
	s.feed.stop()
	timeout := s.cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if s.http != nil {
		if s.http.Shutdown(dctx) != nil {
			// Out of time: closing the connections cancels the calls.
			s.http.Close()
		}
	} else if s.httpLis != nil {
		s.httpLis.Close()
	}
	if s.gwDirect != nil {
		// The gateway's in-process calls end before the store closes; out
		// of time, they were just cancelled: a moment to return.
		gctx := dctx
		if dctx.Err() != nil {
			var cancel context.CancelFunc
			gctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
		}
		s.gwDirect.drain(gctx)
	}
	if s.grpc != nil {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-dctx.Done():
			s.grpc.Stop()
		}
	} else if s.grpcLis != nil {
		s.grpcLis.Close()
	}
	if s.gatewayLis != nil {
		s.gatewayLis.Close()
	}
	if s.gwConn != nil {
		s.gwConn.Close()
	}
	s.interruptRotation(dctx)
	if s.stopAuth != nil {
		// After the listeners: no request can add a denial any more.
		s.stopAuth()
		s.authDone.Wait()
	}
	if s.failureAudits != nil {
		// Failure audits still being recorded after their answers left
		// (each within failureAuditTimeout), before the store closes.
		s.failureAudits.wait()
	}
	s.jobs.stop()
	if s.batcher != nil {
		s.batcher.Close()
	}
	s.finalSequence()
	s.finalCheckpoint()
	if s.retention != nil {
		s.retention.Archive.Close()
	}
	if s.auditLog != nil && s.auditLog.Anchor != nil {
		s.auditLog.Anchor.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
	s.kekCheck.stop()
	if s.keyring != nil {
		s.keyring.Close()
	}
	if s.cluster != nil {
		if err := s.cluster.Stop(context.Background()); err != nil {
			s.log.Error("stopping embedded PostgreSQL", "error", err)
		} else {
			s.log.Info("embedded PostgreSQL stopped")
		}
	}
}
