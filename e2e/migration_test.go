package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/announcer/announcer/pkg/testkit"
)

// firstGenerationClientConfig is the first generation's documented sample in
// client mode, as an operator has it: [client] uncommented, [component]
// removed, only the first generation's keys, this deployment's values.
const firstGenerationClientConfig = `rest_api_port="@REST@" #Rest api interface and port listen on
debug_port=":6060"
input_buffer=100      #Input channel buffer
output_buffer=100     #Output channel buffer
logic_process_number=2      #Increase logic concurrency
user_activity_ask_buffer=1000

[monitoring]
buffer_report_duration=1    #Report buffer fill length every X sec

[log]
log_level="info"     #debug/info/warning/error (default: warning)
format="text"         #json/text (defualt: text)

[kafka-consumer]
zookeeper="127.0.0.1:2181/"
topics="@P@_input"       #Multi topic can seperate with ','
group_name="@P@_input"
buffer=1000

[mysql]
address="@MYSQL@"
username="@MYSQL_USER@"
password="@MYSQL_PASS@"
db="@P@"
pagination_length=100    #Fetch channel data bulk size
max_ideal_conn=10       #Optional (default: 10)
max_open_conn=10        #Optional (default: 10)

#announcer must be connect to one the rest-api or redis interface
[user-activity-redis]
cluster_nodes="@REDIS@"
password=""
db=0
read_timeout=1000       #optional sec (default: 1000 milisecond)
max_retries=2           #optional (default: 0)

[kafka-producer]
brokers="@BROKERS@" #optional (default: 127.0.0.1:9092)
topics="@P@_storage"
flush_frequency=1      #optional sec (default: 5 sec)
MaxRetry=3             #optional (default: 5)

[ejabberd]
cluster_nodes="@C2S@"
rate_limit=10           #Msg/sec
send_retry=6
each_node_conn_num=1

[client]
username="@ACCOUNT@"
password="pw"
domain="@DOMAIN@"
ping_interval=2 #Second
resource="announcer"
`

// A first-generation operator's client-mode config, unchanged in form, runs
// the whole system: client mode is chosen from the sections, and a channel
// announcement reaches a real client through the sending account's c2s session.
func TestFirstGenerationClientConfigDelivers(t *testing.T) {
	s := newBareSystem(t, options{nodes: []string{"node1"}})
	ctx := s.deadline(90 * time.Second)
	account := s.user("sender", "")
	member := s.user("member", "")
	// The first generation's presence model: the node's presence address is its host.
	host, _, err := net.SplitHostPort(s.env.C2SAddr)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.rdb.Set(ctx, member, host, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.rdb.SAdd(ctx, host, member).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.rdb.SRem(context.Background(), host, member).Err() })
	client := s.login(ctx, member)
	s.channel(70, s.p+"-firstgen", "ACCEPTED", member)

	dsn, err := mysql.ParseDSN(s.env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	s.rest = testkit.FreeAddr(t)
	text := strings.NewReplacer("@REST@", s.rest, "@P@", s.p, "@MYSQL@", dsn.Addr, "@MYSQL_USER@", dsn.User,
		"@MYSQL_PASS@", dsn.Passwd, "@REDIS@", s.env.RedisAddr, "@BROKERS@", strings.Join(s.env.KafkaBrokers, ","),
		"@C2S@", s.env.C2SAddr, "@ACCOUNT@", account, "@DOMAIN@", s.domain).Replace(firstGenerationClientConfig)
	cfg := filepath.Join(s.dir, "announcer.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start("archiver", cfg, nil)
	// The sender verifies ejabberd's certificate; the stack's is self-signed.
	s.startEnv("sender-node1-0", cfg, nil, []string{"SSL_CERT_FILE=" + s.env.XMPPCA})
	s.start("fanout", cfg, nil)
	s.start("ingress", cfg, nil)
	if log := s.log("sender-node1-0"); !strings.Contains(log, "client mode") {
		t.Errorf("the sender did not say it chose client mode from the sections:\n%s", tail(log, 20))
	}

	s.announce("/v1/announce/channel", map[string]any{"channel_id": 70,
		"message": b64("<message to='%s' type='chat'><body>from the first generation's config</body></message>")})
	msgs, err := client.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := account + "@" + s.domain + "/announcer-0"
	if m := msgs[0]; len(m.Bodies) != 1 || m.Bodies[0] != "from the first generation's config" || m.From != want {
		t.Fatalf("received %+v, want the body from %s", m, want)
	}
}
