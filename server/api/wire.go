package api

import (
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	// Registers the "proto" codec that Codec delegates to.
	_ "google.golang.org/grpc/encoding/proto"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/store"
)

// encoded is a message already in wire form. The server's codec hands its
// buffers to gRPC as they are, so one change event is marshalled once per
// replica, not once per watch stream, and sending it to a stream costs no
// allocation of ours (a pointer in an interface; the buffer list is built
// once). gRPC still frames, and compresses if the client asked for it, per
// stream. (grpc.PreparedMsg would also skip the framing, but it is encoded
// with one stream's compressor — gzip is registered in this binary — and
// so cannot be shared by every stream.)
type encoded struct{ data mem.BufferSlice }

func newEncoded(b []byte) *encoded { return &encoded{data: mem.BufferSlice{mem.SliceBuffer(b)}} }

// PreEncoded reports whether m is a change event the service encoded once
// for every stream: the interceptors send it straight to the transport
// (see server/app checkedStream.SendMsg).
func PreEncoded(m any) bool {
	_, ok := m.(*encoded)
	return ok
}

// Codec is the server's gRPC codec: protobuf, except that an already
// encoded message is sent as is.
func Codec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{encoding.GetCodecV2("proto")})
}

type codec struct{ encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*encoded); ok {
		// SliceBuffer's Free is a no-op: the shared bytes are never
		// recycled by one stream while another still sends them, and
		// gRPC only reads the list.
		return e.data, nil
	}
	return c.CodecV2.Marshal(v)
}

// eventWire caches the wire form of recent change events by revision.
type eventWire struct {
	slots [1024]atomic.Pointer[wireSlot]
}

type wireSlot struct {
	rev int64
	msg *encoded
}

// get returns c as an encoded WatchChangesResponse event.
func (w *eventWire) get(c *store.Change) (*encoded, error) {
	slot := &w.slots[uint64(c.Revision)%uint64(len(w.slots))]
	if s := slot.Load(); s != nil && s.rev == c.Revision {
		return s.msg, nil
	}
	b, err := proto.Marshal(&pb.WatchChangesResponse{Result: &pb.WatchChangesResponse_Event{Event: toChangeEvent(c)}})
	if err != nil {
		return nil, err
	}
	msg := newEncoded(b)
	slot.Store(&wireSlot{rev: c.Revision, msg: msg})
	return msg, nil
}
