package config

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/testkit"
)

// check is one value as loaded and the value it must have.
type check struct {
	name      string
	got, want any
}

// expect fails for every check whose value is not the one it must have.
func expect(t *testing.T, checks []check) {
	t.Helper()
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

// mustLoad loads the file at path or fails the test.
func mustLoad(t *testing.T, path string) Config {
	t.Helper()
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFirstGenerationConfigLoadsUnchanged(t *testing.T) {
	c := mustLoad(t, "testdata/first-generation.toml")
	expect(t, []check{
		{"rest_api_port", c.RestAPIPort, ":8080"},
		{"debug_port", c.DebugPort, ":6060"},
		{"input_buffer", c.InputBuffer, 100},
		{"output_buffer", c.OutputBuffer, 100},
		{"logic_process_number", c.LogicProcessNumber, 2},
		{"user_activity_ask_buffer", c.UserActivityAskBuffer, 1000},
		{"buffer_report_duration", c.Monitoring.BufferReportDuration, 1},
		{"log_level", c.Log.Level, "debug"},
		{"format", c.Log.Format, "text"},
		{"log_dst", c.Log.Dst, "/path/to/dest/file.log"},
		{"zookeeper", c.KafkaConsumer.Zookeeper, "127.0.0.1:2181/"},
		{"kafka-consumer topics", c.KafkaConsumer.Topics, "test-topic"},
		{"group_name", c.KafkaConsumer.GroupName, "announcer"},
		{"kafka-consumer buffer", c.KafkaConsumer.Buffer, 1000},
		{"mysql address", c.MySQL.Address, "127.0.0.1:3306"},
		{"mysql username", c.MySQL.Username, "test"},
		{"mysql password", c.MySQL.Password.Value(), "123"},
		{"mysql db", c.MySQL.DB, "testDB"},
		{"pagination_length", c.MySQL.PaginationLength, 100},
		{"max_ideal_conn", c.MySQL.MaxIdleConn, 50},
		{"max_open_conn", c.MySQL.MaxOpenConn, 50},
		{"redis cluster_nodes", c.UserActivityRedis.ClusterNodes, "127.0.0.1:6379"},
		{"redis db", c.UserActivityRedis.DB, 0},
		{"redis read_timeout", c.UserActivityRedis.ReadTimeout, 1000},
		{"redis max_retries", c.UserActivityRedis.MaxRetries, 2},
		{"rest address", c.UserActivityREST.Address, "127.0.0.1:8888"},
		{"rest request_timeout", c.UserActivityREST.RequestTimeout, 12},
		{"rest idle_conn_timeout", c.UserActivityREST.IdleConnTimeout, 1},
		{"rest max_idle_conn", c.UserActivityREST.MaxIdleConn, 1},
		{"rest max_retry", c.UserActivityREST.MaxRetry, 1},
		{"producer brokers", c.KafkaProducer.Brokers, "192.168.2.1:9092,192.168.2.2:9092,192.168.2.3:9092"},
		{"producer topics", c.KafkaProducer.Topics, "test-topic-name"},
		{"flush_frequency", c.KafkaProducer.FlushFrequency, 3},
		{"MaxRetry", c.KafkaProducer.MaxRetry, 3},
		{"ejabberd cluster_nodes", c.Ejabberd.ClusterNodes, "127.0.0.1:8889"},
		{"rate_limit", c.Ejabberd.RateLimit, 10},
		{"send_retry", c.Ejabberd.SendRetry, 6},
		{"each_node_conn_num", c.Ejabberd.EachNodeConnNum, 1},
		{"client username", c.Client.Username, "admin"},
		{"client password", c.Client.Password.Value(), "password1234"},
		{"client domain", c.Client.Domain, "example.de"},
		{"client ping_interval", c.Client.PingInterval, 2},
		{"client resource", c.Client.Resource, "announcer"},
		{"component name", c.Component.Name, "announcer"},
		{"component secret", c.Component.Secret.Value(), "announcer"},
		{"component domain", c.Component.Domain, "soroush.ir"},
		{"component ping_interval", c.Component.PingInterval, 110},
		{"max_conn_check_retry", c.Component.MaxConnCheckRetry, 10000},
		{"conn_req_check_interval", c.Component.ConnReqCheckInterval, 10},
		// Derived.
		// The first generation connected as name itself (its ejabberd listener declared "announcer").
		{"component JID", c.Component.JID(), "announcer"},
		{"user domain", c.UserDomain(), "soroush.ir"},
		{"consumer brokers from the bus", c.KafkaConsumer.Brokers, "127.0.0.1:9092"},
		{"nodes", len(c.Nodes), 1},
		{"node name", c.Nodes[0].Name, "node1"},
		{"node address", c.Nodes[0].Address, "127.0.0.1:8889"},
		{"node presence", strings.Join(c.Nodes[0].PresenceAddresses, ","), "127.0.0.1"},
	})
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "zookeeper") {
		t.Errorf("want one ZooKeeper warning, got %q", c.Warnings)
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Errorf("the first generation's config must validate: %v", err)
	}
	if !c.Has("client") || c.Has("auth") {
		t.Errorf("Has: client=%v auth=%v", c.Has("client"), c.Has("auth"))
	}
}

func TestDocumentedDefaults(t *testing.T) {
	c := mustLoad(t, "testdata/minimal.toml")
	expect(t, []check{
		{"log_level", c.Log.Level, "warning"},
		{"format", c.Log.Format, "text"},
		{"max_ideal_conn", c.MySQL.MaxIdleConn, 10},
		{"max_open_conn", c.MySQL.MaxOpenConn, 10},
		{"read_timeout", c.UserActivityRedis.ReadTimeout, 1000},
		{"max_retries", c.UserActivityRedis.MaxRetries, 0},
		{"request_timeout", c.UserActivityREST.RequestTimeout, 500},
		{"idle_conn_timeout", c.UserActivityREST.IdleConnTimeout, 90},
		{"max_idle_conn", c.UserActivityREST.MaxIdleConn, 100},
		{"max_retry", c.UserActivityREST.MaxRetry, 3},
		{"producer brokers", c.KafkaProducer.Brokers, "127.0.0.1:9092"},
		{"flush_frequency", c.KafkaProducer.FlushFrequency, 5},
		{"MaxRetry", c.KafkaProducer.MaxRetry, 5},
		{"bus publish", c.Ingress.PublishTimeout.D(), 5 * time.Second},
		{"nodes", len(c.Nodes), 2},
		{"node2", c.Nodes[1].Name + "=" + c.Nodes[1].Address, "node2=10.0.0.2:8889"},
		{"deliveries topic", c.DeliveriesTopic("node2"), "deliveries.node2"},
	})
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Errorf("minimal config: %v", err)
	}
}

