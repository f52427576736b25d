package auditlog

import (
	"os"
	"testing"

	"github.com/orient-bot/secrets/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }
