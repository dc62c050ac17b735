package benchreport

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Benchmarks of one run add to one file; a second run compares with it.
func TestRecordMergesAndCompares(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.json")
	t.Setenv(EnvFile, path)
	if err := Record(map[string]Figure{"fanout_1m_seconds": {Value: 1.5}}); err != nil {
		t.Fatal(err)
	}
	if err := Record(map[string]Figure{"sender_stanzas_per_second": {Value: 2e6, Note: "4 in flight"}}); err != nil {
		t.Fatal(err)
	}
	if err := Record(map[string]Figure{"Bad Name": {Value: 1}}); err == nil {
		t.Fatal("a name that is not snake case was accepted")
	}
	a, err := Load(path)
	if err != nil || len(a.Figures) != 2 || a.Figures["sender_stanzas_per_second"].Note != "4 in flight" {
		t.Fatalf("run %+v, %v", a, err)
	}
	b := a
	b.Figures = map[string]Figure{"fanout_1m_seconds": {Value: 1.2}, "pipeline_1m_seconds": {Value: 1.9}}
	var out bytes.Buffer
	if err := Compare(&out, a, b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fanout_1m_seconds", "1.5", "1.2", "-20.0%", "pipeline_1m_seconds", "sender_stanzas_per_second"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{"AppendJIDAndRender": "append_jid_and_render", "MB_per_s": "mb_per_s",
		"ns_per_op": "ns_per_op", "RenderSprintfReplaceAll": "render_sprintf_replace_all", "Parse2X": "parse2_x"} {
		if got := snake(in); got != want {
			t.Errorf("snake(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGoBench(t *testing.T) {
	got := GoBench("goos: linux\nBenchmarkRenderTemplate-2   \t 2000000\t 59.10 ns/op\t 0 B/op\t 0 allocs/op\nPASS\n")
	if got["go_render_template_ns_per_op"].Value != 59.1 || got["go_render_template_allocs_per_op"].Value != 0 ||
		len(got) != 3 {
		t.Fatalf("%+v", got)
	}
}

// With a machine gauge on both runs, the comparison adjusts times and rates by the gauge
// ratio: the newer run's machine twice as slow makes 10 s → 18 s a 10 % gain, and a rate
// halved less than the machine a gain too; ratios and allocations are left alone.
func TestCompareGaugeAdjusted(t *testing.T) {
	a := Run{Figures: map[string]Figure{
		"machine_gauge_start_ms": {Value: 20}, "machine_gauge_end_ms": {Value: 30}, // 25 ms
		"pipeline_1m_seconds": {Value: 10}, "sender_stanzas_per_second": {Value: 2e6},
		"ejabberd_sender_alone_vs_raw_ratio": {Value: 1}, "go_parse_allocs_per_op": {Value: 4},
	}}
	b := Run{Figures: map[string]Figure{
		"machine_gauge_start_ms": {Value: 45}, "machine_gauge_end_ms": {Value: 55}, // 50 ms: ratio 2
		"pipeline_1m_seconds": {Value: 18}, "sender_stanzas_per_second": {Value: 1.1e6},
		"ejabberd_sender_alone_vs_raw_ratio": {Value: 0.9}, "go_parse_allocs_per_op": {Value: 4},
	}}
	var out bytes.Buffer
	if err := Compare(&out, a, b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "25.0 ms → 50.0 ms") || !strings.Contains(out.String(), "ratio 2.000") {
		t.Errorf("no gauge ratio:\n%s", out.String())
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = f[1:]
		}
	}
	if h := rows["figure"]; len(h) == 0 || h[len(h)-1] != "adjusted" {
		t.Errorf("header %q lacks the adjusted column", h)
	}
	for name, want := range map[string][]string{
		"pipeline_1m_seconds":                {"10", "18", "+80.0%", "-10.0%"},
		"sender_stanzas_per_second":          {"2000000", "1100000", "-45.0%", "+10.0%"},
		"ejabberd_sender_alone_vs_raw_ratio": {"1", "0.9", "-10.0%"},
		"go_parse_allocs_per_op":             {"4", "4", "+0.0%"},
		"machine_gauge_end_ms":               {"30", "55", "+83.3%"},
	} {
		if got := rows[name]; !slices.Equal(got, want) {
			t.Errorf("%s: row %q, want %q", name, got, want)
		}
	}

	// Without a gauge on one side there is nothing to adjust by: no ratio, no column.
	delete(b.Figures, "machine_gauge_start_ms")
	delete(b.Figures, "machine_gauge_end_ms")
	out.Reset()
	if err := Compare(&out, a, b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "adjusted") || strings.Contains(out.String(), "machine gauge") {
		t.Errorf("adjusted without both gauges:\n%s", out.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "pipeline_1m_seconds" && !slices.Equal(f[1:], []string{"10", "18", "+80.0%"}) {
			t.Errorf("row %q, want the change alone", f)
		}
	}
}

func TestSpeedKind(t *testing.T) {
	for name, want := range map[string]kind{
		"ingress_p99_ms": kindTime, "fanout_1m_cpu_seconds": kindTime, "go_parse_ns_per_op": kindTime,
		"ejabberd_clients_cpu_us_per_stanza": kindTime, "go_storage_write_archiver_ms_per_1k_records": kindTime,
		"sender_stanzas_per_second": kindRate, "go_append_render_mb_per_s": kindRate, "go_paced_send_min_wait_stanzas_per_s": kindRate,
		"machine_gauge_end_ms": kindOther, "fanout_peak_rss_mib": kindOther, "fanout_progress_overhead_percent": kindOther,
		"go_storage_write_archiver_requests_per_1k_records": kindOther, "go_paced_send_min_wait_flushes_per_1k_stanzas": kindOther,
		"ejabberd_multicast_vs_unicast_ratio": kindOther, "go_parse_b_per_op": kindOther,
	} {
		if got := speedKind(name); got != want {
			t.Errorf("speedKind(%q) = %d, want %d", name, got, want)
		}
	}
}