func TestUnknownKeysAreNamed(t *testing.T) {
	_, err := Parse([]byte("rest_api_prot=\":8080\"\n[mysql]\nadress=\"x\"\n"))
	mustName(t, err, "rest_api_prot", "mysql.adress")
}

// mustName fails unless err is an error whose text names every one of names.
func mustName(t *testing.T, err error, names ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want an error naming %q", names)
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("missing %q in:\n%v", n, err)
		}
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	c, err := Parse([]byte(`
[log]
log_level = "loud"
[bus]
brokers = ""
partitions = 0
[mysql]
pagination_length = 0
[fanout]
presence = "carrier-pigeon"
[sender]
mode = "telepathy"
node = "nodeX"
[ejabberd]
rate_limit = 0
[monitoring]
buffer_report_duration = 0
`))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver),
		"[monitoring] buffer_report_duration", "log_level", "[bus] brokers", "[bus] partitions", "[mysql] address", "[mysql] pagination_length",
		"[fanout] presence", "[sender] mode", "[sender] node", "rate_limit", "cluster_nodes", "[kafka-producer] topics")
}

// A [[node]] table without presence_addresses takes its listener's host, as
// a cluster_nodes entry does: with none, no all-online recipient and no
// channel member would be routed to it. Two nodes on one host then share
// that value, which the fanout cannot route by: -check-config says so.
func TestNodePresenceDefaultsToTheListenersHost(t *testing.T) {
	c, err := Parse([]byte(`
[component]
domain = "localhost"
[[node]]
name = "a"
address = "10.0.0.8:8889"
[[node]]
name = "b"
address = "10.0.0.9:8889"
presence_addresses = ["ejabberd-b"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.Nodes[0].PresenceAddresses, c.Nodes[1].PresenceAddresses); got != "[10.0.0.8] [ejabberd-b]" {
		t.Fatalf("presence addresses %s", got)
	}
	if err := c.Validate(RoleFanout); err != nil && strings.Contains(err.Error(), "presence address") {
		t.Fatal(err)
	}
	c, err = Parse([]byte(`
[component]
domain = "localhost"
[[node]]
name = "a"
address = "127.0.0.1:8889"
[[node]]
name = "b"
address = "127.0.0.1:8899"
`))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleFanout), `[[node]] "b": presence address "127.0.0.1" is also node "a"'s`)
	if err := c.Validate(RoleSender, RoleArchiver); err != nil && strings.Contains(err.Error(), "presence address") {
		t.Fatalf("roles that do not route by presence: %v", err)
	}
}

// A dry run must be answered before the API server cuts the response.
func TestPreviewWaitFitsTheServersResponseTime(t *testing.T) {
	c, err := Parse([]byte("[component]\ndomain = \"localhost\"\n[ingress]\npublish_timeout = \"5s\"\npreview_timeout = \"90s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleIngress), "publish_timeout + preview_timeout = 1m35s")
	c.Ingress.PreviewTimeout = Duration(45 * time.Second)
	if err := c.Validate(RoleIngress); err != nil {
		t.Fatalf("5 s + 45 s refused: %v", err)
	}
}

func TestSenderMulticastAndFailoverKeys(t *testing.T) {
	c, err := Parse([]byte(`
[sender]
multicast = "sometimes"
failover_after = "-1s"
`))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleSender), "[sender] multicast \"sometimes\"", "[sender] failover_after")
	c, err = Parse([]byte(`
[sender]
mode = "client"
multicast = "auto"
multicast_max = 0
[client]
username = "announcer"
password = "x"
domain = "localhost"
`))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleSender), "[sender] multicast_max", "needs [sender] mode = \"component\"")
	d := Default()
	d.Component.Domain = "localhost"
	if d.Sender.Multicast != MulticastOff || d.MulticastJID() != "multicast.localhost" || d.Sender.FailoverAfter.D() != 30*time.Second {
		t.Fatalf("defaults: multicast %q to %q, failover_after %s", d.Sender.Multicast, d.MulticastJID(), d.Sender.FailoverAfter.D())
	}
}

