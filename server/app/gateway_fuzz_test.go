package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// gatewayMarshaler decodes REST bodies with the options newGateway gives the
// gateway (unknown fields are errors).
var gatewayMarshaler = newGatewayMarshaler()

// requestTypes lists the input message of every RPC of the API, from the
// proto file descriptors (so a new RPC is fuzzed without a change here).
func requestTypes(tb testing.TB) []protoreflect.MessageType {
	tb.Helper()
	_ = pb.File_orient_secrets_v1_secrets_proto // registers the files
	seen := map[protoreflect.FullName]bool{}
	var out []protoreflect.MessageType
	protoregistry.GlobalFiles.RangeFilesByPackage("orient.secrets.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			methods := f.Services().Get(i).Methods()
			for j := range methods.Len() {
				name := methods.Get(j).Input().FullName()
				if seen[name] {
					continue
				}
				seen[name] = true
				mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
				if err != nil {
					tb.Fatalf("%s: %v", name, err)
				}
				out = append(out, mt)
			}
		}
		return true
	})
	if len(out) < 20 {
		tb.Fatalf("found %d request types, want every RPC's", len(out))
	}
	slices.SortFunc(out, func(a, b protoreflect.MessageType) int {
		return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
	})
	return out
}

// decodeREST decodes body into a fresh m as the generated gateway handler
// does and, on failure, returns the HTTP answer our error handler gives.
func decodeREST(mt protoreflect.MessageType, body []byte) (ok bool, code int, answer string) {
	msg := mt.New().Interface()
	err := gatewayMarshaler.NewDecoder(bytes.NewReader(body)).Decode(msg)
	if err == nil || err == io.EOF {
		return true, 0, ""
	}
	// The generated handlers: status.Errorf(codes.InvalidArgument, "%v", err).
	err = status.Errorf(codes.InvalidArgument, "%v", err)
	w := httptest.NewRecorder()
	r := httptest.NewRequest("PUT", "/v1/secrets/FUZZ", nil)
	gatewayErrorHandler(slog.New(slog.DiscardHandler))(context.Background(), runtime.NewServeMux(), gatewayMarshaler, w, r, err)
	return false, w.Code, w.Body.String()
}

var (
	// The only messages a decoding error may become (sanitizeDecodeError).
	templateRes = []*regexp.Regexp{
		regexp.MustCompile(`^malformed request: unknown field "([A-Za-z0-9_]{1,64})"$`),
		regexp.MustCompile(`^malformed request: field ([A-Za-z0-9_]{1,64}): invalid (bool|int32|int64|uint32|uint64|sint32|sint64|fixed32|fixed64|sfixed32|sfixed64|float|double|string|bytes|enum|message|group) value$`),
		regexp.MustCompile(`^malformed request: body is not valid JSON$`),
		regexp.MustCompile(`^malformed request: field ([A-Za-z0-9_.]{1,64}) has the wrong type or value$`),
		regexp.MustCompile(`^malformed request: the body or parameters do not match the request type$`),
		// pathBodyConflict: a body field the path binds, with another value.
		regexp.MustCompile(`^malformed request: field ([A-Za-z0-9_.]{1,64}): the path sets it; leave it out of the body or send the path's value$`),
	}
)

// fieldNames holds every field name (proto and JSON) of the API's messages.
func fieldNames() map[string]bool {
	names := map[string]bool{}
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		fs := mt.Descriptor().Fields()
		for i := range fs.Len() {
			names[string(fs.Get(i).Name())] = true
			names[fs.Get(i).JSONName()] = true
		}
		return true
	})
	return names
}

