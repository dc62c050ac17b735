package deployments

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/config"
)

const systemdDir = "systemd"

// unitFile is a systemd unit as "section.Key" -> values in file order (keys may repeat).
type unitFile map[string][]string

// parseUnit is the INI subset systemd units use: [Section], Key=Value, # and ; comments,
// backslash line continuation.
func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, path)))
	var cont string
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
			continue
		case strings.HasSuffix(line, `\`):
			cont = strings.TrimSuffix(line, `\`)
			continue
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not Key=Value in a section: %q", path, n, line)
		}
		key := section + "." + strings.TrimSpace(k)
		u[key] = append(u[key], strings.TrimSpace(v))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// last is the effective value of a single-valued key (a later assignment wins).
func (u unitFile) last(key string) (string, bool) {
	v, ok := u[key]
	if !ok || len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// serviceUnit is one announcer unit: the file, its role and what its debug port must be.
type serviceUnit struct {
	file      string
	role      config.Role
	debugPort string
	template  bool
}

var serviceUnits = []serviceUnit{
	{"announcer-ingress.service", config.RoleIngress, "6060", false},
	{"announcer-fanout.service", config.RoleFanout, "6061", false},
	{"announcer-sender@.service", config.RoleSender, "6062", true},
	{"announcer-archiver.service", config.RoleArchiver, "6063", false},
}

// systemdDuration reads the time spans these units use ("30s", "5s", "2min", "500ms", "10").
func systemdDuration(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(strings.Replace(s, "min", "m", 1))
}

var envRef = regexp.MustCompile(`\$\{(\w+)\}`)

// stopBudgets are how long each role may take from SIGTERM to the end of its
// stop: the stage runtime's ShutdownTimeout, which bounds the whole stop
// (pkg/lifecycle Run). source holds the lines of services/<role>/run.go the
// budget is taken from; TestStopBudgetsMatchTheServices fails when they
// change, so this table (and the stop timeouts it checks) must follow.
var stopBudgets = map[config.Role]struct {
	source []string
	budget func(config.Config) time.Duration
}{
	// services/ingress/run.go: the configurable [ingress] shutdown_timeout + 10 s.
	config.RoleIngress: {[]string{"rt.ShutdownTimeout = cfg.Ingress.ShutdownTimeout.D() + 10*time.Second"},
		func(c config.Config) time.Duration { return c.Ingress.ShutdownTimeout.D() + 10*time.Second }},
	// services/fanout/run.go: drainTimeout (5 s) + 10 s.
	config.RoleFanout: {[]string{"const drainTimeout = 5 * time.Second", "rt.ShutdownTimeout = drainTimeout + 10*time.Second"},
		func(config.Config) time.Duration { return 5*time.Second + 10*time.Second }},
	// services/sender/run.go: [sender] fence_timeout (default 30 s) + 15 s.
	config.RoleSender: {[]string{"rt.ShutdownTimeout = cfg.Sender.FenceTimeout.D() + 15*time.Second"},
		func(c config.Config) time.Duration { return c.Sender.FenceTimeout.D() + 15*time.Second }},
	// services/archiver/run.go: drainTimeout (20 s) + 15 s.
	config.RoleArchiver: {[]string{"drainTimeout = 20 * time.Second", "rt.ShutdownTimeout = drainTimeout + 15*time.Second"},
		func(config.Config) time.Duration { return 20*time.Second + 15*time.Second }},
}

// stopMargin is what a stop timeout leaves beyond the budget, for what runs
// after it: the closers (Kafka writers, stores, the debug listener) and the exit.
const stopMargin = 5 * time.Second

// stopBudget is role's budget under the longest of cfgs.
func stopBudget(t *testing.T, role config.Role, cfgs ...config.Config) time.Duration {
	t.Helper()
	b, ok := stopBudgets[role]
	if !ok {
		t.Fatalf("no stop budget for %s", role)
	}
	var longest time.Duration
	for _, c := range cfgs {
		longest = max(longest, b.budget(c))
	}
	return longest
}

// The budgets above are still what the services do.
func TestStopBudgetsMatchTheServices(t *testing.T) {
	for _, role := range roles {
		b, ok := stopBudgets[role]
		if !ok {
			t.Errorf("%s: no stop budget", role)
			continue
		}
		path := filepath.Join(repoRoot, "services", string(role), "run.go")
		src := string(readFile(t, path))
		for _, line := range b.source {
			if !strings.Contains(src, line) {
				t.Errorf("%s no longer has %q: update stopBudgets and the stop timeouts of the units and the compose file", path, line)
			}
		}
	}
}

func TestSystemdUnits(t *testing.T) {
	// The units run with the config installed from configs/announcer.toml, or one left at the defaults.
	shipped, err := config.Load(filepath.Join(repoRoot, "configs", "announcer.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, su := range serviceUnits {
		t.Run(su.file, func(t *testing.T) {
			u := parseUnit(t, filepath.Join(systemdDir, su.file))
			want := map[string]string{
				"Service.Type":               "exec",
				"Service.Restart":            "on-failure",
				"Service.User":               "announcer",
				"Service.Group":              "announcer",
				"Service.DynamicUser":        "no",
				"Service.KillSignal":         "SIGTERM",
				"Unit.PartOf":                "announcer.target",
				"Install.WantedBy":           "announcer.target",
				"Unit.StartLimitIntervalSec": "0",
				// Hardening.
				"Service.NoNewPrivileges":         "yes",
				"Service.CapabilityBoundingSet":   "",
				"Service.AmbientCapabilities":     "",
				"Service.ProtectSystem":           "strict",
				"Service.ProtectHome":             "yes",
				"Service.PrivateTmp":              "yes",
				"Service.PrivateDevices":          "yes",
				"Service.PrivateMounts":           "yes",
				"Service.ProtectKernelTunables":   "yes",
				"Service.ProtectKernelModules":    "yes",
				"Service.ProtectKernelLogs":       "yes",
				"Service.ProtectControlGroups":    "yes",
				"Service.ProtectClock":            "yes",
				"Service.ProtectHostname":         "yes",
				"Service.RestrictNamespaces":      "yes",
				"Service.RestrictRealtime":        "yes",
				"Service.RestrictSUIDSGID":        "yes",
				"Service.LockPersonality":         "yes",
				"Service.MemoryDenyWriteExecute":  "yes",
				"Service.SystemCallArchitectures": "native",
				"Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
			}
			for k, w := range want {
				if got, ok := u.last(k); !ok || got != w {
					t.Errorf("%s=%q (set: %v), want %q", k, got, ok, w)
				}
			}
			if filters := u["Service.SystemCallFilter"]; !contains(filters, "@system-service") {
				t.Errorf("SystemCallFilter %q: want @system-service", filters)
			}

			rs, _ := u.last("Service.RestartSec")
			if d, err := systemdDuration(rs); err != nil || d <= 0 {
				t.Errorf("RestartSec=%q: want a positive delay", rs)
			}
			// systemd kills what is still running after TimeoutStopSec: the stop must be over by then.
			budget := stopBudget(t, su.role, config.Default(), shipped)
			ts, _ := u.last("Service.TimeoutStopSec")
			if d, err := systemdDuration(ts); err != nil || d < budget+stopMargin {
				t.Errorf("TimeoutStopSec=%q: want at least %s, the %s the %s may take to stop plus %s", ts, budget+stopMargin, budget, su.role, stopMargin)
			}
			nofile, _ := u.last("Service.LimitNOFILE")
			if n, err := strconv.Atoi(nofile); err != nil || n < 65536 {
				t.Errorf("LimitNOFILE=%q: want at least 65536", nofile)
			}

			// ExecStartPre validates the very config ExecStart runs with.
			bin := binDir + binaryOf(su.role)
			wantPre := bin + " -config " + configInContainer + " -check-config"
			if su.template {
				wantPre += " -node %i"
			}
			pre, _ := u.last("Service.ExecStartPre")
			if pre != wantPre {
				t.Errorf("ExecStartPre=%q, want %q", pre, wantPre)
			}
			start, _ := u.last("Service.ExecStart")
			argv := strings.Fields(start)
			if len(argv) == 0 || argv[0] != bin {
				t.Fatalf("ExecStart=%q: want %s", start, bin)
			}
			flags, err := parseServiceFlags(su.role, argv[1:])
			if err != nil {
				t.Fatalf("ExecStart=%q: %v", start, err)
			}
			if flags.config != configInContainer || flags.checkConfig {
				t.Errorf("ExecStart=%q: want -config %s and no -check-config", start, configInContainer)
			}
			if su.template && flags.node != "%i" {
				t.Errorf("template ExecStart=%q: want -node %%i (the instance is the node)", start)
			}
			// -debug-port comes from Environment=DEBUG_PORT=, so one drop-in line moves it.
			env := map[string]string{}
			for _, e := range u["Service.Environment"] {
				k, v, _ := strings.Cut(e, "=")
				env[k] = v
			}
			debug := envRef.ReplaceAllStringFunc(flags.debugPort, func(ref string) string {
				return env[envRef.FindStringSubmatch(ref)[1]]
			})
			if debug != "127.0.0.1:"+su.debugPort {
				t.Errorf("-debug-port %q = %q, want 127.0.0.1:%s", flags.debugPort, debug, su.debugPort)
			}
		})
	}
}

func TestSystemdTargetAndUser(t *testing.T) {
	target := parseUnit(t, filepath.Join(systemdDir, "announcer.target"))
	if w, _ := target.last("Install.WantedBy"); w != "multi-user.target" {
		t.Errorf("announcer.target WantedBy=%q, want multi-user.target", w)
	}
	sysusers := string(readFile(t, filepath.Join(systemdDir, "announcer.sysusers")))
	if !regexp.MustCompile(`(?m)^u announcer\s`).MatchString(sysusers) {
		t.Errorf("announcer.sysusers does not create the user announcer:\n%s", sysusers)
	}
}

// systemd-analyze checks the units as systemd itself would load them, in a scratch root that
// holds the system's own units (for sysinit.target and friends), these units, and stand-ins for
// the binaries (verify refuses units whose executables are missing). It also rates their
// hardening: `security` must find the exposure low.
func TestSystemdAnalyze(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	systemUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(systemUnits, "sysinit.target")); err != nil {
		t.Skipf("no system units in %s to verify against", systemUnits)
	}
	root := t.TempDir()
	if out, err := exec.Command("mkdir", "-p", filepath.Join(root, "usr/lib/systemd"), filepath.Join(root, "etc/systemd/system"),
		filepath.Join(root, "usr/local/bin")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// cp -a keeps the symlinks (aliases, .wants) that systemd resolves inside the root.
	if out, err := exec.Command("cp", "-a", systemUnits, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v: %s", systemUnits, err, out)
	}
	entries, err := os.ReadDir(systemdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".service") || strings.HasSuffix(e.Name(), ".target") {
			if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", e.Name()), readFile(t, filepath.Join(systemdDir, e.Name())), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, r := range roles {
		if err := os.WriteFile(filepath.Join(root, "usr/local/bin", binaryOf(r)), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	units := []string{"announcer.target"}
	for _, su := range serviceUnits {
		name := su.file
		if su.template {
			name = strings.Replace(name, "@.", "@node1.", 1) // verify an instance, as systemd runs it
		}
		units = append(units, name)
	}
	exposure := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, unit := range units {
		t.Run(unit, func(t *testing.T) {
			cmd := exec.Command(analyze, "verify", "--man=no", "--generators=no", "--root="+root, unit)
			cmd.Dir = filepath.Join(root, "etc/systemd/system")
			out, err := cmd.CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) != 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
			}
			if !strings.HasSuffix(unit, ".service") {
				return
			}
			cmd = exec.Command(analyze, "security", "--offline=true", "--no-pager", "--root="+root, unit)
			cmd.Dir = filepath.Join(root, "etc/systemd/system")
			out, err = cmd.CombinedOutput()
			m := exposure.FindSubmatch(out)
			if m == nil {
				t.Fatalf("systemd-analyze security %s: %v\n%s", unit, err, out)
			}
			// 0 is fully locked down, 10 is no hardening at all; 2 is well inside "OK".
			if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
				t.Errorf("%s exposure %.1f > 2.0:\n%s", unit, level, out)
			}
		})
	}
}
