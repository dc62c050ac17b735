package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/announcer/announcer/pkg/channeldb"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "announcer-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		// Tests run the services with the race detector; the benchmark and the fault suite as they run in production.
		race := []string{"-race"}
		if os.Getenv("ANNOUNCER_BENCH") == "1" || os.Getenv("ANNOUNCER_FAULTS") == "1" {
			race = nil
		}
		for _, s := range []string{"ingress", "fanout", "sender", "archiver"} {
			cmd := exec.Command("go", append(append([]string{"build"}, race...), "-o", filepath.Join(dir, "announcer-"+s), ".")...)
			cmd.Dir = filepath.Join("..", "services", s)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n", s, err)
				return 1
			}
		}
		return m.Run()
	}())
}

// system is one private announcer deployment: its own topics, groups, database, Redis
// presence addresses and users, and the four services running as processes.
type system struct {
	t       *testing.T
	env     stacktest.Env
	p       string // unique prefix
	dir     string
	cfg     string
	rest    string
	debug   map[string]string
	db      *sql.DB
	rdb     *redis.Client
	api     xmpptest.API
	users   []string
	brokers []string
	mu      sync.Mutex
	procs   []*service // in start order
	byName  map[string]*service
	logs    map[string]*bytes.Buffer
	nodes   []string
	domain  string // users' domain
	storage string
	from    string // the component domain templates are sent from
}

// service is one process of the system: what started it, to start it again.
type service struct {
	cmd       *exec.Cmd
	cfg       string
	args      []string
	env       []string
	exited    chan struct{} // closed once the process is gone
	exitState string
}

type options struct {
	brokers    []string       // the Kafka of every topic (default: the stack's)
	nodes      []string       // node names; each gets presence address <p>-<node>
	senders    map[string]int // sender processes per node (default 1)
	rate       int            // [ejabberd] rate_limit per connection (default 2000)
	conns      int            // [ejabberd] each_node_conn_num (default 2)
	pagination int
	batch      int
	shard      int
	// via, when set, gives the address a sender dials for a node's listener
	// (a proxy in front of it).
	via func(addr string) string
	// hosts puts a node's listeners on another ejabberd node of the cluster
	// (node → its IP, 127.0.0.2 for the stack's node 2).
	hosts map[string]string
	// failover is [sender] failover_after (default 30s).
	failover string
}

// deadline bounds the rest of the test.
func (s *system) deadline(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	s.t.Cleanup(cancel)
	return ctx
}

func newSystem(t *testing.T, o options) *system {
	t.Helper()
	if len(o.nodes) == 0 {
		o.nodes = []string{"node1"}
	}
	if o.pagination == 0 {
		o.pagination = 2
	}
	if o.batch == 0 {
		o.batch = 2
	}
	if o.shard == 0 {
		o.shard = 4
	}
	if o.rate == 0 {
		o.rate = 2000
	}
	if o.conns == 0 {
		o.conns = 2
	}
	if o.failover == "" {
		o.failover = "30s"
	}
	s := newBareSystem(t, o)
	s.startServices(o)
	return s
}

// newBareSystem is a system's database, Redis and XMPP users, no service started yet.
func newBareSystem(t *testing.T, o options) *system {
	t.Helper()
	env := stacktest.Get(t)
	s := &system{
		t: t, env: env, p: stacktest.Name("e2e"), dir: t.TempDir(),
		debug: map[string]string{}, logs: map[string]*bytes.Buffer{}, byName: map[string]*service{},
		api: xmpptest.API{Base: env.EjabberdAPI}, nodes: o.nodes, domain: env.XMPPDomain,
	}
	s.storage = s.p + "_storage"
	s.brokers = env.KafkaBrokers
	if len(o.brokers) > 0 {
		s.brokers = o.brokers
	}
	// Topics and groups the services create, priority lanes included; this
	// clean-up runs after s.stop, registered last.
	kafkatest.DeletePrefixedAtEnd(t, env.KafkaBrokers, s.p+"_")

	// Database of this system alone, with the first generation's schema.
	dsn, err := mysql.ParseDSN(env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	root, err := sql.Open("mysql", env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.Exec("CREATE DATABASE " + s.p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if db, err := sql.Open("mysql", env.MySQLDSN); err == nil {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + s.p)
			db.Close()
		}
	})
	dsn2 := *dsn
	dsn2.DBName = s.p
	dsn2.MultiStatements = true
	s.db, err = sql.Open("mysql", dsn2.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.db.Close() })
	if err := channeldb.Create(context.Background(), s.db); err != nil {
		t.Fatal(err)
	}

	s.rdb = redis.NewClient(&redis.Options{Addr: env.RedisAddr})
	t.Cleanup(func() { s.rdb.Close() })

	// Registered last, so it runs first: the services stop before their
	// database, Redis client and topics go.
	t.Cleanup(s.stop)
	return s
}

