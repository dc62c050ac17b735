package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// specPath is the API document at the repository root.
var specPath = filepath.Join("..", "..", "..", "..", "api", "openapi.yaml")

type spec struct {
	Paths      map[string]map[string]operation `yaml:"paths"`
	Components struct {
		Schemas   map[string]schema      `yaml:"schemas"`
		Responses map[string]docResponse `yaml:"responses"`
	} `yaml:"components"`
	Unmatched map[string]any `yaml:"x-unmatched-responses"`
}

type operation struct {
	RequestBody struct {
		Content map[string]struct {
			Examples map[string]example `yaml:"examples"`
			// Rejected are requests the server refuses: kept apart, so a tool
			// that reads examples as valid requests is not misled.
			Rejected map[string]example `yaml:"x-rejected-examples"`
		} `yaml:"content"`
	} `yaml:"requestBody"`
	Responses map[string]docResponse `yaml:"responses"`
}

type example struct {
	Value          any    `yaml:"value"`
	ExpectedStatus int    `yaml:"x-expected-status"`
	ExpectedField  string `yaml:"x-expected-field"`
}

type docResponse struct {
	Ref     string `yaml:"$ref"`
	Headers map[string]any
	Content map[string]struct {
		Schema schema `yaml:"schema"`
	} `yaml:"content"`
}

type schema struct {
	Ref                  string            `yaml:"$ref"`
	Type                 string            `yaml:"type"`
	Required             []string          `yaml:"required"`
	Properties           map[string]schema `yaml:"properties"`
	AdditionalProperties any               `yaml:"additionalProperties"` // false, or a schema
}

func loadSpec(t *testing.T) spec {
	t.Helper()
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatalf("read the API document: %v", err)
	}
	var s spec
	if err := yaml.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse %s: %v", specPath, err)
	}
	if len(s.Paths) == 0 {
		t.Fatalf("%s documents no paths", specPath)
	}
	return s
}

func (s spec) resolveResponse(t *testing.T, r docResponse) docResponse {
	t.Helper()
	return resolve(t, r, r.Ref, "#/components/responses/", s.Components.Responses)
}

func (s spec) resolveSchema(t *testing.T, sc schema) schema {
	t.Helper()
	return resolve(t, sc, sc.Ref, "#/components/schemas/", s.Components.Schemas)
}

// resolve follows a local $ref under prefix; v without a ref is itself.
func resolve[T any](t *testing.T, v T, ref, prefix string, defs map[string]T) T {
	t.Helper()
	if ref == "" {
		return v
	}
	name, ok := strings.CutPrefix(ref, prefix)
	res, found := defs[name]
	if !ok || !found {
		t.Fatalf("unresolvable %s", ref)
	}
	return res
}

// conforms checks an answer against the documented docResponse: JSON content,
// the documented headers, required properties present, no undocumented ones.
func (s spec) conforms(t *testing.T, what string, doc docResponse, r answer) {
	t.Helper()
	doc = s.resolveResponse(t, doc)
	for h := range doc.Headers {
		if r.header.Get(h) == "" {
			t.Errorf("%s: documented header %s is missing", what, h)
		}
	}
	c, ok := doc.Content["application/json"]
	if !ok {
		t.Fatalf("%s: the document has no application/json content", what)
	}
	sc := s.resolveSchema(t, c.Schema)
	var body map[string]any
	if err := json.Unmarshal([]byte(r.raw), &body); err != nil {
		t.Fatalf("%s: answer %q is not a JSON object", what, r.raw)
	}
	for _, k := range sc.Required {
		if _, ok := body[k]; !ok {
			t.Errorf("%s: answer %s lacks the required %q", what, r.raw, k)
		}
	}
	for k, v := range body {
		p, ok := sc.Properties[k]
		if !ok {
			if sc.AdditionalProperties == false {
				t.Errorf("%s: answer %s has undocumented property %q", what, r.raw, k)
			}
			continue
		}
		if p.Type == "string" {
			if _, ok := v.(string); !ok {
				t.Errorf("%s: property %q = %v, documented as a string", what, k, v)
			}
		}
	}
}

type answer struct {
	code   int
	header http.Header
	raw    string
}

func call(h http.Handler, method, path, body string, header ...string) answer {
	req, _ := http.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return answer{code: rec.Code, header: rec.Header(), raw: rec.Body.String()}
}

// TestOpenAPIRoutes: every documented path and method is routed, and every
// route is documented.
func TestOpenAPIRoutes(t *testing.T) {
	s := loadSpec(t)
	var documented []string
	for path, ops := range s.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+ginPath(path))
		}
	}
	f := newFixture(t)
	var routed []string
	for _, r := range f.h.Routes() {
		routed = append(routed, r.Method+" "+r.Path)
	}
	sort.Strings(documented)
	sort.Strings(routed)
	if !slices.Equal(documented, routed) {
		t.Errorf("documented %v, routed %v", documented, routed)
	}
}

