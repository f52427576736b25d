// Command openapigen finishes the OpenAPI 3 document that gnostic's
// protoc-gen-openapi writes from the proto (make generate runs it; its
// output, gen/openapi/openapi.json, is what secretsd serves). Everything it
// adds is derived from the proto's descriptors, never written by hand:
//
//   - a bearer security scheme, required by every operation (the REST API
//     has no public route; /healthz and friends are outside it);
//   - one path per resource: routes that differ only in a path variable's
//     name (PATCH /v1/secrets/{secret.key} beside /v1/secrets/{key}) are
//     merged under the first name, which is what every REST client and
//     linter expects of one URL;
//   - server-streaming RPCs answered as newline-delimited JSON, one
//     {"result": …} or {"error": …} object a line, as grpc-gateway streams
//     them;
//   - a summary per operation (the first sentence of the RPC's comment) and
//     a tag per service with the service's comment;
//   - request bodies without the fields the path binds: an operation whose
//     body holds a field its path template also names (PUT
//     /v1/secrets/{key} with body "*") gets its own body schema,
//     <Service><Method>Body as protoc-gen-openapiv2 names it, without them
//     (the gateway takes them from the path), so generated clients do not
//     make callers repeat the path in the body.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Package is the proto package whose services the document describes.
const Package = "orient.secrets.v1"

// SecurityScheme is the name of the bearer scheme in components.
const SecurityScheme = "bearerAuth"

func main() {
	in := flag.String("in", ".build/openapi/openapi.yaml", "gnostic's output")
	descs := flag.String("descriptors", "gen/descriptors.binpb", "file descriptor set of the proto, with source info")
	out := flag.String("out", "gen/openapi/openapi.json", "the finished document")
	flag.Parse()
	if err := run(*in, *descs, *out); err != nil {
		log.Fatalf("openapigen: %v", err)
	}
}

func run(in, descs, out string) error {
	doc, err := openapi3.NewLoader().LoadFromFile(in)
	if err != nil {
		return fmt.Errorf("load %s: %w", in, err)
	}
	services, err := loadServices(descs)
	if err != nil {
		return err
	}
	if err := finish(doc, services); err != nil {
		return err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return fmt.Errorf("the finished document does not validate: %w", err)
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, append(b, '\n'), 0o644)
}

func loadServices(path string) ([]protoreflect.ServiceDescriptor, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []protoreflect.ServiceDescriptor
	files.RangeFilesByPackage(Package, func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			out = append(out, f.Services().Get(i))
		}
		return true
	})
	slices.SortFunc(out, func(a, b protoreflect.ServiceDescriptor) int {
		return strings.Compare(string(a.Name()), string(b.Name()))
	})
	return out, nil
}