// FuzzRESTDecode decodes arbitrary bodies into every request type with the
// gateway's options: it must never panic, and a refusal must be a 400 whose
// message is one of the sanitized templates, naming only a declared field
// (or, for an unknown field, a member name the body holds): never a value.
// Each body also goes through the path-bound field check of every route
// with a body and path variables (pathBodyConflict), under the same rules.
func FuzzRESTDecode(f *testing.F) {
	types := requestTypes(f)
	known := fieldNames()
	for _, s := range []string{`{}`, `{"value":"aGk="}`, `{"value":"!!not base64!!"}`, `{"key":"A","value":12}`,
		`{"etagg":"r1"}`, `{"restartRequired":"yes"}`, `{"pageSize":1e99}`, `{"secret":{"key":"A","description":[1]}}`,
		`{"updateMask":"description,x"}`, `{"startRevision":"-1"}`, `{"consumer":{"service":7}}`, `[[[[`, `{"a":`,
		`{"keys":["A",null]}`, `{"value":"aGk=","value":"aGk="}`, `{"time":"not a time"}`, `{"version":{"a":1}}`, "\xff\xfe{}",
		`{"key":"OTHER","value":"aGk="}`, `{"key":"FUZZ","version":"2"}`, `{"use_case":"code","provider":"openai"}`, `{"\u006bey":"B"}`} {
		f.Add([]byte(s))
	}
	var bound []*route // routes whose path binds fields of their body
	for i, rt := range restRoutes {
		if rt.body != "" && len(rt.vars) > 0 {
			bound = append(bound, &restRoutes[i])
		}
	}
	if len(bound) == 0 {
		f.Fatal("no route has both a body and path variables")
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(name string, code int, answer string) {
			t.Helper()
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal([]byte(answer), &st); err != nil || code != http.StatusBadRequest || st.Code != int(codes.InvalidArgument) {
				t.Fatalf("%s: refusal %d %q; want 400 INVALID_ARGUMENT", name, code, answer)
			}
			matched := false
			for i, re := range templateRes {
				m := re.FindStringSubmatch(st.Message)
				if m == nil {
					continue
				}
				matched = true
				switch {
				case i == 0 && !bytes.Contains(body, []byte(`"`+m[1]+`"`)) && !bytes.Contains(body, []byte(m[1])):
					t.Fatalf("%s: %q names a field the body does not hold", name, st.Message)
				case i == 1 && !known[m[1]], (i == 3 || i == 5) && !known[m[1][strings.LastIndex(m[1], ".")+1:]]:
					t.Fatalf("%s: %q names %q, not a declared field", name, st.Message, m[1])
				}
			}
			if !matched {
				t.Fatalf("%s: message %q is not one of the sanitized templates", name, st.Message)
			}
		}
		for _, mt := range types {
			if ok, code, answer := decodeREST(mt, body); !ok {
				check(string(mt.Descriptor().Name()), code, answer)
			}
		}
		for _, rt := range bound {
			params := map[string]string{}
			for _, v := range rt.vars {
				params[v] = "FUZZ"
			}
			st := pathBodyConflict(gatewayMarshaler, rt, body, params)
			if st == nil {
				continue
			}
			w := httptest.NewRecorder()
			writeStatus(w, httptest.NewRequest(rt.method, "/v1/FUZZ", nil), http.StatusBadRequest, st)
			check(rt.method+" "+rt.template, w.Code, w.Body.String())
		}
	})
}

// bytesFields returns JSON bodies that put s in each bytes field of mt
// (nested messages included, a few levels deep).
func bytesFields(md protoreflect.MessageDescriptor, s []byte, depth int) [][]byte {
	var out [][]byte
	fs := md.Fields()
	for i := range fs.Len() {
		fd := fs.Get(i)
		name, _ := json.Marshal(fd.JSONName())
		switch {
		case fd.IsList() || fd.IsMap():
		case fd.Kind() == protoreflect.BytesKind:
			out = append(out, append(append(append([]byte("{"), name...), ':'), append(s, '}')...))
		case fd.Kind() == protoreflect.MessageKind && depth > 0:
			for _, inner := range bytesFields(fd.Message(), s, depth-1) {
				out = append(out, append(append(append([]byte("{"), name...), ':'), append(inner, '}')...))
			}
		}
	}
	return out
}

// FuzzRESTBase64 puts arbitrary strings in every bytes field of every
// request type: when the string is not valid base64 the refusal must be the
// same whatever the string holds, so it can never echo it (an attempt to
// store a value with a typo must not put the value in an error, a log or a
// browser's console).
func FuzzRESTBase64(f *testing.F) {
	types := requestTypes(f)
	for _, s := range []string{"!!", "aGk", "aGk=x", "sk-ant-api03-abcdef", "eG94Yi0xMjM=\n", "-_-_", "a b c", "\u00e9t\u00e9", "====", "\x00"} {
		f.Add(s)
	}
	var fields int
	for _, mt := range types {
		fields += len(bytesFields(mt.Descriptor(), []byte(`""`), 3))
	}
	if fields == 0 {
		f.Fatal("no request type has a bytes field")
	}
	f.Fuzz(func(t *testing.T, s string) {
		quoted, _ := json.Marshal(s)
		reference, _ := json.Marshal("!!")
		for _, mt := range types {
			bodies := bytesFields(mt.Descriptor(), quoted, 3)
			refs := bytesFields(mt.Descriptor(), reference, 3)
			for i, body := range bodies {
				ok, code, answer := decodeREST(mt, body)
				if ok {
					continue // valid base64
				}
				_, refCode, refAnswer := decodeREST(mt, refs[i])
				if code != refCode || answer != refAnswer {
					t.Fatalf("%s with %q: %d %s; want the same refusal as for any invalid base64: %d %s",
						mt.Descriptor().Name(), s, code, answer, refCode, refAnswer)
				}
			}
		}
	})
}
