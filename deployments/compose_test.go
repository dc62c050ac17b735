package deployments

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"

	"github.com/announcer/announcer/pkg/config"
)

// The compose file as these tests read it. Only the forms the file uses are accepted (exec-form
// commands, short port and volume syntax, depends_on with conditions): a change of form has to
// come with a change here, which is the point.
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
	// x- extension fields (the shared announcer block, merged into the services with <<).
	Extensions map[string]any `yaml:",inline"`
}

type composeService struct {
	Image           string                       `yaml:"image"`
	Build           *composeBuild                `yaml:"build"`
	Hostname        string                       `yaml:"hostname"`
	Entrypoint      []string                     `yaml:"entrypoint"`
	Command         []string                     `yaml:"command"`
	Environment     map[string]any               `yaml:"environment"`
	Ports           []string                     `yaml:"ports"`
	Volumes         []string                     `yaml:"volumes"`
	DependsOn       map[string]composeDependency `yaml:"depends_on"`
	Healthcheck     *composeHealthcheck          `yaml:"healthcheck"`
	Restart         string                       `yaml:"restart"`
	StopGracePeriod string                       `yaml:"stop_grace_period"`
	ReadOnly        bool                         `yaml:"read_only"`
	CapDrop         []string                     `yaml:"cap_drop"`
	SecurityOpt     []string                     `yaml:"security_opt"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type composeDependency struct {
	Condition string `yaml:"condition"`
}

type composeHealthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

// publishedPort is one short-syntax "hostIP:hostPort:containerPort".
type publishedPort struct{ hostIP, hostPort, containerPort string }

func (s composeService) published(t *testing.T) []publishedPort {
	t.Helper()
	var out []publishedPort
	for _, p := range s.Ports {
		parts := strings.Split(p, ":")
		if len(parts) != 3 {
			t.Fatalf("port %q: want hostIP:hostPort:containerPort (publish on an explicit address)", p)
		}
		out = append(out, publishedPort{parts[0], parts[1], parts[2]})
	}
	return out
}

func (s composeService) publishes(t *testing.T, containerPort string) bool {
	for _, p := range s.published(t) {
		if p.containerPort == containerPort {
			return true
		}
	}
	return false
}

// bindMount is one short-syntax "./source:target[:ro]" volume whose source is a path.
type bindMount struct {
	source, target string
	readOnly       bool
}

func (s composeService) bindMounts(t *testing.T) []bindMount {
	t.Helper()
	var out []bindMount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 {
			t.Fatalf("volume %q: want source:target[:mode]", v)
		}
		if !strings.HasPrefix(parts[0], ".") && !strings.HasPrefix(parts[0], "/") {
			continue // a named volume
		}
		out = append(out, bindMount{parts[0], parts[1], len(parts) == 3 && parts[2] == "ro"})
	}
	return out
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var f composeFile
	decodeYAML(t, composePath, &f)
	if len(f.Services) == 0 {
		t.Fatal("no services")
	}
	return f
}

func loadComposeConfig(t *testing.T) config.Config {
	t.Helper()
	cfg, err := config.Load(composeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// announcerService is a compose service running one of the four binaries.
type announcerService struct {
	name  string
	svc   composeService
	role  config.Role
	flags serviceFlags
}

func announcerServices(t *testing.T, f composeFile) []announcerService {
	t.Helper()
	var out []announcerService
	for name, svc := range f.Services {
		if len(svc.Command) == 0 {
			continue
		}
		role, ok := roleOfBinary(svc.Command[0])
		if !ok {
			continue
		}
		flags, err := parseServiceFlags(role, svc.Command[1:])
		if err != nil {
			t.Fatalf("service %s: command %q: %v", name, svc.Command, err)
		}
		out = append(out, announcerService{name, svc, role, flags})
	}
	slices.SortFunc(out, func(a, b announcerService) int { return strings.Compare(a.name, b.name) })
	return out
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(config.ListenAddr(addr))
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return port
}

// The file is what `docker compose` accepts: compose-go is the loader Docker Compose itself uses,
// with the Compose Specification's JSON schema, interpolation and consistency checks.
func TestComposeLoadsWithComposeSpec(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{composePath},
		cli.WithWorkingDirectory("."), cli.WithName("announcer"), cli.WithConsistency(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker compose would reject %s: %v", composePath, err)
	}
	f := loadCompose(t)
	if len(p.Services) != len(f.Services) {
		t.Errorf("compose-go sees %d services, yaml.v3 %d", len(p.Services), len(f.Services))
	}
	// $$ is how a compose file says "a $ for the shell": after interpolation the one-shot
	// scripts must see $(...) and $u, not an empty variable.
	seed := strings.Join(p.Services["redis-seed"].Command, " ")
	if !strings.Contains(seed, "$(date +%s)") {
		t.Errorf("redis-seed script after interpolation lacks $(date +%%s): %s", seed)
	}
	reg := strings.Join(p.Services["ejabberd-register"].Command, " ")
	if !strings.Contains(reg, `\"user\":\"$u\"`) {
		t.Errorf("ejabberd-register script after interpolation lacks $u: %s", reg)
	}
	for name, s := range p.Services {
		if s.Image == "" {
			t.Errorf("service %s: no image (compose would name the built image itself)", name)
		}
	}
}

