package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/boot"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/sender/internal/testuser"
)

func testConfig(t *testing.T, env stacktest.Env) config.Config {
	t.Helper()
	p := stacktest.Name("snd")
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Log.Level = "warning"
	cfg.Bus.Brokers = strings.Join(env.KafkaBrokers, ",")
	cfg.Bus.DeliveriesPrefix = p + "_deliveries."
	cfg.Bus.DeadLetterTopic = p + "_dlq"
	cfg.Bus.Partitions = 2
	cfg.Component.Name = testuser.ComponentDomain(env, 3)
	cfg.Nodes = []config.Node{{Name: "node1", Address: env.AddrFor(cfg.Component.Name)}}
	cfg.Component.Secret = config.Secret(env.SecretFor(cfg.Component.Name))
	cfg.Component.Domain = env.XMPPDomain
	cfg.Component.PingInterval = 5
	cfg.Ejabberd.EachNodeConnNum = 2
	cfg.Ejabberd.RateLimit = 5000
	cfg.Sender.Node = "node1"
	cfg.Sender.GroupPrefix = p + "_sender_"
	cfg.Sender.FenceTimeout = config.Duration(5 * time.Second)
	if err := cfg.Validate(config.RoleSender); err != nil {
		t.Fatal(err)
	}
	kafkatest.DeletePrefixedAtEnd(t, env.KafkaBrokers, p+"_")
	return cfg
}

func produce(t *testing.T, brokers []string, topic string, values ...[]byte) {
	t.Helper()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Key: []byte{byte(i)}, Value: v}
	}
	kafkatest.Produce(t, brokers, topic, msgs...)
}

// started is a sender running in-process as the binary runs it.
type started struct {
	debug string // http://host:port of its debug listener
	stop  func() error
}

