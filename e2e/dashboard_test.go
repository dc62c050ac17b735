package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"gopkg.in/yaml.v3"

	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// dashboardPath is the Grafana dashboard that deployments/docker-compose.yml provisions.
const dashboardPath = "../deployments/grafana/dashboards/announcer.json"

// alertRulesPath is the Prometheus alerting rules of the same deployment (deployments/ checks
// that they load and fire; here, that what they query exists).
const alertRulesPath = "../deployments/prometheus/alerts.yml"

// scrapeSeries are the series Prometheus adds to every scrape itself: no service exports them.
var scrapeSeries = map[string]bool{"up": true}

// grafanaDashboard is the part of a dashboard JSON these tests read.
type grafanaDashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []grafanaVariable `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaVariable struct {
	Name       string             `json:"name"`
	Type       string             `json:"type"`
	Query      json.RawMessage    `json:"query"` // a string, or {"query": "..."} for a Prometheus query variable
	Definition string             `json:"definition"`
	Datasource *grafanaDatasource `json:"datasource"`
}

type grafanaPanel struct {
	ID         int                `json:"id"`
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDatasource `json:"datasource"`
	Targets    []grafanaTarget    `json:"targets"`
	Panels     []grafanaPanel     `json:"panels"` // of a collapsed row
}

type grafanaTarget struct {
	RefID      string             `json:"refId"`
	Expr       string             `json:"expr"`
	Datasource *grafanaDatasource `json:"datasource"`
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// query is one PromQL expression of the dashboard and where it is.
type query struct{ where, expr string }

// alertQueries are the expressions of the alerting rules.
func alertQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(alertRulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", alertRulesPath, err)
	}
	var out []query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, query{where: "alert " + r.Alert, expr: r.Expr})
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no rules", alertRulesPath)
	}
	return out
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not a dashboard JSON: %v", dashboardPath, err)
	}
	return d
}

// queries lists every PromQL expression of the dashboard: each panel target's, and each
// Prometheus query variable's.
func (d grafanaDashboard) queries(t *testing.T) []query {
	t.Helper()
	var out []query
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			walk(p.Panels)
			for _, tg := range p.Targets {
				out = append(out, query{fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), tg.Expr})
			}
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		expr := v.Definition
		var q struct {
			Query string `json:"query"`
		}
		var plain string
		switch {
		case json.Unmarshal(v.Query, &q) == nil && q.Query != "":
			expr = q.Query
		case json.Unmarshal(v.Query, &plain) == nil && plain != "":
			expr = plain
		}
		// label_values(metric, label) and friends: the metric is the first argument.
		if m := labelValuesRe.FindStringSubmatch(expr); m != nil {
			expr = m[1]
		}
		out = append(out, query{fmt.Sprintf("variable %s", v.Name), expr})
	}
	return out
}

var labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// The dashboard is one Grafana can load and an operator can read: valid JSON, every panel
// titled with at least one query, every query on a Prometheus data source, rates over
// $__rate_interval, and only variables the dashboard declares.
func TestDashboardIsWellFormed(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: want both", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a current one (36 or later)", d.SchemaVersion)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID == "") {
			t.Errorf("variable %s has no data source", v.Name)
		}
	}
	ids := map[int]string{}
	panels := 0
	var walk func([]grafanaPanel)
	walk = func(list []grafanaPanel) {
		for _, p := range list {
			walk(p.Panels)
			if p.Title == "" {
				t.Errorf("panel id %d (%s) has no title", p.ID, p.Type)
			}
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.Type == "row" {
				continue
			}
			panels++
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.Datasource == nil || tg.Datasource.Type != "prometheus" || tg.Datasource.UID == "" {
					t.Errorf("panel %q target %s: data source %+v, want a Prometheus one", p.Title, tg.RefID, tg.Datasource)
				}
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("panel %q: refId %q missing or repeated", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q target %s: empty expr", p.Title, tg.RefID)
				}
			}
		}
	}
	walk(d.Panels)
	if panels == 0 {
		t.Fatal("no panels")
	}
	builtin := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	for _, q := range d.queries(t) {
		for _, r := range rangeRe.FindAllStringSubmatch(q.expr, -1) {
			if r[1] != "$__rate_interval" {
				t.Errorf("%s: range [%s] in %s: use [$__rate_interval]", q.where, r[1], q.expr)
			}
		}
		for _, v := range varRe.FindAllStringSubmatch(q.expr, -1) {
			name := v[1] + v[2]
			if !vars[name] && !builtin[name] && strings.Trim(name, "0123456789") != "" {
				t.Errorf("%s: variable $%s is not declared in templating: %s", q.where, name, q.expr)
			}
		}
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
		} else if len(names) == 0 {
			t.Errorf("%s: no metric in %s", q.where, q.expr)
		}
	}
	for _, p := range allPanels(d.Panels) {
		if p.Type != "row" && (p.Datasource == nil || p.Datasource.UID == "") {
			t.Errorf("panel %q has no data source", p.Title)
		}
	}
}

var (
	rangeRe = regexp.MustCompile(`\[([^\]]*)\]`)
	varRe   = regexp.MustCompile(`\$(?:\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|([A-Za-z0-9_]+))`)
)

func allPanels(list []grafanaPanel) []grafanaPanel {
	var out []grafanaPanel
	for _, p := range list {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// Every metric the dashboard and the alerting rules query is one a running service really exports. The system
// runs on a private broker and is driven through each path that creates a labelled series
// lazily (an announcement, a rejection, a bounce from ejabberd, a dead letter in every
// consumer, a publish failure while the broker is down), so a panel that would stay empty
// in production (or an alert that could never fire) because a metric was renamed or never
// existed fails here.
func TestDashboardMetricsAreExported(t *testing.T) {
	d := loadDashboard(t)
	queries := append(d.queries(t), alertQueries(t)...)
	used := map[string][]string{} // metric → where
	for _, q := range queries {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		for _, n := range names {
			used[n] = append(used[n], q.where)
		}
	}

	env := stacktest.Get(t)
	broker := stacktest.PrivateKafka(t, env)
	s := newSystem(t, options{brokers: broker.Brokers()})
	ctx := s.deadline(3 * time.Minute)
	anyFrom(t, s)

	// One announcement end to end (persisted, so the archiver stores it).
	u := s.user("dash", "node1")
	c := s.login(ctx, u)
	s.channel(70, s.p+"-dash", "ACCEPTED", u)
	s.announce("/v1/announce/channel", map[string]any{"channel_id": 70, "message": b64(template(s.from)), "persist": true})
	if _, err := c.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// A user ejabberd does not know: it bounces the stanza with an error to its from, here the
	// sender's own component domain (the first spare: system_test.go gives it to the first
	// sender). ejabberd hands each bounce to any connection of that domain, and a system of
	// another test run may hold some too: bounces are asked for until one comes back here.
	bounces := 0
	testkit.Eventually(t, 60*time.Second, "an error stanza from ejabberd at the sender", func() bool {
		if s.metric("sender-node1-0", "announcer_sender_inbound_errors_total") > 0 {
			return true
		}
		bounces++
		s.announce("/v1/announce/users", map[string]any{"usernames": []string{fmt.Sprintf("%s_nobody%d", s.p, bounces)},
			"message": b64(template(env.ComponentSpares[0])), "persist": false})
		time.Sleep(time.Second)
		return false
	})
	// A record no consumer can decode, on each consumer's input.
	kafkatest.Produce(t, s.brokers, s.p+"_input", kafka.Message{Key: []byte("bad"), Value: []byte(`{"channel_id": 70, "message": "%%% not base64"}`)})
	kafkatest.Produce(t, s.brokers, s.p+"_announcements", kafka.Message{Key: []byte("bad"), Value: []byte("{")})
	kafkatest.Produce(t, s.brokers, s.p+"_deliveries.node1", kafka.Message{Key: []byte("bad"), Value: []byte("{")})
	for _, w := range []struct{ service, metric string }{
		{"ingress", "announcer_ingress_kafka_input_dead_letters_total"},
		{"fanout", "announcer_fanout_dead_letters_total"},
		{"sender-node1-0", "announcer_sender_dead_letters_total"},
		{"archiver", "announcer_archiver_dead_letters_total"},
		{"archiver", "announcer_archiver_records_stored_total"},
	} {
		testkit.Eventually(t, 30*time.Second, w.service+" "+w.metric+" > 0", func() bool { return s.metric(w.service, w.metric) > 0 })
	}
	// The broker down: the ingress cannot publish and says so.
	broker.Kill()
	if code, body := s.post("/v1/announce/channel", map[string]any{"channel_id": 70, "message": b64(template(s.from))}); code != http.StatusServiceUnavailable {
		t.Errorf("POST while the broker is down: %d %v, want 503", code, body)
	}
	broker.Start()
	// And back: an announcement goes through again (the services are scraped in working order).
	testkit.Eventually(t, 60*time.Second, "an announcement accepted after the broker restart", func() bool {
		code, _ := s.post("/v1/announce/channel", map[string]any{"channel_id": 70, "message": b64(template(s.from))})
		return code == http.StatusAccepted
	})
	if _, err := c.Wait(ctx, 2); err != nil {
		t.Fatal(err)
	}

	exported := map[string]*exposition{}
	for name, addr := range s.debug {
		exported[name] = scrape(t, addr)
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if scrapeSeries[n] {
			continue
		}
		if err := checkExported(n, exported); err != nil {
			t.Errorf("%v; used by %s", err, strings.Join(used[n], ", "))
			continue
		}
		t.Logf("%-62s exported by %s", n, strings.Join(exporters(n, exported), ", "))
	}

	// Not a failure: what the services export that no panel or alert uses, for whoever edits them next.
	covered := map[string]bool{}
	for n := range used {
		covered[n] = true
		covered[familyOf(n)] = true
	}
	var unused []string
	for _, e := range exported {
		for fam := range e.types {
			if strings.HasPrefix(fam, "announcer_") && !covered[fam] && !slices.Contains(unused, fam) {
				unused = append(unused, fam)
			}
		}
	}
	sort.Strings(unused)
	t.Logf("%d metrics used by %d queries; exported announcer_ families no panel or alert uses: %s", len(names), len(queries), strings.Join(unused, " "))
}

// anyFrom restarts the services with [component] check_from = false (the stack's spare
// listeners allow any from), so that a template may come from the sender's own component
// domain: ejabberd sends a bounce to the template's from, and the system's shared announcer
// domain is no connection of this system.
func anyFrom(t *testing.T, s *system) {
	t.Helper()
	order := []string{"archiver", "sender-node1-0", "fanout", "ingress"} // downstream first
	done := map[string]bool{}
	for _, name := range order {
		path := s.byName[name].cfg
		if done[path] {
			continue
		}
		done[path] = true
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Replace(string(b), "\n[component]\n", "\n[component]\ncheck_from = false\n", 1)
		if text == string(b) {
			t.Fatalf("%s has no [component] section", path)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(order) - 1; i >= 0; i-- {
		s.stopService(order[i])
	}
	for _, name := range order {
		s.restart(name)
	}
}

// exposition is one /metrics answer: the families (# TYPE) and the series names of its samples.
type exposition struct {
	types  map[string]string
	series map[string]bool
}

func scrape(t *testing.T, addr string) *exposition {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s", addr, resp.Status)
	}
	e := &exposition{types: map[string]string{}, series: map[string]bool{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if f := strings.Fields(rest); len(f) == 2 {
				e.types[f[0]] = f[1]
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			e.series[line[:i]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return e
}

var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// familyOf is the family a series name belongs to when it is a histogram's _bucket, _sum or _count.
func familyOf(name string) string {
	for _, s := range histogramSuffixes {
		if base, ok := strings.CutSuffix(name, s); ok {
			return base
		}
	}
	return name
}

// checkExported: name is a series some service exports; a histogram's series come as the
// three of them, and a histogram's family name is no series Prometheus stores.
func checkExported(name string, exported map[string]*exposition) error {
	for _, e := range exported {
		if typ := e.types[name]; typ == "histogram" || typ == "summary" {
			return fmt.Errorf("%s is a %s: Prometheus stores %s_bucket, _sum and _count, not %s", name, typ, name, name)
		}
	}
	if len(exporters(name, exported)) == 0 {
		return fmt.Errorf("%s is exported by no service", name)
	}
	base := familyOf(name)
	if base == name {
		return nil
	}
	for svc, e := range exported {
		if e.types[base] != "histogram" {
			continue
		}
		for _, s := range histogramSuffixes {
			if !e.series[base+s] {
				return fmt.Errorf("histogram %s of %s has no %s series", base, svc, base+s)
			}
		}
	}
	return nil
}

func exporters(name string, exported map[string]*exposition) []string {
	var out []string
	for svc, e := range exported {
		if e.series[name] {
			out = append(out, svc)
		}
	}
	sort.Strings(out)
	return out
}

// PromQL words that are never metric names: binary operators and modifiers.
var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true,
}

// Modifiers whose parenthesised list holds label names, not expressions.
var promLabelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// Aggregation operators: "sum by (x) (...)" puts the grouping between the name and its "(".
var promAggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// metricNames lists the metric names a PromQL expression selects (with Grafana's variables in
// it): identifiers that are not a function or aggregation call, a keyword, a label of a
// matcher or grouping, or part of a string, number, duration or variable. A metric chosen by a
// regular expression on __name__ is an error: no test could say which metrics it needs.
func metricNames(expr string) ([]string, error) {
	var out []string
	add := func(n string) {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && strings.IndexByte(" \t\r\n", expr[i]) >= 0 {
			i++
		}
		return i
	}
	// str returns the end of the string literal starting at i, and its unquoted value.
	str := func(i int) (int, string, error) {
		q := expr[i]
		var b strings.Builder
		for j := i + 1; j < len(expr); j++ {
			switch {
			case expr[j] == '\\' && q != '`' && j+1 < len(expr):
				j++
				b.WriteByte(expr[j])
			case expr[j] == q:
				return j + 1, b.String(), nil
			default:
				b.WriteByte(expr[j])
			}
		}
		return 0, "", fmt.Errorf("unterminated string in %s", expr)
	}
	closing := func(i int, open, close byte) (int, error) {
		depth := 0
		for j := i; j < len(expr); j++ {
			switch expr[j] {
			case '"', '\'', '`':
				end, _, err := str(j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case open:
				depth++
			case close:
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unbalanced %c in %s", open, expr)
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			end, _, err := str(i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '#': // a comment, to the end of the line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '$': // $var, ${var}, ${var:fmt}, $__rate_interval
			i++
			if i < len(expr) && expr[i] == '{' {
				for i < len(expr) && expr[i] != '}' {
					i++
				}
				i++
				continue
			}
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
		case c == '[': // a range or subquery: durations and variables only
			end, err := closing(i, '[', ']')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '{': // matchers: label names, and perhaps the metric as __name__
			end, err := closing(i, '{', '}')
			if err != nil {
				return nil, err
			}
			if m := nameMatcherRe.FindStringSubmatchIndex(expr[i:end]); m != nil {
				if op := expr[i+m[2] : i+m[3]]; op != "=" {
					return nil, fmt.Errorf("__name__%s selects metrics by pattern in %s: name them", op, expr)
				}
				_, v, err := str(i + m[4]) // the value's opening quote
				if err != nil {
					return nil, err
				}
				add(v)
			}
			i = end
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(expr) && expr[i+1] >= '0' && expr[i+1] <= '9':
			// a number or a duration (0.99, 60, 1e3, 0x1f, 5m, 1h30m)
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := skipSpace(i)
			switch {
			case promLabelLists[word] && next < len(expr) && expr[next] == '(':
				end, err := closing(next, '(', ')')
				if err != nil {
					return nil, err
				}
				i = end
			case next < len(expr) && expr[next] == '(': // a function or aggregation call
			case promAggregations[word] && (strings.HasPrefix(expr[next:], "by") || strings.HasPrefix(expr[next:], "without")):
			case promKeywords[strings.ToLower(word)]:
			default:
				add(word)
			}
		default:
			i++
		}
	}
	return out, nil
}

var nameMatcherRe = regexp.MustCompile(`__name__\s*(=~|!~|!=|=)\s*(["'` + "`" + `])`)

// The extractor itself, on the forms PromQL allows.
func TestDashboardMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
		err  bool
	}{
		{`sum by (node) (rate(announcer_sender_fences_total{node=~"$node"}[$__rate_interval]))`, []string{"announcer_sender_fences_total"}, false},
		{`histogram_quantile(0.99, sum by (le, route) (rate(x_bucket[5m])))`, []string{"x_bucket"}, false},
		{`sum(rate(a_sum[1m])) by (route) / sum without (le) (rate(a_count[1m]))`, []string{"a_sum", "a_count"}, false},
		{`a / on(instance) group_left(version) b`, []string{"a", "b"}, false},
		{`a * ignoring (code) group_right b > bool 0 and c offset 1h unless d @ 1609746000`, []string{"a", "b", "c", "d"}, false},
		{`{__name__="a", job="x"} + {job="y", __name__ = 'b'} + {job="}", __name__="c"}`, []string{"a", "b", "c"}, false},
		{`count(up{job=~"a{1,2}"} == 0) or vector(0)`, []string{"up"}, false},
		{`60 * x + 1e+06 - 0x1f * .5`, []string{"x"}, false},
		{`label_replace(x, "dst", "$1 by (y)", "src", "(.*)")`, []string{"x"}, false},
		{`max_over_time(x[$__range:$__interval]) > ${threshold:raw}`, []string{"x"}, false},
		{"topk(5, x) # y z\n+ w", []string{"x", "w"}, false},
		{`sum(x) by (node) and on() vector(1)`, []string{"x"}, false},
		{`process_resident_memory_bytes{job=~"announcer-.+"}`, []string{"process_resident_memory_bytes"}, false},
		{`{__name__=~"announcer_.+_dead_letters_total"}`, nil, true},
		{`rate(x[5m)`, nil, true},
	}
	for _, tc := range tests {
		got, err := metricNames(tc.expr)
		if (err != nil) != tc.err {
			t.Errorf("metricNames(%q): error %v, want error %v", tc.expr, err, tc.err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}
