package app

import (
	"regexp"
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// route is one REST route of the API, from a google.api.http rule.
type route struct {
	method   string
	template string // as in the proto, e.g. /v1/secrets/{key}
	re       *regexp.Regexp
	body     string // the rule's body: "*", a field, or "" (none)
	// vars are the request fields the path binds, as the template names
	// them (field paths: "key", "secret.key"), in the template's order.
	vars   []string
	stream bool // a server stream (the watch)
	// input is the request message: the only source of field names an
	// error may quote back.
	input protoreflect.MessageDescriptor
	// bound are the field paths of input the path variables and the body
	// field set, which no query parameter may set again.
	bound [][]string
}

// routeTable is the REST API's routes, read from the proto's HTTP rules (the
// gateway's own source), for the Allow header of a 405 and the route label
// of the HTTP metrics.
type routeTable []route

// restRoutes holds every route of the services in package orient.secrets.v1.
var restRoutes = loadRoutes()

var routeVar = regexp.MustCompile(`\{[^}]+\}`)

func loadRoutes() routeTable {
	_ = pb.File_orient_secrets_v1_secrets_proto // registers the files
	var out routeTable
	protoregistry.GlobalFiles.RangeFilesByPackage("orient.secrets.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			methods := f.Services().Get(i).Methods()
			for j := range methods.Len() {
				input, stream := methods.Get(j).Input(), methods.Get(j).IsStreamingServer()
				rule, ok := proto.GetExtension(methods.Get(j).Options(), annotations.E_Http).(*annotations.HttpRule)
				if !ok || rule == nil {
					continue
				}
				for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					rt := newRoute(r)
					rt.input, rt.stream = input, stream
					out = append(out, rt)
				}
			}
		}
		return true
	})
	return out
}

func newRoute(r *annotations.HttpRule) route {
	var method, tmpl string
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		method, tmpl = "GET", p.Get
	case *annotations.HttpRule_Put:
		method, tmpl = "PUT", p.Put
	case *annotations.HttpRule_Post:
		method, tmpl = "POST", p.Post
	case *annotations.HttpRule_Delete:
		method, tmpl = "DELETE", p.Delete
	case *annotations.HttpRule_Patch:
		method, tmpl = "PATCH", p.Patch
	case *annotations.HttpRule_Custom:
		method, tmpl = p.Custom.GetKind(), p.Custom.GetPath()
	}
	// A variable is one path segment (no rule of ours uses ** or =).
	var b strings.Builder
	b.WriteString("^")
	last := 0
	for _, loc := range routeVar.FindAllStringIndex(tmpl, -1) {
		b.WriteString(regexp.QuoteMeta(tmpl[last:loc[0]]))
		b.WriteString(`[^/]+?`)
		last = loc[1]
	}
	b.WriteString(regexp.QuoteMeta(tmpl[last:]))
	b.WriteString("$")
	var vars []string
	var bound [][]string
	for _, v := range routeVar.FindAllString(tmpl, -1) {
		name, _, _ := strings.Cut(strings.Trim(v, "{}"), "=")
		vars = append(vars, name)
		bound = append(bound, strings.Split(name, "."))
	}
	if body := r.GetBody(); body != "" && body != "*" {
		bound = append(bound, strings.Split(body, "."))
	}
	return route{method: method, template: routeVar.ReplaceAllStringFunc(tmpl, shortVar), re: regexp.MustCompile(b.String()), body: r.GetBody(), vars: vars, bound: bound}
}

// shortVar names a variable by its last field: {secret.key} -> {key}, so
// one resource has one route label.
func shortVar(v string) string {
	name := strings.Trim(v, "{}")
	return "{" + name[strings.LastIndex(name, ".")+1:] + "}"
}

// allowed lists the methods that have a route for path, sorted.
func (t routeTable) allowed(path string) []string {
	var out []string
	for _, r := range t {
		if r.re.MatchString(path) && !slices.Contains(out, r.method) {
			out = append(out, r.method)
		}
	}
	slices.Sort(out)
	return out
}

// match returns the template of the route serving method and path, or "".
func (t routeTable) match(method, path string) string {
	if r := t.find(method, path); r != nil {
		return r.template
	}
	return ""
}

// find returns the route serving method and path, or nil.
func (t routeTable) find(method, path string) *route {
	for i, r := range t {
		if r.method == method && r.re.MatchString(path) {
			return &t[i]
		}
	}
	return nil
}

// hasField reports whether name is the proto or JSON name of a field of
// d or of a message nested in it (at any depth).
func hasField(d protoreflect.MessageDescriptor, name string) bool {
	seen := map[protoreflect.FullName]bool{}
	var walk func(d protoreflect.MessageDescriptor) bool
	walk = func(d protoreflect.MessageDescriptor) bool {
		if d == nil || seen[d.FullName()] {
			return false
		}
		seen[d.FullName()] = true
		fields := d.Fields()
		if fields.ByTextName(name) != nil || fields.ByJSONName(name) != nil {
			return true
		}
		for i := range fields.Len() {
			if walk(fields.Get(i).Message()) {
				return true
			}
		}
		return false
	}
	return walk(d)
}
