package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"pgregory.net/rapid"

	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// specFile is the API document at the repository root.
const specFile = "../../api/openapi.yaml"

// The API document is valid OpenAPI 3, by a real validator.
func TestSpecIsValidOpenAPI(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("api/openapi.yaml: %v", err)
	}
}

// field is one member of a generated body: its name and its raw JSON value.
type field struct{ name, value string }

func raw(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// bodyGen generates request bodies for one operation from the document: the
// schema's property names and required list, the values its examples (which
// the server must accept) and enums give, and, as wrong values, what the
// schema's types refuse plus the values of its x-rejected-examples.
type bodyGen struct {
	props    []string
	required []string
	good     map[string][]string // raw JSON values the document accepts
	bad      map[string][]string // raw JSON values it refuses, or the server must (rejected examples)
	extra    []string            // names the schema does not have: case variants, misspellings
}

// newBodyGen reads the operation's JSON request body in the document.
func newBodyGen(t *testing.T, op *openapi3.Operation) *bodyGen {
	t.Helper()
	media := op.RequestBody.Value.Content.Get("application/json")
	schema := media.Schema.Value
	g := &bodyGen{required: schema.Required, good: map[string][]string{}, bad: map[string][]string{}}
	for name := range schema.Properties {
		g.props = append(g.props, name)
	}
	slices.Sort(g.props)
	add := func(m map[string][]string, name, v string) {
		if !slices.Contains(m[name], v) {
			m[name] = append(m[name], v)
		}
	}
	for _, ex := range media.Examples {
		if fmt.Sprint(ex.Value.Extensions["x-expected-status"]) != "202" {
			continue
		}
		for name, v := range ex.Value.Value.(map[string]any) {
			add(g.good, name, raw(v))
		}
	}
	rejected, _ := media.Extensions["x-rejected-examples"].(map[string]any)
	for _, ex := range rejected {
		body, _ := ex.(map[string]any)["value"].(map[string]any)
		for name, v := range body {
			if _, ok := schema.Properties[name]; ok {
				add(g.bad, name, raw(v))
			}
		}
	}
	for _, name := range g.props {
		ps := schema.Properties[name].Value
		for _, v := range ps.Enum {
			add(g.good, name, raw(v))
			add(g.bad, name, raw(strings.ToUpper(fmt.Sprint(v))))
		}
		for _, v := range wrongFor(ps) {
			add(g.bad, name, v)
		}
		if ps.Type.Is(openapi3.TypeBoolean) {
			// A dry run waits for fanout, which this test does not run.
			if name != "dry_run" {
				add(g.good, name, "true")
			}
			add(g.good, name, "false")
		}
		if len(g.good[name]) == 0 {
			t.Fatalf("%s: no example or enum gives a valid value of %q: document one", op.OperationID, name)
		}
		g.extra = append(g.extra, strings.ToUpper(name[:1])+name[1:], strings.ToUpper(name), name[:len(name)-1])
	}
	return g
}

// wrongFor gives values the property's schema refuses: null (no property is
// nullable), and a value of every JSON type the schema does not allow.
func wrongFor(s *openapi3.Schema) []string {
	allows := func(typ string) bool {
		if s.Type.Is(typ) {
			return true
		}
		for _, alt := range s.OneOf {
			if alt.Value.Type.Is(typ) {
				return true
			}
		}
		return false
	}
	out := []string{"null"}
	for typ, v := range map[string]string{
		openapi3.TypeBoolean: "true", openapi3.TypeInteger: "7", openapi3.TypeNumber: "2.5",
		openapi3.TypeString: raw("x"), openapi3.TypeArray: "[1]", openapi3.TypeObject: `{"a":1}`,
	} {
		if !allows(typ) && !(typ == openapi3.TypeNumber && allows(openapi3.TypeInteger)) {
			out = append(out, v)
		}
	}
	if allows(openapi3.TypeInteger) {
		out = append(out, "2.5", "99999999999999999999") // not an int64
	}
	if s.Type.Is(openapi3.TypeArray) {
		out = append(out, "[]", "[null]")
	}
	slices.Sort(out)
	return out
}

// draw gives a valid body (the required fields, some optional ones), then up
// to two mutations: a field's value replaced by a refused one, a field
// dropped, a field the schema does not have, a field given twice. One
// mutation at a time is what finds a rule the server does not enforce.
func (g *bodyGen) draw(t *rapid.T) []byte {
	var fields []field
	for _, name := range g.props {
		if slices.Contains(g.required, name) || rapid.Bool().Draw(t, name+" given") {
			fields = append(fields, field{name, rapid.SampledFrom(g.good[name]).Draw(t, name)})
		}
	}
	for m := rapid.IntRange(0, 2).Draw(t, "mutations"); m > 0 && len(fields) > 0; m-- {
		i := rapid.IntRange(0, len(fields)-1).Draw(t, "field")
		switch rapid.IntRange(0, 4).Draw(t, "mutation") {
		case 0, 1:
			if bad := g.bad[fields[i].name]; len(bad) > 0 {
				fields[i].value = rapid.SampledFrom(bad).Draw(t, "value")
			}
		case 2:
			fields = append(fields[:i:i], fields[i+1:]...)
		case 3:
			fields = append(fields, field{rapid.SampledFrom(g.extra).Draw(t, "extra"), fields[i].value})
		case 4:
			fields = append(fields, fields[i])
		}
	}
	return object(fields)
}

// object writes the fields as one JSON object, in order, repeats included.
func object(fields []field) []byte {
	var b strings.Builder
	b.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(f.name) + ":" + f.value)
	}
	b.WriteByte('}')
	return []byte(b.String())
}