func TestComposeServicesExist(t *testing.T) {
	f := loadCompose(t)
	cfg := loadComposeConfig(t)
	want := []string{"kafka", "mariadb", "redis", "ejabberd", "redis-seed", "ejabberd-register",
		"ingress", "fanout", "archiver", "prometheus", "grafana"}
	for _, n := range cfg.Nodes {
		want = append(want, "sender-"+n.Name)
	}
	for _, name := range want {
		if _, ok := f.Services[name]; !ok {
			t.Errorf("service %q missing", name)
		}
	}
	got := map[config.Role]int{}
	for _, s := range announcerServices(t, f) {
		got[s.role]++
	}
	for _, r := range roles {
		if got[r] == 0 {
			t.Errorf("no service runs %s", binaryOf(r))
		}
	}
	// One sender per configured node, each naming its node.
	var senderNodes []string
	for _, s := range announcerServices(t, f) {
		if s.role == config.RoleSender {
			if s.flags.node == "" {
				t.Errorf("service %s: sender without -node", s.name)
			}
			senderNodes = append(senderNodes, s.flags.node)
		}
	}
	for _, n := range cfg.Nodes {
		if !contains(senderNodes, n.Name) {
			t.Errorf("no sender service for node %q", n.Name)
		}
	}
}

// Each announcer service: the config it names is a file of this repository mounted read-only,
// it loads and validates for the service's role with the service's flags applied, and the
// ports it listens on are the ones published and probed.
func TestComposeAnnouncerServices(t *testing.T) {
	f := loadCompose(t)
	hostPorts := map[string]string{}
	for name, svc := range f.Services {
		for _, p := range svc.published(t) {
			key := p.hostIP + ":" + p.hostPort
			if other, dup := hostPorts[key]; dup {
				t.Errorf("host port %s published by both %s and %s", key, other, name)
			}
			hostPorts[key] = name
			if p.hostIP != "127.0.0.1" {
				t.Errorf("service %s publishes %s on %q: publish on 127.0.0.1 only", name, p.hostPort, p.hostIP)
			}
		}
	}
	debugPorts := map[string]string{}
	for _, s := range announcerServices(t, f) {
		t.Run(s.name, func(t *testing.T) {
			if want := binDir + binaryOf(s.role); s.svc.Command[0] != want {
				t.Errorf("command runs %q, want %q (where the Dockerfile puts it)", s.svc.Command[0], want)
			}
			if s.svc.Image != "announcer:local" || s.svc.Build == nil {
				t.Errorf("image %q, build %+v: want announcer:local built from deployments/Dockerfile", s.svc.Image, s.svc.Build)
			}

			// -config names a read-only bind mount of a file in this repository.
			var source string
			for _, m := range s.svc.bindMounts(t) {
				if m.target == s.flags.config {
					source = m.source
					if !m.readOnly {
						t.Errorf("config mount %s:%s is writable; mount it :ro", m.source, m.target)
					}
				}
			}
			if source == "" {
				t.Fatalf("-config %q is not a mounted file (volumes %q)", s.flags.config, s.svc.Volumes)
			}
			if st, err := os.Stat(source); err != nil || !st.Mode().IsRegular() {
				t.Fatalf("config source %q: not a file in the repository (%v)", source, err)
			}
			if s.flags.config != configInContainer {
				t.Errorf("-config %q, want %q (the path the systemd units use too)", s.flags.config, configInContainer)
			}
			cfg, err := effectiveConfig(source, s.role, s.flags)
			if err != nil {
				t.Fatalf("%s with the service's flags is invalid for %s: %v", source, s.role, err)
			}

			// The debug listener: published on the same port, probed by the healthcheck.
			debugPort := portOf(t, cfg.DebugPort)
			if other, dup := debugPorts[debugPort]; dup {
				t.Errorf("debug port %s used by both %s and %s", debugPort, other, s.name)
			}
			debugPorts[debugPort] = s.name
			if host, _, _ := net.SplitHostPort(config.ListenAddr(cfg.DebugPort)); host != "" && host != "0.0.0.0" {
				t.Errorf("debug port %q listens on %q only: unreachable through the published port", cfg.DebugPort, host)
			}
			if !s.svc.publishes(t, debugPort) {
				t.Errorf("debug port %s (from %q) is not published (ports %q)", debugPort, cfg.DebugPort, s.svc.Ports)
			}
			hc := s.svc.Healthcheck
			if hc == nil || len(hc.Test) != 3 || hc.Test[0] != "CMD" || hc.Test[1] != binDir+"announcer-probe" {
				t.Fatalf("healthcheck %+v: want [CMD %sannouncer-probe http://127.0.0.1:<debug port>/readyz]", hc, binDir)
			}
			u, err := url.Parse(hc.Test[2])
			if err != nil {
				t.Fatal(err)
			}
			if u.Hostname() != "127.0.0.1" || u.Port() != debugPort || u.Path != "/readyz" {
				t.Errorf("healthcheck probes %s, want http://127.0.0.1:%s/readyz", hc.Test[2], debugPort)
			}

			if s.role == config.RoleIngress {
				restPort := portOf(t, cfg.RestAPIPort)
				if host, _, _ := net.SplitHostPort(config.ListenAddr(cfg.RestAPIPort)); host != "" && host != "0.0.0.0" {
					t.Errorf("rest_api_port %q listens on %q only: unreachable through the published port", cfg.RestAPIPort, host)
				}
				if !s.svc.publishes(t, restPort) {
					t.Errorf("rest_api_port %s is not published (ports %q)", restPort, s.svc.Ports)
				}
			}

			// Stopping: compose kills what is still running after stop_grace_period; the
			// role's own stop (stopBudgets) must be over by then.
			grace, err := time.ParseDuration(s.svc.StopGracePeriod)
			if err != nil {
				t.Fatalf("stop_grace_period %q: %v", s.svc.StopGracePeriod, err)
			}
			if budget := stopBudget(t, s.role, cfg); grace < budget+stopMargin {
				t.Errorf("stop_grace_period %s: want at least %s, the %s the %s may take to stop plus %s", grace, budget+stopMargin, budget, s.role, stopMargin)
			}
			if s.svc.Restart != "on-failure" {
				t.Errorf("restart %q, want on-failure", s.svc.Restart)
			}
			if !s.svc.ReadOnly || !contains(s.svc.CapDrop, "ALL") || !contains(s.svc.SecurityOpt, "no-new-privileges:true") {
				t.Errorf("hardening: read_only %v, cap_drop %q, security_opt %q", s.svc.ReadOnly, s.svc.CapDrop, s.svc.SecurityOpt)
			}

			// Every server the config names is a compose service, listening on that port, that
			// this service waits for.
			for _, addr := range serverAddrs(cfg, s.role) {
				host, port, err := net.SplitHostPort(addr)
				if err != nil {
					t.Errorf("%q: %v", addr, err)
					continue
				}
				target, ok := f.Services[host]
				if !ok {
					t.Errorf("config address %q: no compose service %q", addr, host)
					continue
				}
				if ports := listeningPorts(t, host, target); !contains(ports, port) {
					t.Errorf("config address %q: %s listens on %q", addr, host, ports)
				}
				if d, ok := s.svc.DependsOn[host]; !ok || d.Condition != "service_healthy" {
					t.Errorf("uses %s (%q) but does not wait for it to be healthy (depends_on %v)", host, addr, s.svc.DependsOn)
				}
			}
		})
	}
}

