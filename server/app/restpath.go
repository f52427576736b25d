package app

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// pathBoundMsg is the refusal of a body that repeats a field the path binds
// with another value; %s is the field's JSON path in the body (a declared
// name, never the caller's text).
const pathBoundMsg = "malformed request: field %s: the path sets it; leave it out of the body or send the path's value"

// pathBoundBodies is the gateway middleware that refuses a request body
// naming a field its route's path binds (PUT /v1/secrets/{key} with
// {"key": …}) with a value other than the path's: grpc-gateway sets path
// fields after decoding the body, so the body's value would be dropped
// without a word and the call would act on the path's resource. The same
// value is accepted (a client may send back what it read). It runs inside
// the mux, which hands it the path parameters as the generated handlers
// will read them; the rule itself is pathBodyConflict.
func pathBoundBodies(codec func(*http.Request) runtime.Marshaler) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, pathParams map[string]string) {
			rt := restRoutes.find(r.Method, r.URL.Path)
			if rt == nil || rt.body == "" || len(rt.vars) == 0 || r.Body == nil {
				next(w, r, pathParams)
				return
			}
			b, ok := r.Body.(*requestBody)
			if !ok { // limitBody wraps every body; keep its limit regardless
				b = &requestBody{ReadCloser: http.MaxBytesReader(w, r.Body, MaxBodyBytes)}
				r.Body = b
			}
			// A body that fails to arrive is answered by the handler, as
			// before (413, 408, …): it reads the same bytes and error.
			if data, err := b.buffer(); err == nil {
				if st := pathBodyConflict(codec(r), rt, data, pathParams); st != nil {
					writeStatus(w, r, http.StatusBadRequest, st)
					return
				}
			}
			next(w, r, pathParams)
		}
	}
}

// pathBodyConflict returns the refusal of body when it sets a field that
// rt's path binds (pathParams, by the template's field paths) to a value
// other than the path's, or nil. A body or path value the gateway cannot
// decode is left to the gateway, which refuses it itself; a field absent
// from the body (or at its zero value, which JSON cannot tell from absent
// for most fields) is no conflict.
func pathBodyConflict(codec runtime.Marshaler, rt *route, body []byte, pathParams map[string]string) *status.Status {
	target, prefix := rt.input, ""
	if rt.body != "*" {
		fd := rt.input.Fields().ByName(protoreflect.Name(rt.body))
		if fd == nil || fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return nil
		}
		target, prefix = fd.Message(), rt.body+"."
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(target.FullName())
	if err != nil {
		mt = dynamicpb.NewMessageType(target)
	}
	fromBody := mt.New()
	if err := codec.NewDecoder(bytes.NewReader(body)).Decode(fromBody.Interface()); err != nil {
		return nil
	}
	for _, v := range rt.vars {
		val, ok := pathParams[v]
		if !ok || !strings.HasPrefix(v, prefix) {
			continue // not in the body (body "secret", path {name})
		}
		rel := strings.TrimPrefix(v, prefix)
		got, name, set := fieldAt(fromBody, rel)
		if !set {
			continue
		}
		fromPath := mt.New()
		if runtime.PopulateFieldFromPath(fromPath.Interface(), rel, val) != nil {
			continue
		}
		if want, _, _ := fieldAt(fromPath, rel); !got.Equal(want) {
			return malformed(name, fmt.Sprintf(pathBoundMsg, name))
		}
	}
	return nil
}

// fieldAt returns the value at a field path of m (proto names, dotted
// through singular messages), the path in JSON names, and whether m sets
// it. An unset field yields its default value.
func fieldAt(m protoreflect.Message, path string) (protoreflect.Value, string, bool) {
	parts := strings.Split(path, ".")
	names := make([]string, 0, len(parts))
	set := true
	var v protoreflect.Value
	for i, p := range parts {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(p))
		if fd == nil || (i < len(parts)-1 && (fd.Message() == nil || fd.IsList() || fd.IsMap())) {
			return protoreflect.Value{}, "", false
		}
		names = append(names, fd.JSONName())
		set = set && m.Has(fd)
		v = m.Get(fd)
		if i < len(parts)-1 {
			m = v.Message()
		}
	}
	return v, strings.Join(names, "."), set
}

// buffer reads the rest of the body now (through b, so a failure is
// classified as it happens) and keeps it for the reads that follow: they
// see the same bytes, then the same end or error.
func (b *requestBody) buffer() ([]byte, error) {
	data, err := io.ReadAll(b)
	b.ReadCloser = &replayBody{data: bytes.NewReader(data), err: err, Closer: b.ReadCloser}
	return data, err
}

// replayBody gives back a body read already.
type replayBody struct {
	data *bytes.Reader
	err  error
	io.Closer
}

func (p *replayBody) Read(q []byte) (int, error) {
	if n, _ := p.data.Read(q); n > 0 || len(q) == 0 {
		return n, nil
	}
	if p.err != nil {
		return 0, p.err
	}
	return 0, io.EOF
}
