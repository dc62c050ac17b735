// Package benchreport collects the figures of one `make bench` run into one
// JSON file that every benchmark of the run adds to, so two runs can be
// compared (bench/latest.json, plus a timestamped copy per run).
//
// Figure names are stable and say what they measure and in which unit:
// pipeline_1m_seconds, sender_stanzas_per_second, ingress_p99_ms. A
// baseline measured in the same run is a figure of its own, named for what it is.
package benchreport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// EnvFile names the run's file; benchmarks record nothing without it.
const EnvFile = "ANNOUNCER_BENCH_OUT"

// Figure is one measured value.
type Figure struct {
	Value float64 `json:"value"`
	// Note says how it was measured or what it compares with.
	Note string `json:"note,omitempty"`
}

// Run is one `make bench`.
type Run struct {
	Started time.Time         `json:"started"`
	Host    string            `json:"host"`
	CPUs    int               `json:"cpus"`
	Figures map[string]Figure `json:"figures"`
}

// Record merges figures into the run's file (ANNOUNCER_BENCH_OUT); without
// it, it does nothing. Benchmarks of one run call it one after another.
func Record(figures map[string]Figure) error {
	path := os.Getenv(EnvFile)
	if path == "" {
		return nil
	}
	r, err := Load(path)
	if errors.Is(err, os.ErrNotExist) {
		host, _ := os.Hostname()
		r = Run{Started: time.Now().UTC(), Host: host, CPUs: runtime.NumCPU(), Figures: map[string]Figure{}}
	} else if err != nil {
		return err
	}
	for k, v := range figures {
		if !validName(k) {
			return fmt.Errorf("benchreport: figure name %q: want lower_snake_case ending in its unit", k)
		}
		r.Figures[k] = v
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// Load reads a run's file.
func Load(path string) (Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Run{}, err
	}
	var r Run
	if err := json.Unmarshal(b, &r); err != nil {
		return Run{}, fmt.Errorf("benchreport: %s: %w", path, err)
	}
	if r.Figures == nil {
		r.Figures = map[string]Figure{}
	}
	return r, nil
}

// Compare writes the figures of two runs side by side, with the change.
func Compare(w io.Writer, a, b Run) error {
	names := map[string]bool{}
	width := len("figure")
	for n := range a.Figures {
		names[n] = true
	}
	for n := range b.Figures {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
		width = max(width, len(n))
	}
	sort.Strings(sorted)
	fmt.Fprintf(w, "%-*s  %14s  %14s  %8s\n", width, "figure", a.Started.Format("2006-01-02 15:04"), b.Started.Format("2006-01-02 15:04"), "change")
	for _, n := range sorted {
		fa, oka := a.Figures[n]
		fb, okb := b.Figures[n]
		change := ""
		if oka && okb && fa.Value != 0 {
			change = fmt.Sprintf("%+.1f%%", 100*(fb.Value-fa.Value)/fa.Value)
		}
		fmt.Fprintf(w, "%-*s  %14s  %14s  %8s\n", width, n, cell(fa, oka), cell(fb, okb), change)
	}
	return nil
}

func cell(f Figure, ok bool) string {
	if !ok {
		return "-"
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", f.Value), "0"), ".")
}

// GoBench turns `go test -bench` output lines into figures:
// BenchmarkRender-2  1000  59.1 ns/op  0 B/op  0 allocs/op becomes
// go_render_ns_per_op and go_render_allocs_per_op.
func GoBench(out string) map[string]Figure {
	figures := map[string]Figure{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i]
		}
		name = "go_" + snake(name)
		for i := 2; i+1 < len(f); i += 2 {
			var v float64
			if _, err := fmt.Sscan(f[i], &v); err != nil {
				continue
			}
			unit := strings.NewReplacer("/", "_per_", "-", "_").Replace(f[i+1])
			figures[name+"_"+snake(unit)] = Figure{Value: v, Note: "go test -bench"}
		}
	}
	return figures
}

// snake turns CamelCase (acronyms kept whole: JIDAndRender is
// jid_and_render) and punctuation into lower_snake_case.
func snake(s string) string {
	r := []rune(s)
	var b strings.Builder
	sep := func() {
		if b.Len() > 0 && !strings.HasSuffix(b.String(), "_") {
			b.WriteByte('_')
		}
	}
	upper := func(c rune) bool { return c >= 'A' && c <= 'Z' }
	lower := func(c rune) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }
	for i, c := range r {
		switch {
		case upper(c):
			// A word starts at an upper case letter after a lower case one, or
			// at the last capital of an acronym followed by lower case.
			if i > 0 && (lower(r[i-1]) || (upper(r[i-1]) && i+1 < len(r) && lower(r[i+1]))) {
				sep()
			}
			b.WriteRune(c + 'a' - 'A')
		case lower(c):
			b.WriteRune(c)
		default:
			sep()
		}
	}
	return strings.Trim(b.String(), "_")
}