// serverAddrs are the servers a role talks to, as its config names them.
func serverAddrs(cfg config.Config, role config.Role) []string {
	addrs := config.SplitList(cfg.Bus.Brokers)
	switch role {
	case config.RoleIngress:
		if cfg.KafkaConsumer.Topics != "" {
			addrs = append(addrs, config.SplitList(cfg.KafkaConsumer.Brokers)...)
		}
	case config.RoleFanout:
		addrs = append(addrs, cfg.MySQL.Address)
		addrs = append(addrs, config.SplitList(cfg.UserActivityRedis.ClusterNodes)...)
	case config.RoleSender:
		if n, ok := cfg.Node(cfg.Sender.Node); ok {
			addrs = append(addrs, n.Address)
		}
	case config.RoleArchiver:
		addrs = append(addrs, config.SplitList(cfg.KafkaProducer.Brokers)...)
	}
	return addrs
}

// listeningPorts are the ports a server service accepts connections on inside the network:
// Kafka's from KAFKA_LISTENERS, ejabberd's from its ejabberd.yml, the others' from what they publish.
func listeningPorts(t *testing.T, name string, svc composeService) []string {
	t.Helper()
	var ports []string
	switch name {
	case "kafka":
		listeners, _ := svc.Environment["KAFKA_LISTENERS"].(string)
		for _, l := range strings.Split(listeners, ",") {
			u, err := url.Parse(strings.TrimSpace(l))
			if err == nil && u.Scheme != "controller" {
				ports = append(ports, u.Port())
			}
		}
	case "ejabberd":
		for _, l := range loadEjabberdYAML(t, ejabberdYAMLPath).Listen {
			ports = append(ports, strconv.Itoa(l.Port))
		}
	default:
		for _, p := range svc.published(t) {
			ports = append(ports, p.containerPort)
		}
	}
	return ports
}

