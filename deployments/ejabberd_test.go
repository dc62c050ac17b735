package deployments

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The parts of an ejabberd.yml the announcer depends on.
type ejabberdYAML struct {
	Hosts   []string           `yaml:"hosts"`
	Listen  []ejabberdListener `yaml:"listen"`
	Modules map[string]any     `yaml:"modules"`
	Rest    map[string]any     `yaml:",inline"`
}

type ejabberdListener struct {
	Port            int                       `yaml:"port"`
	IP              string                    `yaml:"ip"`
	Module          string                    `yaml:"module"`
	StartTLS        bool                      `yaml:"starttls"`
	CheckFrom       bool                      `yaml:"check_from"`
	Hosts           map[string]map[string]any `yaml:"hosts"`
	RequestHandlers map[string]string         `yaml:"request_handlers"`
	Rest            map[string]any            `yaml:",inline"`
}

func (e ejabberdYAML) listener(module string) (ejabberdListener, bool) {
	for _, l := range e.Listen {
		if l.Module == module {
			return l, true
		}
	}
	return ejabberdListener{}, false
}

func loadEjabberdYAML(t *testing.T, path string) ejabberdYAML {
	t.Helper()
	var e ejabberdYAML
	decodeYAML(t, path, &e)
	return e
}

// The local stack's template with its placeholders at the stack's default values.
func loadStackEjabberdYAML(t *testing.T) ejabberdYAML {
	t.Helper()
	tmpl := string(readFile(t, filepath.Join(repoRoot, "scripts/stack/ejabberd/ejabberd.yml.in")))
	r := strings.NewReplacer("@C2S_PORT@", "5222", "@COMPONENT_PORT@", "8889", "@HTTP_PORT@", "5280",
		"@COMPONENT_DOMAIN@", "announcer.localhost", "@COMPONENT_SECRET@", "announcer", "@CERTFILE@", "/cert.pem")
	path := filepath.Join(t.TempDir(), "ejabberd.yml")
	if err := os.WriteFile(path, []byte(r.Replace(tmpl)), 0o600); err != nil {
		t.Fatal(err)
	}
	return loadEjabberdYAML(t, path)
}

// ejabberd serves the users' domain and accepts the component the config connects as, with its
// secret, on the port of the node's address, which compose publishes.
func TestEjabberdConfigMatchesAnnouncerConfig(t *testing.T) {
	cfg := loadComposeConfig(t)
	ej := loadEjabberdYAML(t, ejabberdYAMLPath)
	if !slices.Contains(ej.Hosts, cfg.UserDomain()) {
		t.Errorf("ejabberd hosts %q do not include the users' domain %q", ej.Hosts, cfg.UserDomain())
	}
	svc, ok := ej.listener("ejabberd_service")
	if !ok {
		t.Fatal("no ejabberd_service (XEP-0114) listener")
	}
	for _, n := range cfg.Nodes {
		if _, port, _ := strings.Cut(n.Address, ":"); port != strconv.Itoa(svc.Port) {
			t.Errorf("node %s at %s, the component listener is on %d", n.Name, n.Address, svc.Port)
		}
	}
	host, ok := svc.Hosts[cfg.Component.JID()]
	if !ok {
		t.Fatalf("component listener accepts %v, the sender connects as %q", svc.Hosts, cfg.Component.JID())
	}
	if host["password"] != cfg.Component.Secret.Value() {
		t.Error("component password differs from [component] secret")
	}
	if !svc.CheckFrom {
		t.Error("component listener without check_from: a component could send as any domain")
	}
	compose := loadCompose(t).Services["ejabberd"]
	mounted := false
	for _, m := range compose.bindMounts(t) {
		if filepath.Clean(m.source) == filepath.Clean(ejabberdYAMLPath) && m.target == "/opt/ejabberd/conf/ejabberd.yml" {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("%s is not mounted at /opt/ejabberd/conf/ejabberd.yml (volumes %q)", ejabberdYAMLPath, compose.Volumes)
	}
	for _, l := range ej.Listen {
		if !compose.publishes(t, strconv.Itoa(l.Port)) {
			t.Errorf("listener %s on %d is not published", l.Module, l.Port)
		}
		// Inside a container, 127.0.0.1 would be unreachable from the other services.
		if l.IP != "0.0.0.0" {
			t.Errorf("listener %s binds %q, want 0.0.0.0 (compose publishes on the host's 127.0.0.1)", l.Module, l.IP)
		}
	}
}

// "The same listeners as the local stack": same modules on the same ports with the same
// options, apart from the bind address, and the same modules loaded.
func TestEjabberdConfigMatchesLocalStack(t *testing.T) {
	got := loadEjabberdYAML(t, ejabberdYAMLPath)
	want := loadStackEjabberdYAML(t)
	if len(got.Listen) != len(want.Listen) {
		t.Fatalf("%d listeners, the local stack has %d", len(got.Listen), len(want.Listen))
	}
	for _, w := range want.Listen {
		var g ejabberdListener
		ok := false
		for _, l := range got.Listen {
			if l.Port == w.Port {
				g, ok = l, true
			}
		}
		if !ok {
			t.Errorf("no %s listener on port %d", w.Module, w.Port)
			continue
		}
		g.IP, w.IP = "", ""
		gy, _ := yaml.Marshal(g)
		wy, _ := yaml.Marshal(w)
		if string(gy) != string(wy) {
			t.Errorf("%s listener differs from the local stack's:\n got: %s\nwant: %s", w.Module, gy, wy)
		}
	}
	var gm, wm []string
	for m := range got.Modules {
		gm = append(gm, m)
	}
	for m := range want.Modules {
		wm = append(wm, m)
	}
	slices.Sort(gm)
	slices.Sort(wm)
	if !slices.Equal(gm, wm) {
		t.Errorf("modules %q, the local stack loads %q", gm, wm)
	}
	if !slices.Equal(got.Hosts, want.Hosts) {
		t.Errorf("hosts %q, the local stack serves %q", got.Hosts, want.Hosts)
	}
}