// startServices writes the system's config and starts the four services, downstream first.
func (s *system) startServices(o options) {
	t, env := s.t, s.env
	dsn, err := mysql.ParseDSN(env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	s.rest = testkit.FreeAddr(t)
	// Each sender process connects as its own spare component domain, on that domain's own
	// listener: ejabberd would spread fence results over every process sharing a domain.
	senders := o.senders
	if senders == nil {
		senders = map[string]int{}
		for _, n := range o.nodes {
			senders[n] = 1
		}
	}
	type proc struct{ node, domain string }
	var procs []proc
	for _, n := range o.nodes {
		for r := 0; r < senders[n]; r++ {
			if len(procs) >= len(env.ComponentSpares) {
				t.Fatalf("more sender processes than spare component domains %v", env.ComponentSpares)
			}
			procs = append(procs, proc{n, env.ComponentSpares[len(procs)]})
		}
	}
	// nodes lists the nodes, each at the listener of its first sender, or of self for self's node.
	nodes := func(self proc) string {
		var b strings.Builder
		for _, n := range o.nodes {
			addr := env.ComponentAddr
			for _, p := range procs {
				if p.node == n {
					addr = env.AddrFor(p.domain)
					break
				}
			}
			if self.node == n {
				addr = env.AddrFor(self.domain)
			}
			if h := o.hosts[n]; h != "" {
				_, port, _ := net.SplitHostPort(addr)
				addr = net.JoinHostPort(h, port)
			}
			if o.via != nil {
				addr = o.via(addr)
			}
			fmt.Fprintf(&b, "[[node]]\nname = %q\naddress = %q\npresence_addresses = [%q]\n\n", n, addr, s.presence(n))
		}
		return b.String()
	}
	// Templates come from the shared announcer domain; each sender connects as its own.
	s.from = env.ComponentDomain
	config := func(self proc) string {
		component := self.domain
		return strings.NewReplacer(
			"@REST@", s.rest, "@BROKERS@", strings.Join(s.brokers, ","), "@P@", s.p,
			"@MYSQL@", dsn.Addr, "@MYSQL_USER@", dsn.User, "@MYSQL_PASS@", dsn.Passwd,
			"@PAGE@", fmt.Sprint(o.pagination), "@REDIS@", env.RedisAddr, "@COMPONENT@", env.ComponentAddr,
			"@COMPONENT_NAME@", component, "@SECRET@", env.SecretFor(component), "@DOMAIN@", env.XMPPDomain, "@FROM@", s.from,
			"@FAILOVER@", o.failover, "@BATCH@", fmt.Sprint(o.batch), "@RATE@", fmt.Sprint(o.rate), "@CONNS@", fmt.Sprint(o.conns), "@SHARD@", fmt.Sprint(o.shard), "@NODES@", nodes(self),
		).Replace(`rest_api_port = "@REST@"
debug_port = "127.0.0.1:0"
user_activity_ask_buffer = 3

[log]
log_level = "info"
format = "json"

[kafka-consumer]
brokers = "@BROKERS@"
topics = "@P@_input"
group_name = "@P@_input"
start_offset = "earliest"

[mysql]
address = "@MYSQL@"
username = "@MYSQL_USER@"
password = "@MYSQL_PASS@"
db = "@P@"
pagination_length = @PAGE@

[user-activity-redis]
cluster_nodes = "@REDIS@"

[kafka-producer]
brokers = "@BROKERS@"
topics = "@P@_storage"
flush_frequency = 1

[ejabberd]
cluster_nodes = "@COMPONENT@"
rate_limit = @RATE@
each_node_conn_num = @CONNS@

[component]
name = "@COMPONENT_NAME@"
secret = "@SECRET@"
domain = "@DOMAIN@"
from_domain = "@FROM@"
ping_interval = 5

[bus]
brokers = "@BROKERS@"
announcements_topic = "@P@_announcements"
deliveries_topic_prefix = "@P@_deliveries."
dead_letter_topic = "@P@_dlq"
partitions = 3

[fanout]
group_name = "@P@_fanout"
batch_size = @BATCH@
shard_size = @SHARD@

[sender]
group_prefix = "@P@_sender_"
fence_timeout = "5s"
reconnect_max = "2s"
failover_after = "@FAILOVER@"

[archiver]
group_name = "@P@_archiver"

[progress]
key_prefix = "@P@:"

@NODES@`)
	}
	write := func(name, text string) string {
		path := filepath.Join(s.dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	s.cfg = write("announcer.toml", config(procs[0]))

	// The operator's input topic exists before the ingress consumes it.
	tctx, tcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer tcancel()
	if err := kafkabus.EnsureTopics(tctx, kafkabus.Plaintext(s.brokers), kafkabus.Topic{Name: s.p + "_input", Partitions: 2, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}

	// Downstream first, so every consumer is there before the first announcement.
	s.start("archiver", s.cfg, nil)
	count := map[string]int{}
	for i, p := range procs {
		// A replica is its own component: its domain, secret and listener.
		cfg := write(fmt.Sprintf("sender-%d.toml", i), config(p))
		s.start(fmt.Sprintf("sender-%s-%d", p.node, count[p.node]), cfg, []string{"-node", p.node})
		count[p.node]++
	}
	s.start("fanout", s.cfg, nil)
	s.start("ingress", s.cfg, nil)
}

func (s *system) presence(node string) string { return s.p + "-" + node }

// start runs one service binary and waits for its /readyz.
func (s *system) start(name, cfg string, args []string) { s.startEnv(name, cfg, args, nil) }

// startEnv is start with variables added to the process's environment.
func (s *system) startEnv(name, cfg string, args, env []string) {
	s.t.Helper()
	bin := name
	if i := strings.IndexByte(name, '-'); i > 0 {
		bin = name[:i]
	}
	dbg := testkit.FreeAddr(s.t)
	cmd := exec.Command(filepath.Join(binDir, "announcer-"+bin), append([]string{"-config", cfg, "-debug-port", dbg}, args...)...)
	s.mu.Lock()
	buf := s.logs[name]
	if buf == nil {
		buf = &bytes.Buffer{}
		s.logs[name] = buf
	}
	s.mu.Unlock()
	w := &lockedWriter{mu: &s.mu, w: buf}
	cmd.Stdout, cmd.Stderr = w, w
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	svc := &service{cmd: cmd, cfg: cfg, args: args, env: env, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		svc.exitState = fmt.Sprint(err)
		close(svc.exited)
	}()
	s.mu.Lock()
	s.debug[name] = dbg
	s.procs = append(s.procs, svc)
	s.byName[name] = svc
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := testkit.Get(s.t, "http://"+dbg+"/readyz")
		if code == http.StatusOK {
			return
		}
		select {
		case <-svc.exited:
			s.t.Fatalf("%s exited (%s): %s", name, svc.exitState, s.log(name))
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s not ready: %d %s\n%s", name, code, body, s.log(name))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill ends a service with SIGKILL, as a crash would, and waits until it is gone.
func (s *system) kill(name string) {
	s.t.Helper()
	svc := s.byName[name]
	if err := svc.cmd.Process.Kill(); err != nil {
		s.t.Fatalf("kill -9 %s: %v", name, err)
	}
	<-svc.exited
}

// stopService ends a service with SIGTERM, as an operator would, and waits until it is gone.
func (s *system) stopService(name string) {
	s.t.Helper()
	svc := s.byName[name]
	if err := svc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatalf("stop %s: %v", name, err)
	}
	select {
	case <-svc.exited:
	case <-time.After(30 * time.Second):
		s.t.Fatalf("%s did not stop within 30 s of SIGTERM", name)
	}
}

// pause freezes a service with SIGSTOP: its connections, its consumer group
// membership and its warm caches stay as they are, but it reads and sends
// nothing until resume. Keep it shorter than the consumer session timeout
// (6 s), or the group rebalances behind its back.
func (s *system) pause(name string) {
	s.t.Helper()
	if err := s.byName[name].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.t.Fatalf("pause %s: %v", name, err)
	}
}

// resume lets a paused service run on with SIGCONT.
func (s *system) resume(name string) {
	s.t.Helper()
	if err := s.byName[name].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.t.Fatalf("resume %s: %v", name, err)
	}
}

// restart starts a service again the way it was started first.
func (s *system) restart(name string) {
	s.t.Helper()
	svc := s.byName[name]
	s.startEnv(name, svc.cfg, svc.args, svc.env)
}

// exited lists the services whose process is gone.
func (s *system) exited() []string {
	var out []string
	for name, svc := range s.byName {
		select {
		case <-svc.exited:
			out = append(out, name+" ("+svc.exitState+")")
		default:
		}
	}
	return out
}

func (s *system) log(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.logs[name]; b != nil {
		return b.String()
	}
	return ""
}

// stop ends the services upstream first and reports their logs when the test failed.
func (s *system) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGCONT) // a test that failed during a pause
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			s.t.Errorf("%s did not stop within 20 s of SIGTERM", p.cmd.Path)
		}
	}
	if s.t.Failed() {
		for name := range s.logs {
			s.t.Logf("---- %s log ----\n%s", name, tail(s.log(name), 80))
		}
	}
	ctx := context.Background()
	for _, u := range s.users {
		_ = s.api.Unregister(ctx, u, s.domain)
	}
	// The users' presence, the nodes' online sets and the progress records:
	// every key of the system starts with its prefix.
	if err := stacktest.DeleteKeys(ctx, s.rdb, s.p+"*"); err != nil {
		s.t.Logf("redis keys %s*: %v", s.p, err)
	}
}

