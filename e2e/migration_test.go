package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/announcer/announcer/pkg/testkit"
)

// clientSample is the first generation's documented sample in client mode,
// exactly as its README shows it with [client] uncommented and [component]
// removed (the fixture's header says how it was made from the README).
const clientSample = "../pkg/config/testdata/client-mode-sample.toml"

// A first-generation operator's client-mode config, the documented sample
// itself, runs the whole system: client mode is chosen from the sections,
// presence from Redis (the sample also has the REST section, which the first
// generation ignored when Redis cluster_nodes was set), and a channel
// announcement reaches a real client through the sending account's c2s session.
func TestFirstGenerationClientConfigDelivers(t *testing.T) {
	s := newBareSystem(t, options{nodes: []string{"node1"}})
	ctx := s.deadline(90 * time.Second)
	sample, err := os.ReadFile(clientSample)
	if err != nil {
		t.Fatal(err)
	}

	// The sending account keeps the documented password; its name must be
	// this test's own, since other tests share the stack's ejabberd.
	account := s.p + "_admin"
	if err := s.api.Register(ctx, account, s.domain, "password1234"); err != nil {
		t.Fatal(err)
	}
	s.users = append(s.users, account)
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

	// Only what must point at this stack changes, value for value: the
	// servers' addresses and credentials, the REST port, the log file's
	// directory, and the names of the input topic, its group, the storage
	// topic, the account and its domain (private to this test: the stack is
	// shared). Every other line, comments included, is the documentation's.
	dsn, err := mysql.ParseDSN(s.env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	s.rest = testkit.FreeAddr(t)
	logFile := filepath.Join(s.dir, "announcer.log")
	subst := [][2]string{
		{`rest_api_port=":8080"`, `rest_api_port="` + s.rest + `"`},
		{`log_dst="/path/to/dest/file.log"`, `log_dst="` + logFile + `"`},
		{`topics="test-topic" `, `topics="` + s.p + `_input" `},
		{`group_name="announcer"`, `group_name="` + s.p + `_input"`},
		{`address="127.0.0.1:3306"`, `address="` + dsn.Addr + `"`},
		{`username="test"`, `username="` + dsn.User + `"`},
		{`password="123"`, `password="` + dsn.Passwd + `"`},
		{`db="testDB"`, `db="` + s.p + `"`},
		{`cluster_nodes="127.0.0.1:6379"`, `cluster_nodes="` + s.env.RedisAddr + `"`},
		{`brokers="192.168.2.1:9092,192.168.2.2:9092,192.168.2.3:9092"`, `brokers="` + strings.Join(s.env.KafkaBrokers, ",") + `"`},
		{`topics="test-topic-name"`, `topics="` + s.storage + `"`},
		{`cluster_nodes="127.0.0.1:8889"`, `cluster_nodes="` + s.env.C2SAddr + `"`},
		{`username="admin"`, `username="` + account + `"`},
		{`domain="example.de"`, `domain="` + s.domain + `"`},
	}
	text := string(sample)
	for _, r := range subst {
		// Each documented value is there once: the sample is used as shown, or the test fails.
		if n := strings.Count(text, r[0]); n != 1 {
			t.Fatalf("the documented sample has %q %d times, want once", r[0], n)
		}
		text = strings.Replace(text, r[0], r[1], 1)
	}
	cfg := filepath.Join(s.dir, "announcer.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	// -check-config says what the operator gets: client mode, Redis presence.
	var out bytes.Buffer
	check := exec.Command(filepath.Join(binDir, "announcer-fanout"), "-config", cfg, "-check-config")
	check.Stdout, check.Stderr = &out, &out
	if err := check.Run(); err != nil {
		t.Fatalf("-check-config: %v\n%s", err, out.String())
	}
	for _, want := range []string{"note: client mode", "note: presence from Redis", `presence = 'redis'`, `mode = 'client'`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-check-config lacks %q:\n%s", want, out.String())
		}
	}

	s.start("archiver", cfg, nil)
	// The sender verifies ejabberd's certificate, and the sample has no TLS
	// key; the stack's certificate is self-signed, so it is trusted the way
	// the system's roots are extended ([client] ca_file is the config's way).
	s.startEnv("sender-node1-0", cfg, nil, []string{"SSL_CERT_FILE=" + s.env.XMPPCA})
	s.start("fanout", cfg, nil)
	s.start("ingress", cfg, nil)

	s.announce("/v1/announce/channel", map[string]any{"channel_id": 70,
		"message": b64("<message to='%s' type='chat'><body>from the first generation's config</body></message>")})
	msgs, err := client.Wait(ctx, 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(readFile(logFile), 40))
	}
	// The resource is [client] resource, the node, a tag of the process and the connection's slot.
	want := account + "@" + s.domain + "/announcer-node1-"
	if m := msgs[0]; len(m.Bodies) != 1 || m.Bodies[0] != "from the first generation's config" ||
		!strings.HasPrefix(m.From, want) || !strings.HasSuffix(m.From, "-0") {
		t.Fatalf("received %+v, want the body from %s<tag>-0", m, want)
	}
	// log_dst is honoured: the services log to the documented file, and say what they chose.
	log := readFile(logFile)
	for _, want := range []string{"service=sender", "client mode: the file has [client] and no [component]", "presence from Redis"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log file lacks %q:\n%s", want, tail(log, 30))
		}
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
