package auditlog

import (
	"context"
	"log/slog"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// DenialQueue audits refused requests off the request path, through a
// bounded queue: a flood of bad tokens cannot slow legitimate calls or grow
// memory; past the bound, denials are counted and dropped.
type DenialQueue struct {
	ch      chan store.AuditEvent
	write   func(ctx context.Context, events []store.AuditEvent) error
	dropped func(n int)
	log     *slog.Logger
}

// NewDenialQueue returns a queue that writes denials with write and
// reports each one it could not record to dropped.
func NewDenialQueue(write func(context.Context, []store.AuditEvent) error, dropped func(n int), log *slog.Logger) *DenialQueue {
	return &DenialQueue{ch: make(chan store.AuditEvent, 4096), write: write, dropped: dropped, log: log}
}

// Record queues a denial; it never blocks.
func (d *DenialQueue) Record(e store.AuditEvent) {
	select {
	case d.ch <- e:
	default:
		d.dropped(1)
	}
}

// Run writes queued denials in batches until ctx ends (then drains).
func (d *DenialQueue) Run(ctx context.Context) {
	batch := make([]store.AuditEvent, 0, 256)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := d.write(wctx, batch); err != nil {
			d.dropped(len(batch))
			d.log.Warn("denial audit not recorded", "count", len(batch), "error", err)
		}
		batch = batch[:0]
	}
	for {
		select {
		case e := <-d.ch:
			batch = append(batch, e)
			for len(batch) < cap(batch) {
				select {
				case e := <-d.ch:
					batch = append(batch, e)
					continue
				default:
				}
				break
			}
			flush()
		case <-ctx.Done():
			for {
				select {
				case e := <-d.ch:
					batch = append(batch, e)
				default:
					flush()
					return
				}
			}
		}
	}
}
