package auditlog

import (
	"cmp"
	"context"
	"iter"
	"math"
	"slices"

	"github.com/orient-bot/secrets/server/store"
)

// The database's checkpoints are never held whole: the table only grows (a
// checkpoint a minute per replica, --audit-checkpoint-interval; retention
// keeps them, they are append-only) and the service role may insert any
// number of rows. Verification, export and retention read them in pages of
// checkpointPage, by sequence (keyset: each page starts after the last
// sequence of the one before), and keep at most one page in memory.
const checkpointPage = 1000

// checkpointPager reads a page of the stored checkpoints: up to limit with
// after < sequence <= upTo, in sequence order.
type checkpointPager interface {
	CheckpointsAfter(ctx context.Context, after, upTo int64, limit int) ([]store.AuditCheckpoint, error)
}

// pagedCheckpoints yields the stored checkpoints with after < sequence <=
// upTo in sequence order, a page at a time.
func pagedCheckpoints(ctx context.Context, p checkpointPager, after, upTo int64) iter.Seq2[Checkpoint, error] {
	return func(yield func(Checkpoint, error) bool) {
		for after < upTo {
			page, err := p.CheckpointsAfter(ctx, after, upTo, checkpointPage)
			if err != nil {
				yield(Checkpoint{}, err)
				return
			}
			for _, c := range page {
				if !yield(Checkpoint(c), nil) {
					return
				}
			}
			if len(page) < checkpointPage {
				return
			}
			after = page[len(page)-1].Sequence
		}
	}
}

// storedCheckpoints is the Checks.Stored of a snapshot: the checkpoints
// stored up to ceiling (the newest stored when the snapshot was taken,
// before its head was read), read in pages when a walk gets to them.
func (l *Log) storedCheckpoints(ctx context.Context, ceiling int64) func(after int64) iter.Seq2[Checkpoint, error] {
	return func(after int64) iter.Seq2[Checkpoint, error] {
		return pagedCheckpoints(ctx, l.Store, after, ceiling)
	}
}

// checkpointCeiling is the sequence of the newest stored checkpoint
// (math.MinInt64: none): one index probe.
func (l *Log) checkpointCeiling(ctx context.Context) (int64, error) {
	_, newest, err := l.Store.NewestCheckpoints(ctx, math.MinInt64)
	if err != nil || newest == nil {
		return math.MinInt64, err
	}
	return newest.Sequence, nil
}

// checkpointsAfter yields checks' database checkpoints with sequence >
// after in sequence order: Checkpoints (an export's, or archived segments';
// sorted here) merged with the Stored stream.
func (checks Checks) checkpointsAfter(after int64) iter.Seq2[Checkpoint, error] {
	var held []Checkpoint
	for _, c := range checks.Checkpoints {
		if c.Sequence > after {
			held = append(held, c)
		}
	}
	slices.SortStableFunc(held, func(a, b Checkpoint) int { return cmp.Compare(a.Sequence, b.Sequence) })
	if checks.Stored == nil {
		return func(yield func(Checkpoint, error) bool) {
			for _, c := range held {
				if !yield(c, nil) {
					return
				}
			}
		}
	}
	stored := checks.Stored(after)
	return func(yield func(Checkpoint, error) bool) {
		i := 0
		for c, err := range stored {
			if err != nil {
				yield(Checkpoint{}, err)
				return
			}
			for ; i < len(held) && held[i].Sequence <= c.Sequence; i++ {
				if !yield(held[i], nil) {
					return
				}
			}
			if !yield(c, nil) {
				return
			}
		}
		for ; i < len(held); i++ {
			if !yield(held[i], nil) {
				return
			}
		}
	}
}
