// Package reliability holds tests that break things on purpose against real
// servers and a real PostgreSQL: kill -9 under write load, a database restart
// under load, lost-update hunting with compare-and-set writers, slow and
// abusive clients, a hunt for plaintext in every byte the service leaves
// behind, a graceful shutdown under load, the backup-and-restore drill
// (pg_dump under load, restore into a fresh cluster) and a rolling upgrade
// (the previous commit's binary beside this one). Each case asserts what
// must still hold.
//
// The suite is heavy, so it runs only when asked: `make reliability` (the
// full sizes) or RELIABILITY_SHORT=1 (small counts, for CI). Plain
// `go test ./...` skips it.
package reliability
