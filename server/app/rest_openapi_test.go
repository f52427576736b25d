package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// servedDocument is the OpenAPI document as a server serves it at
// /openapi.json, loaded once per test binary: every REST answer of the
// REST tests is checked against it (restClient.send).
var servedDocument struct {
	once   sync.Once
	doc    *openapi3.T
	routes []docRoute
	err    error
}

type docRoute struct {
	re     *regexp.Regexp
	path   string
	names  []string
	method string
}

var docVar = regexp.MustCompile(`\{([^}]+)\}`)

func init() {
	// The watch is newline-delimited JSON: each line is checked on its
	// own (see checkAgainstDocument); the decoder reads one line.
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		var v any
		err := json.NewDecoder(r).Decode(&v)
		return v, err
	})
}

func loadServedDocument(t *testing.T, base string) {
	servedDocument.once.Do(func() {
		resp, err := http.Get(base + "/openapi.json")
		if err != nil {
			servedDocument.err = err
			return
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			servedDocument.err = err
			return
		}
		doc, err := openapi3.NewLoader().LoadFromData(raw)
		if err != nil {
			servedDocument.err = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			servedDocument.err = err
			return
		}
		servedDocument.doc = doc
		for path, item := range doc.Paths.Map() {
			// QuoteMeta escapes the braces of {name}: match them escaped.
			expr := "^" + regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(regexp.QuoteMeta(path), `([^/]+?)`) + "$"
			var names []string
			for _, m := range docVar.FindAllStringSubmatch(path, -1) {
				names = append(names, m[1])
			}
			for method := range item.Operations() {
				servedDocument.routes = append(servedDocument.routes, docRoute{re: regexp.MustCompile(expr), path: path, names: names, method: method})
			}
		}
	})
	if servedDocument.err != nil {
		t.Fatalf("served /openapi.json: %v", servedDocument.err)
	}
}

// checkAgainstDocument fails the test when an answer to a REST call does
// not match the served document: status, content type and body schema
// (an unset message field sent as null, say). Answers without a body (304)
// and routes outside the API are not checked.
func checkAgainstDocument(t *testing.T, req *http.Request, status int, header http.Header, body []byte) {
	t.Helper()
	if servedDocument.doc == nil || !strings.HasPrefix(req.URL.Path, "/v1/") || status == http.StatusNotModified {
		return
	}
	doc := servedDocument.doc
	for _, r := range servedDocument.routes {
		if r.method != req.Method {
			continue
		}
		m := r.re.FindStringSubmatch(req.URL.Path)
		if m == nil {
			continue
		}
		params := map[string]string{}
		for i, n := range r.names {
			params[n] = m[i+1]
		}
		item := doc.Paths.Value(r.path)
		route := &routers.Route{Spec: doc, Path: r.path, PathItem: item, Method: r.method, Operation: item.GetOperation(r.method)}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}}
		bodies := [][]byte{body}
		if strings.HasPrefix(header.Get("Content-Type"), "application/x-ndjson") {
			bodies = bytes.Split(bytes.TrimSpace(body), []byte("\n"))
		}
		for _, b := range bodies {
			out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header, Options: in.Options}
			out.SetBodyBytes(b)
			if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
				t.Errorf("%s %s: answer %d does not match the served OpenAPI document: %v\nbody: %.400s", req.Method, req.URL.Path, status, err, b)
			}
		}
		return
	}
	if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
		t.Errorf("%s %s: answered %d but the served OpenAPI document has no such operation", req.Method, req.URL.Path, status)
	}
}
