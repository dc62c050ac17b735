// Package config loads the one TOML file that serves all four announcer services.
//
// Every key of the first generation keeps its name, unit and default; what this
// generation adds lives in new sections. Decoding is strict: an unknown key is an
// error that names it, so a typo never silently falls back to a default.
package config

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/announcer/announcer/pkg/redisconn"
	"github.com/announcer/announcer/pkg/stanza"
)

// Config is the whole file. First-generation keys come first, in its order.
type Config struct {
	RestAPIPort           string `toml:"rest_api_port"`
	DebugPort             string `toml:"debug_port"`
	InputBuffer           int    `toml:"input_buffer"`
	OutputBuffer          int    `toml:"output_buffer"`
	LogicProcessNumber    int    `toml:"logic_process_number"`
	UserActivityAskBuffer int    `toml:"user_activity_ask_buffer"`

	Monitoring        Monitoring        `toml:"monitoring"`
	Log               Log               `toml:"log"`
	KafkaConsumer     KafkaConsumer     `toml:"kafka-consumer"`
	MySQL             MySQL             `toml:"mysql"`
	UserActivityRedis UserActivityRedis `toml:"user-activity-redis"`
	UserActivityREST  UserActivityREST  `toml:"user-activity-rest-api"`
	KafkaProducer     KafkaProducer     `toml:"kafka-producer"`
	Ejabberd          Ejabberd          `toml:"ejabberd"`
	Client            Client            `toml:"client"`
	Component         Component         `toml:"component"`

	// New in this generation.
	Bus      Bus      `toml:"bus"`
	Auth     Auth     `toml:"auth"`
	Ingress  Ingress  `toml:"ingress"`
	Fanout   Fanout   `toml:"fanout"`
	Sender   Sender   `toml:"sender"`
	Archiver Archiver `toml:"archiver"`
	Progress Progress `toml:"progress"`
	Debug    Debug    `toml:"debug"`
	Nodes    []Node   `toml:"node"`

	// Warnings collects non-fatal findings of Load (e.g. a ZooKeeper-only consumer).
	Warnings []string `toml:"-"`
	// Notes say how a first-generation file was read (a section alias, a mode chosen from the sections).
	Notes []string `toml:"-"`
	// present records which optional sections the file named.
	present map[string]bool
}

type Monitoring struct {
	BufferReportDuration int `toml:"buffer_report_duration"` // seconds
}

type Log struct {
	Level  string `toml:"log_level"` // debug, info, warning, error
	Format string `toml:"format"`    // text, json
	Dst    string `toml:"log_dst"`   // optional file; empty = stderr
}

type KafkaConsumer struct {
	Zookeeper string `toml:"zookeeper"` // first generation only; ignored with a warning
	Brokers   string `toml:"brokers"`   // new: comma-separated; empty = [bus] brokers
	Topics    string `toml:"topics"`    // comma-separated
	GroupName string `toml:"group_name"`
	Buffer    int    `toml:"buffer"`
	// New: how to reach those brokers; with no brokers of its own, [bus]'s.
	KafkaSecurity
	// New: where a group with no committed offset starts: "latest" (only what
	// is produced from now on) or "earliest" (the topic's whole retained history).
	StartOffset string `toml:"start_offset"`
}

type MySQL struct {
	Address          string `toml:"address"`
	Username         string `toml:"username"`
	Password         Secret `toml:"password"`
	DB               string `toml:"db"`
	PaginationLength int    `toml:"pagination_length"`
	MaxIdleConn      int    `toml:"max_ideal_conn"` // the first generation's spelling
	MaxOpenConn      int    `toml:"max_open_conn"`
}

