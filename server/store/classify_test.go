package store

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestClassify: a connection lost mid-query (as when PostgreSQL restarts)
// is ErrUnavailable, so callers answer UNAVAILABLE (retry), never UNKNOWN.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err         error
		unavailable bool
	}{
		{io.EOF, true},
		{fmt.Errorf("read: %w", io.EOF), true},
		{io.ErrUnexpectedEOF, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{errors.New("something else"), false},
	} {
		if got := errors.Is(classify(tc.err), ErrUnavailable); got != tc.unavailable {
			t.Errorf("classify(%v) unavailable = %v, want %v", tc.err, got, tc.unavailable)
		}
	}
}
