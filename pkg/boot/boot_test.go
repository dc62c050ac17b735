package boot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
)

func mustNotRun(t *testing.T) RunFunc[struct{}] {
	return func(context.Context, zerolog.Logger, config.Config, struct{}) error {
		t.Error("run was called")
		return nil
	}
}

// The repository's local config (what make run uses) is valid for every service as shipped.
func TestLocalConfigIsValidForEveryService(t *testing.T) {
	for _, role := range []config.Role{config.RoleIngress, config.RoleFanout, config.RoleSender, config.RoleArchiver} {
		var stderr bytes.Buffer
		code := Main(role, []string{"-config", "../../configs/announcer.toml", "-check-config"}, &stderr, mustNotRun(t), nil)
		if code != 0 || !strings.Contains(stderr.String(), "is valid for "+string(role)) {
			t.Errorf("%s: exit %d: %s", role, code, stderr.String())
		}
	}
}

func TestInvalidConfigExits2(t *testing.T) {
	var stderr bytes.Buffer
	if code := Main(config.RoleIngress, []string{"-config", "testdata/does-not-exist.toml"}, &stderr, mustNotRun(t), nil); code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
}

// The service's run gets the logger, the config as loaded and zero hooks.
func TestMainRunsTheServiceWithoutHooks(t *testing.T) {
	type hooks struct{ seen func() }
	var stderr bytes.Buffer
	called := false
	run := func(_ context.Context, _ zerolog.Logger, cfg config.Config, h hooks) error {
		called = true
		if h.seen != nil || cfg.Bus.AnnouncementsTopic == "" {
			t.Errorf("hooks %v, config %+v", h, cfg.Bus)
		}
		return nil
	}
	if code := Main(config.RoleArchiver, []string{"-config", "../../configs/announcer.toml"}, &stderr, run, nil); code != 0 || !called {
		t.Fatalf("exit %d, called %v: %s", code, called, stderr.String())
	}
}

// -check-config says how a first-generation file was read.
func TestCheckConfigShowsTheMapping(t *testing.T) {
	var stderr bytes.Buffer
	code := Main(config.RoleFanout, []string{"-config", "../config/testdata/old-section-names.toml", "-check-config"}, &stderr, mustNotRun(t), nil)
	out := stderr.String()
	for _, want := range []string{"note: [kafka] read as [kafka-consumer]", `warning: [user-activity-redis] set_prefix "online:" is not read`} {
		if !strings.Contains(out, want) {
			t.Errorf("exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
}

// A config the fanout accepts, with a note ([redis] alias) and a warning (set_prefix); extra is appended.
func fanoutConfig(t *testing.T, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "announcer.toml")
	body := `[redis]
cluster_nodes = "10.0.0.7:6379"
set_prefix = "online:"

[mysql]
address = "10.0.0.6:3306"
db = "d"

[ejabberd]
cluster_nodes = "10.0.0.8:8889"

[component]
name = "announcer"
secret = "s"
domain = "example.org"
` + extra
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func checkConfig(t *testing.T, path string) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	code := Main(config.RoleFanout, []string{"-config", path, "-check-config"}, &stderr, mustNotRun(t), nil)
	return code, stderr.String()
}

// A log file the service could not open fails the check, listed with the
// config's other problems, instead of "valid" and a start that fails forever.
// One that can be created passes and is not left behind (run as root, the
// check would leave a file the service's user cannot open); an existing one
// is opened for append and kept as it is.
func TestCheckConfigOpensTheLogFile(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "no-such-dir", "announcer.log")
	code, out := checkConfig(t, fanoutConfig(t, "[log]\nlog_dst = \""+dst+"\"\n[fanout]\nbatch_size = 0\n"))
	if code != 2 || strings.Contains(out, "is valid") {
		t.Fatalf("exit %d, want 2:\n%s", code, out)
	}
	for _, want := range []string{"[log] log_dst: open " + dst, "[fanout] batch_size 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	dst = filepath.Join(t.TempDir(), "announcer.log")
	path := fanoutConfig(t, "[log]\nlog_dst = \""+dst+"\"\n")
	if code, out := checkConfig(t, path); code != 0 {
		t.Fatalf("a log file that can be created: exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("the check left %s behind (stat: %v)", dst, err)
	}
	if err := os.WriteFile(dst, []byte("old lines\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if code, out := checkConfig(t, path); code != 0 {
		t.Fatalf("an existing log file: exit %d:\n%s", code, out)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "old lines\n" {
		t.Errorf("existing log file now %q (%v)", b, err)
	}
}

// Notes and warnings say how the file was read, which explains its problems
// too: they come before the errors of an invalid config, as MIGRATION.md says.
func TestCheckConfigPrintsNotesBeforeProblems(t *testing.T) {
	code, out := checkConfig(t, fanoutConfig(t, "[fanout]\nbatch_size = 0\n"))
	if code != 2 {
		t.Fatalf("exit %d, want 2:\n%s", code, out)
	}
	note := strings.Index(out, "note: [redis] read as [user-activity-redis]")
	warning := strings.Index(out, `warning: [user-activity-redis] set_prefix "online:" is not read`)
	invalid := strings.Index(out, "is invalid")
	if note < 0 || warning < 0 || invalid < 0 || note > invalid || warning > invalid {
		t.Errorf("want the note and the warning before the problems:\n%s", out)
	}
}

// The units pass -debug-port; the file's debug_port (where the first
// generation served pprof) is then not used, and the check says so.
func TestDebugPortFlagOverrideIsNoted(t *testing.T) {
	path := fanoutConfig(t, "")
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append([]byte("debug_port = \":6060\"\n"), body...), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	code := Main(config.RoleFanout, []string{"-config", path, "-debug-port", "127.0.0.1:6061", "-check-config"}, &stderr, mustNotRun(t), nil)
	if want := `note: debug_port ":6060" of the file is overridden by -debug-port "127.0.0.1:6061"`; code != 0 || !strings.Contains(stderr.String(), want) {
		t.Fatalf("exit %d, want 0 and %q:\n%s", code, want, stderr.String())
	}
	stderr.Reset()
	Main(config.RoleFanout, []string{"-config", fanoutConfig(t, ""), "-debug-port", "127.0.0.1:6061", "-check-config"}, &stderr, mustNotRun(t), nil)
	if strings.Contains(stderr.String(), "debug_port") {
		t.Errorf("a file without debug_port: %s", stderr.String())
	}
}