type UserActivityRedis struct {
	ClusterNodes string `toml:"cluster_nodes"` // comma-separated; more than one = Redis Cluster
	Password     Secret `toml:"password"`
	DB           int    `toml:"db"`
	ReadTimeout  int    `toml:"read_timeout"` // milliseconds
	MaxRetries   int    `toml:"max_retries"`
	// The data model's hash of last-seen times (2018's offline_hash_table);
	// nothing reads it (a warning says so when it is set).
	OfflineHash string `toml:"offline_hash"`
	// New: force the cluster client even for one seed node.
	Cluster bool `toml:"cluster"`
	// SetPrefix is the first generation's KEYS pattern for the online-users
	// sets an all-online announcement read. It is not read here (the sets are
	// the nodes' presence_addresses); Parse checks it against them.
	SetPrefix string `toml:"set_prefix,omitempty"`
}

type UserActivityREST struct {
	Address         string `toml:"address"`
	RequestTimeout  int    `toml:"request_timeout"`   // milliseconds
	IdleConnTimeout int    `toml:"idle_conn_timeout"` // seconds
	MaxIdleConn     int    `toml:"max_idle_conn"`
	MaxRetry        int    `toml:"max_retry"`
}

type KafkaProducer struct {
	Brokers        string `toml:"brokers"`         // comma-separated; may be another cluster than [bus]
	Topics         string `toml:"topics"`          // storage topic(s), comma-separated
	FlushFrequency int    `toml:"flush_frequency"` // seconds
	MaxRetry       int    `toml:"MaxRetry"`
	KafkaSecurity         // new: how to reach the storage cluster
}

// KafkaSecurity says how to reach a Kafka cluster: TLS, and SASL
// authentication. The first generation had neither; the zero value is
// plaintext without authentication.
type KafkaSecurity struct {
	TLS         bool   `toml:"tls"`
	TLSCAFile   string `toml:"tls_ca_file"`   // PEM, trusted besides the system's roots
	TLSCertFile string `toml:"tls_cert_file"` // PEM client certificate (with tls_key_file), for brokers that ask for one
	TLSKeyFile  string `toml:"tls_key_file"`
	// SASLMechanism is "" (none), "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512".
	SASLMechanism string `toml:"sasl_mechanism"`
	SASLUsername  string `toml:"sasl_username"`
	SASLPassword  Secret `toml:"sasl_password"`
}

type Ejabberd struct {
	ClusterNodes    string `toml:"cluster_nodes"` // comma-separated host:port of each node's component (or c2s) listener
	RateLimit       int    `toml:"rate_limit"`    // stanzas per second per connection
	SendRetry       int    `toml:"send_retry"`
	EachNodeConnNum int    `toml:"each_node_conn_num"`
}

type Client struct {
	Username     string `toml:"username"`
	Password     Secret `toml:"password"`
	Domain       string `toml:"domain"`
	PingInterval int    `toml:"ping_interval"` // seconds
	Resource     string `toml:"resource"`
	// New: a PEM file of CA certificates (or ejabberd's self-signed
	// certificate itself) trusted for ejabberd's c2s certificate, besides
	// the system roots. The first generation skipped TLS altogether; here
	// the certificate is always verified, against domain.
	CAFile string `toml:"ca_file"`
}

// RootCAs are the roots ejabberd's c2s certificate is verified against: the
// system's, plus ca_file's certificates when it is set. nil (the system's
// roots) without ca_file.
func (c Client) RootCAs() (*x509.CertPool, error) {
	if c.CAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("[client] ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		// No system pool (some platforms): the file alone is still a valid trust.
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("[client] ca_file %s: no PEM certificate in it", c.CAFile)
	}
	return pool, nil
}

// JID is the sending account's bare JID: username, completed with domain
// unless it already has one.
func (c Client) JID() string {
	if strings.Contains(c.Username, "@") {
		return c.Username
	}
	return c.Username + "@" + c.Domain
}

