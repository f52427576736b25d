package reliability

import (
	"bytes"
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// rawCodec sends bytes as they are, as if they were a marshaled message.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = slices.Clone(data)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// apiMethods lists every RPC of the API's services.
func apiMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	var out []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("orient.secrets.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			s := f.Services().Get(i)
			for j := range s.Methods().Len() {
				out = append(out, s.Methods().Get(j))
			}
		}
		return true
	})
	if len(out) < 20 {
		t.Fatalf("found only %d methods in orient.secrets.v1", len(out))
	}
	return out
}

// invoke sends payload raw on method m and returns the call's error.
func invoke(ctx context.Context, conn *grpc.ClientConn, m protoreflect.MethodDescriptor, payload []byte) error {
	name := fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name())
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if !m.IsStreamingServer() {
		var out []byte
		return conn.Invoke(ctx, name, &payload, &out, grpc.ForceCodec(rawCodec{}))
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, name, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	if err := st.SendMsg(&payload); err != nil && err != io.EOF {
		return err
	}
	st.CloseSend()
	for {
		var out []byte
		if err := st.RecvMsg(&out); err != nil {
			return err
		}
	}
}

// invalidPayloads are byte strings no request message can parse from.
func invalidPayloads(m protoreflect.MessageDescriptor) map[string][]byte {
	unknown := protowire.Number(15001)
	group := func(n int, closed bool) []byte {
		var b []byte
		for range n {
			b = protowire.AppendTag(b, unknown, protowire.StartGroupType)
		}
		if closed {
			for range n {
				b = protowire.AppendTag(b, unknown, protowire.EndGroupType)
			}
		}
		return b
	}
	out := map[string][]byte{
		"field number 0":          {0x00, 0x01},
		"wire type 7":             {0x0f},
		"varint overflow":         append([]byte{0x08}, bytes.Repeat([]byte{0xff}, 11)...),
		"length past the end":     {0x0a, 0xff, 0x01, 'a'},
		"nested groups (20,000)":  group(20000, true),
		"unterminated group":      group(3, false),
		"end group without start": protowire.AppendTag(nil, unknown, protowire.EndGroupType),
	}
	for i := range m.Fields().Len() {
		if f := m.Fields().Get(i); f.Kind() == protoreflect.StringKind {
			b := protowire.AppendTag(nil, f.Number(), protowire.BytesType)
			out["invalid UTF-8 in "+string(f.Name())] = protowire.AppendBytes(b, []byte{0xc3, 0x28, 0xff})
			break
		}
	}
	return out
}

