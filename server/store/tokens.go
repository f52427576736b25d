package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Token is a stored token's metadata (its hash stays in the database).
type Token struct {
	Name        string
	Prefix      string
	Role        string
	KeyPatterns []string
	Categories  []string
	ExpireTime  time.Time // zero: never
	CreateTime  time.Time
	CreatedBy   string
	LastUseTime time.Time
	RevokeTime  time.Time
}

const tokenColumns = `name, prefix, role, key_patterns, categories, COALESCE(expire_time, 'epoch'), create_time, created_by,
	COALESCE(last_use_time, 'epoch'), COALESCE(revoke_time, 'epoch')`

func scanToken(row pgx.Row) (Token, error) {
	var t Token
	err := row.Scan(&t.Name, &t.Prefix, &t.Role, &t.KeyPatterns, &t.Categories, &t.ExpireTime, &t.CreateTime, &t.CreatedBy,
		&t.LastUseTime, &t.RevokeTime)
	for _, ts := range []*time.Time{&t.ExpireTime, &t.LastUseTime, &t.RevokeTime} {
		if ts.Unix() == 0 {
			*ts = time.Time{}
		}
	}
	return t, err
}

// ErrAlreadyExists: an active token has that name.
var ErrAlreadyExists = errors.New("already exists")

// TokenByHash finds a token by the SHA-256 of its value.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (Token, error) {
	t, err := scanToken(s.pool.QueryRow(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE token_hash = $1`, hash))
	if errors.Is(err, pgx.ErrNoRows) {
		return Token{}, ErrNotFound
	}
	return t, classify(err)
}

// CreateToken stores a token and audits it in one transaction. A revoked
// token's name may be reused; an active one's may not.
func (s *Store) CreateToken(ctx context.Context, meta Meta, t Token, hash []byte) (Token, error) {
	var out Token
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var expire *time.Time
		if !t.ExpireTime.IsZero() {
			expire = &t.ExpireTime
		}
		row := tx.QueryRow(ctx, `INSERT INTO tokens (name, token_hash, prefix, role, key_patterns, categories, expire_time, create_time, created_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8)
			ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash, prefix = EXCLUDED.prefix, role = EXCLUDED.role,
				key_patterns = EXCLUDED.key_patterns, categories = EXCLUDED.categories, expire_time = EXCLUDED.expire_time,
				create_time = EXCLUDED.create_time, created_by = EXCLUDED.created_by, last_use_time = NULL, revoke_time = NULL
			WHERE tokens.revoke_time IS NOT NULL
			RETURNING `+tokenColumns, t.Name, hash, t.Prefix, t.Role, nonNil(t.KeyPatterns), nonNil(t.Categories), expire, meta.Actor)
		var err error
		out, err = scanToken(row)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("token %s: %w", t.Name, ErrAlreadyExists)
		}
		if err != nil {
			return err
		}
		return insertAudit(ctx, tx, meta, "", fmt.Sprintf("token=%s role=%s", t.Name, t.Role))
	})
	return out, err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// insertAudit commits a token change's event to the audit intake in its
// transaction.
func insertAudit(ctx context.Context, tx pgx.Tx, meta Meta, key, detail string) error {
	err := appendAudit(ctx, tx, []AuditEvent{{Actor: meta.Actor, Action: meta.Action, Key: key, Outcome: OutcomeOK,
		RequestID: meta.RequestID, Peer: meta.Peer, Detail: detail}})
	return err
}

// RevokeToken revokes an active token and audits it.
func (s *Store) RevokeToken(ctx context.Context, meta Meta, name string) (Token, error) {
	var out Token
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var err error
		out, err = scanToken(tx.QueryRow(ctx, `UPDATE tokens SET revoke_time = now() WHERE name = $1 AND revoke_time IS NULL
			RETURNING `+tokenColumns, name))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("active token %s: %w", name, ErrNotFound)
		}
		if err != nil {
			return err
		}
		return insertAudit(ctx, tx, meta, "", "token="+name)
	})
	return out, err
}

// ListTokens returns every token by name.
func (s *Store) ListTokens(ctx context.Context) ([]Token, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tokenColumns+` FROM tokens ORDER BY name`)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Token, error) { return scanToken(r) })
	return out, classify(err)
}

// BootstrapToken creates the first admin token if there is no token at all.
// It reports whether it created one (a racing replica may win instead).
func (s *Store) BootstrapToken(ctx context.Context, name, prefix string, hash []byte) (bool, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO tokens (name, token_hash, prefix, role, create_time, created_by)
		SELECT $1, $2, $3, 'admin', now(), 'bootstrap' WHERE NOT EXISTS (SELECT 1 FROM tokens)
		ON CONFLICT DO NOTHING`, name, hash, prefix)
	if err != nil {
		return false, classify(err)
	}
	return tag.RowsAffected() == 1, nil
}

// TouchTokens records last-use times, in one statement for many tokens,
// keyed by hex-encoded token hash (not name: a token re-created under a
// revoked one's name must not inherit its uses).
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	hashes := make([]string, 0, len(used))
	times := make([]time.Time, 0, len(used))
	for h, t := range used {
		hashes = append(hashes, h)
		times = append(times, t)
	}
	_, err := s.pool.Exec(ctx, `UPDATE tokens t SET last_use_time = GREATEST(COALESCE(t.last_use_time, 'epoch'), u.time)
		FROM unnest($1::text[], $2::timestamptz[]) AS u(hash, time) WHERE t.token_hash = decode(u.hash, 'hex')`, hashes, times)
	return classify(err)
}

// CategoriesOf returns the categories of the stored secrets among keys, in
// one query (a key not stored is absent from the map).
func (s *Store) CategoriesOf(ctx context.Context, keys []string) (map[string]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, category FROM secrets WHERE key = ANY($1)`, keys)
	if err != nil {
		return nil, classify(err)
	}
	out := map[string]string{}
	var k, c string
	_, err = pgx.ForEachRow(rows, []any{&k, &c}, func() error { out[k] = c; return nil })
	return out, classify(err)
}

// RecordDenials appends denial audit events in one transaction.
func (s *Store) RecordDenials(ctx context.Context, events []AuditEvent) error {
	return s.AppendAudit(ctx, events)
}
