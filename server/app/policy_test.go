package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/auth"
)

// ourMethods enumerates every method of the API package from the
// registered descriptors, so a new RPC is in every test below at once.
func ourMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	var out []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage(auth.Package, func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			for j := range f.Services().Get(i).Methods().Len() {
				out = append(out, f.Services().Get(i).Methods().Get(j))
			}
		}
		return true
	})
	if len(out) < 24 {
		t.Fatalf("enumerated only %d methods", len(out))
	}
	return out
}

func fullName(m protoreflect.MethodDescriptor) string {
	return fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name())
}

// matrixCase is one caller of the authorization matrix.
type matrixCase struct {
	name   string
	role   string // "" for no credentials or a bogus token
	scoped bool
	grpc   *grpc.ClientConn
	token  string
}

// The matrix's keys: one in the scoped callers' scope, one stored outside
// it, and one that does not exist (a non-catalog key, so for a category
// scope it must answer exactly like the one outside).
const (
	keyInScope  = "SLACK_BOT_TOKEN"
	keyOutside  = "OPENAI_API_KEY"
	keyMissing  = "MATRIX_MISSING_KEY"
	matrixScope = "slack"
)

// wantCode is what the declared policy says a call must answer: nil means
// allowed (any answer but a refusal or an internal error).
func policyWant(pol auth.Policy, c matrixCase, key string) *codes.Code {
	code := func(c codes.Code) *codes.Code { return &c }
	switch {
	case c.role == "":
		return code(codes.Unauthenticated)
	case !pol.Allows(auth.Role(c.role)):
		return code(codes.PermissionDenied)
	case !c.scoped:
		return nil
	case pol.Scope == pb.MethodPolicy_SCOPE_RULE_UNSCOPED_ONLY:
		return code(codes.PermissionDenied)
	case len(pol.Keys(requestForKey(pol, key))) > 0 && key != keyInScope:
		return code(codes.PermissionDenied)
	}
	return nil
}

// requestForKey is only used to ask the policy whether the method has key
// fields at all.
func requestForKey(pol auth.Policy, key string) proto.Message {
	d, _ := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(pol.Method, "/"), "/", ".")))
	m := d.(protoreflect.MethodDescriptor)
	return requestFor(nil, m, key)
}

// TestAuthorizationMatrix calls every RPC (enumerated from the
// descriptors) as every role, unscoped and scoped to one category, on a
// key in scope, one stored outside it and one missing, over gRPC and over
// REST, and checks each answer against the method's declared policy. For
// a scoped caller, the stored key outside its scope and the missing key
// must answer the same (no existence oracle).
func TestAuthorizationMatrix(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: fastWatch})
	put(t, srv.Secrets, keyInScope, "xoxb-1")
	put(t, srv.Secrets, keyOutside, "sk-1")
	cases := []matrixCase{
		{name: "none", grpc: srv.Dial(t, "")},
		{name: "bogus", grpc: srv.Dial(t, "osk_not-a-real-token-at-all-000000000000000"), token: "osk_not-a-real-token-at-all-000000000000000"},
	}
	for _, role := range auth.Roles {
		unscoped := createToken(t, srv, "matrix-"+string(role), string(role))
		scoped := createCategoryToken(t, srv, "matrix-scoped-"+string(role), string(role), matrixScope)
		cases = append(cases,
			matrixCase{name: string(role), role: string(role), grpc: srv.Dial(t, unscoped), token: unscoped},
			matrixCase{name: string(role) + "/scoped", role: string(role), scoped: true, grpc: srv.Dial(t, scoped), token: scoped})
	}
	for _, m := range ourMethods(t) {
		pol, ok := auth.PolicyFor(fullName(m))
		if !ok || pol.Public {
			t.Errorf("%s declares no policy", fullName(m))
			continue
		}
		for _, c := range cases {
			got := map[string]codes.Code{}
			for _, key := range []string{keyInScope, keyOutside, keyMissing} {
				want := policyWant(pol, c, key)
				for _, via := range []string{"grpc", "rest"} {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					req := requestFor(t, m, key)
					if r, ok := req.(*pb.ReportConsumerStateRequest); ok {
						r.Consumer.Instance = c.name // a consumer is its first reporter's
					}
					var code codes.Code
					if via == "grpc" {
						code = call(ctx, c.grpc, m, req)
					} else {
						code = callREST(t, ctx, srv, c.token, m, req)
					}
					cancel()
					got[via+key] = code
					switch {
					case want == nil && (code == codes.PermissionDenied || code == codes.Unauthenticated || code == codes.Internal):
						t.Errorf("%s as %s on %s over %s: %v, want it allowed", pol.Action, c.name, key, via, code)
					case want != nil && code != *want:
						t.Errorf("%s as %s on %s over %s: %v, want %v", pol.Action, c.name, key, via, code, *want)
					}
				}
			}
			if c.scoped {
				for _, via := range []string{"grpc", "rest"} {
					if got[via+keyOutside] != got[via+keyMissing] {
						t.Errorf("%s as %s over %s: a key outside the scope answers %v, a missing key %v: an existence oracle",
							pol.Action, c.name, via, got[via+keyOutside], got[via+keyMissing])
					}
				}
			}
		}
	}
}