// TestOpenAPIExamples posts every request example and checks the documented
// outcome: status, field at fault, and an answer shaped as documented.
func TestOpenAPIExamples(t *testing.T) {
	s := loadSpec(t)
	n := 0
	for path, ops := range s.Paths {
		for method, op := range ops {
			for _, content := range op.RequestBody.Content {
				all := map[string]example{}
				for name, ex := range content.Examples {
					if ex.ExpectedStatus != http.StatusAccepted {
						t.Errorf("%s %s: example %s expects %d: a refused request belongs in x-rejected-examples", method, path, name, ex.ExpectedStatus)
					}
					all[name] = ex
				}
				for name, ex := range content.Rejected {
					if ex.ExpectedStatus < 400 {
						t.Errorf("%s %s: rejected example %s expects %d", method, path, name, ex.ExpectedStatus)
					}
					all[name] = ex
				}
				for name, ex := range all {
					n++
					t.Run(path+"/"+name, func(t *testing.T) {
						if ex.ExpectedStatus == 0 {
							t.Fatal("example has no x-expected-status")
						}
						doc, ok := op.Responses[strconv.Itoa(ex.ExpectedStatus)]
						if !ok {
							t.Fatalf("x-expected-status %d is not a documented docResponse", ex.ExpectedStatus)
						}
						body, err := json.Marshal(ex.Value)
						if err != nil {
							t.Fatal(err)
						}
						f := newFixture(t)
						r := call(f.h, strings.ToUpper(method), path, string(body))
						if r.code != ex.ExpectedStatus {
							t.Fatalf("status %d, documented %d (answer %s)", r.code, ex.ExpectedStatus, r.raw)
						}
						s.conforms(t, name, doc, r)
						if ex.ExpectedField != "" && !strings.Contains(r.raw, `"field":"`+ex.ExpectedField+`"`) {
							t.Errorf("answer %s, documented field %q", r.raw, ex.ExpectedField)
						}
					})
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the document has no request examples")
	}
}

// ginPath turns the document's /x/{id} into the router's /x/:id.
func ginPath(path string) string {
	return strings.NewReplacer("{", ":", "}", "").Replace(path)
}

// TestOpenAPIStatuses triggers every documented status of every operation,
// and checks that every status the handlers produce is documented.
func TestOpenAPIStatuses(t *testing.T) {
	s := loadSpec(t)
	valid := map[string]string{
		RouteChannel: `{"channel_id": 1, "message": "` + goodMsg + `"}`,
		RouteUsers:   `{"usernames": ["alice"], "message": "` + goodMsg + `"}`,
	}
	dryRun := func(path string) string { return strings.Replace(valid[path], "{", `{"dry_run": true, `, 1) }
	down := fmt.Errorf("redis: connection refused")
	// seeded is a store fixture holding one running and one finished announcement.
	seeded := func(t *testing.T) fixture {
		f := newStoreFixture(t)
		f.records.anns["running"] = progress.Announcement{ID: "running", State: progress.StateSending}
		f.records.anns["finished"] = progress.Announcement{ID: "finished", State: progress.StateDone}
		return f
	}
	broken := func(t *testing.T) fixture {
		f := newStoreFixture(t)
		f.records.err = down
		return f
	}
	// Each trigger is a way the handlers answer; together they are all of them
	// (500 is a bug, not a designed answer). Keys are "METHOD path code".
	triggers := map[string]func(t *testing.T) answer{}
	for _, path := range []string{RouteChannel, RouteUsers} {
		post := func(code int, fn func(t *testing.T) answer) { triggers[fmt.Sprintf("POST %s %d", path, code)] = fn }
		post(http.StatusOK, func(t *testing.T) answer { return call(newStoreFixture(t).h, "POST", path, dryRun(path)) })
		post(http.StatusAccepted, func(t *testing.T) answer { return call(newFixture(t).h, "POST", path, valid[path]) })
		post(http.StatusBadRequest, func(t *testing.T) answer { return call(newFixture(t).h, "POST", path, `{"message": 1}`) })
		post(http.StatusUnauthorized, func(t *testing.T) answer {
			return call(newFixture(t, testToken).h, "POST", path, valid[path])
		})
		post(http.StatusMethodNotAllowed, func(t *testing.T) answer { return call(newFixture(t).h, "DELETE", path, "") })
		post(http.StatusConflict, func(t *testing.T) answer {
			f := newStoreFixture(t)
			call(f.h, "POST", path, valid[path], HeaderIdempotencyKey, "k1")
			return call(f.h, "POST", path, strings.Replace(valid[path], "{", `{"persist": true, `, 1), HeaderIdempotencyKey, "k1")
		})
		post(http.StatusRequestEntityTooLarge, func(t *testing.T) answer {
			return call(newFixture(t).h, "POST", path, `{"message": "`+strings.Repeat("A", 5000)+`"}`)
		})
		post(http.StatusNotImplemented, func(t *testing.T) answer { return call(newFixture(t).h, "POST", path, dryRun(path)) })
		post(http.StatusServiceUnavailable, func(t *testing.T) answer {
			f := newFixture(t)
			f.pub.err = fmt.Errorf("%w: connection refused", announce.ErrUnavailable)
			return call(f.h, "POST", path, valid[path])
		})
		post(http.StatusGatewayTimeout, func(t *testing.T) answer {
			f := newStoreFixture(t)
			f.records.counted = false
			return call(f.h, "POST", path, dryRun(path))
		})
	}
	one := RouteAnnouncements + "/running"
	// The record routes: each answers 401 without the token, 405 to another
	// method, 501 without a store and 503 while the store fails.
	for _, route := range []struct{ method, doc, path, other string }{
		{"GET", RouteAnnouncements, RouteAnnouncements, "PUT"},
		{"GET", RouteAnnouncements + "/{id}", one, "PUT"},
		{"DELETE", RouteAnnouncements + "/{id}", one, "POST"},
	} {
		add := func(code int, fn func(t *testing.T) answer) {
			triggers[fmt.Sprintf("%s %s %d", route.method, route.doc, code)] = fn
		}
		add(http.StatusUnauthorized, func(t *testing.T) answer {
			return call(newStoreFixture(t, testToken).h, route.method, route.path, "")
		})
		add(http.StatusMethodNotAllowed, func(t *testing.T) answer { return call(seeded(t).h, route.other, route.path, "") })
		add(http.StatusNotImplemented, func(t *testing.T) answer { return call(newFixture(t).h, route.method, route.path, "") })
		add(http.StatusServiceUnavailable, func(t *testing.T) answer { return call(broken(t).h, route.method, route.path, "") })
	}
	for key, fn := range map[string]func(t *testing.T) answer{
		"GET /v1/announcements 200": func(t *testing.T) answer {
			return call(seeded(t).h, "GET", RouteAnnouncements+"?state=done&limit=5", "")
		},
		"GET /v1/announcements 400": func(t *testing.T) answer { return call(seeded(t).h, "GET", RouteAnnouncements+"?limit=0", "") },

		"GET /v1/announcements/{id} 200": func(t *testing.T) answer { return call(seeded(t).h, "GET", one, "") },
		"GET /v1/announcements/{id} 404": func(t *testing.T) answer { return call(seeded(t).h, "GET", RouteAnnouncements+"/nobody", "") },

		"DELETE /v1/announcements/{id} 200": func(t *testing.T) answer { return call(seeded(t).h, "DELETE", one, "") },
		"DELETE /v1/announcements/{id} 404": func(t *testing.T) answer {
			return call(seeded(t).h, "DELETE", RouteAnnouncements+"/nobody", "")
		},
		"DELETE /v1/announcements/{id} 409": func(t *testing.T) answer {
			return call(seeded(t).h, "DELETE", RouteAnnouncements+"/finished", "")
		},
	} {
		triggers[key] = fn
	}
	documented := map[string]bool{}
	for path, ops := range s.Paths {
		for method, op := range ops {
			for codeStr, doc := range op.Responses {
				key := strings.ToUpper(method) + " " + path + " " + codeStr
				documented[key] = true
				t.Run(key, func(t *testing.T) {
					code, _ := strconv.Atoi(codeStr)
					trigger, ok := triggers[key]
					if !ok {
						t.Fatalf("documented status %s cannot be produced", codeStr)
					}
					r := trigger(t)
					if r.code != code {
						t.Fatalf("trigger for %d answered %d: %s", code, r.code, r.raw)
					}
					s.conforms(t, key, doc, r)
				})
			}
		}
	}
	for key := range triggers {
		if !documented[key] {
			t.Errorf("%s can be answered but is not documented", key)
		}
	}

	// Requests matching no path.
	doc, ok := s.Unmatched["404"]
	if !ok {
		t.Fatal("x-unmatched-responses documents no 404")
	}
	b, _ := yaml.Marshal(doc)
	var r404 docResponse
	if err := yaml.Unmarshal(b, &r404); err != nil {
		t.Fatal(err)
	}
	r := call(newFixture(t).h, "GET", "/v2/anything", "")
	if r.code != http.StatusNotFound {
		t.Fatalf("unknown path answered %d", r.code)
	}
	s.conforms(t, "unmatched 404", r404, r)
}