func TestComposeDependsOn(t *testing.T) {
	f := loadCompose(t)
	for name, svc := range f.Services {
		for dep, d := range svc.DependsOn {
			target, ok := f.Services[dep]
			if !ok {
				t.Errorf("%s depends on %q, which is not a service", name, dep)
				continue
			}
			switch d.Condition {
			case "service_started":
			case "service_healthy":
				if target.Healthcheck == nil || len(target.Healthcheck.Test) == 0 {
					t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
				}
			case "service_completed_successfully":
				if target.Restart != "no" {
					t.Errorf("%s waits for %s to complete, but %s has restart %q (want \"no\")", name, dep, dep, target.Restart)
				}
			default:
				t.Errorf("%s depends on %s with condition %q", name, dep, d.Condition)
			}
		}
	}
	// No cycle: compose would refuse to start.
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var visit func(string, []string)
	visit = func(n string, path []string) {
		switch state[n] {
		case visiting:
			t.Errorf("depends_on cycle: %s", strings.Join(append(path, n), " -> "))
			return
		case done:
			return
		}
		state[n] = visiting
		for dep := range f.Services[n].DependsOn {
			visit(dep, append(path, n))
		}
		state[n] = done
	}
	for n := range f.Services {
		visit(n, nil)
	}
}

func TestComposeBindMountsExist(t *testing.T) {
	f := loadCompose(t)
	for name, svc := range f.Services {
		for _, m := range svc.bindMounts(t) {
			if _, err := os.Stat(m.source); err != nil {
				t.Errorf("service %s mounts %q: %v", name, m.source, err)
			}
			if !m.readOnly {
				t.Errorf("service %s mounts %q writable; the repository's files are mounted :ro", name, m.source)
			}
		}
	}
	if b := f.Services["ingress"].Build; b != nil {
		if _, err := os.Stat(filepath.Join(b.Context, "go.work")); err != nil {
			t.Errorf("build context %q is not the repository root (no go.work): %v", b.Context, err)
		}
		if filepath.Join(b.Context, b.Dockerfile) != filepath.Join(repoRoot, "deployments", dockerfilePath) {
			t.Errorf("build dockerfile %q, want deployments/Dockerfile", b.Dockerfile)
		}
	}
}

// The MariaDB container creates the database and user the config names and runs the same
// schema and demo data as the local stack.
func TestComposeMariaDBDemoData(t *testing.T) {
	f := loadCompose(t)
	cfg := loadComposeConfig(t)
	db := f.Services["mariadb"]
	env := func(k string) string { s, _ := db.Environment[k].(string); return s }
	if env("MARIADB_DATABASE") != cfg.MySQL.DB || env("MARIADB_USER") != cfg.MySQL.Username ||
		env("MARIADB_PASSWORD") != cfg.MySQL.Password.Value() {
		t.Errorf("mariadb creates %q/%q/%q, the config uses db %q user %q (and its password)",
			env("MARIADB_DATABASE"), env("MARIADB_USER"), env("MARIADB_PASSWORD"), cfg.MySQL.DB, cfg.MySQL.Username)
	}
	// The entrypoint runs the files in name order: schema before data. They are the local
	// stack's own files, so compose and `make run` cannot drift apart.
	init := map[string]string{}
	for _, m := range db.bindMounts(t) {
		init[m.target] = m.source
	}
	for _, c := range []struct{ target, stack string }{
		{"/docker-entrypoint-initdb.d/01-schema.sql", "pkg/channeldb/schema.sql"},
		{"/docker-entrypoint-initdb.d/02-demo.sql", "scripts/stack/demo.sql"},
	} {
		if filepath.Clean(init[c.target]) != filepath.Join(repoRoot, c.stack) {
			t.Errorf("mariadb: %s is %q, want the stack's %s", c.target, init[c.target], c.stack)
		}
	}
}

