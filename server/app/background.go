package app

import (
	"context"
	"sync"
)

// group is a set of background goroutines that stop together: stop cancels
// their context and waits for every one, so none outlives the server (nor
// the store it uses), whichever way the server ends.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newGroup returns a group whose context carries parent's values but not
// its cancellation: only stop ends it, in the order shutdown chooses.
func newGroup(parent context.Context) *group {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	return &group{ctx: ctx, cancel: cancel}
}

// Go runs fn in the group.
func (g *group) Go(fn func(ctx context.Context)) {
	g.wg.Go(func() { fn(g.ctx) })
}

// stop cancels the group and waits for its goroutines (nil-safe).
func (g *group) stop() {
	if g == nil {
		return
	}
	g.cancel()
	g.wg.Wait()
}
