package main

import (
	"bytes"
	"testing"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

// The repository's local config must be valid for the ingress as shipped.
func TestLocalConfigIsValidForIngress(t *testing.T) {
	var stderr bytes.Buffer
	if code := boot.Main(config.RoleIngress, []string{"-config", "../../configs/announcer.toml", "-check-config"}, &stderr, run, nil); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

func TestInvalidConfigExits2(t *testing.T) {
	var stderr bytes.Buffer
	if code := boot.Main(config.RoleIngress, []string{"-config", "testdata/does-not-exist.toml"}, &stderr, run, nil); code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
}
