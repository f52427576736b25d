package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/server/catalog"
)

// importItem is one value an importer found, before it is compared with
// what the service holds.
type importItem struct {
	Source      string // the name in the source (Orient row key, .env name)
	Key         string // the catalog key it maps to
	Value       []byte
	Description string // kept from the source; empty for none
	Category    string // the source's category label; empty for none
	// Digest identifies the source row without revealing its value (for
	// Orient: a hash of the row's ciphertext); part of the request id.
	Digest []byte
	// Skip, when set, is why the item is not imported (never the value).
	Skip string
}

// Import actions, as reported.
const (
	actionCreate    = "create"
	actionUpdate    = "update"
	actionUnchanged = "unchanged"
	actionSkip      = "skip"
)

type importResult struct {
	Name   string `json:"name"`
	Key    string `json:"key,omitempty"`
	Action string `json:"action"`
	Reason string `json:"reason,omitempty"`
}

type importSummary struct {
	DryRun    bool           `json:"dryRun"`
	Results   []importResult `json:"results"`
	Imported  int            `json:"imported"`
	Unchanged int            `json:"unchanged"`
	Skipped   int            `json:"skipped"`
}

// runImport maps items onto catalog keys, compares them with the service's
// current values and writes the ones that differ, each as a new version.
//
// "Unchanged" is decided by reading the current values (one audited
// BatchAccessSecrets per 100 keys), not by request ids alone: those are
// remembered for 24 h only, and a replayed id would report a write that a
// later change had since overwritten. Each write is compare-and-set on the
// etag seen when listing, with a request id derived from the write and the
// state it was planned against (see importWrite), so a retried or
// concurrent run of the same import writes once.
func (a *app) runImport(ctx context.Context, kind string, items []importItem, dryRun bool) error {
	items = prepareItems(items)
	c, err := a.connect(ctx)
	if err != nil {
		return err
	}
	list, listed, err := c.ListSecrets(ctx, client.ListSecretsOptions{})
	if err != nil {
		return err
	}
	current := make(map[string]client.Secret, len(list))
	for _, s := range list {
		current[s.Key] = s
	}
	var readKeys []string
	for _, it := range items {
		if it.Skip == "" && current[it.Key].Configured {
			readKeys = append(readKeys, it.Key)
		}
	}
	values := map[string]client.BatchResult{}
	if len(readKeys) > 0 {
		if values, _, err = c.BatchAccess(ctx, readKeys); err != nil {
			return fmt.Errorf("reading the current values to compare: %w", err)
		}
	}
	sum := importSummary{DryRun: dryRun}
	for _, it := range items {
		r := importResult{Name: it.Source, Key: it.Key}
		cur, exists := current[it.Key]
		exists = exists && cur.Etag != ""
		switch {
		case it.Skip != "":
			r.Action, r.Reason = actionSkip, it.Skip
		case exists && values[it.Key].Err == nil && cur.Configured && bytes.Equal(values[it.Key].Value.Data, it.Value):
			r.Action = actionUnchanged
		case exists:
			r.Action = actionUpdate
		default:
			r.Action = actionCreate
		}
		if (r.Action == actionCreate || r.Action == actionUpdate) && !dryRun {
			if reason := a.importWrite(ctx, c, kind, it, cur.Etag, listed); reason != "" {
				r.Action, r.Reason = actionSkip, reason
			}
		}
		switch r.Action {
		case actionSkip:
			sum.Skipped++
		case actionUnchanged:
			sum.Unchanged++
		default:
			sum.Imported++
		}
		sum.Results = append(sum.Results, r)
	}
	for _, v := range values {
		clear(v.Value.Data)
	}
	if err := a.printImport(sum); err != nil {
		return err
	}
	if sum.Skipped > 0 {
		return exitError{1}
	}
	return nil
}

// prepareItems renames aliases to catalog keys, checks keys and values,
// and keeps one item per key: the one already named after the key, else the
// first.
func prepareItems(items []importItem) []importItem {
	winner := map[string]int{}
	for i := range items {
		it := &items[i]
		if it.Skip != "" {
			continue
		}
		it.Key, _ = catalog.CanonicalKey(it.Source)
		if !catalog.ValidKey(it.Key) {
			it.Skip = "not a valid key: " + catalog.KeyRule
			continue
		}
		if err := catalog.CheckValue(it.Key, it.Value); err != nil {
			it.Skip = "value " + err.Error()
			continue
		}
		j, taken := winner[it.Key]
		if !taken {
			winner[it.Key] = i
			continue
		}
		if it.Source == it.Key { // the canonical name beats an alias
			items[j].Skip = fmt.Sprintf("%s is taken from %s", it.Key, it.Source)
			winner[it.Key] = i
		} else {
			it.Skip = fmt.Sprintf("%s is taken from %s", it.Key, items[j].Source)
		}
	}
	return items
}