type Component struct {
	Name                 string `toml:"name"`
	Secret               Secret `toml:"secret"`
	Domain               string `toml:"domain"`
	PingInterval         int    `toml:"ping_interval"` // seconds
	MaxConnCheckRetry    int    `toml:"max_conn_check_retry"`
	ConnReqCheckInterval int    `toml:"conn_req_check_interval"` // seconds
	// New: the domain a template's `from` must be in; empty = the component's own JID.
	// A sender replica connecting as its own component domain (so that ejabberd routes its
	// fence results to it alone) keeps sending from the shared announcer domain; its
	// ejabberd listener then needs check_from: false.
	FromDomain string `toml:"from_domain"`
	// New: false when the ejabberd listener has check_from: false, which lets a
	// template's from be any address (the first generation's documented sample
	// sends from a user's).
	CheckFrom bool `toml:"check_from"`
}

// TemplateDomain is the domain templates' `from` must be in.
func (c Component) TemplateDomain() string {
	if c.FromDomain != "" {
		return c.FromDomain
	}
	return c.JID()
}

// JID is the component's address: name exactly as written, the host the
// ejabberd listener declares. The first generation connected as name itself,
// so completing it with domain would make its files connect as another
// component, which ejabberd refuses.
func (c Component) JID() string { return c.Name }

// Bus is the internal Kafka that joins the services.
type Bus struct {
	Brokers            string   `toml:"brokers"`
	AnnouncementsTopic string   `toml:"announcements_topic"`
	DeliveriesPrefix   string   `toml:"deliveries_topic_prefix"` // + node name
	DeadLetterTopic    string   `toml:"dead_letter_topic"`
	Partitions         int      `toml:"partitions"`
	ReplicationFactor  int      `toml:"replication_factor"`
	CreateTopics       bool     `toml:"create_topics"`
	WriteTimeout       Duration `toml:"write_timeout"`
	BatchTimeout       Duration `toml:"batch_timeout"` // producer linger
	MaxMessageBytes    int      `toml:"max_message_bytes"`
	// PrioritySuffix names the priority lane's topics: the announcements
	// topic and each deliveries topic + suffix. Users announcements and
	// "priority": "high" ones go there, never behind bulk channel batches.
	PrioritySuffix string `toml:"priority_suffix"`
	KafkaSecurity
}

type Auth struct {
	Tokens []Secret `toml:"tokens"` // bearer tokens; empty = no auth (warned at start-up)
}

type Ingress struct {
	MaxBodyBytes     int64    `toml:"max_body_bytes"`
	MaxUsernames     int      `toml:"max_usernames"`
	MaxTemplateBytes int      `toml:"max_template_bytes"`
	PublishTimeout   Duration `toml:"publish_timeout"`
	ShutdownTimeout  Duration `toml:"shutdown_timeout"`
	// PreviewTimeout bounds how long a dry run waits for fanout's count
	// (a 504 names the id to poll after it).
	PreviewTimeout Duration `toml:"preview_timeout"`
	// MaxInFlightBytes bounds the announce POST bodies handled at once
	// (past it: 503 with Retry-After), so a burst of large requests
	// cannot take the process's memory.
	MaxInFlightBytes int64 `toml:"max_in_flight_bytes"`
}

type Fanout struct {
	GroupName string   `toml:"group_name"`
	BatchSize int      `toml:"batch_size"` // recipients per delivery batch
	ShardSize int      `toml:"shard_size"` // members per shard task of a giant channel
	Presence  string   `toml:"presence"`   // redis | rest
	RetryMax  Duration `toml:"retry_max"`  // upper bound of one backoff step
	// MemberCountMaxAge is how old a giant channel's member count may be
	// when fanout cuts it into shards (0: counted for each announcement).
	// Counting reads the channel's whole index (0.1 s per million members)
	// before any shard starts; an old count only moves the shards'
	// boundaries, which always cover every member id.
	MemberCountMaxAge Duration `toml:"member_count_max_age"`
}