func start(t *testing.T, cfg config.Config, h hooks) *started {
	t.Helper()
	rt, stop := testkit.Start(t, "sender", func(ctx context.Context, started func(*stage.Runtime)) error {
		h.runtime = started
		return run(ctx, testkit.Log(t, zerolog.WarnLevel), cfg, h)
	})
	s := &started{debug: "http://" + rt.DebugAddr(), stop: stop}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := testkit.Get(t, s.debug+"/readyz")
		if code == http.StatusOK {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The whole sender against the real Kafka and ejabberd: batches from the
// node's deliveries topic reach a logged-in user, bad input is dead-lettered,
// every offset ends committed, readiness and metrics tell the truth, and
// shutdown is clean.
func TestSenderEndToEnd(t *testing.T) {
	env := stacktest.Get(t)
	cfg := testConfig(t, env)
	user := testuser.Login(t, env, "snd_e2e")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := start(t, cfg, hooks{})
	base := s.debug
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := testkit.Get(t, base+"/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}

	tmpl := "<message to='%s' from='" + cfg.Component.JID() + "' type='chat'><body>e2e [inc_id]</body></message>"
	var values [][]byte
	for i := range 3 {
		b := announcement.Batch{AnnouncementID: "e2e", Seq: i, Node: "node1", Template: tmpl,
			FirstIncID: uint64(10 * i), Recipients: []string{user.JID.String()}, CreatedAt: time.Now()}
		v, err := b.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			// Written by a newer fanout during a rolling upgrade: delivered, its new field ignored.
			v = append(bytes.TrimSuffix(v, []byte("}")), `,"urgency":"now"}`...)
		}
		values = append(values, v)
	}
	bad := announcement.Batch{AnnouncementID: "e2e", Seq: 9, Template: strings.Replace(tmpl, cfg.Component.JID(), "evil.example", 1),
		Recipients: []string{user.JID.String()}}
	badV, _ := bad.Encode()
	values = append(values, []byte("{not json"), badV)
	topic := cfg.DeliveriesTopic("node1")
	produce(t, env.KafkaBrokers, topic, values...)

	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	msgs, err := user.Wait(wctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string]bool{}
	for _, m := range msgs {
		bodies[strings.Join(m.Bodies, "|")] = true
	}
	for _, want := range []string{"e2e 0", "e2e 10", "e2e 20"} {
		if !bodies[want] {
			t.Errorf("no message with body %q in %v", want, bodies)
		}
	}

	// Every offset committed, the bad ones after reaching the dead-letter topic.
	group := cfg.Sender.GroupPrefix + "node1"
	for {
		total := int64(0)
		for _, off := range kafkatest.Committed(t, env.KafkaBrokers, group, topic, 2) {
			total += max(off, 0)
		}
		if total == int64(len(values)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed %d of %d offsets", total, len(values))
		}
		time.Sleep(50 * time.Millisecond)
	}
	reasons := map[string]bool{}
	for _, r := range kafkatest.ReadAll(t, env.KafkaBrokers, cfg.Bus.DeadLetterTopic, 2, 20*time.Second) {
		reasons[string(r.Value[:4])+": "+r.Headers[kafkabus.HeaderReason]] = true
	}
	if len(reasons) != 2 {
		t.Fatalf("dead letters %v, want the undecodable batch and the bad template", reasons)
	}
	t.Logf("dead letters: %v", reasons)

	_, metrics := testkit.Get(t, base+"/metrics")
	for _, want := range []string{
		`announcer_sender_connections_up{node="node1"} 2`,
		`announcer_sender_stanzas_sent_total{node="node1"} 3`,
		`announcer_sender_dead_letters_total{lane="bulk",node="node1",reason="template"} 1`,
		`announcer_sender_dead_letters_total{lane="bulk",node="node1",reason="undecodable"} 1`,
		`announcer_sender_unknown_fields_total{node="node1"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if n := testkit.SumMetric(metrics, "announcer_sender_dead_letters_total"); n != 2 {
		t.Errorf("%v dead letters, want 2", n)
	}

	if err := s.stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// Client mode end to end: c2s sessions of a sending account deliver a batch;
// a template whose from is another account is dead-lettered, not sent (ejabberd
// would close the stream).
func TestSenderClientModeEndToEnd(t *testing.T) {
	env := stacktest.Get(t)
	cfg := testConfig(t, env)
	account := testuser.Register(t, env, "snd_acct")
	user := testuser.Login(t, env, "snd_cli")
	cfg.Sender.Mode = config.ModeClient
	cfg.Nodes = []config.Node{{Name: "node1", Address: env.C2SAddr}}
	if env.XMPPCA == "" {
		stacktest.Missing(t, "the stack does not name ejabberd's certificate (ANNOUNCER_XMPP_CA)")
	}
	// The stack's ejabberd has a self-signed certificate: trusted through
	// [client] ca_file, as an operator with a private CA does, and verified.
	cfg.Client = config.Client{Username: account, Password: config.Secret(account), Domain: env.XMPPDomain,
		Resource: "announcer", PingInterval: 5, CAFile: env.XMPPCA}
	if err := cfg.Validate(config.RoleSender); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := start(t, cfg, hooks{})

	good := announcement.Batch{AnnouncementID: "cli", Node: "node1", Template: "<message to='%s' type='chat'><body>c2s [inc_id]</body></message>",
		FirstIncID: 5, Recipients: []string{user.JID.String()}}
	bad := good
	bad.Seq = 1
	bad.Template = "<message to='%s' from='someone-else@" + env.XMPPDomain + "' type='chat'><body>x</body></message>"
	// A first-generation template names the account with the resource of its
	// one session; ejabberd takes no resource but the session's own, so it
	// goes out from the bare account, which c2s completes.
	firstGen := good
	firstGen.Seq = 2
	firstGen.Template = "<message to='%s' from='" + account + "@" + env.XMPPDomain + "/announcer' type='chat'><body>first gen</body></message>"
	gv, _ := good.Encode()
	bv, _ := bad.Encode()
	fv, _ := firstGen.Encode()
	produce(t, env.KafkaBrokers, cfg.DeliveriesTopic("node1"), gv, bv, fv)

	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	msgs, err := user.Wait(wctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, m := range msgs {
		if len(m.Bodies) != 1 || !strings.HasPrefix(m.From, account+"@"+env.XMPPDomain+"/announcer-") {
			t.Fatalf("received %+v", m)
		}
		bodies = append(bodies, m.Bodies[0])
	}
	if slices.Sort(bodies); !slices.Equal(bodies, []string{"c2s 5", "first gen"}) {
		t.Fatalf("received %q", bodies)
	}
	base := s.debug
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, metrics := testkit.Get(t, base+"/metrics")
		if strings.Contains(metrics, `announcer_sender_dead_letters_total{lane="bulk",node="node1",reason="template"} 1`) &&
			strings.Contains(metrics, `announcer_sender_connections_up{node="node1"} 2`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics:\n%s", metrics)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
}

// [client] ca_file is what the c2s handshake trusts: ejabberd's certificate
// verifies with the stack's CA file, and fails with another CA, so
// verification is never off.
func TestClientCAFileVerifiesEjabberd(t *testing.T) {
	env := stacktest.Get(t)
	if env.XMPPCA == "" {
		stacktest.Missing(t, "the stack does not name ejabberd's certificate (ANNOUNCER_XMPP_CA)")
	}
	account := testuser.Register(t, env, "snd_ca")
	other := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(other, testkit.SelfSignedCA(t, "localhost"), 0o600); err != nil {
		t.Fatal(err)
	}
	handshake := func(caFile string) error {
		cfg := config.Default()
		cfg.Sender.Mode = config.ModeClient
		cfg.Client = config.Client{Username: account, Password: config.Secret(account), Domain: env.XMPPDomain,
			Resource: "ca", PingInterval: 5, CAFile: caFile}
		o, err := linkOptions(cfg, config.Node{Name: "node1", Address: env.C2SAddr})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		nc := testkit.Dial(t, env.C2SAddr)
		sess, err := o.Handshake(ctx, nc, 0)
		if err != nil {
			return err
		}
		return sess.Close()
	}
	if err := handshake(env.XMPPCA); err != nil {
		t.Fatalf("with the stack's CA file: %v", err)
	}
	err := handshake(other)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("with another CA: %v, want an unknown-authority error", err)
	}
	if _, err := linkOptions(config.Config{Sender: config.Sender{Mode: config.ModeClient},
		Client: config.Client{CAFile: filepath.Join(t.TempDir(), "missing.pem")}}, config.Node{}); err == nil ||
		!strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("a missing ca_file: %v", err)
	}
}

func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	apply := flags(fs)
	if err := fs.Parse([]string{"-node", "n2", "-component-name", "announcer-r1.localhost"}); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Nodes = []config.Node{{Name: "n1"}, {Name: "n2"}}
	if err := apply(&cfg); err != nil || cfg.Sender.Node != "n2" || cfg.Component.JID() != "announcer-r1.localhost" {
		t.Fatalf("node %q, component %q, %v", cfg.Sender.Node, cfg.Component.JID(), err)
	}

	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	apply = flags(fs)
	_ = fs.Parse(nil)
	cfg = config.Default()
	cfg.Nodes = []config.Node{{Name: "only"}}
	if err := apply(&cfg); err != nil || cfg.Sender.Node != "only" {
		t.Fatalf("single node not chosen: %q, %v", cfg.Sender.Node, err)
	}
}

// With several nodes and none named, -check-config fails as the start
// would, and names the nodes; -node or [sender] node makes it valid.
func TestCheckConfigWantsANodeAmongSeveral(t *testing.T) {
	src, err := os.ReadFile("../../configs/announcer.toml")
	if err != nil {
		t.Fatal(err)
	}
	two := strings.Replace(string(src), `node = "node1"`, "", 1) +
		"\n[[node]]\nname = \"node2\"\naddress = \"127.0.0.1:8890\"\npresence_addresses = [\"127.0.0.2\"]\n"
	path := filepath.Join(t.TempDir(), "two.toml")
	if err := os.WriteFile(path, []byte(two), 0o600); err != nil {
		t.Fatal(err)
	}
	notRun := func(context.Context, zerolog.Logger, config.Config, hooks) error {
		t.Error("run was called")
		return nil
	}
	var stderr bytes.Buffer
	if code := boot.Main(config.RoleSender, []string{"-config", path, "-check-config"}, &stderr, notRun, flags); code != 2 ||
		!strings.Contains(stderr.String(), "[sender] node: not set, and 2 nodes are configured [node1 node2]") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	if code := boot.Main(config.RoleSender, []string{"-config", path, "-check-config", "-node", "node2"}, &stderr, notRun, flags); code != 0 {
		t.Fatalf("with -node node2: exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	if code := boot.Main(config.RoleSender, []string{"-config", path, "-check-config", "-node", "node3"}, &stderr, notRun, flags); code != 2 ||
		!strings.Contains(stderr.String(), `[sender] node "node3": not one of the configured nodes`) {
		t.Fatalf("with -node node3: exit %d: %s", code, stderr.String())
	}
}