func TestFanoutMemberCountMaxAge(t *testing.T) {
	if d := Default().Fanout.MemberCountMaxAge.D(); d != 5*time.Minute {
		t.Fatalf("default member_count_max_age %s, want 5m", d)
	}
	c, err := Parse([]byte("[fanout]\nmember_count_max_age = \"0s\"\n"))
	if err != nil || c.Fanout.MemberCountMaxAge != 0 {
		t.Fatalf("0s: %v, %s", err, c.Fanout.MemberCountMaxAge.D())
	}
	c, err = Parse([]byte("[fanout]\nmember_count_max_age = \"-1m\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleFanout), "[fanout] member_count_max_age")
}

func TestSecretsAreMaskedWhenPrinted(t *testing.T) {
	c, err := Parse([]byte(`
[mysql]
password = "mysql-pass-123"
[user-activity-redis]
password = "redis-pass-456"
[client]
password = "client-pass-789"
[component]
secret = "component-secret-000"
[auth]
tokens = ["token-aaaaaaaaaaaaaaaa"]
`))
	if err != nil {
		t.Fatal(err)
	}
	out := c.String()
	for _, s := range []string{"mysql-pass-123", "redis-pass-456", "client-pass-789", "component-secret-000", "token-aaaaaaaaaaaaaaaa"} {
		if strings.Contains(out, s) {
			t.Errorf("printed config leaks %q", s)
		}
	}
	if !strings.Contains(out, "******") {
		t.Error("no masked value printed")
	}
	if c.Auth.Tokens[0].Value() != "token-aaaaaaaaaaaaaaaa" || c.Component.Secret.Value() != "component-secret-000" {
		t.Error("masking for print altered the config itself")
	}
	// The printed form must load again (the -check-config output is a valid config).
	if _, err := Parse([]byte(out)); err != nil {
		t.Errorf("printed config does not parse: %v", err)
	}
}

// name is the component's address as written, as the first generation and
// ejabberd's listener hosts take it: never completed with domain.
func TestComponentJID(t *testing.T) {
	for _, tc := range []struct{ name, domain, want string }{
		{"announcer", "soroush.ir", "announcer"},
		{"announcer", "localhost", "announcer"},
		{"announcer.localhost", "localhost", "announcer.localhost"},
		{"announcer.example.org", "example.org", "announcer.example.org"},
		{"announcer", "", "announcer"},
	} {
		if got := (Component{Name: tc.name, Domain: tc.domain}).JID(); got != tc.want {
			t.Errorf("JID(%q,%q) = %q, want %q", tc.name, tc.domain, got, tc.want)
		}
	}
}

func TestListenAddr(t *testing.T) {
	for in, want := range map[string]string{"8080": ":8080", ":8080": ":8080", "127.0.0.1:1": "127.0.0.1:1"} {
		if got := ListenAddr(in); got != want {
			t.Errorf("ListenAddr(%q) = %q", in, got)
		}
	}
}

func TestRepoConfigIsValid(t *testing.T) {
	c, err := Load("../../configs/announcer.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("repo config has warnings: %v", c.Warnings)
	}
	// The sender connects as the host the local stack's ejabberd listener declares.
	sh, err := os.ReadFile("../../scripts/stack/ejabberd.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^COMPONENT_DOMAIN=(\S+)$`).FindSubmatch(sh)
	if m == nil {
		t.Fatal("scripts/stack/ejabberd.sh sets no COMPONENT_DOMAIN")
	}
	if got := c.Component.JID(); got != string(m[1]) {
		t.Errorf("configs/announcer.toml connects as %q; the stack's component listener declares %q", got, m[1])
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("rest_api_port=\":8080\"\n[mysql]\naddress=\"x\"\n"))
	f.Add([]byte("[[node]]\nname=\"a\"\naddress=\"1.2.3.4:5\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		_ = c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver)
		_ = c.String()
	})
}

func TestTemplateRulesFollowTheMode(t *testing.T) {
	cfg := Default()
	cfg.Component.Name, cfg.Component.Domain = "announcer.example.org", "example.org"
	cfg.Client = Client{Username: "admin", Domain: "client.example.org"}
	if r := cfg.TemplateRules(); r.ComponentDomain != "announcer.example.org" || r.ClientJID != "" || r.MaxBytes != cfg.Ingress.MaxTemplateBytes {
		t.Errorf("component mode: %+v", r)
	}
	cfg.Component.FromDomain = "shared.example.org"
	if r := cfg.TemplateRules(); r.ComponentDomain != "shared.example.org" || r.AnyFrom {
		t.Errorf("a replica with from_domain: %+v", r)
	}
	cfg.Component.CheckFrom = false
	if r := cfg.TemplateRules(); !r.AnyFrom {
		t.Errorf("check_from = false: %+v", r)
	}
	cfg.Sender.Mode = ModeClient
	if r := cfg.TemplateRules(); r.ComponentDomain != "" || r.ClientJID != "admin@client.example.org" {
		t.Errorf("client mode: %+v", r)
	}
	cfg.Client.Username = "admin@other.example"
	if got := cfg.Client.JID(); got != "admin@other.example" {
		t.Errorf("a username with a domain: %q", got)
	}
}

// The Kafka security keys of each cluster section: they parse into the section, the input
// topics inherit [bus]'s with its brokers, and what is wrong is named before any connection.
func TestKafkaSecurityKeys(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, testkit.SelfSignedCA(t, "kafka"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(`
[bus]
brokers = "k1:9093"
tls = true
tls_ca_file = "` + ca + `"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "announcer"
sasl_password = "bus-secret-1234"
[kafka-consumer]
topics = "input"
[kafka-producer]
brokers = "storage:9092"
topics = "archive"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := KafkaSecurity{TLS: true, TLSCAFile: ca, SASLMechanism: "SCRAM-SHA-512", SASLUsername: "announcer", SASLPassword: "bus-secret-1234"}
	if c.Bus.KafkaSecurity != want || c.KafkaConsumer.KafkaSecurity != want || c.KafkaConsumer.Brokers != "k1:9093" {
		t.Fatalf("[bus] %+v, [kafka-consumer] %q %+v; want both %+v", c.Bus.KafkaSecurity, c.KafkaConsumer.Brokers, c.KafkaConsumer.KafkaSecurity, want)
	}
	if c.KafkaProducer.KafkaSecurity != (KafkaSecurity{}) {
		t.Fatalf("[kafka-producer] (another cluster) took [bus]'s security: %+v", c.KafkaProducer.KafkaSecurity)
	}
	if strings.Contains(c.String(), "bus-secret-1234") {
		t.Error("the printed config shows sasl_password")
	}
	c.Component.Domain = "localhost"
	if err := c.Validate(RoleIngress); err != nil {
		t.Fatalf("valid settings refused: %v", err)
	}

	c, err = Parse([]byte(`
[bus]
sasl_mechanism = "GSSAPI"
tls_ca_file = "/nonexistent/ca.pem"
[kafka-producer]
sasl_mechanism = "PLAIN"
tls = true
tls_cert_file = "client.pem"
`))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleArchiver), `[bus] sasl_mechanism "GSSAPI"`, "[bus] tls_ca_file/tls_cert_file/tls_key_file: set, but tls is false",
		"[bus] tls_ca_file: stat /nonexistent/ca.pem", "[kafka-producer] sasl_mechanism PLAIN: needs sasl_username and sasl_password",
		"[kafka-producer] tls_cert_file and tls_key_file: set both or neither")
}

// Values that pass the check must let the services start and stop well: a
// record limit with no room past its headers, a shutdown without a drain.
func TestLimitsTheServicesNeed(t *testing.T) {
	c, err := Parse([]byte("[component]\ndomain = \"localhost\"\n[bus]\nmax_message_bytes = 2048\n[ingress]\nshutdown_timeout = \"0s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	mustName(t, c.Validate(RoleIngress), "[bus] max_message_bytes 2048", "[ingress] shutdown_timeout")
	c.Bus.MaxMessageBytes, c.Ingress.ShutdownTimeout = MinMessageBytes, Duration(time.Second)
	if err := c.Validate(RoleIngress); err != nil {
		t.Fatalf("the smallest allowed values refused: %v", err)
	}
}

// A key this generation keeps but does not read says so when set.
func TestOfflineHashIsNotRead(t *testing.T) {
	c, err := Parse([]byte("[user-activity-redis]\noffline_hash = \"last-seen\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(c.Warnings, "\n"), "offline_hash is not read") {
		t.Fatalf("warnings %q", c.Warnings)
	}
	if d, _ := Parse(nil); len(d.Warnings) != 0 {
		t.Fatalf("the defaults warn: %q", d.Warnings)
	}
}

// Redis Cluster has only db 0. The presence servers' db is named as
// [user-activity-redis] db wherever it is used: by the fanout's presence,
// and by the progress store when it has no redis_nodes of its own.
func TestClusterDBIsNamedWhereItIsSet(t *testing.T) {
	const fanout = "[mysql]\naddress = \"m:3306\"\ndb = \"d\"\n[ejabberd]\ncluster_nodes = \"e:8889\"\n[component]\ndomain = \"localhost\"\n"
	for _, tc := range []struct {
		name, file string
		roles      []Role
		want, not  string // want "" = valid
	}{
		{"presence cluster, progress on it", "[user-activity-redis]\ncluster_nodes = \"r1:6379,r2:6379\"\ndb = 2\n", []Role{RoleFanout},
			"[user-activity-redis] db 2", "[progress] db"},
		{"presence cluster, progress disabled", "[user-activity-redis]\ncluster_nodes = \"r1:6379,r2:6379\"\ndb = 2\n[progress]\ndisabled = true\n", []Role{RoleFanout},
			"[user-activity-redis] db 2", "[progress] db"},
		{"cluster = true with one seed", "[user-activity-redis]\ncluster_nodes = \"r1:6379\"\ncluster = true\ndb = 1\n[progress]\ndisabled = true\n", []Role{RoleFanout},
			"[user-activity-redis] db 1", ""},
		{"progress on the presence servers, ingress", "[user-activity-redis]\ncluster_nodes = \"r1:6379,r2:6379\"\ndb = 2\n", []Role{RoleIngress},
			"[user-activity-redis] db 2", "[progress] db"},
		{"progress's own cluster", "[user-activity-redis]\ncluster_nodes = \"r1:6379\"\ndb = 2\n[progress]\nredis_nodes = \"p1:6379,p2:6379\"\ndb = 3\n", []Role{RoleFanout},
			"[progress] db 3", "[user-activity-redis] db"},
		{"one presence server with a db", "[user-activity-redis]\ncluster_nodes = \"r1:6379\"\ndb = 2\n", []Role{RoleFanout, RoleIngress}, "", ""},
		{"REST presence, progress off", "[user-activity-redis]\ncluster_nodes = \"r1:6379,r2:6379\"\ndb = 2\n[fanout]\npresence = \"rest\"\n[user-activity-rest-api]\naddress = \"a:1\"\n[progress]\ndisabled = true\n",
			[]Role{RoleFanout}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(fanout + tc.file))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate(tc.roles...)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			mustName(t, err, tc.want, "Redis Cluster has only db 0")
			if tc.not != "" && strings.Contains(err.Error(), tc.not) {
				t.Errorf("error names %q, where the value was not set:\n%v", tc.not, err)
			}
		})
	}
}

// validates parses text and validates it for role: no error when want is
// empty, else one naming each of want.
func validates(t *testing.T, role Role, text string, want ...string) {
	t.Helper()
	c, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate(role)
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("refused:\n%s\n%v", text, err)
		}
		return
	}
	mustName(t, err, want...)
}

// The sender's connection pool replaced smaller values silently (64 KiB, 30 s).
func TestSenderBufferAndReconnectMinimums(t *testing.T) {
	const base = "[ejabberd]\ncluster_nodes = \"e:8889\"\n[component]\nname = \"announcer.localhost\"\nsecret = \"s\"\ndomain = \"localhost\"\n"
	validates(t, RoleSender, base+"[sender]\nwrite_buffer_bytes = 1024\nreconnect_max = \"50ms\"\n",
		"[sender] write_buffer_bytes 1024: want >= 4096", "[sender] reconnect_max 50ms: want >= 100ms")
	validates(t, RoleSender, base+"[sender]\nwrite_buffer_bytes = 4096\nreconnect_max = \"100ms\"\n") // the smallest allowed
	validates(t, RoleSender, base)                                                                    // the defaults
}

// A key that outlives the record it points to would publish a retry again.
func TestIdempotencyWindowWithinTTL(t *testing.T) {
	const base = "[component]\ndomain = \"localhost\"\n[user-activity-redis]\ncluster_nodes = \"r:6379\"\n"
	validates(t, RoleIngress, base+"[progress]\nttl = \"1h\"\n",
		"[progress] idempotency_window 24h0m0s: at most [progress] ttl 1h0m0s", "announced again")
	validates(t, RoleIngress, base+"[progress]\nttl = \"1h\"\nidempotency_window = \"1h\"\n")
	// Without a progress store there are no keys to outlive anything.
	validates(t, RoleIngress, base+"[progress]\nttl = \"1h\"\ndisabled = true\n")
}
