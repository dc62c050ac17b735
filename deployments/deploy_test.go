// Package deployments is the deployment files (compose, Dockerfile, systemd units, Zabbix items)
// and the tests that keep them consistent with each other and with pkg/config: no container
// engine or init system runs where the tests run, so these checks are what proves the files.
package deployments

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/announcer/announcer/pkg/config"
)

// The Zabbix test serves HTTP and runs commands: nothing may outlive the tests.
// repoRoot is where go.work, scripts/ and services/ are: the tests run in deployments/.
const repoRoot = ".."

const (
	composePath       = "docker-compose.yml"
	dockerfilePath    = "Dockerfile"
	composeConfigPath = "announcer.compose.toml"
	ejabberdYAMLPath  = "ejabberd/ejabberd.yml"
	// The path every announcer container and unit reads its config from.
	configInContainer = "/etc/announcer/announcer.toml"
	binDir            = "/usr/local/bin/"
)

// roles are the four services; each binary is announcer-<role>.
var roles = []config.Role{config.RoleIngress, config.RoleFanout, config.RoleSender, config.RoleArchiver}

func binaryOf(r config.Role) string { return "announcer-" + string(r) }

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeYAML decodes strictly: a key the struct does not know is an error, so a misspelt
// compose key cannot slip past the assertions.
func decodeYAML(t *testing.T, path string, v any) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, path)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// serviceFlags parses a service's command line the way pkg/boot does (and the sender's -node),
// so a flag the binaries do not accept fails here instead of in a container.
type serviceFlags struct {
	config, debugPort, node string
	checkConfig             bool
}

func parseServiceFlags(role config.Role, args []string) (serviceFlags, error) {
	var f serviceFlags
	fs := flag.NewFlagSet(string(role), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.config, "config", "announcer.toml", "")
	fs.BoolVar(&f.checkConfig, "check-config", false, "")
	fs.StringVar(&f.debugPort, "debug-port", "", "")
	if role == config.RoleSender {
		fs.StringVar(&f.node, "node", "", "")
	}
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() != 0 {
		return f, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return f, nil
}

// effectiveConfig loads path and applies the flags as boot.Main and the sender's flag hook do.
func effectiveConfig(path string, role config.Role, f serviceFlags) (config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return cfg, err
	}
	if f.debugPort != "" {
		cfg.DebugPort = f.debugPort
	}
	if role == config.RoleSender {
		if f.node != "" {
			cfg.Sender.Node = f.node
		}
		if cfg.Sender.Node == "" && len(cfg.Nodes) == 1 {
			cfg.Sender.Node = cfg.Nodes[0].Name
		}
		if cfg.Sender.Node == "" && len(cfg.Nodes) > 1 {
			return cfg, errors.Join(cfg.Validate(role), fmt.Errorf("[sender] node: not set among %d nodes", len(cfg.Nodes)))
		}
	}
	return cfg, cfg.Validate(role)
}

func roleOfBinary(bin string) (config.Role, bool) {
	for _, r := range roles {
		if filepath.Base(bin) == binaryOf(r) {
			return r, true
		}
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// goWorkUses lists the module directories of the repository's go.work.
func goWorkUses(t *testing.T) []string {
	t.Helper()
	var uses []string
	inBlock := false
	for _, line := range strings.Split(string(readFile(t, filepath.Join(repoRoot, "go.work"))), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "use (":
			inBlock = true
		case inBlock && line == ")":
			inBlock = false
		case inBlock && line != "" && !strings.HasPrefix(line, "//"):
			uses = append(uses, filepath.Clean(line))
		case strings.HasPrefix(line, "use "):
			uses = append(uses, filepath.Clean(strings.TrimSpace(strings.TrimPrefix(line, "use "))))
		}
	}
	return uses
}
