package main

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	secrets "github.com/orient-bot/secrets"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// servedDocument is the committed document (what secretsd serves).
func servedDocument(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(secrets.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestBodiesLeavePathFieldsOut: no operation's request body schema holds a
// field that its path binds (the gateway takes it from the path), read from
// the proto's HTTP rules, so a new RPC is checked without a change here;
// the body's required list is the message's less those fields; every path
// parameter is described.
func TestBodiesLeavePathFieldsOut(t *testing.T) {
	doc := servedDocument(t)
	_ = pb.File_orient_secrets_v1_secrets_proto // registers the files
	tmplVar := regexp.MustCompile(`\{([^}=]+)(?:=[^}]*)?\}`)
	checked := map[string]bool{}
	protoregistry.GlobalFiles.RangeFilesByPackage(Package, func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil || rule.GetBody() == "" {
					continue
				}
				op := findOperation(doc, string(svc.Name())+"_"+string(m.Name()))
				if op == nil {
					t.Errorf("%s: no operation", m.FullName())
					continue
				}
				for _, p := range op.Parameters {
					if p.Value.In == "path" && p.Value.Description == "" {
						t.Errorf("%s: path parameter %s has no description", op.OperationID, p.Value.Name)
					}
				}
				bodyMsg, prefix := m.Input(), ""
				if rule.GetBody() != "*" {
					bodyMsg, prefix = m.Input().Fields().ByName(protoreflect.Name(rule.GetBody())).Message(), rule.GetBody()+"."
				}
				body := op.RequestBody.Value.Content.Get("application/json").Schema.Value
				message := doc.Components.Schemas[string(bodyMsg.Name())].Value
				wantRequired := slices.Clone(message.Required)
				for _, v := range tmplVar.FindAllStringSubmatch(ruleTemplate(rule), -1) {
					if !strings.HasPrefix(v[1], prefix) {
						continue
					}
					// Walk the body schema along the field path (JSON names).
					s, d := body, bodyMsg
					parts := strings.Split(strings.TrimPrefix(v[1], prefix), ".")
					for k, part := range parts {
						fd := d.Fields().ByName(protoreflect.Name(part))
						prop := s.Properties[fd.JSONName()]
						if prop == nil {
							break
						}
						if k == len(parts)-1 {
							t.Errorf("%s: the request body holds %s, which the path binds", op.OperationID, v[1])
						} else {
							s, d = prop.Value, fd.Message()
						}
					}
					if len(parts) == 1 {
						wantRequired = slices.DeleteFunc(wantRequired, func(r string) bool { return r == bodyMsg.Fields().ByName(protoreflect.Name(parts[0])).JSONName() })
					}
					checked[op.OperationID] = true
				}
				if !slices.Equal(body.Required, wantRequired) {
					t.Errorf("%s: body requires %v, want %v (the message's less the path's fields)", op.OperationID, body.Required, wantRequired)
				}
			}
		}
		return true
	})
	for _, id := range []string{"SecretService_PutSecret", "SecretService_UpdateSecret", "SecretService_DisableSecretVersion", "ProviderService_UpdateProviderDefault"} {
		if !checked[id] {
			t.Errorf("%s was not checked: its path binds a body field", id)
		}
	}
	// The messages' own schemas keep every field (responses, gRPC JSON).
	if _, ok := doc.Components.Schemas["Secret"].Value.Properties["key"]; !ok {
		t.Errorf("the Secret schema lost its key")
	}
}

// TestRequiredListsConsistent: every schema's required names are among its
// properties.
func TestRequiredListsConsistent(t *testing.T) {
	doc := servedDocument(t)
	for name, s := range doc.Components.Schemas {
		for _, r := range s.Value.Required {
			if _, ok := s.Value.Properties[r]; !ok {
				t.Errorf("schema %s requires %q, which it does not have", name, r)
			}
		}
	}
}
