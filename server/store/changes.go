package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Change is one change-log entry.
type Change struct {
	Revision        int64
	Time            time.Time
	Kind            ChangeKind
	Key             string
	Version         int64
	Category        string
	RestartRequired bool
	Detail          string
}

// ChangesAfter returns up to limit changes with after < revision <= upTo
// (upTo 0: no upper bound), in revision order.
func (s *Store) ChangesAfter(ctx context.Context, after, upTo int64, limit int) ([]Change, error) {
	rows, err := s.pool.Query(ctx, `SELECT revision, time, kind, key, version, category, restart_required, detail
		FROM change_log WHERE revision > $1 AND ($2 = 0 OR revision <= $2) ORDER BY revision LIMIT $3`, after, upTo, limit)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Change, error) {
		var c Change
		err := r.Scan(&c.Revision, &c.Time, &c.Kind, &c.Key, &c.Version, &c.Category, &c.RestartRequired, &c.Detail)
		return c, err
	})
	return out, classify(err)
}

// OldestRevision returns the oldest revision still in the change log (0 when
// the log is empty).
func (s *Store) OldestRevision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.pool.QueryRow(ctx, `SELECT COALESCE(min(revision), 0) FROM change_log`).Scan(&rev)
	return rev, classify(err)
}

// Listener is a dedicated connection LISTENing on NotifyChannel.
type Listener struct{ conn *pgx.Conn }

// Listen opens a connection of its own (outside the pool, which must never
// hold a LISTEN) and issues LISTEN before returning, so a caller that reads
// the log afterwards cannot miss a notification in between.
func (s *Store) Listen(ctx context.Context) (*Listener, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, classify(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		conn.Close(context.Background())
		return nil, classify(err)
	}
	return &Listener{conn: conn}, nil
}

// Wait blocks until a notification arrives, the connection fails or ctx ends.
func (l *Listener) Wait(ctx context.Context) error {
	_, err := l.conn.WaitForNotification(ctx)
	return err
}

// Close closes the connection.
func (l *Listener) Close() { l.conn.Close(context.Background()) }

// CompactChanges deletes change-log entries older than maxAge or beyond the
// newest maxCount, and returns how many it deleted. The newest entry is
// always kept.
func (s *Store) CompactChanges(ctx context.Context, maxAge time.Duration, maxCount int64) (int64, error) {
	tag, err := s.pool.Exec(ctx, `WITH top AS (SELECT COALESCE(max(revision), 0) AS rev FROM change_log),
		cutoff AS (SELECT LEAST((SELECT rev FROM top) - 1, GREATEST(
			COALESCE((SELECT max(revision) FROM change_log WHERE time < now() - make_interval(secs => $1)), 0),
			(SELECT rev FROM top) - $2)) AS rev)
		DELETE FROM change_log WHERE revision <= (SELECT rev FROM cutoff)`, maxAge.Seconds(), maxCount)
	if err != nil {
		return 0, classify(err)
	}
	return tag.RowsAffected(), nil
}

// ConsumerID names a consumer instance.
type ConsumerID struct {
	Service  string
	Instance string
}

// ConsumerState is a consumer as stored, with its pending restart-required
// changes (latest revision per key after its loaded revision).
type ConsumerState struct {
	ConsumerID
	LoadedRevision int64
	Keys           []string
	Categories     []string
	LastSeen       time.Time
	PendingKeys    []string
	PendingRevs    []int64
	// PendingCategories is each pending key's category as of its latest
	// pending change (what a category scope is judged by).
	PendingCategories []string
}

// ReportConsumer registers a consumer or refreshes it (a watch naming its
// consumer): no change-log entry.
func (s *Store) ReportConsumer(ctx context.Context, r ConsumerReport) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error { return upsertConsumer(ctx, tx, r) })
}

// PublishConsumerReport records a consumer's report (ReportConsumerState)
// as a change: audited, and on the change stream (kind
// ChangeConsumerChanged), so restart banners refresh at once.
func (s *Store) PublishConsumerReport(ctx context.Context, meta Meta, r ConsumerReport) (int64, error) {
	res, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (consumerResult, change, error) {
		if err := upsertConsumer(ctx, w.tx, r); err != nil {
			return consumerResult{}, change{}, err
		}
		return consumerResult{Revision: w.rev}, change{kind: ChangeConsumerChanged, category: ConsumerCategory,
			detail: fmt.Sprintf("%s/%s reported revision %d", r.ID.Service, r.ID.Instance, r.LoadedRevision)}, nil
	})
	return res.Revision, err
}

