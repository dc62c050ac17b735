package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Role names a service; each validates the sections it reads.
type Role string

const (
	RoleIngress  Role = "ingress"
	RoleFanout   Role = "fanout"
	RoleSender   Role = "sender"
	RoleArchiver Role = "archiver"
)

// Connection modes of the sender.
const (
	ModeComponent = "component"
	ModeClient    = "client"
)

// MaxPreviewWait bounds publish_timeout + preview_timeout: the API server
// (pkg/httpserver) ends a response that takes longer than 60 s.
const MaxPreviewWait = 50 * time.Second

// MinMessageBytes is the smallest [bus] max_message_bytes: 64 KiB, room for a
// record's headers and framing (kafkabus.RecordOverhead, 4 KiB) and a body.
const MinMessageBytes = 64 << 10

// The sender's smallest write_buffer_bytes and reconnect_max: its connection
// pool's own floors (xmpplink), below which it used its defaults instead.
const (
	MinWriteBufferBytes = 4096
	MinReconnectMax     = 100 * time.Millisecond
)

// problems collects every finding of Validate, so all are reported at once.
type problems struct {
	errs []error
	seen map[string]bool // one value checked for two uses is reported once
}

func (p *problems) bad(format string, a ...any) {
	err := fmt.Errorf(format, a...)
	if p.seen[err.Error()] {
		return
	}
	if p.seen == nil {
		p.seen = map[string]bool{}
	}
	p.seen[err.Error()] = true
	p.errs = append(p.errs, err)
}

func (p *problems) empty(key, v string) {
	if v == "" {
		p.bad("%s: empty", key)
	}
}

// atLeast reports v < lo as "key v: want >= lo<unit>".
func (p *problems) atLeast(key string, v, lo int, unit string) {
	if v < lo {
		p.bad("%s %d: want >= %d%s", key, v, lo, unit)
	}
}

func (p *problems) positive(key string, d Duration) {
	if d <= 0 {
		p.bad("%s: want > 0", key)
	}
}

