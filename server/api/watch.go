package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/catalog"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/watch"
)

// Hub is the change-stream fan-out.
type Hub interface {
	Current(ctx context.Context) (int64, error)
	Open(ctx context.Context, after int64, consumer *store.ConsumerID) (*watch.Stream, error)
}

// ConsumerStore tracks consumer instances.
type ConsumerStore interface {
	Revision(ctx context.Context) (int64, error)
	ReportConsumer(ctx context.Context, r store.ConsumerReport) error
	PublishConsumerReport(ctx context.Context, meta store.Meta, r store.ConsumerReport) (int64, error)
	DismissConsumer(ctx context.Context, meta store.Meta, id store.ConsumerID) (int64, error)
	GetConsumer(ctx context.Context, id store.ConsumerID) (store.ConsumerState, error)
	ListConsumers(ctx context.Context, after store.ConsumerID, limit int) ([]store.ConsumerState, error)
}

const (
	maxWatchKeys       = auth.MaxScopedKeys // the largest key list any method takes: the scope check's bound
	maxWatchCategories = 100
)

var consumerNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)

// watchFilter decides which changes a watcher gets. keys and categories
// are nil when the request names none: match runs for every stream at every
// change, and the length of a nil map is read without loading the map from
// memory (with 10,000 streams an empty map's header was a cache miss per
// stream and change: 10% of the server's CPU in the bench's fan-out).
type watchFilter struct {
	keys       map[string]bool
	categories map[string]bool
	// scope is the caller's: changes to other keys are never sent
	// (provider default changes, readable by all, always are).
	scope auth.Scope
}

func (f watchFilter) match(c *store.Change) bool {
	if c.Key != "" && !f.scope.Allows(c.Key, c.Category) {
		return false
	}
	if len(f.keys) > 0 && !f.keys[c.Key] {
		return false
	}
	return len(f.categories) == 0 || f.categories[c.Category]
}

func parseWatchScope(keys, categories []string) (watchFilter, []string, error) {
	var f watchFilter
	if len(keys) > maxWatchKeys {
		return f, nil, invalidArg("keys", fmt.Sprintf("at most %d keys", maxWatchKeys))
	}
	if len(categories) > maxWatchCategories {
		return f, nil, invalidArg("categories", fmt.Sprintf("at most %d categories", maxWatchCategories))
	}
	if len(keys) > 0 {
		f.keys = make(map[string]bool, len(keys))
	}
	for i, k := range keys {
		if err := checkKey(fmt.Sprintf("keys[%d]", i), k); err != nil {
			return f, nil, err
		}
		f.keys[k] = true
	}
	cats := make([]string, 0, len(categories))
	if len(categories) > 0 {
		f.categories = make(map[string]bool, len(categories))
	}
	for i, c := range categories {
		n, err := normalizeCategory(fmt.Sprintf("categories[%d]", i), c)
		if err != nil {
			return f, nil, err
		}
		f.categories[n] = true
		cats = append(cats, n)
	}
	return f, cats, nil
}