// importWrite stores one item, planned against the listing at revision
// listed where the secret had etag ("" for none); it returns why it failed,
// or "".
//
// Its request id is derived from what the write is (kind, key, the source
// row's digest, description, category) and the state it was planned
// against (the etag), so that every run of the same import planned against
// the same state sends the same id and the service writes once. The value
// is left out: request ids are kept in the audit log, where a hash of a
// low-entropy value (an email, a URL) would let an auditor confirm
// guesses. Two cases need more than that:
//
//   - A create's planned state, "no secret", recurs. After an import, a
//     delete and the same import again, the first create's id replays its
//     answer and writes nothing. Such an answer gives itself away: its
//     revision is at or below the listing's, which did not show the
//     secret, so it was deleted since. The write is sent again with an id
//     derived from that revision (the same in every run that saw this
//     deletion), as often as the chain of such deletions goes (bounded,
//     then as below).
//   - An id used before for another request (another value, imported and
//     deleted) is refused as reused. For a create of a secret still absent,
//     the write is sent again with an id derived from the listing's
//     revision; otherwise the secret changed while importing.
func (a *app) importWrite(ctx context.Context, c *client.Client, kind string, it importItem, etag string, listed int64) string {
	opts := []client.WriteOption{}
	if etag != "" {
		opts = append(opts, client.WithEtag(etag))
	}
	if it.Description != "" {
		opts = append(opts, client.WithDescription(it.Description))
	}
	category := ""
	if _, isCatalog := catalog.Lookup(it.Key); !isCatalog && etag == "" {
		category = catalog.ImportCategory(it.Key, it.Category)
		opts = append(opts, client.WithCategory(category))
	}
	base := importRequestID(kind, it.Key, string(it.Digest), etag, it.Description, category)
	const changed = "changed in the service while importing; run the import again"
	id, listedID := base, false
	for replays := 0; ; {
		s, err := c.PutSecret(ctx, it.Key, it.Value, append(opts, client.WithRequestID(id))...)
		var ce *client.Error
		isClientErr := errors.As(err, &ce)
		reused := isClientErr && ce.Reason == client.ReasonRequestIDReused
		switch {
		case err == nil && (etag != "" || s.Revision > listed):
			return "" // written now, or by a concurrent run of the same plan
		case err == nil && replays < maxImportReplays:
			// A create the listing did not show: deleted since.
			replays++
			id = importRequestID(base, "deleted after", strconv.FormatInt(s.Revision, 10))
			continue
		case err == nil || reused:
			if etag != "" || listedID || !absent(ctx, c, it.Key) {
				return changed
			}
			listedID = true
			id = importRequestID(base, "listed at", strconv.FormatInt(listed, 10))
			continue
		case errors.Is(err, client.ErrConflict):
			return changed
		case isClientErr:
			return ce.Message
		}
		return err.Error()
	}
}

// maxImportReplays bounds how many stale answers (each from a create that
// was deleted again) one write follows before it falls back to an id of
// its own listing.
const maxImportReplays = 8

// importRequestID derives a request id from parts (none holds a value).
func importRequestID(parts ...string) string {
	h := sha256.New()
	for _, part := range parts {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "import-" + hex.EncodeToString(h.Sum(nil))[:32]
}

// absent reports whether key has no value in the service now (not found,
// or an empty catalog slot).
func absent(ctx context.Context, c *client.Client, key string) bool {
	s, err := c.GetSecret(ctx, key)
	return errors.Is(err, client.ErrNotFound) || err == nil && s.Etag == ""
}

func (a *app) printImport(sum importSummary) error {
	if a.output == "json" {
		return writeJSON(a.stdout, sum)
	}
	verb := map[string]string{actionCreate: "created", actionUpdate: "updated", actionUnchanged: "unchanged", actionSkip: "skipped"}
	if sum.DryRun {
		verb[actionCreate], verb[actionUpdate] = "would create", "would update"
	}
	t := newTable(a.stdout, "NAME", "KEY", "ACTION", "REASON")
	for _, r := range sum.Results {
		t.row(r.Name, r.Key, verb[r.Action], r.Reason)
	}
	if err := t.flush(); err != nil {
		return err
	}
	prefix := ""
	if sum.DryRun {
		prefix = "dry run, nothing written: would have "
	}
	_, err := fmt.Fprintf(a.stdout, "%simported %d, unchanged %d, skipped %d\n", prefix, sum.Imported, sum.Unchanged, sum.Skipped)
	return err
}

func (a *app) importCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Import secrets from Orient's own store or a .env file",
		Long: `Import secrets into the service. Names are mapped onto the catalog's keys
(GEMINI_API_KEY → GOOGLE_AI_API_KEY, JIRA_HOST → JIRA_BASE_URL, ...); each value
that differs from the current one is written as a new version; values equal to
the current one are left alone, so running an import twice changes nothing.
The current values are read to compare them (audited as access): the token
needs the writer or admin role. --dry-run reports what would change (names,
never values). The exit status is 1 when an entry was skipped.`,
	}
	cmd.AddCommand(a.importOrientCommand(), a.importDotenvCommand())
	return cmd
}

func (a *app) importDotenvCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "dotenv FILE",
		Short: "Import the assignments of a .env file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := readBounded(args[0], 16<<20)
			if err != nil {
				return err
			}
			entries, err := parseDotenv(src)
			clear(src)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			items := make([]importItem, 0, len(entries))
			for _, e := range entries {
				items = append(items, importItem{Source: e.Name, Value: e.Value})
			}
			return a.runImport(cmd.Context(), "dotenv", items, dryRun)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would change; write nothing")
	return cmd
}

// readBounded reads a whole file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, limit>>20)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}