// Validate reports every problem at once, for the sections the roles read.
func (c *Config) Validate(roles ...Role) error {
	p := &problems{}

	switch c.Log.Level {
	case "debug", "info", "warning", "warn", "error":
	default:
		p.bad("[log] log_level %q: want debug, info, warning or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		p.bad("[log] format %q: want text or json", c.Log.Format)
	}
	if err := checkListen(c.DebugPort); err != nil {
		p.bad("debug_port: %v", err)
	}
	if len(SplitList(c.Bus.Brokers)) == 0 {
		p.bad("[bus] brokers: empty")
	}
	for _, b := range SplitList(c.Bus.Brokers) {
		if _, _, err := net.SplitHostPort(b); err != nil {
			p.bad("[bus] brokers: %q: %v", b, err)
		}
	}
	p.empty("[bus] announcements_topic", c.Bus.AnnouncementsTopic)
	p.empty("[bus] deliveries_topic_prefix", c.Bus.DeliveriesPrefix)
	p.empty("[bus] dead_letter_topic", c.Bus.DeadLetterTopic)
	p.atLeast("[bus] partitions", c.Bus.Partitions, 1, "")
	p.atLeast("[bus] replication_factor", c.Bus.ReplicationFactor, 1, "")
	p.positive("[bus] write_timeout", c.Bus.WriteTimeout)
	// Below this a record's headers and framing (kafkabus.RecordOverhead)
	// leave no room: the ingress would not start and dead letters could not
	// be cut to fit, stopping their consumer.
	p.atLeast("[bus] max_message_bytes", c.Bus.MaxMessageBytes, MinMessageBytes, "")
	p.empty("[bus] priority_suffix", c.Bus.PrioritySuffix)
	c.Bus.KafkaSecurity.validate(p, "[bus]")
	c.validateProgress(p)
	p.atLeast("[monitoring] buffer_report_duration", c.Monitoring.BufferReportDuration, 1, " (seconds between queue depth reports)")
	for i, t := range c.Auth.Tokens {
		if len(t) < 16 {
			p.bad("[auth] tokens[%d]: shorter than 16 characters", i)
		}
	}

	for _, r := range roles {
		switch r {
		case RoleIngress:
			c.validateIngress(p)
		case RoleFanout:
			c.validateFanout(p)
		case RoleSender:
			c.validateSender(p)
		case RoleArchiver:
			c.validateArchiver(p)
		default:
			p.bad("unknown role %q", r)
		}
	}
	return errors.Join(p.errs...)
}

func (c *Config) validateIngress(p *problems) {
	c.KafkaConsumer.KafkaSecurity.validate(p, "[kafka-consumer]")
	if err := checkListen(c.RestAPIPort); err != nil {
		p.bad("rest_api_port: %v", err)
	}
	p.atLeast("[ingress] max_body_bytes", int(c.Ingress.MaxBodyBytes), 1024, "")
	p.atLeast("[ingress] max_usernames", c.Ingress.MaxUsernames, 1, "")
	p.atLeast("[ingress] max_template_bytes", c.Ingress.MaxTemplateBytes, 64, "")
	if c.Ingress.MaxInFlightBytes < c.Ingress.MaxBodyBytes {
		p.bad("[ingress] max_in_flight_bytes %d: at least max_body_bytes (%d), or no request of that size is ever taken",
			c.Ingress.MaxInFlightBytes, c.Ingress.MaxBodyBytes)
	}
	p.positive("[ingress] shutdown_timeout", c.Ingress.ShutdownTimeout)
	p.positive("[ingress] publish_timeout", c.Ingress.PublishTimeout)
	p.positive("[ingress] preview_timeout", c.Ingress.PreviewTimeout)
	// A dry run must answer (504 with its id, at worst) before the API server cuts the connection.
	if sum := c.Ingress.PublishTimeout.D() + c.Ingress.PreviewTimeout.D(); sum > MaxPreviewWait {
		p.bad("[ingress] publish_timeout + preview_timeout = %s: at most %s (the API server cuts a response after 60 s)", sum, MaxPreviewWait)
	}
	if c.KafkaConsumer.Topics != "" && c.KafkaConsumer.GroupName == "" {
		p.bad("[kafka-consumer] group_name: empty while topics are set")
	}
	p.atLeast("[kafka-consumer] buffer", c.KafkaConsumer.Buffer, 1, "")
	if s := c.KafkaConsumer.StartOffset; s != "latest" && s != "earliest" {
		p.bad("[kafka-consumer] start_offset %q: want latest or earliest", s)
	}
	c.validateUserDomain(p)
}

func (c *Config) validateFanout(p *problems) {
	p.empty("[mysql] address", c.MySQL.Address)
	p.empty("[mysql] db", c.MySQL.DB)
	p.atLeast("[mysql] pagination_length", c.MySQL.PaginationLength, 1, "")
	p.atLeast("[mysql] max_open_conn", c.MySQL.MaxOpenConn, 1, "")
	p.atLeast("user_activity_ask_buffer", c.UserActivityAskBuffer, 1, "")
	switch c.Fanout.Presence {
	case "redis":
		if len(SplitList(c.UserActivityRedis.ClusterNodes)) == 0 {
			p.bad("[user-activity-redis] cluster_nodes: empty while [fanout] presence = \"redis\"")
		}
		p.atLeast("[user-activity-redis] read_timeout", c.UserActivityRedis.ReadTimeout, 1, " (milliseconds)")
		o := c.UserActivityRedis.Options(0)
		clusterDB(p, "[user-activity-redis] db", o.Addrs, o.Cluster, o.DB)
	case "rest":
		if c.UserActivityREST.Address == "" {
			p.bad("[user-activity-rest-api] address: empty while [fanout] presence = \"rest\"")
		}
		p.atLeast("[user-activity-rest-api] request_timeout", c.UserActivityREST.RequestTimeout, 1, " (milliseconds)")
	default:
		p.bad("[fanout] presence %q: want redis or rest", c.Fanout.Presence)
	}
	p.atLeast("[fanout] batch_size", c.Fanout.BatchSize, 1, "")
	if c.Fanout.ShardSize < c.MySQL.PaginationLength {
		p.bad("[fanout] shard_size %d: want >= [mysql] pagination_length %d", c.Fanout.ShardSize, c.MySQL.PaginationLength)
	}
	p.empty("[fanout] group_name", c.Fanout.GroupName)
	if c.Fanout.MemberCountMaxAge < 0 {
		p.bad("[fanout] member_count_max_age: %s is negative (0 counts for each announcement)", c.Fanout.MemberCountMaxAge.D())
	}
	c.validateNodes(p)
	// A presence value names one node, or the fanout could not route by it.
	owner := map[string]string{}
	for _, n := range c.Nodes {
		for _, a := range n.PresenceAddresses {
			if other, dup := owner[a]; dup && other != n.Name {
				p.bad("[[node]] %q: presence address %q is also node %q's (nodes on one host need presence_addresses of their own)", n.Name, a, other)
			}
			owner[a] = n.Name
		}
	}
}

func (c *Config) validateSender(p *problems) {
	c.validateNodes(p)
	if c.Sender.Node != "" {
		if _, ok := c.Node(c.Sender.Node); !ok {
			p.bad("[sender] node %q: not one of the configured nodes %v", c.Sender.Node, c.nodeNames())
		}
	}
	p.atLeast("[ejabberd] rate_limit", c.Ejabberd.RateLimit, 1, " stanza/s")
	p.atLeast("[ejabberd] each_node_conn_num", c.Ejabberd.EachNodeConnNum, 1, "")
	p.positive("[sender] fence_timeout", c.Sender.FenceTimeout)
	p.atLeast("[sender] max_in_flight", c.Sender.MaxInFlight, 1, "")
	p.positive("[sender] progress_interval", c.Sender.ProgressInterval)
	if c.Sender.FailoverAfter < 0 {
		p.bad("[sender] failover_after: %s is negative (0 turns failover off)", c.Sender.FailoverAfter.D())
	}
	p.empty("[sender] group_prefix", c.Sender.GroupPrefix)
	// The connection pool would replace smaller values silently (64 KiB, 30 s).
	if c.Sender.WriteBufferBytes < MinWriteBufferBytes {
		p.bad("[sender] write_buffer_bytes %d: want >= %d", c.Sender.WriteBufferBytes, MinWriteBufferBytes)
	}
	if c.Sender.ReconnectMax.D() < MinReconnectMax {
		p.bad("[sender] reconnect_max %s: want >= %s (the first reconnect delay)", c.Sender.ReconnectMax.D(), MinReconnectMax)
	}
	switch c.Sender.Multicast {
	case MulticastOff:
	case MulticastAuto:
		p.atLeast("[sender] multicast_max", c.Sender.MulticastMax, 1, " recipients")
		if c.Sender.Mode == ModeClient {
			p.bad("[sender] multicast = \"auto\" needs [sender] mode = \"component\" (its fences come back to the component)")
		}
	default:
		p.bad("[sender] multicast %q: want auto or off", c.Sender.Multicast)
	}
	switch c.Sender.Mode {
	case ModeComponent:
		p.empty("[component] name", c.Component.Name)
		p.empty("[component] secret", string(c.Component.Secret))
		p.atLeast("[component] ping_interval", c.Component.PingInterval, 1, " (seconds)")
	case ModeClient:
		p.empty("[client] username", c.Client.Username)
		p.empty("[client] password", string(c.Client.Password))
		p.atLeast("[client] ping_interval", c.Client.PingInterval, 1, " (seconds)")
		// Read now: an unreadable CA file must stop the start, not every connection later.
		if _, err := c.Client.RootCAs(); err != nil {
			p.bad("%v", err)
		}
	default:
		p.bad("[sender] mode %q: want component or client", c.Sender.Mode)
	}
	c.validateUserDomain(p)
}

func (c *Config) validateArchiver(p *problems) {
	if len(SplitList(c.KafkaProducer.Brokers)) == 0 {
		p.bad("[kafka-producer] brokers: empty")
	}
	if len(SplitList(c.KafkaProducer.Topics)) == 0 {
		p.bad("[kafka-producer] topics: empty (the storage topic persisted messages go to)")
	}
	p.atLeast("[kafka-producer] flush_frequency", c.KafkaProducer.FlushFrequency, 0, " (seconds)")
	p.atLeast("[kafka-producer] MaxRetry", c.KafkaProducer.MaxRetry, 0, "")
	c.KafkaProducer.KafkaSecurity.validate(p, "[kafka-producer]")
	p.empty("[archiver] group_name", c.Archiver.GroupName)
	c.validateNodes(p)
	c.validateUserDomain(p)
}

// validate checks what can be checked before connecting: the mechanism, the
// credentials it needs, and that the files named are there.
func (s KafkaSecurity) validate(p *problems, section string) {
	switch s.SASLMechanism {
	case "":
		if s.SASLUsername != "" || s.SASLPassword != "" {
			p.bad("%s sasl_username/sasl_password: set, but sasl_mechanism is empty", section)
		}
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if s.SASLUsername == "" || s.SASLPassword == "" {
			p.bad("%s sasl_mechanism %s: needs sasl_username and sasl_password", section, s.SASLMechanism)
		}
	default:
		p.bad("%s sasl_mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", section, s.SASLMechanism)
	}
	if !s.TLS && (s.TLSCAFile != "" || s.TLSCertFile != "" || s.TLSKeyFile != "") {
		p.bad("%s tls_ca_file/tls_cert_file/tls_key_file: set, but tls is false", section)
	}
	if (s.TLSCertFile == "") != (s.TLSKeyFile == "") {
		p.bad("%s tls_cert_file and tls_key_file: set both or neither", section)
	}
	for _, f := range []struct{ key, path string }{{"tls_ca_file", s.TLSCAFile}, {"tls_cert_file", s.TLSCertFile}, {"tls_key_file", s.TLSKeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			p.bad("%s %s: %v", section, f.key, err)
		}
	}
}

func (c *Config) validateProgress(p *problems) {
	o, ok := c.ProgressRedis()
	if !ok {
		return
	}
	// Without redis_nodes the store is on the presence servers: name the key the db came from.
	dbKey := "[progress] db"
	if len(SplitList(c.Progress.RedisNodes)) == 0 {
		dbKey = "[user-activity-redis] db"
	}
	clusterDB(p, dbKey, o.Addrs, o.Cluster, o.DB)
	p.empty("[progress] key_prefix", c.Progress.KeyPrefix)
	p.positive("[progress] ttl", c.Progress.TTL)
	p.positive("[progress] idempotency_window", c.Progress.IdempotencyWindow)
	// Submit republishes a retry whose key is still claimed but whose record expired.
	if c.Progress.IdempotencyWindow > c.Progress.TTL && c.Progress.TTL > 0 {
		p.bad("[progress] idempotency_window %s: at most [progress] ttl %s (a retry after the announcement's record expired would be announced again)",
			c.Progress.IdempotencyWindow.D(), c.Progress.TTL.D())
	}
	p.positive("[progress] cancel_check", c.Progress.CancelCheck)
	p.atLeast("[progress] read_timeout", c.Progress.ReadTimeout, 1, " (milliseconds)")
}

// clusterDB reports a db other than 0 for a Redis Cluster (several seeds, or
// cluster = true), which has only db 0.
func clusterDB(p *problems, key string, addrs []string, cluster bool, db int) {
	if (len(addrs) > 1 || cluster) && db != 0 {
		p.bad("%s %d: Redis Cluster has only db 0", key, db)
	}
}

func (c *Config) validateUserDomain(p *problems) {
	if c.UserDomain() == "" {
		p.bad("users' XMPP domain: empty (set [component] domain, or [client] domain in client mode)")
	}
}

func (c *Config) validateNodes(p *problems) {
	if len(c.Nodes) == 0 {
		p.bad("[ejabberd] cluster_nodes: empty and no [[node]] tables")
	}
	seen := map[string]bool{}
	for i, n := range c.Nodes {
		if n.Name == "" || strings.ContainsAny(n.Name, " /\\,:") {
			p.bad("[[node]] %d: name %q: want a non-empty name without spaces, slashes, commas or colons", i, n.Name)
		}
		if seen[n.Name] {
			p.bad("[[node]] %d: name %q: duplicate", i, n.Name)
		}
		seen[n.Name] = true
		if _, _, err := net.SplitHostPort(n.Address); err != nil {
			p.bad("[[node]] %q: address %q: %v", n.Name, n.Address, err)
		}
	}
}

func (c *Config) nodeNames() []string {
	out := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		out = append(out, n.Name)
	}
	return out
}

// checkListen accepts ":8080", "127.0.0.1:8080" and, like the first generation, "8080".
func checkListen(addr string) error {
	if addr == "" {
		return errors.New("empty")
	}
	if _, _, err := net.SplitHostPort(ListenAddr(addr)); err != nil {
		return err
	}
	return nil
}

// ListenAddr turns a bare port into ":port".
func ListenAddr(addr string) string {
	if addr != "" && !strings.Contains(addr, ":") {
		return ":" + addr
	}
	return addr
}
