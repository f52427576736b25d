package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ProviderDefaults returns the stored use-case defaults (use cases never set
// are absent) and the revision they reflect.
func (s *Store) ProviderDefaults(ctx context.Context) ([]ProviderDefault, int64, error) {
	var (
		out []ProviderDefault
		rev int64
	)
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT revision FROM revision_counter`).Scan(&rev); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT use_case, provider, model, revision, update_time, updated_by FROM provider_defaults`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProviderDefault, error) {
			var d ProviderDefault
			err := r.Scan(&d.UseCase, &d.Provider, &d.Model, &d.Revision, &d.UpdateTime, &d.UpdatedBy)
			return d, err
		})
		return err
	})
	return out, rev, err
}

// ProviderDefaultResult is the outcome of SetProviderDefault.
type ProviderDefaultResult struct {
	Default  ProviderDefault
	Revision int64
}

// SetProviderDefault stores a use case's provider and model.
func (s *Store) SetProviderDefault(ctx context.Context, meta Meta, useCase, provider, model string) (ProviderDefaultResult, error) {
	return write(ctx, s, meta, func(ctx context.Context, w *writer) (ProviderDefaultResult, change, error) {
		d := ProviderDefault{UseCase: useCase, Provider: provider, Model: model, Revision: w.rev, UpdateTime: w.now, UpdatedBy: w.meta.Actor}
		if _, err := w.tx.Exec(ctx, `INSERT INTO provider_defaults (use_case, provider, model, revision, update_time, updated_by)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (use_case) DO UPDATE SET provider = EXCLUDED.provider, model = EXCLUDED.model,
				revision = EXCLUDED.revision, update_time = EXCLUDED.update_time, updated_by = EXCLUDED.updated_by`,
			d.UseCase, d.Provider, d.Model, d.Revision, d.UpdateTime, d.UpdatedBy); err != nil {
			return ProviderDefaultResult{}, change{}, err
		}
		return ProviderDefaultResult{Default: d, Revision: w.rev},
			change{kind: ChangeProviderDefaultChanged, category: "providers", detail: fmt.Sprintf("%s=%s/%s", useCase, provider, model)},
			nil
	})
}