// createCategoryToken makes a token scoped to categories.
func createCategoryToken(t *testing.T, srv *testserver.Server, name, role string, categories ...string) string {
	t.Helper()
	res, err := srv.Tokens.CreateToken(context.Background(), &pb.CreateTokenRequest{Name: name, Role: role,
		Scope: &pb.TokenScope{Categories: categories}})
	if err != nil {
		t.Fatalf("CreateToken(%s): %v", name, err)
	}
	return res.Token
}

// callREST makes the call through the REST gateway, on the route the
// method's google.api.http annotation declares, and returns the gRPC code
// its HTTP status stands for.
func callREST(t *testing.T, ctx context.Context, srv *testserver.Server, token string, m protoreflect.MethodDescriptor, req proto.Message) codes.Code {
	t.Helper()
	rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
	var method, pattern string
	switch p := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		method, pattern = "GET", p.Get
	case *annotations.HttpRule_Put:
		method, pattern = "PUT", p.Put
	case *annotations.HttpRule_Post:
		method, pattern = "POST", p.Post
	case *annotations.HttpRule_Patch:
		method, pattern = "PATCH", p.Patch
	case *annotations.HttpRule_Delete:
		method, pattern = "DELETE", p.Delete
	default:
		t.Fatalf("%s has no REST route", fullName(m))
	}
	b, err := protojson.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	_ = json.Unmarshal(b, &fields)
	used := map[string]bool{}
	path := pattern
	for strings.Contains(path, "{") {
		i, j := strings.Index(path, "{"), strings.Index(path, "}")
		name := path[i+1 : j]
		v := lookupJSON(fields, name)
		used[strings.Split(name, ".")[0]] = true
		path = path[:i] + url.PathEscape(fmt.Sprint(v)) + path[j+1:]
	}
	var body io.Reader
	query := url.Values{}
	switch rule.GetBody() {
	case "*":
		body = strings.NewReader(string(b))
	case "":
		for k, v := range fields {
			if used[k] {
				continue
			}
			switch v := v.(type) {
			case []any:
				for _, x := range v {
					query.Add(k, fmt.Sprint(x))
				}
			case map[string]any:
			default:
				query.Set(k, fmt.Sprint(v))
			}
		}
	default:
		sub, _ := json.Marshal(fields[snakeToCamel(rule.GetBody())])
		body = strings.NewReader(string(sub))
	}
	u := srv.BaseURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	hr, _ := http.NewRequestWithContext(ctx, method, u, body)
	if token != "" {
		hr.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	switch res.StatusCode {
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 500:
		return codes.Internal
	case 200:
		return codes.OK
	}
	return codes.Unknown // another refusal-free answer (400, 404, 409, …)
}

func lookupJSON(m map[string]any, path string) any {
	var v any = m
	for _, part := range strings.Split(path, ".") {
		mm, _ := v.(map[string]any)
		v = mm[snakeToCamel(part)]
	}
	if v == nil {
		return ""
	}
	return v
}

func snakeToCamel(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}