var redisCmd = regexp.MustCompile(`(?m)^\s*redis-cli -h (\S+) (SET|SADD|DEL|HSET) (.*)$`)

// The seeded presence is what fanout reads: alice and bob online on the address that the
// config maps to its node, carol offline in the config's offline hash.
func TestComposeRedisSeedMatchesConfig(t *testing.T) {
	f := loadCompose(t)
	cfg := loadComposeConfig(t)
	seed := f.Services["redis-seed"]
	if d := seed.DependsOn["redis"]; d.Condition != "service_healthy" {
		t.Errorf("redis-seed does not wait for redis to be healthy")
	}
	var presence []string
	for _, n := range cfg.Nodes {
		presence = append(presence, n.PresenceAddresses...)
	}
	redisHost, _, _ := net.SplitHostPort(config.SplitList(cfg.UserActivityRedis.ClusterNodes)[0])
	online := map[string]string{}
	var sets []string
	offline := false
	cmds := redisCmd.FindAllStringSubmatch(strings.Join(seed.Command, "\n"), -1)
	if len(cmds) == 0 {
		t.Fatalf("redis-seed runs no redis-cli commands: %q", seed.Command)
	}
	for _, m := range cmds {
		if m[1] != redisHost {
			t.Errorf("redis-seed writes to %q, fanout reads %q", m[1], redisHost)
		}
		args := strings.Fields(m[3])
		switch m[2] {
		case "SET":
			online[args[0]] = args[1]
		case "SADD":
			sets = append(sets, args[0])
			for _, u := range args[1:] {
				if online[u] != args[0] {
					t.Errorf("user %s is in the set %s but GET %s says %q", u, args[0], u, online[u])
				}
			}
		case "HSET":
			offline = args[0] == cfg.UserActivityRedis.OfflineHash
		}
	}
	for u, addr := range online {
		if !contains(presence, addr) {
			t.Errorf("GET %s = %q, which no [[node]] presence_addresses %q names: fanout would not route it", u, addr, presence)
		}
	}
	for _, s := range sets {
		if !contains(presence, s) {
			t.Errorf("online set %q is no node's presence address %q", s, presence)
		}
	}
	if len(online) == 0 || !offline {
		t.Errorf("redis-seed: want online users and an HSET on %q, got online %v", cfg.UserActivityRedis.OfflineHash, online)
	}
}

// The demo users are registered on the users' domain through the HTTP API listener of ejabberd.yml.
func TestComposeEjabberdRegister(t *testing.T) {
	f := loadCompose(t)
	cfg := loadComposeConfig(t)
	script := strings.Join(f.Services["ejabberd-register"].Command, "\n")
	m := regexp.MustCompile(`http://([^/\s]+)(/api)/register`).FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("ejabberd-register calls no /api/register: %s", script)
	}
	host, port, err := net.SplitHostPort(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if host != "ejabberd" {
		t.Errorf("registers at %q, want the ejabberd service", host)
	}
	ej := loadEjabberdYAML(t, ejabberdYAMLPath)
	if l, ok := ej.listener("ejabberd_http"); !ok || strconv.Itoa(l.Port) != port || l.RequestHandlers[m[2]] != "mod_http_api" {
		t.Errorf("ejabberd.yml has no mod_http_api at %s on port %s (listener %+v)", m[2], port, l)
	}
	if !strings.Contains(script, `\"host\":\"`+cfg.UserDomain()+`\"`) {
		t.Errorf("users are not registered on the users' domain %q", cfg.UserDomain())
	}
	demo := string(readFile(t, filepath.Join(repoRoot, "scripts/stack/demo.sql")))
	users := regexp.MustCompile(`for u in ([a-z ]+); do`).FindStringSubmatch(script)
	if users == nil {
		t.Fatal("ejabberd-register: no `for u in ...` loop")
	}
	for _, u := range strings.Fields(users[1]) {
		if !strings.Contains(demo, "'"+u+"'") {
			t.Errorf("registers %s, who is not in the demo channel", u)
		}
	}
	if d := f.Services["ejabberd-register"].DependsOn["ejabberd"]; d.Condition != "service_healthy" {
		t.Error("ejabberd-register does not wait for ejabberd to be healthy")
	}
}

