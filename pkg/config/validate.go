package config

import (
	"errors"
	"fmt"
	"net"
	"strings"
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

// Validate reports every problem at once, for the sections the roles read.
func (c *Config) Validate(roles ...Role) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	switch c.Log.Level {
	case "debug", "info", "warning", "warn", "error":
	default:
		bad("[log] log_level %q: want debug, info, warning or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("[log] format %q: want text or json", c.Log.Format)
	}
	if err := checkListen(c.DebugPort); err != nil {
		bad("debug_port: %v", err)
	}
	if len(SplitList(c.Bus.Brokers)) == 0 {
		bad("[bus] brokers: empty")
	}
	for _, b := range SplitList(c.Bus.Brokers) {
		if _, _, err := net.SplitHostPort(b); err != nil {
			bad("[bus] brokers: %q: %v", b, err)
		}
	}
	if c.Bus.AnnouncementsTopic == "" {
		bad("[bus] announcements_topic: empty")
	}
	if c.Bus.DeliveriesPrefix == "" {
		bad("[bus] deliveries_topic_prefix: empty")
	}
	if c.Bus.DeadLetterTopic == "" {
		bad("[bus] dead_letter_topic: empty")
	}
	if c.Bus.Partitions < 1 {
		bad("[bus] partitions %d: want >= 1", c.Bus.Partitions)
	}
	if c.Bus.ReplicationFactor < 1 {
		bad("[bus] replication_factor %d: want >= 1", c.Bus.ReplicationFactor)
	}
	if c.Bus.WriteTimeout <= 0 {
		bad("[bus] write_timeout: want > 0")
	}
	if c.Bus.MaxMessageBytes < 1024 {
		bad("[bus] max_message_bytes %d: want >= 1024", c.Bus.MaxMessageBytes)
	}
	for i, t := range c.Auth.Tokens {
		if len(t) < 16 {
			bad("[auth] tokens[%d]: shorter than 16 characters", i)
		}
	}

	for _, r := range roles {
		switch r {
		case RoleIngress:
			c.validateIngress(bad)
		case RoleFanout:
			c.validateFanout(bad)
		case RoleSender:
			c.validateSender(bad)
		case RoleArchiver:
			c.validateArchiver(bad)
		default:
			bad("unknown role %q", r)
		}
	}
	return errors.Join(errs...)
}

func (c *Config) validateIngress(bad func(string, ...any)) {
	if err := checkListen(c.RestAPIPort); err != nil {
		bad("rest_api_port: %v", err)
	}
	if c.Ingress.MaxBodyBytes < 1024 {
		bad("[ingress] max_body_bytes %d: want >= 1024", c.Ingress.MaxBodyBytes)
	}
	if c.Ingress.MaxUsernames < 1 {
		bad("[ingress] max_usernames %d: want >= 1", c.Ingress.MaxUsernames)
	}
	if c.Ingress.MaxTemplateBytes < 64 {
		bad("[ingress] max_template_bytes %d: want >= 64", c.Ingress.MaxTemplateBytes)
	}
	if c.Ingress.PublishTimeout <= 0 {
		bad("[ingress] publish_timeout: want > 0")
	}
	if c.KafkaConsumer.Topics != "" && c.KafkaConsumer.GroupName == "" {
		bad("[kafka-consumer] group_name: empty while topics are set")
	}
	if c.KafkaConsumer.Buffer < 1 {
		bad("[kafka-consumer] buffer %d: want >= 1", c.KafkaConsumer.Buffer)
	}
	c.validateUserDomain(bad)
}

func (c *Config) validateFanout(bad func(string, ...any)) {
	if c.MySQL.Address == "" {
		bad("[mysql] address: empty")
	}
	if c.MySQL.DB == "" {
		bad("[mysql] db: empty")
	}
	if c.MySQL.PaginationLength < 1 {
		bad("[mysql] pagination_length %d: want >= 1", c.MySQL.PaginationLength)
	}
	if c.MySQL.MaxOpenConn < 1 {
		bad("[mysql] max_open_conn %d: want >= 1", c.MySQL.MaxOpenConn)
	}
	if c.UserActivityAskBuffer < 1 {
		bad("user_activity_ask_buffer %d: want >= 1", c.UserActivityAskBuffer)
	}
	switch c.Fanout.Presence {
	case "redis":
		if len(SplitList(c.UserActivityRedis.ClusterNodes)) == 0 {
			bad("[user-activity-redis] cluster_nodes: empty while [fanout] presence = \"redis\"")
		}
		if c.UserActivityRedis.ReadTimeout < 1 {
			bad("[user-activity-redis] read_timeout %d: want >= 1 (milliseconds)", c.UserActivityRedis.ReadTimeout)
		}
	case "rest":
		if c.UserActivityREST.Address == "" {
			bad("[user-activity-rest-api] address: empty while [fanout] presence = \"rest\"")
		}
		if c.UserActivityREST.RequestTimeout < 1 {
			bad("[user-activity-rest-api] request_timeout %d: want >= 1 (milliseconds)", c.UserActivityREST.RequestTimeout)
		}
	default:
		bad("[fanout] presence %q: want redis or rest", c.Fanout.Presence)
	}
	if c.Fanout.BatchSize < 1 {
		bad("[fanout] batch_size %d: want >= 1", c.Fanout.BatchSize)
	}
	if c.Fanout.ShardSize < c.MySQL.PaginationLength {
		bad("[fanout] shard_size %d: want >= [mysql] pagination_length %d", c.Fanout.ShardSize, c.MySQL.PaginationLength)
	}
	if c.Fanout.GroupName == "" {
		bad("[fanout] group_name: empty")
	}
	c.validateNodes(bad)
}

func (c *Config) validateSender(bad func(string, ...any)) {
	c.validateNodes(bad)
	if c.Sender.Node != "" {
		if _, ok := c.Node(c.Sender.Node); !ok {
			bad("[sender] node %q: not one of the configured nodes %v", c.Sender.Node, c.nodeNames())
		}
	}
	if c.Ejabberd.RateLimit < 1 {
		bad("[ejabberd] rate_limit %d: want >= 1 stanza/s", c.Ejabberd.RateLimit)
	}
	if c.Ejabberd.EachNodeConnNum < 1 {
		bad("[ejabberd] each_node_conn_num %d: want >= 1", c.Ejabberd.EachNodeConnNum)
	}
	if c.Sender.FenceTimeout <= 0 {
		bad("[sender] fence_timeout: want > 0")
	}
	if c.Sender.MaxInFlight < 1 {
		bad("[sender] max_in_flight %d: want >= 1", c.Sender.MaxInFlight)
	}
	if c.Sender.GroupPrefix == "" {
		bad("[sender] group_prefix: empty")
	}
	switch c.Sender.Mode {
	case ModeComponent:
		if c.Component.Name == "" {
			bad("[component] name: empty")
		}
		if c.Component.Secret == "" {
			bad("[component] secret: empty")
		}
		if c.Component.PingInterval < 1 {
			bad("[component] ping_interval %d: want >= 1 (seconds)", c.Component.PingInterval)
		}
	case ModeClient:
		if c.Client.Username == "" {
			bad("[client] username: empty")
		}
		if c.Client.Password == "" {
			bad("[client] password: empty")
		}
		if c.Client.PingInterval < 1 {
			bad("[client] ping_interval %d: want >= 1 (seconds)", c.Client.PingInterval)
		}
	default:
		bad("[sender] mode %q: want component or client", c.Sender.Mode)
	}
	c.validateUserDomain(bad)
}

func (c *Config) validateArchiver(bad func(string, ...any)) {
	if len(SplitList(c.KafkaProducer.Brokers)) == 0 {
		bad("[kafka-producer] brokers: empty")
	}
	if len(SplitList(c.KafkaProducer.Topics)) == 0 {
		bad("[kafka-producer] topics: empty (the storage topic persisted messages go to)")
	}
	if c.KafkaProducer.FlushFrequency < 0 {
		bad("[kafka-producer] flush_frequency %d: want >= 0 (seconds)", c.KafkaProducer.FlushFrequency)
	}
	if c.KafkaProducer.MaxRetry < 0 {
		bad("[kafka-producer] MaxRetry %d: want >= 0", c.KafkaProducer.MaxRetry)
	}
	if c.Archiver.GroupName == "" {
		bad("[archiver] group_name: empty")
	}
	c.validateNodes(bad)
	c.validateUserDomain(bad)
}

func (c *Config) validateUserDomain(bad func(string, ...any)) {
	if c.UserDomain() == "" {
		bad("users' XMPP domain: empty (set [component] domain, or [client] domain in client mode)")
	}
}

func (c *Config) validateNodes(bad func(string, ...any)) {
	if len(c.Nodes) == 0 {
		bad("[ejabberd] cluster_nodes: empty and no [[node]] tables")
	}
	seen := map[string]bool{}
	for i, n := range c.Nodes {
		if n.Name == "" || strings.ContainsAny(n.Name, " /\\,:") {
			bad("[[node]] %d: name %q: want a non-empty name without spaces, slashes, commas or colons", i, n.Name)
		}
		if seen[n.Name] {
			bad("[[node]] %d: name %q: duplicate", i, n.Name)
		}
		seen[n.Name] = true
		if _, _, err := net.SplitHostPort(n.Address); err != nil {
			bad("[[node]] %q: address %q: %v", n.Name, n.Address, err)
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
