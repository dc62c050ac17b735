package benchreport

import (
	"bytes"
	"path/filepath"
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