func finish(doc *openapi3.T, services []protoreflect.ServiceDescriptor) error {
	if doc.Components == nil {
		doc.Components = &openapi3.Components{}
	}
	doc.Components.SecuritySchemes = openapi3.SecuritySchemes{
		SecurityScheme: &openapi3.SecuritySchemeRef{Value: &openapi3.SecurityScheme{
			Type: "http", Scheme: "bearer",
			Description: "A token made by `secretctl tokens create` (or the bootstrap admin token): `Authorization: Bearer osk_…`.",
		}},
	}
	doc.Security = openapi3.SecurityRequirements{{SecurityScheme: []string{}}}
	doc.Servers = openapi3.Servers{{URL: "/", Description: "the secretsd serving this document"}}
	doc.Tags = nil
	for _, svc := range services {
		doc.Tags = append(doc.Tags, &openapi3.Tag{Name: string(svc.Name()), Description: comment(svc)})
	}
	mergePaths(doc)
	for _, svc := range services {
		for i := range svc.Methods().Len() {
			m := svc.Methods().Get(i)
			op := findOperation(doc, string(svc.Name())+"_"+string(m.Name()))
			if op == nil {
				if proto.HasExtension(m.Options(), annotations.E_Http) {
					return fmt.Errorf("%s has an HTTP rule but no operation in the document", m.FullName())
				}
				continue
			}
			op.Summary = firstSentence(comment(m))
			refused(doc, op)
			if err := pathFreeBody(doc, op, svc, m); err != nil {
				return err
			}
			if m.IsStreamingServer() {
				if err := streamAsNDJSON(doc, op, m); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func comment(d protoreflect.Descriptor) string {
	loc := d.ParentFile().SourceLocations().ByDescriptor(d)
	return strings.TrimSpace(strings.Join(strings.Fields(loc.LeadingComments), " "))
}

var sentenceEnd = regexp.MustCompile(`[.:;](\s|$)`)

func firstSentence(s string) string {
	if loc := sentenceEnd.FindStringIndex(s); loc != nil {
		s = s[:loc[0]]
	}
	const max = 100
	if len(s) > max {
		s = s[:strings.LastIndex(s[:max], " ")] + "…"
	}
	return s
}

func findOperation(doc *openapi3.T, id string) *openapi3.Operation {
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			if op.OperationID == id {
				return op
			}
		}
	}
	return nil
}

var pathVar = regexp.MustCompile(`\{([^}]+)\}`)

// mergePaths folds paths that differ only in their variables' names into the
// first of them (in sorted order), renaming the operations' path
// parameters.
func mergePaths(doc *openapi3.T) {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range doc.Paths.Map() {
			if !yield(k) {
				return
			}
		}
	})
	canonical := map[string]string{} // shape -> first path with it
	for _, p := range keys {
		shape := pathVar.ReplaceAllString(p, "{}")
		first, seen := canonical[shape]
		if !seen {
			canonical[shape] = p
			continue
		}
		names := pathVar.FindAllStringSubmatch(first, -1)
		olds := pathVar.FindAllStringSubmatch(p, -1)
		rename := map[string]string{}
		for i := range olds {
			rename[olds[i][1]] = names[i][1]
		}
		dst := doc.Paths.Value(first)
		for method, op := range doc.Paths.Value(p).Operations() {
			for _, param := range op.Parameters {
				if param.Value != nil && param.Value.In == "path" {
					if n, ok := rename[param.Value.Name]; ok {
						param.Value.Name = n
					}
				}
			}
			dst.SetOperation(method, op)
		}
		doc.Paths.Delete(p)
	}
}

// refused declares the 4XX answers every operation can give (bad input,
// no or bad token, not allowed, not found, …): a google.rpc.Status whose
// ErrorInfo reason says which.
func refused(doc *openapi3.T, op *openapi3.Operation) {
	status, ok := doc.Components.Schemas["Status"]
	if !ok || op.Responses.Value("4XX") != nil {
		return
	}
	desc := "The request was refused: a google.rpc.Status whose ErrorInfo (domain secrets.orient.dev) holds the reason (an ErrorReason without its ERROR_REASON_ prefix)."
	op.Responses.Set("4XX", &openapi3.ResponseRef{Value: &openapi3.Response{
		Description: &desc,
		Content:     openapi3.NewContentWithJSONSchemaRef(openapi3.NewSchemaRef("#/components/schemas/Status", status.Value)),
	}})
}