// CLUSTER_ID must be what kafka-storage random-uuid prints (16 bytes, URL-safe base64):
// anything else and the broker never formats its storage.
func TestComposeKafka(t *testing.T) {
	kafka := loadCompose(t).Services["kafka"]
	id, _ := kafka.Environment["CLUSTER_ID"].(string)
	b, err := base64.RawURLEncoding.Strict().DecodeString(id)
	if err != nil || len(b) != 16 {
		t.Errorf("CLUSTER_ID %q: want 22 characters of URL-safe base64 for 16 bytes (%v)", id, err)
	}
	adv, _ := kafka.Environment["KAFKA_ADVERTISED_LISTENERS"].(string)
	if !strings.Contains(adv, "PLAINTEXT://kafka:9092") {
		t.Errorf("advertised listeners %q: the containers reach the broker as kafka:9092", adv)
	}
	// The host listener is advertised as the address the host publishes.
	for _, p := range kafka.published(t) {
		want := "HOST://" + p.hostIP + ":" + p.hostPort
		if !strings.Contains(adv, want) {
			t.Errorf("published %s:%s but no %s in advertised listeners %q", p.hostIP, p.hostPort, want, adv)
		}
	}
	for _, k := range []string{"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"} {
		if v, _ := kafka.Environment[k].(int); v != 1 {
			t.Errorf("%s = %v: a single broker needs 1", k, kafka.Environment[k])
		}
	}
}

// Every image names a version: an unpinned image (no tag, or latest) changes under the demo.
func TestComposeImagesPinned(t *testing.T) {
	for name, svc := range loadCompose(t).Services {
		ref := svc.Image
		tag := ""
		if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
			tag = ref[i+1:]
		}
		switch {
		case tag == "" || tag == "latest":
			t.Errorf("service %s: image %q is not pinned to a version", name, ref)
		case svc.Build == nil && !strings.ContainsAny(tag, "0123456789"):
			t.Errorf("service %s: image %q: tag %q names no version", name, ref, tag)
		}
	}
}