type Sender struct {
	Node             string   `toml:"node"`         // which [[node]] this process serves; -node overrides
	Mode             string   `toml:"mode"`         // component | client
	GroupPrefix      string   `toml:"group_prefix"` // consumer group = prefix + node
	FenceTimeout     Duration `toml:"fence_timeout"`
	MaxInFlight      int      `toml:"max_in_flight"` // batches a lane sends at once; as many more, fenced, may wait for their commit
	WriteBufferBytes int      `toml:"write_buffer_bytes"`
	ReconnectMax     Duration `toml:"reconnect_max"`
	// ProgressInterval is how long a batch is sent between fences: a slow
	// (rate-limited) batch is fenced and its progress recorded this often,
	// so a restart resends it from its last fence, not from its start.
	ProgressInterval Duration `toml:"progress_interval"`
	// FailoverAfter is how long a node may stay unreachable before its
	// topic moves to the other nodes' senders (half of it for its own
	// sender to hand the topic over, half for the others to take it); 0
	// turns failover off.
	FailoverAfter Duration `toml:"failover_after"`
	// Multicast is "auto" (templates whose only placeholder is the whole
	// `to` go out as XEP-0033 multicasts, once the service proved it takes
	// MulticastMax addresses from us) or "off".
	Multicast        string `toml:"multicast"`
	MulticastService string `toml:"multicast_service"` // default "multicast.<users' domain>"
	MulticastMax     int    `toml:"multicast_max"`     // recipients per multicast
}

type Archiver struct {
	GroupName string `toml:"group_name"`
}

// Progress is where announcements' progress, cancellations and idempotency
// keys live: a Redis (or Redis Cluster) every stage can reach. Without
// redis_nodes, the [user-activity-redis] servers; with neither, there is no
// progress store and the control routes answer 501.
type Progress struct {
	RedisNodes  string `toml:"redis_nodes"` // comma-separated
	Password    Secret `toml:"password"`
	DB          int    `toml:"db"`
	Cluster     bool   `toml:"cluster"`
	ReadTimeout int    `toml:"read_timeout"` // milliseconds
	KeyPrefix   string `toml:"key_prefix"`
	// TTL is how long an announcement's record is kept after its last update.
	TTL Duration `toml:"ttl"`
	// IdempotencyWindow is how long an Idempotency-Key (or a Kafka input
	// record key) maps to its announcement.
	IdempotencyWindow Duration `toml:"idempotency_window"`
	// CancelCheck is how stale a stage's cached "not cancelled" may be.
	CancelCheck Duration `toml:"cancel_check"`
	// Disabled turns the store off even where a Redis is configured.
	Disabled bool `toml:"disabled"`
}

type Debug struct {
	Pprof bool `toml:"pprof"`
}

// Node is one ejabberd node. Without [[node]] tables, the nodes are derived from [ejabberd] cluster_nodes.
type Node struct {
	Name              string   `toml:"name"`
	Address           string   `toml:"address"`            // component (or c2s) host:port
	PresenceAddresses []string `toml:"presence_addresses"` // values of the Redis presence keys that mean "on this node"
}

// Secret is a string that never prints itself.
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "******"
}

// MarshalText masks the secret so a printed config never leaks it.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Value returns the real secret for the code that needs it.
func (s Secret) Value() string { return string(s) }