// DismissConsumer forgets a consumer, as a change (audited, on the change
// stream).
func (s *Store) DismissConsumer(ctx context.Context, meta Meta, id ConsumerID) (int64, error) {
	res, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (consumerResult, change, error) {
		tag, err := w.tx.Exec(ctx, `DELETE FROM consumers WHERE service = $1 AND instance = $2`, id.Service, id.Instance)
		if err != nil {
			return consumerResult{}, change{}, err
		}
		if tag.RowsAffected() == 0 {
			return consumerResult{}, change{}, fmt.Errorf("consumer %s/%s: %w", id.Service, id.Instance, ErrNotFound)
		}
		return consumerResult{Revision: w.rev}, change{kind: ChangeConsumerChanged, category: ConsumerCategory,
			detail: fmt.Sprintf("%s/%s dismissed", id.Service, id.Instance)}, nil
	})
	return res.Revision, err
}

// ConsumerCategory is the category of consumer change events.
const ConsumerCategory = "consumers"

type consumerResult struct {
	Revision int64 `json:"revision"`
}

// upsertConsumer registers or refreshes a consumer. The consumer belongs to
// the principal that first reported it (owner); another principal's report
// fails with ErrConsumerOwned unless Override (an unscoped admin). A new
// consumer fails with ErrTooManyConsumers when its owner already has
// MaxPerOwner. Keys and categories are set only when the report sets them.
func upsertConsumer(ctx context.Context, tx pgx.Tx, r ConsumerReport) error {
	keys, categories := r.Keys, r.Categories
	if keys == nil {
		keys = []string{}
	}
	if categories == nil {
		categories = []string{}
	}
	var owner string
	var found bool
	err := tx.QueryRow(ctx, `SELECT owner FROM consumers WHERE service = $1 AND instance = $2 FOR UPDATE`,
		r.ID.Service, r.ID.Instance).Scan(&owner)
	switch {
	case err == nil:
		found = true
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	if found && owner != "" && owner != r.Owner && !r.Override {
		return fmt.Errorf("consumer %s/%s is reported by %s: %w", r.ID.Service, r.ID.Instance, owner, ErrConsumerOwned)
	}
	if !found && r.MaxPerOwner > 0 {
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM consumers WHERE owner = $1`, r.Owner).Scan(&n); err != nil {
			return err
		}
		if n >= r.MaxPerOwner {
			return fmt.Errorf("%s already reports %d consumers: %w", r.Owner, n, ErrTooManyConsumers)
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO consumers (service, instance, loaded_revision, keys, categories, first_seen, last_seen, owner)
		VALUES ($1, $2, CASE WHEN $3 >= 0 THEN $3 ELSE $4 END, $5, $6, now(), now(), $7)
		ON CONFLICT (service, instance) DO UPDATE SET last_seen = now(),
			keys = CASE WHEN $8 THEN consumers.keys ELSE EXCLUDED.keys END,
			categories = CASE WHEN $9 THEN consumers.categories ELSE EXCLUDED.categories END,
			loaded_revision = CASE WHEN $3 >= 0 THEN $3 ELSE consumers.loaded_revision END,
			owner = CASE WHEN consumers.owner = '' THEN EXCLUDED.owner ELSE consumers.owner END`,
		r.ID.Service, r.ID.Instance, r.LoadedRevision, r.Fallback, keys, categories, r.Owner, r.KeepKeys, r.KeepCategories)
	return err
}

// KeepLoadedRevision as a ConsumerReport's LoadedRevision keeps the
// stored one (a watch that does not say what it loaded).
const KeepLoadedRevision int64 = -1

// ConsumerReport is one report of a consumer's state.
type ConsumerReport struct {
	ID ConsumerID
	// LoadedRevision is the revision the consumer runs with: 0 for none
	// (it runs on environment and default values only, so every
	// restart-required change to its keys is pending), or
	// KeepLoadedRevision to keep the stored one (Fallback for a new
	// consumer).
	LoadedRevision, Fallback int64
	Keys, Categories         []string
	// KeepKeys and KeepCategories keep the stored lists of an existing
	// consumer (the report does not set them).
	KeepKeys, KeepCategories bool
	// Owner is the reporting principal; Override lets it report a consumer
	// another principal owns.
	Owner       string
	Override    bool
	MaxPerOwner int
}

// TouchConsumers marks consumers as seen now (one statement for all).
func (s *Store) TouchConsumers(ctx context.Context, ids []ConsumerID) error {
	if len(ids) == 0 {
		return nil
	}
	services := make([]string, len(ids))
	instances := make([]string, len(ids))
	for i, id := range ids {
		services[i], instances[i] = id.Service, id.Instance
	}
	_, err := s.pool.Exec(ctx, `UPDATE consumers c SET last_seen = now()
		FROM unnest($1::text[], $2::text[]) AS t(service, instance)
		WHERE c.service = t.service AND c.instance = t.instance`, services, instances)
	return classify(err)
}

// GetConsumer returns one consumer's state.
func (s *Store) GetConsumer(ctx context.Context, id ConsumerID) (ConsumerState, error) {
	list, err := s.listConsumers(ctx, &id, ConsumerID{}, 1)
	if err != nil {
		return ConsumerState{}, err
	}
	if len(list) == 0 {
		return ConsumerState{}, fmt.Errorf("consumer %s/%s: %w", id.Service, id.Instance, ErrNotFound)
	}
	return list[0], nil
}

// ListConsumers returns up to limit consumers after the given one (by
// service, then instance), with their pending changes.
func (s *Store) ListConsumers(ctx context.Context, after ConsumerID, limit int) ([]ConsumerState, error) {
	return s.listConsumers(ctx, nil, after, limit)
}

func (s *Store) listConsumers(ctx context.Context, only *ConsumerID, after ConsumerID, limit int) ([]ConsumerState, error) {
	var service, instance string
	if only != nil {
		service, instance = only.Service, only.Instance
	}
	// A change is pending for a consumer when it is restart-required, after
	// the consumer's loaded revision, concerns a key it uses, and changed a
	// value (metadata and provider-default changes need no restart).
	rows, err := s.pool.Query(ctx, `SELECT c.service, c.instance, c.loaded_revision, c.keys, c.categories, c.last_seen,
			COALESCE(p.keys, '{}'), COALESCE(p.revs, '{}'), COALESCE(p.cats, '{}')
		FROM consumers c
		LEFT JOIN LATERAL (
			SELECT array_agg(x.key ORDER BY x.rev) AS keys, array_agg(x.rev ORDER BY x.rev) AS revs,
				array_agg(x.category ORDER BY x.rev) AS cats
			FROM (SELECT l.key, max(l.revision) AS rev, (array_agg(l.category ORDER BY l.revision DESC))[1] AS category
				FROM change_log l
				WHERE l.revision > c.loaded_revision AND l.restart_required AND l.key <> ''
					AND l.kind IN (1, 2, 3, 4, 5)
					AND (cardinality(c.keys) = 0 OR l.key = ANY(c.keys))
					AND (cardinality(c.categories) = 0 OR l.category = ANY(c.categories))
				GROUP BY l.key) x
		) p ON true
		WHERE ($1 = '' OR (c.service = $1 AND c.instance = $2)) AND (c.service, c.instance) > ($3, $4)
		ORDER BY c.service, c.instance
		LIMIT $5`, service, instance, after.Service, after.Instance, max(limit, 1))
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ConsumerState, error) {
		var c ConsumerState
		err := r.Scan(&c.Service, &c.Instance, &c.LoadedRevision, &c.Keys, &c.Categories, &c.LastSeen, &c.PendingKeys, &c.PendingRevs, &c.PendingCategories)
		return c, err
	})
	return out, classify(err)
}

// DropConsumers removes consumers not seen for maxAge.
func (s *Store) DropConsumers(ctx context.Context, maxAge time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM consumers WHERE last_seen < now() - make_interval(secs => $1)`, maxAge.Seconds())
	if err != nil {
		return 0, classify(err)
	}
	return tag.RowsAffected(), nil
}
