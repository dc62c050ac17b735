package main

import (
	"bytes"
	"testing"

	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
)

// The repository's local config must be valid for fanout as shipped.
func TestLocalConfigIsValidForFanout(t *testing.T) {
	var stderr bytes.Buffer
	if code := boot.Main(config.RoleFanout, []string{"-config", "../../configs/announcer.toml", "-check-config"}, &stderr, run, nil); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}
