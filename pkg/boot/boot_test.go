package boot

import (
	"bytes"
	"context"
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
