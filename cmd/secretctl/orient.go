package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/scrypt"
	_ "modernc.org/sqlite" // pure-Go SQLite: no cgo needed to read Orient's database
)

// Orient's secrets panel encrypts each value with AES-256-GCM (16-byte IV,
// 16-byte tag, hex strings) under scrypt(ORIENT_MASTER_KEY,
// "orient-master-key", N=16384, r=8, p=1, 32 bytes) — Node's
// crypto.scryptSync defaults.
const (
	orientSalt      = "orient-master-key"
	orientMinKeyLen = 32
	// orientDevMasterKey is what Orient uses, outside production, when
	// ORIENT_MASTER_KEY is unset or shorter than 32 characters.
	orientDevMasterKey = "orient-dev-master-key-do-not-use-in-production-32chars"
)

// orientKey derives Orient's AES key from its master key.
func orientKey(masterKey []byte) ([]byte, error) {
	return scrypt.Key(masterKey, []byte(orientSalt), 16384, 8, 1, 32)
}

// orientDecrypt opens one row's value; any malformed field or a wrong key
// is an error that says nothing about the value.
func orientDecrypt(aead cipher.AEAD, encHex, ivHex, tagHex string) ([]byte, error) {
	ct, err1 := hex.DecodeString(encHex)
	iv, err2 := hex.DecodeString(ivHex)
	tag, err3 := hex.DecodeString(tagHex)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, errors.New("malformed row (encrypted_value, iv and auth_tag must be hex)")
	}
	if len(iv) != aead.NonceSize() || len(tag) != aead.Overhead() {
		return nil, fmt.Errorf("malformed row (iv must be %d bytes, auth_tag %d)", aead.NonceSize(), aead.Overhead())
	}
	v, err := aead.Open(nil, iv, append(ct, tag...), nil)
	if err != nil {
		return nil, errors.New("does not decrypt with this master key (or the row was altered)")
	}
	return v, nil
}

// readOrient reads Orient's secrets table and decrypts every row it can.
// Rows that do not decrypt come back with Skip set.
func readOrient(ctx context.Context, path string, masterKey []byte) ([]importItem, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	key, err := orientKey(masterKey)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithNonceSize(block, 16)
	if err != nil {
		return nil, err
	}
	// Read-only: the import never changes Orient's database.
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT key, encrypted_value, iv, auth_tag, category, description FROM secrets ORDER BY key`)
	if err != nil {
		return nil, fmt.Errorf("%s: reading the secrets table: %w", path, err)
	}
	defer rows.Close()
	var items []importItem
	for rows.Next() {
		var name, enc, iv, tag string
		var category, description sql.NullString
		if err := rows.Scan(&name, &enc, &iv, &tag, &category, &description); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		digest := sha256.Sum256([]byte(name + "\x00" + iv + "\x00" + tag + "\x00" + enc))
		it := importItem{Source: name, Digest: digest[:], Category: category.String, Description: strings.TrimSpace(description.String)}
		if it.Value, err = orientDecrypt(aead, enc, iv, tag); err != nil {
			it.Skip = err.Error()
		}
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return items, nil
}

func (a *app) importOrientCommand() *cobra.Command {
	var dbPath, keyFile string
	var dryRun, devKey bool
	cmd := &cobra.Command{
		Use:   "orient --db PATH",
		Short: "Import the secrets of Orient's own SQLite store",
		Long: `Import the secrets table of Orient's SQLite database (opened read-only).
The master key comes from $ORIENT_MASTER_KEY or --master-key-file, never from
an argument. Rows that do not decrypt are reported by key and skipped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dbPath == "" {
				return fmt.Errorf("%w: --db is required", errUsage)
			}
			master, err := a.orientMasterKey(keyFile, devKey)
			if err != nil {
				return err
			}
			items, err := readOrient(cmd.Context(), dbPath, master)
			clear(master)
			if err != nil {
				return err
			}
			return a.runImport(cmd.Context(), "orient", items, dryRun)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dbPath, "db", "", "Orient's SQLite database file")
	f.StringVar(&keyFile, "master-key-file", "", "read Orient's master key from this file (default $ORIENT_MASTER_KEY)")
	f.BoolVar(&devKey, "orient-dev-key", false, "use Orient's built-in development master key (what Orient used when ORIENT_MASTER_KEY was unset)")
	f.BoolVar(&dryRun, "dry-run", false, "report what would change; write nothing")
	return cmd
}

// orientMasterKey finds the master key: a file, the environment, or (only
// when asked) Orient's development key.
func (a *app) orientMasterKey(file string, devKey bool) ([]byte, error) {
	var key []byte
	switch {
	case devKey:
		if file != "" {
			return nil, fmt.Errorf("%w: --orient-dev-key and --master-key-file exclude each other", errUsage)
		}
		return []byte(orientDevMasterKey), nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("master key file: %w", err)
		}
		key = trimNewline(b)
	default:
		v, _ := a.lookupEnv("ORIENT_MASTER_KEY")
		key = []byte(v)
	}
	switch {
	case len(key) == 0:
		return nil, fmt.Errorf("%w: set ORIENT_MASTER_KEY or pass --master-key-file (or --orient-dev-key if Orient ran without one)", errUsage)
	case len(key) < orientMinKeyLen:
		// Orient ignores such a key (it uses its development key instead).
		return nil, fmt.Errorf("%w: the master key is shorter than %d characters, so Orient did not use it: it encrypted with its development key (pass --orient-dev-key)", errUsage, orientMinKeyLen)
	}
	return key, nil
}
