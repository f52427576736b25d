package auditlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

type fakeAppender struct {
	mu     sync.Mutex
	seen   map[string]int
	groups int
	fail   bool
}

func (f *fakeAppender) AppendAudit(ctx context.Context, events []store.AuditEvent) error {
	time.Sleep(2 * time.Millisecond) // a commit takes a while: groups form
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("database down")
	}
	f.groups++
	for _, e := range events {
		f.seen[e.Key]++
	}
	return nil
}

func (f *fakeAppender) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[key]
}

func TestBatcherGroupsAndReturnsAfterDurable(t *testing.T) {
	app := &fakeAppender{seen: map[string]int{}}
	b := NewBatcher(app, 64, nil)
	defer b.Close()
	var wg sync.WaitGroup
	const callers = 200
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("K%d", i)
			if err := b.RecordAccess(context.Background(), []store.AuditEvent{{Key: key}}); err != nil {
				errs <- err
				return
			}
			// Returned: the event must already be appended.
			if app.count(key) != 1 {
				errs <- fmt.Errorf("%s returned before its event was durable", key)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if app.groups >= callers {
		t.Fatalf("%d groups for %d callers: no grouping", app.groups, callers)
	}
	t.Logf("%d callers committed in %d groups", callers, app.groups)
}

func TestBatcherFailsClosed(t *testing.T) {
	app := &fakeAppender{seen: map[string]int{}, fail: true}
	b := NewBatcher(app, 64, nil)
	defer b.Close()
	if err := b.RecordAccess(context.Background(), []store.AuditEvent{{Key: "K"}}); err == nil {
		t.Fatal("RecordAccess succeeded although the append failed")
	}
	b.Close()
	if err := b.RecordAccess(context.Background(), []store.AuditEvent{{Key: "K"}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