// hasDuplicateKey reports a member given twice: JSON decoders (and so the
// schema validator) keep the last one, the document forbids it.
func hasDuplicateKey(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		k, _ := tok.(string)
		if seen[k] {
			return true
		}
		seen[k] = true
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return false
		}
	}
	return false
}

// paramValues gives values for a parameter from its schema: enum members,
// the bounds of an integer and one step past them, and values of other
// types; ids are drawn from those the run was given, or made up.
func paramValues(p *openapi3.Parameter) (good, bad []string) {
	s := p.Schema.Value
	switch {
	case len(s.Enum) > 0:
		for _, v := range s.Enum {
			good = append(good, fmt.Sprint(v))
		}
		bad = []string{strings.ToUpper(fmt.Sprint(s.Enum[0])), "nope"}
	case s.Type.Is(openapi3.TypeInteger):
		lo, hi := 1.0, 1000.0
		if s.Min != nil {
			lo = *s.Min
		}
		if s.Max != nil {
			hi = *s.Max
		}
		good = []string{fmt.Sprint(lo), fmt.Sprint(hi), fmt.Sprint(int((lo + hi) / 2))}
		bad = []string{fmt.Sprint(lo - 1), fmt.Sprint(hi + 1), "x", "2.5"}
	default:
		good = []string{"k-1", "k-2", "k-3"}
		if s.MaxLength != nil {
			bad = append(bad, strings.Repeat("k", int(*s.MaxLength)+1))
		}
	}
	return good, bad
}