// Duration reads TOML strings like "1.5s" or "250ms".
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns the configuration with every documented default filled in.
func Default() Config {
	return Config{
		RestAPIPort:           ":8080",
		DebugPort:             ":6060",
		InputBuffer:           100,
		OutputBuffer:          100,
		LogicProcessNumber:    2,
		UserActivityAskBuffer: 1000,
		Monitoring:            Monitoring{BufferReportDuration: 1},
		Log:                   Log{Level: "warning", Format: "text"},
		KafkaConsumer:         KafkaConsumer{GroupName: "announcer", Buffer: 1000, StartOffset: "latest"},
		MySQL:                 MySQL{PaginationLength: 100, MaxIdleConn: 10, MaxOpenConn: 10},
		UserActivityRedis:     UserActivityRedis{ReadTimeout: 1000, OfflineHash: "offline-users"},
		UserActivityREST:      UserActivityREST{RequestTimeout: 500, IdleConnTimeout: 90, MaxIdleConn: 100, MaxRetry: 3},
		KafkaProducer:         KafkaProducer{Brokers: "127.0.0.1:9092", FlushFrequency: 5, MaxRetry: 5},
		Ejabberd:              Ejabberd{RateLimit: 1000, SendRetry: 6, EachNodeConnNum: 1},
		Client:                Client{PingInterval: 30, Resource: "announcer"},
		Component:             Component{PingInterval: 30, MaxConnCheckRetry: 10000, ConnReqCheckInterval: 10, CheckFrom: true},
		Bus: Bus{
			Brokers:            "127.0.0.1:9092",
			AnnouncementsTopic: "announcements",
			DeliveriesPrefix:   "deliveries.",
			DeadLetterTopic:    "announcements.dlq",
			Partitions:         6,
			ReplicationFactor:  1,
			CreateTopics:       true,
			WriteTimeout:       Duration(10 * time.Second),
			BatchTimeout:       Duration(2 * time.Millisecond),
			MaxMessageBytes:    1 << 20,
			PrioritySuffix:     ".priority",
		},
		Ingress: Ingress{
			MaxBodyBytes:     1 << 20,
			MaxUsernames:     10000,
			MaxTemplateBytes: 65536,
			PublishTimeout:   Duration(5 * time.Second),
			ShutdownTimeout:  Duration(10 * time.Second),
			PreviewTimeout:   Duration(30 * time.Second),
			MaxInFlightBytes: 64 << 20,
		},
		Fanout: Fanout{
			GroupName:         "announcer-fanout",
			BatchSize:         1000,
			ShardSize:         100000,
			Presence:          "redis",
			RetryMax:          Duration(10 * time.Second),
			MemberCountMaxAge: Duration(5 * time.Minute),
		},
		Sender: Sender{
			Mode:             "component",
			GroupPrefix:      "announcer-sender-",
			FenceTimeout:     Duration(30 * time.Second),
			MaxInFlight:      4,
			WriteBufferBytes: 64 << 10,
			ReconnectMax:     Duration(30 * time.Second),
			ProgressInterval: Duration(time.Second),
			FailoverAfter:    Duration(30 * time.Second),
			Multicast:        MulticastOff,
			MulticastMax:     500,
		},
		Archiver: Archiver{GroupName: "announcer-archiver"},
		Progress: Progress{
			ReadTimeout:       1000,
			KeyPrefix:         "announcer:",
			TTL:               Duration(7 * 24 * time.Hour),
			IdempotencyWindow: Duration(24 * time.Hour),
			CancelCheck:       Duration(500 * time.Millisecond),
		},
		Debug: Debug{Pprof: true},
	}
}

// Load reads path over the defaults. Unknown keys are an error naming the key.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return Parse(b)
}

// Parse decodes TOML text over the defaults and resolves derived values.
// The first generation's other spellings are read as this generation's
// (migrate); Notes and Warnings say how.
func Parse(src []byte) (Config, error) {
	var raw map[string]any
	if err := toml.Unmarshal(src, &raw); err != nil {
		return Config{}, decodeError(err)
	}
	notes, warnings, changed, err := migrate(raw)
	if err != nil {
		return Config{}, err
	}
	b := src
	if changed {
		if b, err = toml.Marshal(raw); err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
	}
	cfg := Default()
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var de *toml.DecodeError
		var strict *toml.StrictMissingError
		if changed && !errors.As(err, &strict) && errors.As(err, &de) {
			// Its position is in the text rewritten with this generation's
			// names. Decoded as written (old names skipped), the file places a
			// wrong value of a key it names as this generation does.
			probe := Default()
			if perr := toml.Unmarshal(src, &probe); perr != nil {
				return Config{}, decodeError(perr)
			}
			return Config{}, fmt.Errorf("config: %s (a key of an old name, read as this generation's)", de.Error())
		}
		return Config{}, decodeError(err)
	}
	cfg.Notes, cfg.Warnings = notes, warnings
	cfg.present = make(map[string]bool, len(raw))
	for k := range raw {
		cfg.present[k] = true
	}
	cfg.chooseSources(raw)
	cfg.resolve()
	return cfg, nil
}

func decodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var keys []string
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return fmt.Errorf("config: unknown keys: %s", strings.Join(keys, ", "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("config: line %d column %d: %s", row, col, de.Error())
	}
	return fmt.Errorf("config: %w", err)
}

// chooseSources picks what the first generation chose from the sections a
// file has, where this generation's keys do not say: client mode for a file
// with [client] and no [component] secret (its main.go connected a component
// only with a secret); presence as its main.go chose it, Redis whenever
// [user-activity-redis] cluster_nodes is set, else the REST API.
func (c *Config) chooseSources(raw map[string]any) {
	if !has(raw, "sender", "mode") && c.present["client"] {
		switch {
		case !c.present["component"]:
			c.Sender.Mode = ModeClient
			c.Notes = append(c.Notes, "client mode: the file has [client] and no [component]")
		case c.Component.Secret.Value() == "":
			c.Sender.Mode = ModeClient
			c.Notes = append(c.Notes, "client mode: the file has [client] and no [component] secret, with which the first generation chose client mode too")
		}
	}
	if has(raw, "fanout", "presence") || !c.present["user-activity-rest-api"] {
		return
	}
	if c.UserActivityRedis.ClusterNodes == "" {
		c.Fanout.Presence = "rest"
		c.Notes = append(c.Notes, "presence from the user-activity REST API: the file has [user-activity-rest-api] and no Redis cluster_nodes")
		return
	}
	// Both sections, as in the documented sample: the first generation used Redis.
	c.Notes = append(c.Notes, "presence from Redis: the file has [user-activity-redis] cluster_nodes, which the first generation "+
		"preferred over [user-activity-rest-api] (ignored); set [fanout] presence = \"rest\" to use the REST API")
}

// Has reports whether the file named the section (e.g. "client", "user-activity-rest-api").
func (c *Config) Has(section string) bool { return c.present[section] }

func (c *Config) resolve() {
	if c.KafkaConsumer.Brokers == "" && c.KafkaConsumer.Zookeeper != "" {
		c.Warnings = append(c.Warnings, fmt.Sprintf(
			"[kafka-consumer] zookeeper=%q is ignored (Kafka no longer uses ZooKeeper); consuming from [bus] brokers %q — set [kafka-consumer] brokers to silence this",
			c.KafkaConsumer.Zookeeper, c.Bus.Brokers))
	}
	if c.KafkaConsumer.Brokers == "" {
		c.KafkaConsumer.Brokers = c.Bus.Brokers
		if c.KafkaConsumer.KafkaSecurity == (KafkaSecurity{}) {
			c.KafkaConsumer.KafkaSecurity = c.Bus.KafkaSecurity
		}
	}
	if len(c.Nodes) == 0 {
		for i, addr := range SplitList(c.Ejabberd.ClusterNodes) {
			c.Nodes = append(c.Nodes, Node{Name: "node" + strconv.Itoa(i+1), Address: addr})
		}
	}
	// A node without presence values would get no all-online recipients and
	// no channel member routed to it; its listener's host is what ejabberd
	// writes when it runs on that host.
	for i, n := range c.Nodes {
		if len(n.PresenceAddresses) == 0 {
			if host, _, err := net.SplitHostPort(n.Address); err == nil {
				c.Nodes[i].PresenceAddresses = []string{host}
			}
		}
	}
	if w := c.setPrefixWarning(); w != "" {
		c.Warnings = append(c.Warnings, w)
	}
	if c.UserActivityRedis.OfflineHash != Default().UserActivityRedis.OfflineHash {
		c.Warnings = append(c.Warnings, "[user-activity-redis] offline_hash is not read: no audience needs last-seen times (offline users are skipped, or stored by ejabberd for a users list)")
	}
}

