package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// Frame-level watch receivers: the change-stream phase's second client.
//
// grpc-go's client runs a goroutine per stream, and a message reaches it
// through the connection's reader, a channel and a wake-up: at 10,000
// streams on this 2-core machine the load generator's receiving took more
// CPU than the server's sending (1.0–1.1 cores against 0.62–0.68), so the
// phase measured the two sharing the cores. These receivers read as an
// event-loop client (or 10,000 separate clients on other machines) would
// cost the machine: one goroutine per connection reads its HTTP/2 frames
// and decodes every gRPC message whole (one reused message per connection),
// stamping the time as it decodes each. The server side is the same
// WatchChanges over the same connections; only the receiving differs, and
// the phase reports both figures.

// frameConn is one HTTP/2 connection carrying WatchChanges streams.
type frameConn struct {
	c  net.Conn
	fr *http2.Framer
	// wmu guards the writer (stream opening, SETTINGS and PING acks).
	wmu  sync.Mutex
	w    *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	// streams[k] is stream id 2k+1, allocated before the reader starts.
	streams []frameStream
	// received counts DATA bytes, to give the connection's window back.
	received uint32
	// stopping is set before stop closes the connection: the streams'
	// end is then the phase's, not a failure.
	stopping atomic.Bool
}

type frameStream struct {
	log    *watcherLog
	count  *paddedCount
	buf    []byte
	opened bool
	ended  bool
}

// frameWindow is the flow-control window the receivers grant (the most
// HTTP/2 allows is 2^31-1); a connection gives its window back after half.
const frameWindow = 1 << 30

// streamFailure counts watch streams that failed or ended early, and keeps
// the first error.
type streamFailure struct {
	failed   atomic.Int64
	firstErr firstError
}

func (f *streamFailure) fail(err error) {
	f.failed.Add(1)
	f.firstErr.set(err)
}

// openFrameStreams opens n WatchChanges streams (from now) over conns
// connections spread over addrs, and returns once each has received its
// header (or failed: opened receives one value per stream either way).
// stop closes the connections and waits for their readers.
func openFrameStreams(ctx context.Context, addrs []string, conns int, token string, n int, logs []watcherLog,
	base time.Time, delivered []paddedCount, opened chan<- struct{}, failure *streamFailure,
) (stop func(), err error) {
	var (
		fcs []*frameConn
		wg  sync.WaitGroup
	)
	stop = func() {
		for _, fc := range fcs {
			fc.stopping.Store(true)
			fc.c.Close()
		}
		wg.Wait()
	}
	conns = max(1, min(conns, n))
	for i := range conns {
		// Stream s goes on connection s % conns, connections alternating
		// replicas.
		k := n / conns
		if i < n%conns {
			k++
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addrs[i%len(addrs)])
		if err != nil {
			stop()
			return nil, err
		}
		fc := &frameConn{c: c, w: bufio.NewWriterSize(c, 64<<10), streams: make([]frameStream, k)}
		fc.fr = http2.NewFramer(fc.w, bufio.NewReaderSize(c, 64<<10))
		fc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fc.henc = hpack.NewEncoder(&fc.hbuf)
		for j := range fc.streams {
			s := i + j*conns
			fc.streams[j] = frameStream{log: &logs[s], count: &delivered[s%len(delivered)]}
		}
		fcs = append(fcs, fc)
		if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
			stop()
			return nil, err
		}
		fc.wmu.Lock()
		err = errors.Join(fc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: frameWindow}),
			fc.fr.WriteWindowUpdate(0, frameWindow), fc.w.Flush())
		fc.wmu.Unlock()
		if err != nil {
			stop()
			return nil, err
		}
		wg.Go(func() { fc.read(base, opened, failure) })
	}
	// An empty WatchChangesRequest: from now, every key.
	req := []byte{0, 0, 0, 0, 0}
	for i, fc := range fcs {
		authority := addrs[i%len(addrs)]
		fc.wmu.Lock()
		for j := range fc.streams {
			if j > 0 && j%100 == 0 {
				// Let the reader ack the server's SETTINGS and PINGs.
				if err = fc.w.Flush(); err != nil {
					break
				}
				fc.wmu.Unlock()
				fc.wmu.Lock()
			}
			fc.hbuf.Reset()
			for _, f := range [][2]string{
				{":method", "POST"}, {":scheme", "http"}, {":path", pb.SecretService_WatchChanges_FullMethodName},
				{":authority", authority}, {"content-type", "application/grpc"}, {"te", "trailers"},
				{"authorization", "Bearer " + token},
			} {
				if f[0] == "authorization" && token == "" {
					continue
				}
				_ = fc.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			id := uint32(2*j + 1)
			err = errors.Join(fc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: fc.hbuf.Bytes(), EndHeaders: true}),
				fc.fr.WriteData(id, true, req))
			if err != nil {
				break
			}
		}
		if err == nil {
			err = fc.w.Flush()
		}
		fc.wmu.Unlock()
		if err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}

