package reliability

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// writeOp is one write with its request id; send may be called again to
// retry it (same request id, same body), through any connection.
type writeOp struct {
	action, key, requestID string
	send                   func(ctx context.Context, sc pb.SecretServiceClient) (ack, error)
}

// liveKey is a key a writer created and has not deleted.
type liveKey struct {
	key     string
	version int64 // newest version
	enabled bool  // whether the newest version is enabled
}

// writeLoad runs writers that mix puts (new keys and new versions), disables
// and deletes, each with a request id, on keys of their own. A writer stops
// at its first error: that write's outcome is unknown (pending).
type writeLoad struct {
	sc        pb.SecretServiceClient
	prefix    string
	valueSize int
	timeout   time.Duration

	wg      sync.WaitGroup
	mu      sync.Mutex
	acks    []ack
	pending []writeOp
	failed  codeCounter
	nAcks   atomic.Int64
}

// startWriteLoad starts n writers; they run until ctx ends or they fail.
func startWriteLoad(ctx context.Context, sc pb.SecretServiceClient, prefix string, n, valueSize int) *writeLoad {
	l := &writeLoad{sc: sc, prefix: prefix, valueSize: valueSize, timeout: 30 * time.Second}
	for w := range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(ctx, w)
		}()
	}
	return l
}

// wait waits for every writer and returns the acknowledged and the pending
// writes.
func (l *writeLoad) wait() ([]ack, []writeOp) {
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acks, l.pending
}

func (l *writeLoad) run(ctx context.Context, w int) {
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
	var live []*liveKey
	for n := 0; ctx.Err() == nil; n++ {
		id := fmt.Sprintf("%s-w%d-%d", l.prefix, w, n)
		var op writeOp
		var target *liveKey
		switch p := rng.IntN(100); {
		case p < 20 && len(live) > 0:
			i := rng.IntN(len(live))
			target = live[i]
			live = append(live[:i], live[i+1:]...)
			op = deleteOp(target.key, id)
		case p < 45 && len(live) > 0 && live[len(live)-1].enabled:
			target = live[len(live)-1]
			op = disableOp(target.key, target.version, id)
		case p < 70 && len(live) > 0:
			target = live[rng.IntN(len(live))]
			op = putOp(target.key, randomValue(l.valueSize), id)
		default:
			target = &liveKey{key: fmt.Sprintf("%s_W%d_K%d", keyPrefix(l.prefix), w, n)}
			live = append(live, target)
			op = putOp(target.key, randomValue(l.valueSize), id)
		}
		cctx, cancel := context.WithTimeout(ctx, l.timeout)
		a, err := op.send(cctx, l.sc)
		cancel()
		if err != nil {
			l.mu.Lock()
			l.pending = append(l.pending, op)
			l.mu.Unlock()
			l.failed.add(err)
			return
		}
		switch op.action {
		case "PutSecret":
			target.version, target.enabled = a.Version, true
		case "DisableSecretVersion":
			target.enabled = false
		}
		l.mu.Lock()
		l.acks = append(l.acks, a)
		l.mu.Unlock()
		l.nAcks.Add(1)
	}
}

// keyPrefix turns a request id prefix into a valid key prefix.
func keyPrefix(p string) string {
	out := []byte("L")
	for _, c := range []byte(p) {
		switch {
		case c >= 'a' && c <= 'z':
			out = append(out, c-'a'+'A')
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			out = append(out, c)
		default:
			out = append(out, '_')
		}
	}
	return string(out)
}

func putOp(key string, value []byte, id string) writeOp {
	req := &pb.PutSecretRequest{Key: key, Value: value, RequestId: id}
	return writeOp{action: "PutSecret", key: key, requestID: id, send: func(ctx context.Context, sc pb.SecretServiceClient) (ack, error) {
		res, err := sc.PutSecret(ctx, req)
		if err != nil {
			return ack{}, err
		}
		return ack{RequestID: id, Action: "PutSecret", Key: key, Version: res.GetSecret().GetCurrentVersion(), Revision: res.GetRevision()}, nil
	}}
}

func disableOp(key string, version int64, id string) writeOp {
	req := &pb.DisableSecretVersionRequest{Key: key, Version: strconv.FormatInt(version, 10), RequestId: id}
	return writeOp{action: "DisableSecretVersion", key: key, requestID: id, send: func(ctx context.Context, sc pb.SecretServiceClient) (ack, error) {
		res, err := sc.DisableSecretVersion(ctx, req)
		if err != nil {
			return ack{}, err
		}
		return ack{RequestID: id, Action: "DisableSecretVersion", Key: key, Version: version, Revision: res.GetRevision()}, nil
	}}
}

func deleteOp(key, id string) writeOp {
	req := &pb.DeleteSecretRequest{Key: key, RequestId: id}
	return writeOp{action: "DeleteSecret", key: key, requestID: id, send: func(ctx context.Context, sc pb.SecretServiceClient) (ack, error) {
		res, err := sc.DeleteSecret(ctx, req)
		if err != nil {
			return ack{}, err
		}
		return ack{RequestID: id, Action: "DeleteSecret", Key: key, Revision: res.GetRevision()}, nil
	}}
}

// randomValue returns n bytes of random lowercase hex text (n >= 2).
func randomValue(n int) []byte {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return []byte(hex.EncodeToString(b)[:n])
}
