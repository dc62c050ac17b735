package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/announcer/announcer/pkg/benchreport"
)

// The gauge goes into the run's file under the moment it was taken.
func TestGaugeIsRecorded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.json")
	t.Setenv(benchreport.EnvFile, path)
	var out bytes.Buffer
	for _, when := range []string{"start", "end"} {
		if err := run([]string{"gauge", when}, nil, &out); err != nil {
			t.Fatal(err)
		}
	}
	r, err := benchreport.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"machine_gauge_start_ms", "machine_gauge_end_ms"} {
		if f, ok := r.Figures[name]; !ok || f.Value <= 0 || !strings.Contains(f.Note, "slower machine") {
			t.Errorf("%s: %+v (recorded: %v)", name, f, ok)
		}
	}
	if !strings.Contains(out.String(), "machine gauge (end of the run)") {
		t.Errorf("output: %q", out.String())
	}
	if err := run([]string{"gauge", "middle"}, nil, &out); err == nil {
		t.Error("gauge middle was accepted")
	}
}
