package auth

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// Package is the protobuf package whose methods must declare a policy.
const Package = "orient.secrets.v1"

// publicServices need no credentials: health and reflection (their protos
// are not ours, so they cannot carry the option).
var publicServices = []protoreflect.FullName{
	"grpc.health.v1.Health",
	"grpc.reflection.v1.ServerReflection",
	"grpc.reflection.v1alpha.ServerReflection",
}

// Policy is one RPC's declared policy (the proto option
// orient.secrets.v1.policy), resolved against the request's descriptor.
type Policy struct {
	// Method is the full gRPC method name, Action its short name (the audit
	// log's action).
	Method, Action string
	// Public methods need no credentials.
	Public bool
	Roles  []Role
	Scope  pb.MethodPolicy_ScopeRule
	// Creates: a missing target key is judged by the category it would be
	// created in.
	Creates bool
	// Audited: refusals and failures are recorded in the audit log.
	Audited bool
	// Idempotency is protobuf's idempotency_level of the method.
	Idempotency descriptorpb.MethodOptions_IdempotencyLevel

	keyFields     []fieldPath
	categoryField fieldPath
}

// fieldPath is a resolved dotted path of a request message.
type fieldPath []protoreflect.FieldDescriptor

// Allows reports whether role may call the method.
func (p Policy) Allows(role Role) bool { return slices.Contains(p.Roles, role) }

// SafeToRepeat reports whether a call may be retried as it is.
func (p Policy) SafeToRepeat() bool {
	return p.Idempotency == descriptorpb.MethodOptions_NO_SIDE_EFFECTS || p.Idempotency == descriptorpb.MethodOptions_IDEMPOTENT
}

