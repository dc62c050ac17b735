package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
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

func b64raw(s string) string { return raw(base64.StdEncoding.EncodeToString([]byte(s))) }

// Values for each field of the two bodies: right and wrong types, null, and
// values of the right type the server refuses (a template without %s, an
// injected username).
var (
	channelValues = []string{"22", "-1", "0", raw("news"), raw(""), raw(strings.Repeat("c", 300)), "2.5", "true", "null", "[1]", "99999999999999999999"}
	userValues    = []string{raw([]string{"alice"}), raw([]string{"alice", "bob@localhost", "carol@localhost/phone"}), raw([]string{}),
		raw([]string{"a b"}), raw([]string{"eve'/><x"}), raw("alice"), "[1]", "[null]", "null"}
	messageValues = []string{
		b64raw("<message to='%s' from='announcer.localhost' type='chat'><body>hi [inc_id]</body></message>"),
		b64raw("<presence to='%s' from='announcer.localhost'/>"),
		b64raw("<message to='alice@localhost' from='announcer.localhost'/>"), // no %s
		b64raw("<message to='%s' from='admin@localhost'/>"),                  // foreign from
		b64raw("<message to='%s' from='announcer.localhost'>"),               // not well-formed
		raw("<message to='%s'/>"), raw(""), "5", "null",
	}
	persistValues  = []string{"true", "false", "null", raw("yes"), "0"}
	priorityValues = []string{raw("normal"), raw("high"), raw("urgent"), raw(""), raw("HIGH"), "1", "null"}
	// A dry run waits for fanout, which this test does not run: only false, and wrong values.
	dryRunValues = []string{"false", "null", raw("true"), "0"}
	extraNames   = []string{"Channel_ID", "Message", "PERSIST", "persit", "to", "channel"}
)

// Values the server accepts.
var (
	goodChannels = channelValues[:4]
	goodUsers    = userValues[:2]
	goodMessages = messageValues[:2]
	goodPersist  = persistValues[:2]
	goodPriority = priorityValues[:2]
	goodDryRun   = dryRunValues[:1]
)

// genBody draws a valid request for the route, then up to two mutations: a
// field's value replaced by any value of the lists above (wrong types, null,
// values the server refuses), a field dropped, a field the schema does not
// have, a field given twice. One mutation at a time is what finds a rule
// the server does not enforce; a third of the bodies stay valid.
func genBody(t *rapid.T, usersRoute bool) []byte {
	audience := field{"channel_id", rapid.SampledFrom(goodChannels).Draw(t, "channel_id")}
	if usersRoute {
		audience = field{"usernames", rapid.SampledFrom(goodUsers).Draw(t, "usernames")}
	}
	fields := []field{audience, {"message", rapid.SampledFrom(goodMessages).Draw(t, "message")}}
	if rapid.Bool().Draw(t, "persist given") {
		fields = append(fields, field{"persist", rapid.SampledFrom(goodPersist).Draw(t, "persist")})
	}
	if rapid.Bool().Draw(t, "priority given") {
		fields = append(fields, field{"priority", rapid.SampledFrom(goodPriority).Draw(t, "priority")})
	}
	if rapid.IntRange(0, 3).Draw(t, "dry_run given") == 0 {
		fields = append(fields, field{"dry_run", rapid.SampledFrom(goodDryRun).Draw(t, "dry_run")})
	}
	anyValue := map[string][]string{"channel_id": channelValues, "usernames": userValues, "message": messageValues,
		"persist": persistValues, "priority": priorityValues, "dry_run": dryRunValues}
	for m := rapid.IntRange(0, 2).Draw(t, "mutations"); m > 0; m-- {
		i := rapid.IntRange(0, len(fields)-1).Draw(t, "field")
		switch rapid.IntRange(0, 4).Draw(t, "mutation") {
		case 0, 1:
			values, ok := anyValue[fields[i].name]
			if !ok {
				values = persistValues // a field the schema does not have
			}
			fields[i].value = rapid.SampledFrom(values).Draw(t, "value")
		case 2:
			fields = append(fields[:i:i], fields[i+1:]...)
		case 3:
			fields = append(fields, field{rapid.SampledFrom(append(extraNames, "channel_id", "usernames", "persist")).Draw(t, "extra"),
				rapid.SampledFrom(persistValues).Draw(t, "extra value")})
		case 4:
			fields = append(fields, fields[i])
		}
		if len(fields) == 0 {
			break
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

// A property-based run of the live ingress against api/openapi.yaml: requests
// are generated from the document's two bodies (right and wrong types, null,
// unknown and case-variant names, keys given twice), posted to the real
// service on the real broker, and each answer must be one the document
// lists for the operation, shaped as documented; a request the document's
// schema refuses must be refused.
func TestLiveIngressKeepsTheContract(t *testing.T) {
	env := stacktest.Get(t)
	doc, err := openapi3.NewLoader().LoadFromFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(env.KafkaBrokers)
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
	svc := start(t, cfg)
	svc.waitReady(t)

	var ops []routers.Route
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Find(path)
		if item.Post != nil {
			ops = append(ops, routers.Route{Spec: doc, Path: path, PathItem: item, Method: http.MethodPost, Operation: item.Post})
		}
	}
	if len(ops) != 2 {
		t.Fatalf("%d POST operations in the document, want the 2 announce routes", len(ops))
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	statuses := map[int]int{}
	check := func(rt *rapid.T) {
		op := rapid.SampledFrom(ops).Draw(rt, "operation")
		body := genBody(rt, strings.HasSuffix(op.Path, "/users"))
		post, err := http.NewRequest(http.MethodPost, svc.api+op.Path, bytes.NewReader(body))
		if err != nil {
			rt.Fatal(err)
		}
		post.Header.Set("Content-Type", "application/json")
		post.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(post)
		if err != nil {
			rt.Fatal(err)
		}
		answer, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			rt.Fatal(err)
		}
		statuses[resp.StatusCode]++

		req, err := http.NewRequest(http.MethodPost, svc.api+op.Path, bytes.NewReader(body))
		if err != nil {
			rt.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		route := op
		in := &openapi3filter.RequestValidationInput{Request: req, Route: &route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		refusedBySchema := openapi3filter.ValidateRequest(context.Background(), in) != nil || hasDuplicateKey(body)
		if refusedBySchema && resp.StatusCode < 400 {
			rt.Fatalf("%s %s: the document refuses it, the server answered %d %s", op.Path, body, resp.StatusCode, answer)
		}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
			Body: io.NopCloser(bytes.NewReader(answer)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			rt.Fatalf("%s %s: answer %d %s is not what the document says: %v", op.Path, body, resp.StatusCode, answer, err)
		}
	}
	for range 3 { // 3 × rapid's 100 cases
		rapid.Check(t, check)
	}
	t.Logf("answers by status: %v", statuses)
	if statuses[http.StatusAccepted] == 0 || statuses[http.StatusBadRequest] == 0 {
		t.Fatalf("the run never reached both 202 and 400 (%v): the generator misses half the contract", statuses)
	}
}
