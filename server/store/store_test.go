package store_test

import (
	"context"
	"os"
	"testing"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// TestConformance runs the store suite on a real PostgreSQL, a fresh
// database per test.
func TestConformance(t *testing.T) {
	storetest.RunAll(t, func(t *testing.T) *store.Store {
		s, err := store.Open(context.Background(), testdb.New(t), store.Options{MinMaxConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	})
}