// rawGarbage sends malformed protobuf raw on every method: INTERNAL or
// INVALID_ARGUMENT for bytes that cannot parse; random bytes (through a
// reader's token, in case they parse) never get UNKNOWN.
func (e *abuseEnv) rawGarbage(t *testing.T) {
	ctx := context.Background()
	admin := dial(t, e.srv.GRPCAddr(), e.srv.AdminToken)
	res, err := e.srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: fmt.Sprintf("abuse-reader-%d", e.round), Role: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	reader := dial(t, e.srv.GRPCAddr(), res.Token)
	crafted, random := &codeCounter{}, &codeCounter{}
	methods := apiMethods(t)
	var wg sync.WaitGroup
	for _, m := range methods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for what, payload := range invalidPayloads(m.Input()) {
				err := invoke(ctx, admin, m, payload)
				crafted.add(err)
				if c := codeName(err); !strings.HasPrefix(c, "Internal") && !strings.HasPrefix(c, "InvalidArgument") {
					t.Errorf("%s with %s: %v; want INTERNAL or INVALID_ARGUMENT", m.FullName(), what, err)
				}
			}
			for range size(10, 50) {
				junk := make([]byte, mrand.IntN(300))
				for i := range junk {
					junk[i] = byte(mrand.IntN(256))
				}
				err := invoke(ctx, reader, m, junk)
				random.add(err)
				if isCode(err, codes.Unknown) {
					t.Errorf("%s with random bytes %x: %v", m.FullName(), junk, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d methods; crafted malformed messages: %s", len(methods), crafted)
	t.Logf("random bytes: %s", random)
}

// restCall sends a request to the REST gateway with the admin token.
func (e *abuseEnv) restCall(t *testing.T, method, path string, body io.Reader, contentLength int64) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.BaseURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = contentLength
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.srv.AdminToken)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Errorf("%s %.80s: %v", method, path, err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

func (e *abuseEnv) rest(t *testing.T, method, path, body string) (int, []byte) {
	return e.restCall(t, method, path, strings.NewReader(body), int64(len(body)))
}

// restRoutesWithBody are the gateway's routes that take a JSON body.
var restRoutesWithBody = []struct{ method, path string }{
	{"PUT", "/v1/secrets/MALFORMED"},
	{"PATCH", "/v1/secrets/MALFORMED"},
	{"POST", "/v1/secrets:batchAccess"},
	{"POST", "/v1/secrets/MALFORMED/versions/1:disable"},
	{"POST", "/v1/secrets/MALFORMED/versions/1:enable"},
	{"POST", "/v1/secrets/MALFORMED/versions/1:destroy"},
	{"POST", "/v1/consumers:report"},
	{"PUT", "/v1/providers/defaults/chat"},
	{"POST", "/v1/audit:verify"},
	{"POST", "/v1/kek:rotate"},
	{"POST", "/v1/tokens"},
}

// malformedJSON: every route with a body refuses malformed JSON with 400.
func (e *abuseEnv) malformedJSON(t *testing.T) {
	junk := make([]byte, 256)
	for i := range junk {
		junk[i] = byte(mrand.IntN(256))
	}
	bodies := map[string]string{
		"truncated object": `{`, "truncated member": `{"a":`, "array": `[1,2]`, "string": `"text"`,
		"number": `12`, "bad literal": `tru`, "null": `null`, "unknown field": `{"x":1}`,
		"binary garbage": string(junk), "invalid UTF-8": "{\"x\":\"\xff\xfe\"}", "NUL": "{\"\x00\":1}",
		"huge number": `{"x":1e999999}`, "BOM": "\xef\xbb\xbf{}", "control characters": "{\"\x01\x02\":\x03}",
		"unterminated string": `{"value":"aGk`, "duplicate member": `{"x":1,"x":1}`,
	}
	for _, r := range restRoutesWithBody {
		for name, body := range bodies {
			code, resp := e.rest(t, r.method, r.path, body)
			if code != http.StatusBadRequest {
				t.Errorf("%s %s with %s: %d %.300s; want 400", r.method, r.path, name, code, resp)
			}
		}
	}
}

// oversized: a gRPC message over the server's receive limit gets
// RESOURCE_EXHAUSTED; an HTTP body over 256 KiB gets 413, declared or
// chunked, 20 at a time; nothing is written.
func (e *abuseEnv) oversized(t *testing.T) {
	ctx := context.Background()
	var wg sync.WaitGroup
	got := &codeCounter{}
	statuses := &codeCounter{}
	for i := range 20 {
		wg.Add(3)
		go func() {
			defer wg.Done()
			n := []int{300 << 10, 1 << 20, 5 << 20}[i%3]
			_, err := e.srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "OVERSIZED", Value: bytes.Repeat([]byte("o"), n)})
			got.add(err)
		}()
		go func() {
			defer wg.Done()
			body := `{"value":"` + strings.Repeat("A", 1<<20) + `"}`
			code, _ := e.rest(t, "PUT", "/v1/secrets/OVERSIZED", body)
			statuses.addName(fmt.Sprintf("declared %d", code))
		}()
		go func() {
			defer wg.Done()
			body := io.MultiReader(strings.NewReader(`{"value":"`), io.LimitReader(repeatReader('A'), 8<<20))
			code, _ := e.restCall(t, "PUT", "/v1/secrets/OVERSIZED", body, -1)
			statuses.addName(fmt.Sprintf("chunked %d", code))
		}()
	}
	wg.Wait()
	t.Logf("gRPC: %s; REST: %s", got, statuses)
	if n := got.get("ResourceExhausted"); n != 20 {
		t.Errorf("gRPC messages over the limit: %s; want 20 RESOURCE_EXHAUSTED", got)
	}
	if statuses.get("declared 413") != 20 || statuses.get("chunked 413") != 20 {
		t.Errorf("REST bodies over 256 KiB: %s; want 413 for all 40", statuses)
	}
	if _, err := e.srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: "OVERSIZED"}); !isCode(err, codes.NotFound) {
		t.Errorf("an oversized write left something behind: %v", err)
	}
}