// streamAsNDJSON describes a server-streaming RPC's 200 answer as
// grpc-gateway sends it: newline-delimited JSON, each line {"result": msg}
// or, if the stream fails, a final {"error": status}.
func streamAsNDJSON(doc *openapi3.T, op *openapi3.Operation, m protoreflect.MethodDescriptor) error {
	ok := op.Responses.Status(200)
	if ok == nil || ok.Value == nil {
		return fmt.Errorf("%s: no 200 response to describe as a stream", m.FullName())
	}
	name := string(m.Output().Name())
	result, found := doc.Components.Schemas[name]
	if !found {
		return fmt.Errorf("%s: no schema %s", m.FullName(), name)
	}
	status, found := doc.Components.Schemas["Status"]
	if !found {
		return fmt.Errorf("no schema Status")
	}
	line := &openapi3.Schema{
		Type:        &openapi3.Types{"object"},
		Description: "One line of the stream: a message, or the error that ended the stream.",
		Properties: openapi3.Schemas{
			"result": openapi3.NewSchemaRef("#/components/schemas/"+name, result.Value),
			"error":  openapi3.NewSchemaRef("#/components/schemas/Status", status.Value),
		},
	}
	lineName := name + "StreamLine"
	doc.Components.Schemas[lineName] = openapi3.NewSchemaRef("", line)
	lineRef := openapi3.NewSchemaRef("#/components/schemas/"+lineName, line)
	desc := "A stream of newline-delimited JSON objects (one " + name + " per line, as {\"result\": …}), kept open until the call ends."
	ok.Value.Description = &desc
	ok.Value.Content = openapi3.Content{
		"application/x-ndjson": &openapi3.MediaType{Schema: lineRef},
	}
	return nil
}

// templateVar is a variable of a google.api.http path template: {field.path}
// or {field.path=pattern}.
var templateVar = regexp.MustCompile(`\{([^}=]+)(?:=[^}]*)?\}`)

// httpRule returns m's google.api.http rule, or nil.
func httpRule(m protoreflect.MethodDescriptor) *annotations.HttpRule {
	rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
	return rule
}

// ruleTemplate returns a rule's path template.
func ruleTemplate(r *annotations.HttpRule) string {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return p.Get
	case *annotations.HttpRule_Put:
		return p.Put
	case *annotations.HttpRule_Post:
		return p.Post
	case *annotations.HttpRule_Delete:
		return p.Delete
	case *annotations.HttpRule_Patch:
		return p.Patch
	case *annotations.HttpRule_Custom:
		return p.Custom.GetPath()
	}
	return ""
}

