package api

import (
	"testing"
	"time"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/store"
)

// TestEventWire: a change event is marshalled once per revision, decodes
// to the event every stream would have built, and goes through the codec
// byte for byte; other messages are ordinary protobuf.
func TestEventWire(t *testing.T) {
	var w eventWire
	c := &store.Change{Revision: 7, Time: time.Unix(1700000000, 0), Kind: store.ChangeValueAdded, Key: "SLACK_BOT_TOKEN",
		Version: 3, Category: "slack", RestartRequired: true}
	msg, err := w.get(c)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := w.get(c); again != msg {
		t.Error("the same revision was marshalled twice")
	}
	if !PreEncoded(msg) || PreEncoded(&pb.WatchChangesResponse{}) {
		t.Error("PreEncoded does not tell encoded events from messages")
	}
	a := msg.data.Materialize()
	var got pb.WatchChangesResponse
	if err := proto.Unmarshal(a, &got); err != nil {
		t.Fatal(err)
	}
	want := &pb.WatchChangesResponse{Result: &pb.WatchChangesResponse_Event{Event: toChangeEvent(c)}}
	if !proto.Equal(&got, want) {
		t.Errorf("decoded %v, want %v", &got, want)
	}
	// A later revision in the same slot replaces it.
	next := *c
	next.Revision += int64(len(w.slots))
	n, _ := w.get(&next)
	if proto.Unmarshal(n.data.Materialize(), &got) != nil || got.GetEvent().GetRevision() != next.Revision {
		t.Errorf("slot reuse: %v", &got)
	}

	inner := codec{protoCodec(t)}
	out, err := inner.Marshal(msg)
	if err != nil || string(out.Materialize()) != string(a) {
		t.Errorf("encoded bytes through the codec: %v", err)
	}
	out, err = inner.Marshal(want)
	if err != nil || string(out.Materialize()) != string(a) {
		t.Errorf("a proto message through the codec: %v", err)
	}
}

func protoCodec(t *testing.T) encoding.CodecV2 {
	t.Helper()
	c := encoding.GetCodecV2("proto")
	if c == nil {
		t.Fatal("no proto codec registered")
	}
	return c
}
