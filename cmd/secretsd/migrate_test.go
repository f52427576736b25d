package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/orient-bot/secrets/migrations"
)

// TestPrintPlan: the dry run names every pending file with its SQL, says
// so when there is nothing to do, reports a newer release's migrations, and
// fails when goose would refuse to apply out of order.
func TestPrintPlan(t *testing.T) {
	var b bytes.Buffer
	err := printPlan(&b, migrations.Plan{Applied: []int64{1, 2}, Pending: []migrations.Migration{
		{Version: 3, File: "00003_x.sql", Up: "CREATE TABLE x (id int);"},
		{Version: 4, File: "00004_y.sql", Up: "ALTER TABLE x ADD COLUMN y text;"},
	}})
	out := b.String()
	if err != nil || !strings.Contains(out, "2 migrations applied (newest 2)") || !strings.Contains(out, "would apply 2 migrations") ||
		!strings.Contains(out, "-- 00003_x.sql (version 3)\nCREATE TABLE x (id int);") || !strings.Contains(out, "ALTER TABLE x ADD COLUMN y text;") {
		t.Errorf("pending plan (err %v):\n%s", err, out)
	}
	b.Reset()
	if err := printPlan(&b, migrations.Plan{Applied: []int64{1, 2, 3}, Unknown: []int64{3}}); err != nil ||
		!strings.Contains(b.String(), "nothing to apply") || !strings.Contains(b.String(), "newer release: [3]") {
		t.Errorf("up-to-date plan with a newer release's migration (err %v):\n%s", err, b.String())
	}
	b.Reset()
	if err := printPlan(&b, migrations.Plan{Applied: []int64{1, 3}, Missing: []int64{2}}); err == nil || !strings.Contains(b.String(), "would fail") {
		t.Errorf("out-of-order plan: err %v:\n%s", err, b.String())
	}
}