// [sender] multicast values.
const (
	MulticastOff  = "off"
	MulticastAuto = "auto"
)

// MulticastJID is the XEP-0033 service multicasts go to.
func (c *Config) MulticastJID() string {
	if c.Sender.MulticastService != "" {
		return c.Sender.MulticastService
	}
	return "multicast." + c.UserDomain()
}

// UserDomain completes bare usernames into JIDs: the domain of the connection mode in use.
func (c *Config) UserDomain() string {
	if c.Sender.Mode == ModeClient {
		return c.Client.Domain
	}
	return c.Component.Domain
}

// TemplateRules are the checks every stage applies to a template: ingress at
// the door, the others before rendering. They follow the connection mode, since
// what ejabberd closes a stream for differs between a component and a c2s session.
func (c *Config) TemplateRules() stanza.Options {
	o := stanza.Options{MaxBytes: c.Ingress.MaxTemplateBytes}
	if c.Sender.Mode == ModeClient {
		o.ClientJID = c.Client.JID()
	} else {
		o.ComponentDomain = c.Component.TemplateDomain()
		o.AnyFrom = !c.Component.CheckFrom
	}
	return o
}

// SplitList splits a first-generation comma-separated value, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Node returns the named node.
func (c *Config) Node(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// DeliveriesTopic is the topic that carries the delivery batches of one node.
func (c *Config) DeliveriesTopic(node string) string { return c.Bus.DeliveriesPrefix + node }

// PriorityTopic is topic's priority lane.
func (c *Config) PriorityTopic(topic string) string { return topic + c.Bus.PrioritySuffix }

// Options are the presence servers for redisconn.
func (c UserActivityRedis) Options(poolSize int) redisconn.Options {
	return redisconn.Options{
		Addrs: SplitList(c.ClusterNodes), Password: c.Password.Value(), DB: c.DB, Cluster: c.Cluster,
		Timeout: time.Duration(max(c.ReadTimeout, 1)) * time.Millisecond, MaxRetries: c.MaxRetries, PoolSize: poolSize,
	}
}

// ProgressRedis is the progress store's Redis: [progress] redis_nodes, else
// the presence servers. ok is false when there is none (or it is disabled).
func (c *Config) ProgressRedis() (o redisconn.Options, ok bool) {
	p := c.Progress
	if p.Disabled {
		return o, false
	}
	timeout := time.Duration(max(p.ReadTimeout, 1)) * time.Millisecond
	if nodes := SplitList(p.RedisNodes); len(nodes) > 0 {
		return redisconn.Options{Addrs: nodes, Password: p.Password.Value(), DB: p.DB, Cluster: p.Cluster, Timeout: timeout}, true
	}
	if len(SplitList(c.UserActivityRedis.ClusterNodes)) == 0 {
		return o, false
	}
	o = c.UserActivityRedis.Options(0)
	o.Timeout = timeout
	return o, true
}

// String prints the effective configuration as TOML with secrets masked.
func (c Config) String() string {
	// go-toml encodes string kinds directly, so mask on a copy.
	mask := func(s *Secret) { *s = Secret(s.String()) }
	mask(&c.MySQL.Password)
	mask(&c.UserActivityRedis.Password)
	mask(&c.Progress.Password)
	mask(&c.Client.Password)
	mask(&c.Component.Secret)
	mask(&c.Bus.SASLPassword)
	mask(&c.KafkaConsumer.SASLPassword)
	mask(&c.KafkaProducer.SASLPassword)
	c.Auth.Tokens = append([]Secret(nil), c.Auth.Tokens...)
	for i := range c.Auth.Tokens {
		mask(&c.Auth.Tokens[i])
	}
	b, err := toml.Marshal(c)
	if err != nil {
		return "config: " + err.Error()
	}
	return string(b)
}