// Keys returns the target keys a request names, in field order.
func (p Policy) Keys(req proto.Message) []string {
	if req == nil {
		return nil
	}
	var out []string
	for _, f := range p.keyFields {
		v, ok := get(req.ProtoReflect(), f)
		if !ok {
			continue
		}
		if f[len(f)-1].IsList() {
			l := v.List()
			for i := range l.Len() {
				out = append(out, l.Get(i).String())
			}
		} else if s := v.String(); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// AssignedCategory returns the category a request sets, if it sets one: an
// optional field that is present, or a field of a resource that the
// request's update_mask names (or "*").
func (p Policy) AssignedCategory(req proto.Message) (string, bool) {
	if req == nil || p.categoryField == nil {
		return "", false
	}
	m := req.ProtoReflect()
	v, ok := get(m, p.categoryField)
	if !ok {
		return "", false
	}
	last := p.categoryField[len(p.categoryField)-1]
	if mf := m.Descriptor().Fields().ByName("update_mask"); mf != nil && len(p.categoryField) > 1 {
		mask, _ := m.Get(mf).Message().Interface().(*fieldmaskpb.FieldMask)
		if !slices.ContainsFunc(mask.GetPaths(), func(s string) bool { return s == "*" || s == string(last.Name()) }) {
			return "", false
		}
	}
	return v.String(), true
}

// get follows a field path; ok is false when a message on the way, or an
// optional last field, is not set.
func get(m protoreflect.Message, path fieldPath) (protoreflect.Value, bool) {
	for i, f := range path {
		if i == len(path)-1 {
			if f.HasPresence() && !m.Has(f) {
				return protoreflect.Value{}, false
			}
			return m.Get(f), true
		}
		if !m.Has(f) {
			return protoreflect.Value{}, false
		}
		m = m.Get(f).Message()
	}
	return protoreflect.Value{}, false
}

var (
	loadOnce sync.Once
	policies map[string]Policy
	loadErr  error
)

// PolicyFor returns the policy of a full method name ("/pkg.Service/Method").
// A method without a declared policy is not found: callers refuse it.
func PolicyFor(method string) (Policy, bool) {
	ps, err := Policies()
	if err != nil {
		return Policy{}, false
	}
	p, ok := ps[method]
	return p, ok
}

// Policies reads every method's policy from the registered descriptors,
// once. It fails if a method of Package lacks the option or declares one that
// does not resolve (an unknown role, a field the request does not have).
func Policies() (map[string]Policy, error) {
	loadOnce.Do(func() { policies, loadErr = load(protoregistry.GlobalFiles) })
	return policies, loadErr
}

func load(files *protoregistry.Files) (map[string]Policy, error) {
	out := map[string]Policy{}
	var errs []string
	files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			public := slices.Contains(publicServices, sd.FullName())
			if !public && fd.Package() != Package {
				continue
			}
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				p, err := resolve(md, public)
				if err != nil {
					errs = append(errs, err.Error())
					continue
				}
				out[p.Method] = p
			}
		}
		return true
	})
	if len(errs) > 0 {
		slices.Sort(errs)
		return out, fmt.Errorf("method policies: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

func resolve(md protoreflect.MethodDescriptor, public bool) (Policy, error) {
	opts, _ := md.Options().(*descriptorpb.MethodOptions)
	p := Policy{
		Method:      "/" + string(md.Parent().FullName()) + "/" + string(md.Name()),
		Action:      string(md.Name()),
		Public:      public,
		Idempotency: opts.GetIdempotencyLevel(),
	}
	if public {
		return p, nil
	}
	decl, _ := proto.GetExtension(opts, pb.E_Policy).(*pb.MethodPolicy)
	if decl == nil || decl.GetScope() == pb.MethodPolicy_SCOPE_RULE_UNSPECIFIED || len(decl.GetRoles()) == 0 {
		return p, fmt.Errorf("%s: no policy option (roles and scope are required)", p.Method)
	}
	for _, r := range decl.GetRoles() {
		role, err := ParseRole(r)
		if err != nil || string(role) != r {
			return p, fmt.Errorf("%s: role %q: must be one of admin, writer, reader, auditor", p.Method, r)
		}
		p.Roles = append(p.Roles, role)
	}
	p.Scope, p.Creates, p.Audited = decl.GetScope(), decl.GetCreates(), decl.GetAudited()
	in := md.Input()
	for _, k := range decl.GetKeyFields() {
		f, err := resolvePath(in, k)
		if err != nil {
			return p, fmt.Errorf("%s: key_fields: %w", p.Method, err)
		}
		p.keyFields = append(p.keyFields, f)
	}
	if c := decl.GetCategoryField(); c != "" {
		f, err := resolvePath(in, c)
		if err != nil {
			return p, fmt.Errorf("%s: category_field: %w", p.Method, err)
		}
		if f[len(f)-1].IsList() {
			return p, fmt.Errorf("%s: category_field %s is repeated", p.Method, c)
		}
		p.categoryField = f
	}
	if (p.Scope == pb.MethodPolicy_SCOPE_RULE_TARGETS) != (len(p.keyFields) > 0) && p.Scope != pb.MethodPolicy_SCOPE_RULE_FILTERED {
		return p, fmt.Errorf("%s: scope TARGETS needs key_fields, and only TARGETS or FILTERED may have them", p.Method)
	}
	return p, nil
}

// resolvePath resolves "a.b.c" to string fields through singular messages.
func resolvePath(md protoreflect.MessageDescriptor, path string) (fieldPath, error) {
	var out fieldPath
	parts := strings.Split(path, ".")
	for i, name := range parts {
		f := md.Fields().ByName(protoreflect.Name(name))
		if f == nil {
			return nil, fmt.Errorf("%s has no field %q", md.FullName(), name)
		}
		out = append(out, f)
		if i < len(parts)-1 {
			if f.Kind() != protoreflect.MessageKind || f.IsList() || f.IsMap() {
				return nil, fmt.Errorf("%s.%s is not a singular message", md.FullName(), name)
			}
			md = f.Message()
			continue
		}
		if f.Kind() != protoreflect.StringKind || f.IsMap() {
			return nil, fmt.Errorf("%s.%s is not a string field", md.FullName(), name)
		}
	}
	return out, nil
}

type policyKey struct{}

// WithPolicy attaches the policy of the call being served to ctx.
func WithPolicy(ctx context.Context, p Policy) context.Context {
	return context.WithValue(ctx, policyKey{}, p)
}

// PolicyFromContext returns the policy of the call being served.
func PolicyFromContext(ctx context.Context) Policy {
	p, _ := ctx.Value(policyKey{}).(Policy)
	return p
}