// A property-based run of the live ingress against api/openapi.yaml: every
// operation of the document, with bodies and parameters generated from it
// (right and wrong types, null, unknown and case-variant names, keys given
// twice, values out of enums and bounds, ids known and unknown, idempotency
// keys reused with other bodies), sent to the real service on the real
// broker and Redis. Each answer must be one the document lists for the
// operation, shaped as documented; a request the document refuses must be
// refused.
func TestLiveIngressKeepsTheContract(t *testing.T) {
	env := stacktest.Get(t)
	doc, err := openapi3.NewLoader().LoadFromFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(env.KafkaBrokers)
	// The progress store answers GET and DELETE, and keeps idempotency keys.
	cfg.Progress.RedisNodes = env.RedisAddr
	cfg.Progress.KeyPrefix = stacktest.Name("contract") + ":"
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
	svc := start(t, cfg)
	svc.waitReady(t)

	var ops []routers.Route
	gens := map[*openapi3.Operation]*bodyGen{}
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Find(path)
		for method, op := range item.Operations() {
			ops = append(ops, routers.Route{Spec: doc, Path: path, PathItem: item, Method: method, Operation: op})
			if op.RequestBody != nil {
				gens[op] = newBodyGen(t, op)
			}
		}
	}
	slices.SortFunc(ops, func(a, b routers.Route) int { return strings.Compare(a.Path+a.Method, b.Path+b.Method) })
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	statuses := map[string]map[int]int{}
	var ids []string // announcements the run created: GET and DELETE draw from them
	check := func(rt *rapid.T) {
		op := rapid.SampledFrom(ops).Draw(rt, "operation")
		var body []byte
		if g := gens[op.Operation]; g != nil {
			body = g.draw(rt)
		}
		path, query, header := op.Path, url.Values{}, http.Header{}
		pathParams := map[string]string{}
		for _, ref := range op.Operation.Parameters {
			p := ref.Value
			good, bad := paramValues(p)
			if p.In == openapi3.ParameterInPath && len(ids) > 0 {
				good = append(good, ids...)
			}
			if !p.Required && rapid.Bool().Draw(rt, p.Name+" left out") {
				continue
			}
			v := rapid.SampledFrom(good).Draw(rt, p.Name)
			if len(bad) > 0 && rapid.IntRange(0, 3).Draw(rt, p.Name+" wrong") == 0 {
				v = rapid.SampledFrom(bad).Draw(rt, p.Name+" wrong value")
			}
			switch p.In {
			case openapi3.ParameterInPath:
				path = strings.ReplaceAll(path, "{"+p.Name+"}", url.PathEscape(v))
				pathParams[p.Name] = v
			case openapi3.ParameterInQuery:
				query.Set(p.Name, v)
			case openapi3.ParameterInHeader:
				header.Set(p.Name, v)
			}
		}
		target := svc.api + path
		if len(query) > 0 {
			target += "?" + query.Encode()
		}
		// One for the server, one for the validator: a request's body is read once.
		request := func() *http.Request {
			req, err := http.NewRequest(op.Method, target, bytes.NewReader(body))
			if err != nil {
				rt.Fatal(err)
			}
			req.Header = header.Clone()
			if body != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			return req
		}
		send := request()
		send.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(send)
		if err != nil {
			rt.Fatal(err)
		}
		answer, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			rt.Fatal(err)
		}
		name := op.Method + " " + op.Path
		if statuses[name] == nil {
			statuses[name] = map[int]int{}
		}
		statuses[name][resp.StatusCode]++
		if resp.StatusCode == http.StatusAccepted {
			var a struct{ ID string }
			if json.Unmarshal(answer, &a) == nil && a.ID != "" && !slices.Contains(ids, a.ID) {
				ids = append(ids, a.ID)
			}
		}

		route := op
		in := &openapi3filter.RequestValidationInput{Request: request(), Route: &route, PathParams: pathParams, QueryParams: query,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		refusedBySchema := openapi3filter.ValidateRequest(context.Background(), in) != nil || hasDuplicateKey(body)
		if refusedBySchema && resp.StatusCode < 400 {
			rt.Fatalf("%s %s %s: the document refuses it, the server answered %d %s", op.Method, target, body, resp.StatusCode, answer)
		}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
			Body: io.NopCloser(bytes.NewReader(answer)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			rt.Fatalf("%s %s %s: answer %d %s is not what the document says: %v", op.Method, target, body, resp.StatusCode, answer, err)
		}
	}
	for range 3 { // 3 × rapid's 100 cases
		rapid.Check(t, check)
	}
	t.Logf("answers by operation and status: %v", statuses)
	// The generator must reach both sides of each operation's contract.
	for _, op := range ops {
		got := statuses[op.Method+" "+op.Path]
		ok, refused := 0, 0
		for code, n := range got {
			if code < 300 {
				ok += n
			} else if code >= 400 && code < 500 {
				refused += n
			}
		}
		if ok == 0 || refused == 0 {
			t.Errorf("%s %s: answers %v never reached both a success and a refusal: the generator misses half the contract", op.Method, op.Path, got)
		}
	}
}