func parseConsumer(c *pb.Consumer) (*store.ConsumerID, error) {
	if c == nil {
		return nil, nil
	}
	if !consumerNamePattern.MatchString(c.GetService()) {
		return nil, invalidArg("consumer.service", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : / - (e.g. orient-slack-bot)")
	}
	if !consumerNamePattern.MatchString(c.GetInstance()) {
		return nil, invalidArg("consumer.instance", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : / - (e.g. a host or pod name)")
	}
	return &store.ConsumerID{Service: c.GetService(), Instance: c.GetInstance()}, nil
}

// WatchChanges streams the change log from start_revision + 1. Every check
// that can fail runs before the first message, so REST callers get a real
// HTTP status instead of an error line under 200.
func (s *SecretService) WatchChanges(req *pb.WatchChangesRequest, stream grpc.ServerStreamingServer[pb.WatchChangesResponse]) error {
	ctx := stream.Context()
	if req.GetStartRevision() < 0 {
		return invalidArg("start_revision", "must not be negative")
	}
	if req.GetLoadedRevision() < 0 {
		return invalidArg("loaded_revision", "must not be negative")
	}
	filter, cats, err := parseWatchScope(req.GetKeys(), req.GetCategories())
	if err != nil {
		return err
	}
	consumer, err := parseConsumer(req.GetConsumer())
	if err != nil {
		return err
	}
	// The keys it names were checked against the caller's scope by the
	// method's policy; the events are filtered to it.
	filter.scope = scopeOf(ctx)
	current, err := s.Hub.Current(ctx)
	if err != nil {
		return s.watchErr(ctx, err)
	}
	last := req.GetStartRevision()
	if last == 0 || last > current {
		// The hub may trail the database by a moment. "From now" is the
		// database's now (a client that has just written is never told an
		// older revision; the hub's changes up to it are skipped), and only
		// a start the database has not reached either is refused.
		dbRev, err := s.Consumers.Revision(ctx)
		if err != nil {
			return s.fail(ctx, err)
		}
		switch {
		case last == 0:
			last = max(dbRev, current)
		case last > dbRev:
			return withInfo(codes.OutOfRange, pb.ErrorReason_ERROR_REASON_REVISION_AHEAD,
				fmt.Sprintf("start_revision %d is ahead of the current revision %d; list again and watch from its revision", last, dbRev))
		}
	}
	// The backlog is not loaded here: the stream reads it a page at a time
	// as it sends, so the first message leaves at once and memory stays
	// one page whatever the backlog.
	changes, err := s.Hub.Open(ctx, last, consumer)
	if err != nil {
		return s.watchErr(ctx, err)
	}
	defer changes.Close()
	if consumer != nil {
		// loaded_revision 0 on a watch keeps what the consumer reported.
		loaded := req.GetLoadedRevision()
		if loaded == 0 {
			loaded = store.KeepLoadedRevision
		}
		if err := s.Consumers.ReportConsumer(ctx, s.consumerReport(ctx, *consumer, loaded, last, req.GetKeys(), cats)); err != nil {
			return s.fail(ctx, err)
		}
	}
	if err := stream.Send(&pb.WatchChangesResponse{Result: &pb.WatchChangesResponse_Header{Header: &pb.WatchHeader{Revision: max(last, current)}}}); err != nil {
		return err
	}
	w := &watcher{stream: stream, wire: s.wire, filter: filter, last: last}
	// Once live, the stream's events are sent by the hub's few sender
	// goroutines rather than by this one (see watch.Stream.Serve).
	err = changes.Serve(ctx, func(item watch.Item) error {
		if err := w.handle(item); err != nil {
			return sendError{err}
		}
		return nil
	})
	var sent sendError
	switch {
	case errors.As(err, &sent):
		return sent.error
	case ctx.Err() != nil:
		// The call's deadline or cancellation, as such: a watch never
		// ends with OK, which a client would read as a clean end of
		// stream (the server can see the deadline before the client).
		return status.FromContextError(ctx.Err()).Err()
	}
	return s.watchErr(ctx, err)
}

// sendError is a failed send to the watch stream, returned as it is (not
// as a hub error).
type sendError struct{ error }

// watcher is one stream's delivery state.
type watcher struct {
	stream grpc.ServerStreamingServer[pb.WatchChangesResponse]
	wire   *eventWire
	filter watchFilter
	// last is the last revision handled (sent or filtered out).
	last int64
	// busy records whether an event went out since the last progress mark.
	busy bool
}

func (w *watcher) handle(item watch.Item) error {
	if item.Change == nil {
		// Progress: sent only when the stream was idle since the last mark.
		if w.busy || item.Progress < w.last {
			w.busy = false
			return nil
		}
		w.last = item.Progress
		return w.stream.Send(&pb.WatchChangesResponse{Result: &pb.WatchChangesResponse_Progress{Progress: &pb.WatchProgress{Revision: item.Progress}}})
	}
	c := item.Change
	if c.Revision <= w.last {
		return nil
	}
	w.last = c.Revision
	if !w.filter.match(c) {
		return nil
	}
	w.busy = true
	b, err := w.wire.get(c)
	if err != nil {
		return err
	}
	return w.stream.SendMsg(b)
}

func toChangeEvent(c *store.Change) *pb.ChangeEvent {
	return &pb.ChangeEvent{
		Revision:        c.Revision,
		Time:            timestamppb.New(c.Time),
		Kind:            pb.ChangeKind(c.Kind),
		Key:             c.Key,
		Version:         c.Version,
		Category:        c.Category,
		RestartRequired: c.RestartRequired,
		Detail:          c.Detail,
	}
}

func (s *SecretService) watchErr(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, watch.ErrCompacted):
		return withInfo(codes.OutOfRange, pb.ErrorReason_ERROR_REASON_REVISION_COMPACTED, err.Error()+"; list again and watch from the list's revision")
	case errors.Is(err, watch.ErrStopped):
		return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_SERVER_SHUTTING_DOWN, "server shutting down; resume from the last revision received")
	}
	return s.fail(ctx, err)
}

