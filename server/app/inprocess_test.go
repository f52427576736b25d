package app

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// probeHealth is a unary service whose handler reports what it saw.
type probeHealth struct {
	healthpb.UnimplementedHealthServer
	err  error
	seen func(ctx context.Context)
}

func (p *probeHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p.seen(ctx)
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-set-by", "handler"))
	if p.err != nil {
		return nil, p.err
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// TestInProcessCall: the gateway's in-process unary call is what the gRPC
// server would have run: the caller's metadata arrives as incoming metadata
// (and none stays outgoing, so a handler's own calls never carry the
// caller's token), the interceptor chain runs in order with the method's
// name, a handler's header reaches the caller's Header option, and errors
// come back as the server would send them (a context error as its code, a
// plain error as UNKNOWN, a status as it is).
func TestInProcessCall(t *testing.T) {
	svc := newServices(grpc.NewServer())
	probe := &probeHealth{}
	healthpb.RegisterHealthServer(svc, probe)
	var order []string
	icept := func(name string) grpc.UnaryServerInterceptor {
		return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			order = append(order, name+" "+info.FullMethod)
			return handler(ctx, req)
		}
	}
	conn := newInProcessConn(nil, svc, chainUnary(icept("outer"), icept("inner")), nil, 0)
	client := healthpb.NewHealthClient(conn)

	var in, out metadata.MD
	var method string
	var p *peer.Peer
	probe.seen = func(ctx context.Context) {
		in, _ = metadata.FromIncomingContext(ctx)
		out, _ = metadata.FromOutgoingContext(ctx)
		method, _ = grpc.Method(ctx)
		p, _ = peer.FromContext(ctx)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer t0k", "x-forwarded-for", "192.0.2.7")
	var header metadata.MD
	res, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"}, grpc.Header(&header))
	if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", res, err)
	}
	const full = "/grpc.health.v1.Health/Check"
	if got := in.Get("authorization"); len(got) != 1 || got[0] != "Bearer t0k" || len(in.Get("x-forwarded-for")) != 1 {
		t.Errorf("incoming metadata %v", in)
	}
	if len(out) != 0 {
		t.Errorf("the caller's metadata stayed outgoing in the handler: %v", out)
	}
	if method != full || p == nil || p.Addr == nil {
		t.Errorf("method %q peer %v", method, p)
	}
	if len(order) != 2 || order[0] != "outer "+full || order[1] != "inner "+full {
		t.Errorf("interceptors ran %v", order)
	}
	if got := header.Get("x-set-by"); len(got) != 1 || got[0] != "handler" {
		t.Errorf("header %v", header)
	}

	// Invalid UTF-8 (a path or query parameter's raw bytes) never reaches
	// the chain or the handler: a gRPC client would not have encoded it.
	order = nil
	called := false
	probe.seen = func(context.Context) { called = true }
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "bad\xff"}); status.Code(err) != codes.InvalidArgument || called || len(order) != 0 {
		t.Errorf("invalid UTF-8: %v (handler called %v, interceptors %v), want INVALID_ARGUMENT before both", err, called, order)
	}

	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{errors.New("plain"), codes.Unknown},
		{status.Error(codes.NotFound, "no such key"), codes.NotFound},
	} {
		probe.err = c.err
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if st, ok := status.FromError(err); !ok || st.Code() != c.want {
			t.Errorf("handler error %v: got %v, want %v", c.err, err, c.want)
		}
	}
}

func TestInvalidUTF8(t *testing.T) {
	for _, c := range []struct {
		msg  proto.Message
		want string
	}{
		{&pb.BatchAccessSecretsRequest{Keys: []string{"OK", "B\xffD"}}, "keys"},
		{&pb.BatchAccessSecretsRequest{Keys: []string{"OK", "ÄÖ"}}, ""},
		{&pb.PutSecretRequest{Key: "K", Value: []byte{0xff}}, ""}, // bytes are not text
		{&pb.PutSecretRequest{Key: "K", Description: proto.String("\xc3")}, "description"},
	} {
		if got := invalidUTF8(c.msg.ProtoReflect()); got != c.want {
			t.Errorf("%v: %q, want %q", c.msg, got, c.want)
		}
	}
}
