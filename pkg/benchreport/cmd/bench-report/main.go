// Command bench-report is `make bench`'s bookkeeping:
//
//	bench-report gotest < go-test-bench-output   # record go test -bench figures in $ANNOUNCER_BENCH_OUT
//	bench-report gauge start|end                 # record the machine's speed (machine_gauge_<when>_ms)
//	bench-report compare OLD.json NEW.json       # two runs side by side
//	bench-report compare DIR                     # the two newest runs in DIR
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/announcer/announcer/pkg/benchreport"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench-report:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: bench-report gotest | gauge start|end | compare OLD NEW | compare DIR")
	}
	switch args[0] {
	case "gotest":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return err
		}
		_, _ = stdout.Write(b) // the figures stay visible in the terminal
		return benchreport.Record(benchreport.GoBench(string(b)))
	case "gauge":
		when := map[string]string{"start": "began", "end": "ended"}
		if len(args) != 2 || when[args[1]] == "" {
			return fmt.Errorf("usage: bench-report gauge start|end")
		}
		ms := float64(benchreport.Gauge(7).Microseconds()) / 1000
		fmt.Fprintf(stdout, "machine gauge (%s of the run): %.1f ms a pass of fixed work that no code here changes, median of 7\n", args[1], ms)
		return benchreport.Record(map[string]benchreport.Figure{"machine_gauge_" + args[1] + "_ms": {Value: ms,
			Note: "the machine's speed when the run " + when[args[1]] + ": ms per pass of benchreport.Gauge, median of 7 (higher: a slower machine, the same code)"}})
	case "compare":
		paths := args[1:]
		if len(paths) == 1 {
			var err error
			if paths, err = newestTwo(paths[0]); err != nil {
				return err
			}
		}
		if len(paths) != 2 {
			return fmt.Errorf("compare takes two run files, or a directory")
		}
		a, err := benchreport.Load(paths[0])
		if err != nil {
			return err
		}
		b, err := benchreport.Load(paths[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s → %s\n", paths[0], paths[1])
		return benchreport.Compare(stdout, a, b)
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// newestTwo are the two newest timestamped runs in dir (run-*.json).
func newestTwo(dir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(dir, "run-*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(m) // the names carry a sortable UTC timestamp
	if len(m) < 2 {
		return nil, fmt.Errorf("%s holds %d runs (%s); run make bench twice", dir, len(m), strings.Join(m, ", "))
	}
	return m[len(m)-2:], nil
}
