package deployments

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
)

// alertRules loads the rule files prometheus.yml names, through the compose file's mounts, as
// Prometheus loads them (promtool check rules runs the same parser and checks).
func alertRules(t *testing.T) map[string]rulefmt.Rule {
	t.Helper()
	f := loadCompose(t)
	prom := f.Services["prometheus"]
	c := loadPrometheusConfig(t, f)
	if len(c.RuleFiles) == 0 {
		t.Fatal("prometheus.yml loads no rule files")
	}
	rules := map[string]rulefmt.Rule{}
	for _, in := range c.RuleFiles {
		path, ok := hostPath(t, prom, in)
		if !ok {
			t.Fatalf("rule file %s is not a mounted file of the repository (volumes %q)", in, prom.Volumes)
		}
		groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
		for _, err := range errs {
			t.Error(err)
		}
		if groups == nil {
			t.FailNow()
		}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				if _, dup := rules[r.Alert]; dup {
					t.Errorf("%s: alert %s defined twice", path, r.Alert)
				}
				rules[r.Alert] = r
			}
		}
	}
	return rules
}

// Every alert says how urgent it is, in the two severities the file's header routes, and
// what it means and what to do.
func TestAlertRulesLoad(t *testing.T) {
	rules := alertRules(t)
	if len(rules) == 0 {
		t.Fatal("no alerting rules")
	}
	for name, r := range rules {
		if name == "" {
			t.Errorf("a recording rule (%s): the file holds alerts only", r.Record)
			continue
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", name, s)
		}
		if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 40 {
			t.Errorf("%s: needs a summary and a description that says what to do", name)
		}
		if !strings.HasPrefix(name, "Announcer") {
			t.Errorf("%s: alerts are named Announcer…, so a shared Alertmanager tells them apart", name)
		}
	}
}

// alertCase is one alert over made-up series: it must fire at fires with these label sets,
// and fire with none at quiet (before it, or on a healthy variant of the same series).
type alertCase struct {
	alert  string
	series string        // promqltest "load 1m" lines
	fires  time.Duration // when it must be firing
	labels []string      // the label sets firing then, as name=value,name=value (sorted names)
}