type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// longKeys: 10 KB keys in paths, bodies, query strings and gRPC requests are
// refused as bad input, with a short answer that does not echo them; a
// 100 KB path is refused by the HTTP server.
func (e *abuseEnv) longKeys(t *testing.T) {
	long := "K" + strings.Repeat("EY_", 10<<10/3)
	value := `{"value":"aGk="}`
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/secrets/" + long, ""},
		{"PUT", "/v1/secrets/" + long, value},
		{"DELETE", "/v1/secrets/" + long, ""},
		{"GET", "/v1/secrets/" + long + "/versions/latest:access", ""},
		{"GET", "/v1/secrets/" + long + "/versions", ""},
		{"POST", "/v1/secrets/" + long + "/versions/1:disable", "{}"},
		{"POST", "/v1/secrets:batchAccess", `{"keys":["` + long + `"]}`},
		{"GET", "/v1/changes:watch?keys=" + long, ""},
		{"PUT", "/v1/secrets/LONG_DESCRIPTION", `{"value":"aGk=","description":"` + strings.Repeat("d", 10<<10) + `"}`},
	} {
		code, resp := e.rest(t, c.method, c.path, c.body)
		if code != http.StatusBadRequest || len(resp) > 4<<10 || bytes.Contains(resp, []byte(long[:64])) {
			t.Errorf("%s %.60s… (%d bytes): %d, %d-byte answer %.200s; want 400, short, without the key", c.method, c.path, len(c.path), code, len(resp), resp)
		}
	}
	if code, _ := e.rest(t, "GET", "/v1/secrets/"+strings.Repeat("K", 100<<10), ""); code != http.StatusRequestHeaderFieldsTooLarge && code != http.StatusRequestURITooLong {
		t.Errorf("100 KB path: %d; want 431 or 414", code)
	}
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"PutSecret": func() error {
			_, err := e.srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: long, Value: []byte("v")})
			return err
		},
		"GetSecret": func() error { _, err := e.srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: long}); return err },
		"BatchAccessSecrets": func() error {
			_, err := e.srv.Secrets.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: []string{long}})
			return err
		},
	} {
		if err := call(); !isCode(err, codes.InvalidArgument) || strings.Contains(err.Error(), long[:64]) {
			t.Errorf("gRPC %s with a 10 KB key: %.300v; want INVALID_ARGUMENT without the key", name, err)
		}
	}
}

// deepNesting: JSON nested 100,000 deep (or as deep as 256 KiB allows) is
// refused with 400, on several routes.
func (e *abuseEnv) deepNesting(t *testing.T) {
	const depth = 100000
	for _, c := range []struct{ name, method, path, body string }{
		{"arrays", "PUT", "/v1/secrets/DEEP", strings.Repeat("[", depth)},
		{"closed arrays", "PUT", "/v1/secrets/DEEP", strings.Repeat("[", depth) + strings.Repeat("]", depth)},
		{"arrays in value", "PUT", "/v1/secrets/DEEP", `{"value":` + strings.Repeat("[", depth)},
		{"arrays in keys", "POST", "/v1/secrets:batchAccess", `{"keys":` + strings.Repeat("[", depth)},
		{"objects", "PATCH", "/v1/secrets/DEEP", strings.Repeat(`{"a":`, 50000)},
		{"objects in scope", "POST", "/v1/tokens", `{"name":"n","role":"reader","scope":` + strings.Repeat(`{"keyPatterns":`, 15000)},
	} {
		code, resp := e.rest(t, c.method, c.path, c.body)
		if code != http.StatusBadRequest {
			t.Errorf("%s nested %s (%d bytes): %d %.300s; want 400", c.method, c.name, len(c.body), code, resp)
		}
	}
}