// user registers a fresh XMPP user of this system; online puts it in Redis on node.
func (s *system) user(label, node string) string {
	s.t.Helper()
	u := s.p + "_" + label
	if err := s.api.Register(context.Background(), u, s.domain, "pw"); err != nil {
		s.t.Fatal(err)
	}
	s.users = append(s.users, u)
	if node != "" {
		s.online(u, node)
	}
	return u
}

func (s *system) online(u, node string) {
	s.t.Helper()
	ctx := context.Background()
	if err := s.rdb.Set(ctx, u, s.presence(node), 0).Err(); err != nil {
		s.t.Fatal(err)
	}
	if err := s.rdb.SAdd(ctx, s.presence(node), u).Err(); err != nil {
		s.t.Fatal(err)
	}
}

func (s *system) login(ctx context.Context, u string) *xmpptest.Client {
	s.t.Helper()
	c, err := xmpptest.Login(ctx, s.env.C2SAddr, u, s.domain, "pw")
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *system) channel(id int64, sid, state string, members ...string) {
	s.t.Helper()
	if _, err := s.db.Exec(`INSERT INTO ws_channel_data (channel_id, channel_channelid, channel_state) VALUES (?, ?, ?)`, id, sid, state); err != nil {
		s.t.Fatal(err)
	}
	for _, m := range members {
		if _, err := s.db.Exec(`INSERT INTO ws_channel_members (member_channelid, member_username) VALUES (?, ?)`, id, m); err != nil {
			s.t.Fatal(err)
		}
	}
}

// post sends a JSON body to the REST API and decodes the answer.
func (s *system) post(path string, body any) (int, map[string]any) {
	s.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post("http://"+s.rest+path, "application/json", bytes.NewReader(b))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func (s *system) announce(path string, body map[string]any) string {
	s.t.Helper()
	code, out := s.post(path, body)
	if code != http.StatusAccepted {
		s.t.Fatalf("POST %s: %d %v", path, code, out)
	}
	id, _ := out["id"].(string)
	if id == "" {
		s.t.Fatalf("POST %s: no id in %v", path, out)
	}
	return id
}

// scrape returns a service's /metrics text.
func (s *system) scrape(service string) string {
	s.t.Helper()
	_, body := testkit.Get(s.t, "http://"+s.debug[service]+"/metrics")
	return body
}

// metric returns the sum of a metric's samples whose line contains every filter.
func (s *system) metric(service, name string, filters ...string) float64 {
	s.t.Helper()
	code, body := testkit.Get(s.t, "http://"+s.debug[service]+"/metrics")
	if code != http.StatusOK {
		s.t.Fatalf("%s /metrics: %d %s", service, code, body)
	}
	return testkit.SumMetric(body, name, filters...)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
