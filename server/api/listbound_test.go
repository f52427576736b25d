package api

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// A large table of rows no filter lets through: secrets named CUSTOM_…,
// consumers with nothing pending. It counts the rows it hands out.
const boundTableRows = 50000

type manySecrets struct {
	Store
	read int
}

func (m *manySecrets) ListSecrets(_ context.Context, p store.ListParams) (store.ListResult, error) {
	var res store.ListResult
	for i := 0; i < boundTableRows && len(res.Page) < p.Limit; i++ {
		if k := fmt.Sprintf("CUSTOM_%06d", i); k > p.After {
			res.Page = append(res.Page, store.Secret{Key: k, Category: "custom"})
		}
	}
	m.read += len(res.Page)
	return res, nil
}

type manyConsumers struct {
	ConsumerStore
	read int
}

func (m *manyConsumers) Revision(context.Context) (int64, error) { return 1, nil }

func (m *manyConsumers) ListConsumers(_ context.Context, after store.ConsumerID, limit int) ([]store.ConsumerState, error) {
	var out []store.ConsumerState
	for i := 0; i < boundTableRows && len(out) < limit; i++ {
		if id := (store.ConsumerID{Service: "svc", Instance: fmt.Sprintf("%06d", i)}); id.Instance > after.Instance {
			out = append(out, store.ConsumerState{ConsumerID: id, LastSeen: time.Now()})
		}
	}
	m.read += len(out)
	return out, nil
}

// TestFilteredListsReadABoundedSlice: a list whose filter (a narrow scope,
// pending_only) the store cannot apply reads at most maxScannedPerPage rows
// (and one store batch past them) a call, then answers a short page with a
// token that goes on from there; following the tokens reaches the end.
// The audit log's case runs against a database in server/app
// (TestScopedListReadsABoundedSlice).
func TestFilteredListsReadABoundedSlice(t *testing.T) {
	secrets, consumers := &manySecrets{}, &manyConsumers{}
	s := NewSecretService(Deps{Store: secrets, Consumers: consumers, PageTokenKey: []byte("page-token-key")})
	scoped := auth.WithPrincipal(context.Background(), auth.Principal{Name: "nope", Role: auth.RoleAdmin, Scope: auth.Scope{KeyPatterns: []string{"NOPE_*"}}})
	bound := maxScannedPerPage + scanBatch(1, true)

	for calls, token := 0, ""; ; {
		secrets.read = 0
		res, err := s.ListSecrets(scoped, &pb.ListSecretsRequest{PageSize: 1, ConfiguredOnly: true, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		calls++
		if len(res.Secrets) != 0 || secrets.read > bound {
			t.Fatalf("ListSecrets call %d: %d secrets shown, %d rows read; want none, at most %d", calls, len(res.Secrets), secrets.read, bound)
		}
		if token = res.NextPageToken; token == "" {
			if calls < boundTableRows/maxScannedPerPage {
				t.Fatalf("ListSecrets read %d rows in %d calls", boundTableRows, calls)
			}
			break
		}
	}
	for calls, token := 0, ""; ; {
		consumers.read = 0
		res, err := s.ListConsumers(context.Background(), &pb.ListConsumersRequest{PageSize: 1, PendingOnly: true, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		calls++
		if len(res.Consumers) != 0 || consumers.read > bound {
			t.Fatalf("ListConsumers call %d: %d consumers shown, %d rows read; want none, at most %d", calls, len(res.Consumers), consumers.read, bound)
		}
		if token = res.NextPageToken; token == "" {
			if calls < boundTableRows/maxScannedPerPage {
				t.Fatalf("ListConsumers read %d rows in %d calls", boundTableRows, calls)
			}
			break
		}
	}
}