// The rules' logic, evaluated by Prometheus's own engine: an alert fires when its expression
// returned the same series at every evaluation across its for duration, as Prometheus's rule
// manager does. Each case has a quiet twin that must not fire.
func TestAlertRulesFire(t *testing.T) {
	rules := alertRules(t)
	cases := []struct {
		name        string
		fire, quiet alertCase
	}{
		{
			name: "a service down for 2 minutes; not the broker's own job, not a 1-minute blip",
			fire: alertCase{alert: "AnnouncerServiceDown", fires: 6 * time.Minute,
				series: `up{job="announcer-sender", instance="sender-node1:6062"} 1 1 0 0 0 0 0
					up{job="kafka", instance="kafka:9092"} 0 0 0 0 0 0 0`,
				labels: []string{`instance=sender-node1:6062,job=announcer-sender`}},
			quiet: alertCase{alert: "AnnouncerServiceDown", fires: 4*time.Minute + 30*time.Second,
				series: `up{job="announcer-sender", instance="sender-node1:6062"} 1 1 1 1 0 1 1`},
		},
		{
			name: "a node whose every replica lost ejabberd; not a node one replica still reaches",
			fire: alertCase{alert: "AnnouncerNodeUnreachable", fires: 5 * time.Minute,
				series: `announcer_sender_connections_up{job="announcer-sender", instance="a", node="node1"} 2 0 0 0 0 0
					announcer_sender_connections_up{job="announcer-sender", instance="b", node="node1"} 2 2 0 0 0 0
					announcer_sender_connections_up{job="announcer-sender", instance="c", node="node2"} 2 2 2 2 2 2`,
				labels: []string{`node=node1`}},
			quiet: alertCase{alert: "AnnouncerNodeUnreachable", fires: 5 * time.Minute,
				series: `announcer_sender_connections_up{job="announcer-sender", instance="a", node="node1"} 2 0 0 0 0 0
					announcer_sender_connections_up{job="announcer-sender", instance="b", node="node1"} 2 2 1 1 1 1`},
		},
		{
			name: "Kafka failing for minutes; not a broker restart of a few seconds",
			fire: alertCase{alert: "AnnouncerKafkaFailing", fires: 8 * time.Minute,
				series: `announcer_fanout_kafka_errors_total{job="announcer-fanout", instance="f", op="fetch"} 0 0 0 4 9 13 18 22 27 31 36`,
				labels: []string{`job=announcer-fanout,op=fetch`}},
			quiet: alertCase{alert: "AnnouncerKafkaFailing", fires: 3*time.Minute + 30*time.Second,
				series: `announcer_fanout_kafka_errors_total{job="announcer-fanout", instance="f", op="fetch"} 0 0 0 4 4 4 4 4 4 4 4`},
		},
		{
			name: "a node's queue that never empties, counted once over two replicas; not one that drains",
			fire: alertCase{alert: "AnnouncerNodeQueueNotDraining", fires: 20 * time.Minute,
				series: `announcer_sender_consumer_lag{job="announcer-sender", instance="a", node="node1", topic="deliveries.node1", partition="0"} 5+1x20
					announcer_sender_consumer_lag{job="announcer-sender", instance="b", node="node1", topic="deliveries.node1", partition="0"} 5+1x20
					announcer_sender_consumer_lag{job="announcer-sender", instance="a", node="node2", topic="deliveries.node2", partition="0"} 0x20`,
				labels: []string{`node=node1`}},
			quiet: alertCase{alert: "AnnouncerNodeQueueNotDraining", fires: 20 * time.Minute,
				series: `announcer_sender_consumer_lag{job="announcer-sender", instance="a", node="node1", topic="deliveries.node1", partition="0"} 50 40 30 20 10 0 30 20 10 0 40 30 20 10 0 50 40 30 20 10 0`},
		},
		{
			name: "publishes Kafka refuses for 5 minutes; not announcements too large for the bus (a 413)",
			fire: alertCase{alert: "AnnouncerPublishFailing", fires: 8 * time.Minute,
				series: `announcer_ingress_announcements_publish_failed_total{job="announcer-ingress", instance="i", source="rest", reason="unavailable"} 0 0 5 10 15 20 25 30 35`,
				labels: []string{`job=announcer-ingress`}},
			quiet: alertCase{alert: "AnnouncerPublishFailing", fires: 8 * time.Minute,
				series: `announcer_ingress_announcements_publish_failed_total{job="announcer-ingress", instance="i", source="rest", reason="too_large"} 0 0 5 10 15 20 25 30 35`},
		},
		{
			name: "a node's queue read by another node's sender after a takeover, and its priority lane; not lanes that drain",
			fire: alertCase{alert: "AnnouncerNodeQueueNotDraining", fires: 20 * time.Minute,
				series: `announcer_sender_consumer_lag{job="announcer-sender", instance="b", node="node1", lane="takeover_bulk", topic="deliveries.node1", partition="0"} 5+1x20
					announcer_sender_consumer_lag{job="announcer-sender", instance="c", node="node3", lane="priority", topic="deliveries.node3.priority", partition="0"} 5+1x20
					announcer_sender_consumer_lag{job="announcer-sender", instance="b", node="node2", lane="bulk", topic="deliveries.node2", partition="0"} 0x20`,
				labels: []string{`node=node1`, `node=node3`}},
			quiet: alertCase{alert: "AnnouncerNodeQueueNotDraining", fires: 20 * time.Minute,
				series: `announcer_sender_consumer_lag{job="announcer-sender", instance="b", node="node1", lane="takeover_bulk", topic="deliveries.node1", partition="0"} 50 40 30 20 10 0 30 20 10 0 40 30 20 10 0 50 40 30 20 10 0`},
		},
		{
			name: "the first dead letter of a reason, whose series is born at 1, in any lane; not an old one",
			fire: alertCase{alert: "AnnouncerDeadLetters", fires: 8 * time.Minute,
				series: `announcer_archiver_dead_letters_total{job="announcer-archiver", instance="r", reason="template"} _ _ _ _ _ 1 1 1 1 1
					announcer_fanout_dead_letters_total{job="announcer-fanout", instance="f", lane="priority", reason="undecodable"} _ _ _ 1 1 1 1 1 1 1`,
				labels: []string{`job=announcer-archiver,reason=template`, `job=announcer-fanout,reason=undecodable`}},
			quiet: alertCase{alert: "AnnouncerDeadLetters", fires: 25 * time.Minute,
				series: `announcer_archiver_dead_letters_total{job="announcer-archiver", instance="r", reason="template"} _ _ _ _ _ 1x30`},
		},
		{
			name: "a dead letter, with its reason; nothing when none was written",
			fire: alertCase{alert: "AnnouncerDeadLetters", fires: 4 * time.Minute,
				series: `announcer_sender_dead_letters_total{job="announcer-sender", instance="a", node="node1", reason="decode"} 0 0 0 1 1`,
				labels: []string{`job=announcer-sender,reason=decode`}},
			quiet: alertCase{alert: "AnnouncerDeadLetters", fires: 4 * time.Minute,
				series: `announcer_sender_dead_letters_total{job="announcer-sender", instance="a", node="node1", reason="decode"} 0 0 0 0 0`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []alertCase{tc.fire, tc.quiet} {
				r, ok := rules[c.alert]
				if !ok {
					t.Fatalf("no alert %s", c.alert)
				}
				got := firing(t, r, c.series, c.fires)
				if !slices.Equal(got, c.labels) {
					t.Errorf("%s at %s over\n%s\nfires %q, want %q", c.alert, c.fires, c.series, got, c.labels)
				}
			}
		})
	}
}

// firing is the label sets of r's alerts firing at, evaluated every 15 s (the compose
// Prometheus's evaluation_interval) from at - for to at.
func firing(t *testing.T, r rulefmt.Rule, series string, at time.Duration) []string {
	t.Helper()
	store := promqltest.LoadedStorage(t, "load 1m\n"+series)
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	var held map[string]bool
	for ts := at - time.Duration(r.For); ts <= at; ts += 15 * time.Second {
		q, err := engine.NewInstantQuery(context.Background(), store, nil, r.Expr, time.Unix(0, 0).Add(ts))
		if err != nil {
			t.Fatal(err)
		}
		res := q.Exec(context.Background())
		if res.Err != nil {
			t.Fatalf("%s at %s: %v", r.Alert, ts, res.Err)
		}
		vec, err := res.Vector()
		if err != nil {
			t.Fatal(err)
		}
		now := map[string]bool{}
		for _, s := range vec {
			now[labelSet(s)] = true
		}
		q.Close()
		if held == nil {
			held = now
			continue
		}
		for k := range held {
			if !now[k] {
				delete(held, k)
			}
		}
	}
	var out []string
	for k := range held {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// labelSet is an alert's labels from its sample: the metric name is not one of them.
func labelSet(s promql.Sample) string {
	var parts []string
	s.Metric.Range(func(l labels.Label) {
		if l.Name != model.MetricNameLabel {
			parts = append(parts, fmt.Sprintf("%s=%s", l.Name, l.Value))
		}
	})
	slices.Sort(parts)
	return strings.Join(parts, ",")
}