// read is the connection's only reader: it answers the peer's SETTINGS and
// PINGs, gives the connection's window back, and decodes each stream's
// messages as they arrive.
func (fc *frameConn) read(base time.Time, opened chan<- struct{}, failure *streamFailure) {
	m := &pb.WatchChangesResponse{}
	endStream := func(s *frameStream, err error) {
		if s.ended {
			return
		}
		s.ended = true
		failure.fail(err)
		if !s.opened {
			s.opened = true
			opened <- struct{}{}
		}
	}
	var readErr error
	defer func() {
		// The connection is gone. Unless the phase closed it, its streams
		// failed; and those that never opened must not hold up the phase.
		stopping := fc.stopping.Load()
		for k := range fc.streams {
			if s := &fc.streams[k]; !s.opened || !stopping {
				endStream(s, fmt.Errorf("connection ended: %v", readErr))
			}
		}
		fc.c.Close()
	}()
	for {
		f, err := fc.fr.ReadFrame()
		var se http2.StreamError
		if errors.As(err, &se) {
			// One stream's protocol error: that stream ends, the
			// connection goes on.
			if id := se.StreamID; id%2 == 1 && int(id/2) < len(fc.streams) {
				endStream(&fc.streams[id/2], se)
			}
			continue
		}
		if err != nil {
			readErr = err
			return
		}
		var s *frameStream
		if id := f.Header().StreamID; id%2 == 1 && int(id/2) < len(fc.streams) {
			s = &fc.streams[id/2]
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			if fc.received += f.Length; fc.received >= frameWindow/2 {
				fc.wmu.Lock()
				_ = fc.fr.WriteWindowUpdate(0, fc.received)
				_ = fc.w.Flush()
				fc.wmu.Unlock()
				fc.received = 0
			}
			if s == nil || s.ended {
				continue
			}
			now := int64(time.Since(base))
			// Messages whole in this frame are decoded from it; a partial
			// one waits in the stream's buffer for the next.
			data := f.Data()
			if len(s.buf) > 0 {
				s.buf = append(s.buf, data...)
				data = s.buf
			}
			for len(data) >= 5 {
				size := int(binary.BigEndian.Uint32(data[1:5]))
				if len(data) < 5+size {
					break
				}
				if err := proto.Unmarshal(data[5:5+size], m); err != nil {
					endStream(s, fmt.Errorf("decode: %w", err))
					data = nil
					break
				}
				data = data[5+size:]
				switch {
				case m.GetHeader() != nil && !s.opened:
					s.opened = true
					opened <- struct{}{}
				case m.GetEvent() != nil:
					s.log.at = append(s.log.at, now)
					s.log.revs = append(s.log.revs, m.GetEvent().GetRevision())
					s.count.Add(1)
				}
			}
			s.buf = append(s.buf[:0], data...)
		case *http2.MetaHeadersFrame:
			if s != nil && f.StreamEnded() {
				// Trailers (or a trailers-only answer): the stream is over.
				endStream(s, fmt.Errorf("stream ended: HTTP %s, grpc-status %s %s",
					f.PseudoValue("status"), headerValue(f, "grpc-status"), headerValue(f, "grpc-message")))
			}
		case *http2.RSTStreamFrame:
			if s != nil {
				endStream(s, fmt.Errorf("stream reset: %v", f.ErrCode))
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fc.wmu.Lock()
				_ = fc.fr.WriteSettingsAck()
				_ = fc.w.Flush()
				fc.wmu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fc.wmu.Lock()
				_ = fc.fr.WritePing(true, f.Data)
				_ = fc.w.Flush()
				fc.wmu.Unlock()
			}
		case *http2.GoAwayFrame:
			// Streams after the last one the server will process are
			// refused; the others go on until the connection closes.
			for k := range fc.streams {
				if uint32(2*k+1) > f.LastStreamID {
					endStream(&fc.streams[k], fmt.Errorf("refused by GOAWAY (%v)", f.ErrCode))
				}
			}
		}
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}
