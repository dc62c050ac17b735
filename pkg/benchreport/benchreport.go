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

// Compare writes the figures of two runs side by side, with the change. When
// both runs carry a machine gauge (machine_gauge_start_ms, machine_gauge_end_ms)
// it also prints the gauge ratio, new ÷ old, and a gauge-adjusted change
// column: a time scaled down by the ratio, a rate up by it, so that a slower
// hour of this shared host does not read as slower code. Figures that do not
// move with the machine's speed (ratios, percentages, allocations, sizes,
// counts) have no adjusted change.
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
	ga, oka := a.Gauge()
	gb, okb := b.Gauge()
	gauged := oka && okb
	ratio := gb / ga
	if gauged {
		fmt.Fprintf(w, "machine gauge: %.1f ms → %.1f ms a pass (mean of the run's start and end), ratio %.3f (>1: the newer run's machine was slower);\n"+
			"adjusted: the change with times ÷ %.3f and rates × %.3f\n", ga, gb, ratio, ratio, ratio)
	}
	header := fmt.Sprintf("%-*s  %14s  %14s  %8s", width, "figure", a.Started.Format("2006-01-02 15:04"), b.Started.Format("2006-01-02 15:04"), "change")
	if gauged {
		header += fmt.Sprintf("  %8s", "adjusted")
	}
	fmt.Fprintln(w, header)
	for _, n := range sorted {
		fa, oka := a.Figures[n]
		fb, okb := b.Figures[n]
		change, adjusted := "", ""
		if oka && okb && fa.Value != 0 {
			change = fmt.Sprintf("%+.1f%%", 100*(fb.Value-fa.Value)/fa.Value)
			if gauged {
				switch speedKind(n) {
				case kindTime:
					adjusted = fmt.Sprintf("%+.1f%%", 100*(fb.Value/ratio-fa.Value)/fa.Value)
				case kindRate:
					adjusted = fmt.Sprintf("%+.1f%%", 100*(fb.Value*ratio-fa.Value)/fa.Value)
				}
			}
		}
		line := fmt.Sprintf("%-*s  %14s  %14s  %8s", width, n, cell(fa, oka), cell(fb, okb), change)
		if gauged {
			line += fmt.Sprintf("  %8s", adjusted)
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	return nil
}

// Gauge is the run's machine gauge in ms a pass: the mean of its start and
// end figures, or the one it has; false without either.
func (r Run) Gauge() (float64, bool) {
	var sum float64
	var n int
	for _, name := range []string{"machine_gauge_start_ms", "machine_gauge_end_ms"} {
		if f, ok := r.Figures[name]; ok && f.Value > 0 {
			sum += f.Value
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

type kind int

const (
	kindOther kind = iota // does not move with the machine's speed
	kindTime              // grows as the machine slows
	kindRate              // shrinks as the machine slows
)

// speedKind tells from a figure's unit (the end of its name) how it moves
// with the machine's speed.
func speedKind(name string) kind {
	switch {
	case strings.HasPrefix(name, "machine_gauge_"):
		return kindOther
	case strings.HasSuffix(name, "_per_second"), strings.HasSuffix(name, "_per_s"):
		return kindRate
	case strings.HasSuffix(name, "_seconds"), strings.HasSuffix(name, "_ms"), strings.HasSuffix(name, "_ns_per_op"),
		strings.Contains(name, "_us_per_"), strings.Contains(name, "_ms_per_"):
		return kindTime
	}
	return kindOther
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