// prometheusConfig is the part of prometheus.yml the compose file relies on (strict: a key
// Prometheus would not know fails here).
type prometheusConfig struct {
	Global struct {
		ScrapeInterval     string `yaml:"scrape_interval"`
		ScrapeTimeout      string `yaml:"scrape_timeout"`
		EvaluationInterval string `yaml:"evaluation_interval"`
	} `yaml:"global"`
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string          `yaml:"targets"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

type grafanaDatasources struct {
	APIVersion  int `yaml:"apiVersion"`
	Datasources []struct {
		Name      string         `yaml:"name"`
		UID       string         `yaml:"uid"`
		Type      string         `yaml:"type"`
		Access    string         `yaml:"access"`
		URL       string         `yaml:"url"`
		IsDefault bool           `yaml:"isDefault"`
		Editable  bool           `yaml:"editable"`
		JSONData  map[string]any `yaml:"jsonData"`
	} `yaml:"datasources"`
}

type grafanaDashboardProviders struct {
	APIVersion int `yaml:"apiVersion"`
	Providers  []struct {
		Name                  string `yaml:"name"`
		OrgID                 int    `yaml:"orgId"`
		Folder                string `yaml:"folder"`
		Type                  string `yaml:"type"`
		DisableDeletion       bool   `yaml:"disableDeletion"`
		AllowUIUpdates        bool   `yaml:"allowUiUpdates"`
		UpdateIntervalSeconds int    `yaml:"updateIntervalSeconds"`
		Options               struct {
			Path                      string `yaml:"path"`
			FoldersFromFilesStructure bool   `yaml:"foldersFromFilesStructure"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

// grafanaDashboard is what these tests read of a dashboard JSON (the e2e test checks its
// queries against the services' real /metrics).
type grafanaDashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string             `json:"name"`
			Type       string             `json:"type"`
			Query      any                `json:"query"`
			Datasource *grafanaDatasource `json:"datasource"`
			Current    struct {
				Value any `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDatasource `json:"datasource"`
	Targets    []struct {
		Expr       string             `json:"expr"`
		Datasource *grafanaDatasource `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // of a collapsed row
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// hostPath is the repository file a service sees at path inside its container, through its
// bind mounts.
func hostPath(t *testing.T, svc composeService, path string) (string, bool) {
	t.Helper()
	for _, m := range svc.bindMounts(t) {
		if rest, ok := strings.CutPrefix(path, m.target); ok && (rest == "" || strings.HasPrefix(rest, "/")) {
			return filepath.Join(m.source, rest), true
		}
	}
	return "", false
}

// flagValue is the value of --name=value in a command.
func flagValue(cmd []string, name string) string {
	for _, a := range cmd {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func loadPrometheusConfig(t *testing.T, f composeFile) prometheusConfig {
	t.Helper()
	prom, ok := f.Services["prometheus"]
	if !ok {
		t.Fatal("no prometheus service")
	}
	in := flagValue(prom.Command, "config.file")
	if in == "" {
		t.Fatalf("prometheus command %q: no --config.file", prom.Command)
	}
	path, ok := hostPath(t, prom, in)
	if !ok {
		t.Fatalf("prometheus --config.file %s is not a mounted file of the repository (volumes %q)", in, prom.Volumes)
	}
	var c prometheusConfig
	decodeYAML(t, path, &c)
	return c
}

// Prometheus scrapes every announcer service of the compose file, at the debug port the service
// really listens on, as job announcer-<role>, and nothing else.
func TestComposePrometheusScrapesEveryService(t *testing.T) {
	f := loadCompose(t)
	prom := f.Services["prometheus"]
	c := loadPrometheusConfig(t, f)
	want := map[string]string{} // target → job
	for _, s := range announcerServices(t, f) {
		cfg, err := effectiveConfig(composeConfigPath, s.role, s.flags)
		if err != nil {
			t.Fatalf("service %s: %v", s.name, err)
		}
		want[s.name+":"+portOf(t, cfg.DebugPort)] = "announcer-" + string(s.role)
	}
	got := map[string]string{}
	for _, sc := range c.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("job %s scrapes %s; the services serve /metrics", sc.JobName, sc.MetricsPath)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				if other, dup := got[target]; dup {
					t.Errorf("target %s scraped by both %s and %s", target, other, sc.JobName)
				}
				got[target] = sc.JobName
			}
		}
	}
	for target, job := range want {
		if got[target] != job {
			t.Errorf("%s is not scraped as job %s (scraped as %q)", target, job, got[target])
		}
	}
	for target, job := range got {
		if _, ok := want[target]; !ok {
			t.Errorf("job %s scrapes %s, which is no announcer service's debug port", job, target)
		}
	}
	if _, err := time.ParseDuration(c.Global.ScrapeInterval); err != nil {
		t.Errorf("scrape_interval %q: %v", c.Global.ScrapeInterval, err)
	}
	// The TSDB is the one place Prometheus writes: a named volume, on a read-only container.
	data := flagValue(prom.Command, "storage.tsdb.path")
	named := false
	for _, v := range prom.Volumes {
		if src, target, _ := strings.Cut(v, ":"); target == data && !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
			if _, ok := f.Volumes[src]; ok {
				named = true
			}
		}
	}
	if data == "" || !named {
		t.Errorf("--storage.tsdb.path %q is not a declared named volume (volumes %q)", data, prom.Volumes)
	}
	if !prom.ReadOnly || !contains(prom.CapDrop, "ALL") || !contains(prom.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("prometheus hardening: read_only %v, cap_drop %q, security_opt %q", prom.ReadOnly, prom.CapDrop, prom.SecurityOpt)
	}
}

var jobMatcher = regexp.MustCompile(`job=~"([^"]*)"`)

