package auth

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// Every method of the API declares a policy that resolves.
func TestEveryMethodDeclaresPolicy(t *testing.T) {
	ps, err := Policies()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range ps {
		if !p.Public {
			n++
		}
	}
	if n < 24 {
		t.Fatalf("%d policies, want every method of the API", n)
	}
}

// A method of the package without the option, or with one that does not
// resolve, fails loading (and so is refused at run time).
func TestPolicyRequiredAndChecked(t *testing.T) {
	for name, opt := range map[string]*pb.MethodPolicy{
		"missing":     nil,
		"no scope":    {Roles: []string{"admin"}},
		"bad role":    {Roles: []string{"root"}, Scope: pb.MethodPolicy_SCOPE_RULE_NONE},
		"bad field":   {Roles: []string{"admin"}, Scope: pb.MethodPolicy_SCOPE_RULE_TARGETS, KeyFields: []string{"nope"}},
		"no key args": {Roles: []string{"admin"}, Scope: pb.MethodPolicy_SCOPE_RULE_TARGETS},
	} {
		files := fakeFile(t, opt)
		_, err := load(files)
		if err == nil || !strings.Contains(err.Error(), "/orient.secrets.v1.Fake/Do") {
			t.Errorf("%s: load = %v, want an error naming the method", name, err)
		}
	}
	if _, err := load(fakeFile(t, &pb.MethodPolicy{Roles: []string{"reader"}, Scope: pb.MethodPolicy_SCOPE_RULE_TARGETS, KeyFields: []string{"key"}})); err != nil {
		t.Errorf("a valid policy: %v", err)
	}
}

// fakeFile is a registry holding a service of our package with one method
// carrying opt.
func fakeFile(t *testing.T, opt *pb.MethodPolicy) *protoregistry.Files {
	t.Helper()
	mopts := &descriptorpb.MethodOptions{}
	if opt != nil {
		proto.SetExtension(mopts, pb.E_Policy, opt)
	}
	fd := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("fake.proto"),
		Package: proto.String(Package),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name:  proto.String("FakeRequest"),
			Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("key"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), JsonName: proto.String("key")}},
		}},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name:   proto.String("Fake"),
			Method: []*descriptorpb.MethodDescriptorProto{{Name: proto.String("Do"), InputType: proto.String(".orient.secrets.v1.FakeRequest"), OutputType: proto.String(".orient.secrets.v1.FakeRequest"), Options: mopts}},
		}},
	}
	f, err := protodesc.NewFile(fd, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	files := &protoregistry.Files{}
	if err := files.RegisterFile(f); err != nil {
		t.Fatal(err)
	}
	return files
}

// Scope rules: patterns and categories each narrow.
func TestScopeAllows(t *testing.T) {
	s := Scope{KeyPatterns: []string{"SLACK_*"}, Categories: []string{"slack"}}
	for _, c := range []struct {
		key, cat string
		want     bool
	}{
		{"SLACK_BOT_TOKEN", "slack", true},
		{"SLACK_BOT_TOKEN", "ai", false},
		{"OPENAI_API_KEY", "slack", false},
		{"SLACK_BOT_TOKEN", "", false},
	} {
		if got := s.Allows(c.key, c.cat); got != c.want {
			t.Errorf("Allows(%s, %q) = %v", c.key, c.cat, got)
		}
	}
	if (Scope{KeyPatterns: []string{"SLACK_*"}}).Governs("slack") {
		t.Error("a pattern scope governs a category")
	}
}