// pathFreeBody gives op, whose request body holds fields its path binds, a
// body schema without them: <Service><Method>Body (protoc-gen-openapiv2's
// name), a copy of the body message's schema less those properties, its
// required list recomputed. The message's own schema is left for the
// responses and other uses. A path parameter without a description takes
// the removed field's.
func pathFreeBody(doc *openapi3.T, op *openapi3.Operation, svc protoreflect.ServiceDescriptor, m protoreflect.MethodDescriptor) error {
	rule := httpRule(m)
	if rule == nil || rule.GetBody() == "" {
		return nil
	}
	for _, extra := range rule.GetAdditionalBindings() {
		// gnostic gives every binding the same operation id: there is no
		// telling their operations apart here.
		if extra.GetBody() != "" && templateVar.MatchString(ruleTemplate(extra)) {
			return fmt.Errorf("%s: an additional binding with a body and path variables is not supported", m.FullName())
		}
	}
	bodyMsg, prefix := m.Input(), ""
	if b := rule.GetBody(); b != "*" {
		fd := m.Input().Fields().ByName(protoreflect.Name(b))
		if fd == nil {
			return fmt.Errorf("%s: body %q is no field of %s", m.FullName(), b, m.Input().FullName())
		}
		if fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return nil // a scalar body holds no path field
		}
		bodyMsg, prefix = fd.Message(), b+"."
	}
	var bound [][]string            // JSON names, relative to the body
	jsonPath := map[string]string{} // path variable -> its dotted JSON path in the body
	var vars []string
	for _, v := range templateVar.FindAllStringSubmatch(ruleTemplate(rule), -1) {
		vars = append(vars, v[1])
		if !strings.HasPrefix(v[1], prefix) {
			continue // outside the body (body "secret", path {name})
		}
		var names []string
		d := bodyMsg
		for _, part := range strings.Split(strings.TrimPrefix(v[1], prefix), ".") {
			if d == nil {
				return fmt.Errorf("%s: path variable %s goes through a non-message field", m.FullName(), v[1])
			}
			fd := d.Fields().ByName(protoreflect.Name(part))
			if fd == nil {
				return fmt.Errorf("%s: path variable %s is no field of %s", m.FullName(), v[1], d.FullName())
			}
			names = append(names, fd.JSONName())
			d = fd.Message()
		}
		bound = append(bound, names)
		jsonPath[v[1]] = strings.Join(names, ".")
	}
	if len(bound) == 0 {
		return nil
	}
	var media *openapi3.MediaType
	if op.RequestBody != nil && op.RequestBody.Value != nil {
		media = op.RequestBody.Value.Content.Get("application/json")
	}
	if media == nil || media.Schema == nil || media.Schema.Value == nil {
		return fmt.Errorf("%s: body %q but no JSON request body in the document", m.FullName(), rule.GetBody())
	}
	body, removed, err := withoutFields(media.Schema.Value, bound)
	if err != nil {
		return fmt.Errorf("%s: %w", m.FullName(), err)
	}
	var shown []string
	for _, v := range vars {
		if p, ok := jsonPath[v]; ok {
			shown = append(shown, p)
		}
	}
	note := "The path sets " + shown[0] + ": a body that repeats it must hold the path's value."
	if len(shown) > 1 {
		note = "The path sets " + strings.Join(shown[:len(shown)-1], ", ") + " and " + shown[len(shown)-1] +
			": a body that repeats them must hold the path's values."
	}
	body.Description = strings.TrimSpace(body.Description + " " + note)
	name := string(svc.Name()) + string(m.Name()) + "Body"
	if _, taken := doc.Components.Schemas[name]; taken {
		return fmt.Errorf("%s: schema %s exists already", m.FullName(), name)
	}
	doc.Components.Schemas[name] = openapi3.NewSchemaRef("", body)
	media.Schema = openapi3.NewSchemaRef("#/components/schemas/"+name, body)

	// The path parameters are listed in the template's order.
	var params []*openapi3.Parameter
	for _, p := range op.Parameters {
		if p.Value != nil && p.Value.In == "path" {
			params = append(params, p.Value)
		}
	}
	if len(params) == len(vars) {
		for i, v := range vars {
			if f := removed[jsonPath[v]]; f != nil && f.Value != nil && params[i].Description == "" {
				params[i].Description = f.Value.Description
			}
		}
	}
	return nil
}

// withoutFields copies s less the properties at paths (JSON names; a
// nested one copies the schemas on its way), with required lists
// recomputed. It returns the removed properties' schemas by dotted path.
func withoutFields(s *openapi3.Schema, paths [][]string) (*openapi3.Schema, map[string]*openapi3.SchemaRef, error) {
	out := *s
	out.Properties = make(openapi3.Schemas, len(s.Properties))
	for k, v := range s.Properties {
		out.Properties[k] = v
	}
	removed := map[string]*openapi3.SchemaRef{}
	nested := map[string][][]string{}
	for _, p := range paths {
		prop, ok := out.Properties[p[0]]
		if !ok {
			return nil, nil, fmt.Errorf("the body schema has no property %q", p[0])
		}
		if len(p) == 1 {
			removed[p[0]] = prop
			delete(out.Properties, p[0])
			continue
		}
		nested[p[0]] = append(nested[p[0]], p[1:])
	}
	for name, rest := range nested {
		prop := out.Properties[name]
		if prop == nil || prop.Value == nil {
			continue // removed whole above
		}
		inner, gone, err := withoutFields(prop.Value, rest)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		out.Properties[name] = openapi3.NewSchemaRef("", inner)
		for k, v := range gone {
			removed[name+"."+k] = v
		}
	}
	out.Required = nil
	for _, r := range s.Required {
		if _, ok := out.Properties[r]; ok {
			out.Required = append(out.Required, r)
		}
	}
	return &out, removed, nil
}