// ListConsumers lists consumer instances with their pending restarts, by
// page.
func (s *SecretService) ListConsumers(ctx context.Context, req *pb.ListConsumersRequest) (*pb.ListConsumersResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	filter := boolString(req.GetPendingOnly())
	tok, err := s.decodeToken(ctx, req.GetPageToken(), filter)
	if err != nil {
		return nil, err
	}
	rev, err := s.Consumers.Revision(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &pb.ListConsumersResponse{Revision: rev}
	service, instance, _ := strings.Cut(tok.After, "\x1f")
	after := store.ConsumerID{Service: service, Instance: instance}
	batch := scanBatch(size, req.GetPendingOnly())
	for scanned := 0; ; {
		list, err := s.Consumers.ListConsumers(ctx, after, batch)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		for _, c := range list {
			st := s.toConsumerState(c, scopeOf(ctx))
			if req.GetPendingOnly() && (len(st.Pending) == 0 || st.Gone) {
				continue
			}
			if len(out.Consumers) == size {
				last := out.Consumers[size-1].GetConsumer()
				out.NextPageToken = s.encodeToken(ctx, pageToken{After: filterKey(last.GetService(), last.GetInstance()), Filter: filter})
				return out, nil
			}
			out.Consumers = append(out.Consumers, st)
		}
		if len(list) < batch {
			return out, nil
		}
		after = store.ConsumerID{Service: list[len(list)-1].Service, Instance: list[len(list)-1].Instance}
		if scanned += len(list); scanned >= maxScannedPerPage {
			out.NextPageToken = s.encodeToken(ctx, pageToken{After: filterKey(after.Service, after.Instance), Filter: filter})
			return out, nil
		}
	}
}

// ReportConsumerState records the revision a consumer now runs with.
func (s *SecretService) ReportConsumerState(ctx context.Context, req *pb.ReportConsumerStateRequest) (*pb.ReportConsumerStateResponse, error) {
	consumer, err := parseConsumer(req.GetConsumer())
	if err != nil {
		return nil, err
	}
	if consumer == nil {
		return nil, invalidArg("consumer", "required")
	}
	if req.GetLoadedRevision() < 0 {
		return nil, invalidArg("loaded_revision", "must not be negative (0: the consumer runs on no value from the service)")
	}
	_, cats, err := parseWatchScope(req.GetKeys(), req.GetCategories())
	if err != nil {
		return nil, err
	}
	rev, err := s.Consumers.Revision(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	if req.GetLoadedRevision() > rev {
		return nil, invalidArg("loaded_revision", fmt.Sprintf("is ahead of the current revision %d", rev))
	}
	r := s.consumerReport(ctx, *consumer, req.GetLoadedRevision(), 0, req.GetKeys(), cats)
	if m := req.GetUpdateMask(); m != nil {
		for _, p := range m.GetPaths() {
			if p != "keys" && p != "categories" {
				return nil, invalidArg("update_mask", "field "+p+" cannot be set; settable: keys, categories")
			}
		}
		r.KeepKeys = !slices.Contains(m.GetPaths(), "keys")
		r.KeepCategories = !slices.Contains(m.GetPaths(), "categories")
	} else {
		r.KeepKeys, r.KeepCategories = len(req.GetKeys()) == 0, len(req.GetCategories()) == 0
	}
	if _, err := s.Consumers.PublishConsumerReport(ctx, metaFor(ctx, "ReportConsumerState", "", nil), r); err != nil {
		return nil, s.fail(ctx, err)
	}
	c, err := s.Consumers.GetConsumer(ctx, *consumer)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.ReportConsumerStateResponse{Consumer: s.toConsumerState(c, scopeOf(ctx))}, nil
}

func (s *SecretService) toConsumerState(c store.ConsumerState, scope auth.Scope) *pb.ConsumerState {
	st := &pb.ConsumerState{
		Consumer:       &pb.Consumer{Service: c.Service, Instance: c.Instance},
		LoadedRevision: c.LoadedRevision,
		LastSeen:       ts(c.LastSeen),
		Stale:          time.Since(c.LastSeen) > s.staleAfter(),
		Gone:           s.ConsumerGoneAfter > 0 && time.Since(c.LastSeen) > s.ConsumerGoneAfter,
		Categories:     c.Categories,
	}
	// A scoped caller sees the key names its scope allows, as ListSecrets
	// would show them (a declared key is judged by its catalog category).
	for _, k := range c.Keys {
		if scope.Allows(k, catalogCategory(k)) {
			st.Keys = append(st.Keys, k)
		}
	}
	for i, k := range c.PendingKeys {
		if scope.Allows(k, c.PendingCategories[i]) {
			st.Pending = append(st.Pending, &pb.PendingChange{Key: k, Revision: c.PendingRevs[i]})
		}
	}
	slices.SortFunc(st.Pending, func(a, b *pb.PendingChange) int { return cmp.Compare(a.Revision, b.Revision) })
	return st
}

// DismissConsumer forgets a consumer instance (admin).
func (s *SecretService) DismissConsumer(ctx context.Context, req *pb.DismissConsumerRequest) (*pb.DismissConsumerResponse, error) {
	consumer, err := parseConsumer(req.GetConsumer())
	if err != nil {
		return nil, err
	}
	if consumer == nil {
		return nil, invalidArg("consumer", "required")
	}
	rev, err := s.Consumers.DismissConsumer(ctx, metaFor(ctx, "DismissConsumer", "", nil), *consumer)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.DismissConsumerResponse{Revision: rev}, nil
}

// MaxConsumersPerPrincipal bounds the consumer instances one principal
// may report, so a token cannot flood the restart banner.
const MaxConsumersPerPrincipal = 200

// consumerReport is a report of a consumer by the caller, who owns it (an
// unscoped admin may report any).
func (s *SecretService) consumerReport(ctx context.Context, id store.ConsumerID, loaded, fallback int64, keys, cats []string) store.ConsumerReport {
	p, _ := auth.FromContext(ctx)
	return store.ConsumerReport{ID: id, LoadedRevision: loaded, Fallback: fallback, Keys: keys, Categories: cats,
		Owner: IdentityFrom(ctx).Actor, Override: p.Role == auth.RoleAdmin && p.Scope.Empty(), MaxPerOwner: MaxConsumersPerPrincipal}
}

func catalogCategory(key string) string {
	if e, ok := catalog.Lookup(key); ok {
		return e.Category
	}
	return ""
}

func (s *SecretService) staleAfter() time.Duration {
	if s.ConsumerStaleAfter > 0 {
		return s.ConsumerStaleAfter
	}
	return time.Minute
}