// Grafana's provisioning, as the files mounted into its container say: the data source is the
// compose Prometheus, the dashboards directory is the one the provider reads, every panel queries
// that data source, and the dashboard's job selectors match the jobs Prometheus scrapes.
func TestComposeGrafanaProvisioning(t *testing.T) {
	f := loadCompose(t)
	g, ok := f.Services["grafana"]
	if !ok {
		t.Fatal("no grafana service")
	}
	if d := g.DependsOn["prometheus"]; d.Condition != "service_healthy" {
		t.Errorf("grafana does not wait for prometheus to be healthy (depends_on %v)", g.DependsOn)
	}
	provisioned := func(kind string) []string {
		t.Helper()
		dir, ok := hostPath(t, g, "/etc/grafana/provisioning/"+kind)
		if !ok {
			t.Fatalf("/etc/grafana/provisioning/%s is not mounted from the repository (volumes %q)", kind, g.Volumes)
		}
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no %s provisioning files in %s (%v)", kind, dir, err)
		}
		return files
	}

	// The data source: the prometheus service, on a port it listens on.
	prom := f.Services["prometheus"]
	promCfg := loadPrometheusConfig(t, f)
	uids := map[string]bool{}
	for _, file := range provisioned("datasources") {
		var ds grafanaDatasources
		decodeYAML(t, file, &ds)
		for _, d := range ds.Datasources {
			if d.Type != "prometheus" {
				continue
			}
			uids[d.UID] = true
			u, err := url.Parse(d.URL)
			if err != nil {
				t.Fatalf("%s: data source url %q: %v", file, d.URL, err)
			}
			if _, ok := f.Services[u.Hostname()]; !ok || u.Hostname() != "prometheus" {
				t.Errorf("%s: data source %s points at %q, not the prometheus service", file, d.Name, d.URL)
			}
			if !prom.publishes(t, u.Port()) {
				t.Errorf("%s: data source port %s: prometheus listens on %q", file, u.Port(), prom.Ports)
			}
			// $__rate_interval is computed from this: it must be the real scrape interval.
			if ti, _ := d.JSONData["timeInterval"].(string); ti != promCfg.Global.ScrapeInterval {
				t.Errorf("%s: jsonData.timeInterval %q, prometheus scrapes every %q", file, ti, promCfg.Global.ScrapeInterval)
			}
		}
	}
	if len(uids) == 0 {
		t.Fatal("no prometheus data source provisioned")
	}

	var jobs []string
	for _, sc := range promCfg.ScrapeConfigs {
		if strings.HasPrefix(sc.JobName, "announcer-") {
			jobs = append(jobs, sc.JobName)
		}
	}

	// The dashboards: what the file provider reads, mounted from grafana/dashboards.
	dashboards := 0
	for _, file := range provisioned("dashboards") {
		var p grafanaDashboardProviders
		decodeYAML(t, file, &p)
		for _, pr := range p.Providers {
			if pr.Type != "file" {
				t.Errorf("%s: provider %s of type %q, want file", file, pr.Name, pr.Type)
				continue
			}
			dir, ok := hostPath(t, g, pr.Options.Path)
			if !ok {
				t.Errorf("%s: provider %s reads %s, which is not mounted (volumes %q)", file, pr.Name, pr.Options.Path, g.Volumes)
				continue
			}
			files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
			if len(files) == 0 {
				t.Errorf("%s: provider %s: no dashboards in %s", file, pr.Name, dir)
			}
			for _, df := range files {
				dashboards++
				checkDashboard(t, df, uids, jobs)
			}
		}
	}
	if dashboards == 0 {
		t.Fatal("no dashboard provisioned")
	}
	if home, _ := g.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].(string); home != "" {
		if path, ok := hostPath(t, g, home); !ok {
			t.Errorf("home dashboard %s is not a mounted file", home)
		} else if _, err := os.Stat(path); err != nil {
			t.Errorf("home dashboard %s: %v", home, err)
		}
	}
}

func checkDashboard(t *testing.T, path string, uids map[string]bool, jobs []string) {
	t.Helper()
	var d grafanaDashboard
	if err := json.Unmarshal(readFile(t, path), &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("%s: uid %q, title %q: want both", path, d.UID, d.Title)
	}
	// A data source is the provisioned uid, or ${VAR} of a datasource variable whose default is it.
	dsVars := map[string]bool{}
	for _, v := range d.Templating.List {
		if v.Type != "datasource" {
			continue
		}
		if q, _ := v.Query.(string); q != "prometheus" {
			t.Errorf("%s: datasource variable %s selects %v, want prometheus", path, v.Name, v.Query)
		}
		if cur, _ := v.Current.Value.(string); !uids[cur] {
			t.Errorf("%s: datasource variable %s defaults to %q, not a provisioned data source %v", path, v.Name, cur, uids)
		}
		dsVars["${"+v.Name+"}"] = true
	}
	ok := func(ds *grafanaDatasource) bool {
		return ds != nil && ds.Type == "prometheus" && (uids[ds.UID] || dsVars[ds.UID])
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" && !ok(v.Datasource) {
			t.Errorf("%s: variable %s: data source %+v is not the provisioned Prometheus", path, v.Name, v.Datasource)
		}
	}
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if !ok(p.Datasource) {
				t.Errorf("%s: panel %q: data source %+v is not the provisioned Prometheus", path, p.Title, p.Datasource)
			}
			for _, tg := range p.Targets {
				if !ok(tg.Datasource) {
					t.Errorf("%s: panel %q: a target's data source %+v is not the provisioned Prometheus", path, p.Title, tg.Datasource)
				}
				for _, m := range jobMatcher.FindAllStringSubmatch(tg.Expr, -1) {
					re, err := regexp.Compile("^(?:" + m[1] + ")$")
					if err != nil {
						t.Errorf("%s: panel %q: job=~%q: %v", path, p.Title, m[1], err)
						continue
					}
					for _, job := range jobs {
						if !re.MatchString(job) {
							t.Errorf("%s: panel %q: job=~%q leaves out job %s", path, p.Title, m[1], job)
						}
					}
				}
			}
		}
	}
	walk(d.Panels)
}
