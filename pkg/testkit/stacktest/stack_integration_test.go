package stacktest_test

import (
	"context"
	"database/sql"
	"encoding/xml"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// These tests prove the local stack is real and shaped as the services expect.

func TestKafkaProduceConsume(t *testing.T) {
	env, ctx := stacktest.GetWithTimeout(t, 60*time.Second)
	topic := stacktest.Name("stack_kafka")
	group := stacktest.Name("stack_group")
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, topic)
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, group)
	if err := kafkabus.EnsureTopics(ctx, kafkabus.Plaintext(env.KafkaBrokers), kafkabus.Topic{Name: topic, Partitions: 2, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	if err := kafkabus.Ping(ctx, kafkabus.Plaintext(env.KafkaBrokers)); err != nil {
		t.Fatal(err)
	}
	w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second})
	// A transport of its own: the shared default one may hold metadata from before the topic existed.
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w.Transport = tr
	defer w.Close()
	want := map[string]string{"k1": "v1", "k2": "v2", "k3": "v3"}
	var msgs []kafka.Message
	for k, v := range want {
		msgs = append(msgs, kafka.Message{Topic: topic, Key: []byte(k), Value: []byte(v)})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	r := kafkabus.NewReader(kafkabus.Plaintext(env.KafkaBrokers), group, []string{topic}, kafkabus.ReaderOptions{})
	defer r.Close()
	got := map[string]string{}
	for len(got) < len(want) {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("fetch after %d: %v", len(got), err)
		}
		got[string(m.Key)] = string(m.Value)
		if err := r.CommitMessages(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("key %s: got %q want %q", k, got[k], v)
		}
	}
}

func TestMariaDBDemoChannel(t *testing.T) {
	env := stacktest.Get(t)
	db, err := sql.Open("mysql", env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var state string
	if err := db.QueryRow(`SELECT channel_state FROM ws_channel_data WHERE channel_channelid = ?`, "demo").Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state != "ACCEPTED" {
		t.Fatalf("demo channel state %q", state)
	}
	rows, err := db.Query(`SELECT m.member_username FROM ws_channel_members m JOIN ws_channel_data c ON c.channel_id = m.member_channelid
		WHERE c.channel_channelid = ? AND m.member_id > ? ORDER BY m.member_id LIMIT 100`, "demo", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var members []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			t.Fatal(err)
		}
		members = append(members, u)
	}
	if len(members) != 3 || members[0] != "alice" || members[1] != "bob" || members[2] != "carol" {
		t.Fatalf("demo members %v, want [alice bob carol]", members)
	}
	// The keyset page must use the (member_channelid, member_id) index, never a scan.
	var id, selType, table, typ, key sql.NullString
	var possible, keyLen, ref, rowsN, extra sql.NullString
	err = db.QueryRow(`EXPLAIN SELECT member_id, member_username FROM ws_channel_members WHERE member_channelid = 1 AND member_id > 0 ORDER BY member_id LIMIT 100`).
		Scan(&id, &selType, &table, &typ, &possible, &key, &keyLen, &ref, &rowsN, &extra)
	if err != nil {
		t.Fatal(err)
	}
	if typ.String != "range" && typ.String != "ref" {
		t.Errorf("keyset page plan: type=%s key=%s extra=%s", typ.String, key.String, extra.String)
	}
}

func TestRedisDemoPresence(t *testing.T) {
	env := stacktest.Get(t)
	rdb := redis.NewClient(&redis.Options{Addr: env.RedisAddr})
	defer rdb.Close()
	ctx := context.Background()
	vals, err := rdb.MGet(ctx, "alice", "bob", "carol").Result()
	if err != nil {
		t.Fatal(err)
	}
	if vals[0] != "127.0.0.1" || vals[1] != "127.0.0.1" || vals[2] != nil {
		t.Fatalf("presence %v, want alice and bob at 127.0.0.1, carol offline", vals)
	}
	online, err := rdb.SIsMember(ctx, "127.0.0.1", "alice").Result()
	if err != nil || !online {
		t.Fatalf("alice not in the node's online set: %v %v", online, err)
	}
}

func TestComponentHandshakeAndPing(t *testing.T) {
	env, ctx := stacktest.GetWithTimeout(t, 20*time.Second)
	conn := testkit.Dial(t, env.ComponentAddr)
	addr := jid.MustParse(env.ComponentDomain)
	s, err := component.NewSession(ctx, addr, []byte(env.ComponentSecret), conn)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer s.Close()
	go func() { _ = s.Serve(nil) }()
	// A component must name itself in from (ejabberd's check_from), which ping.Send does not do.
	req := ping.IQ{IQ: stanza.IQ{Type: stanza.GetIQ, To: jid.MustParse(env.XMPPDomain), From: addr}}
	resp, err := s.SendIQ(ctx, req.TokenReader())
	if err != nil {
		t.Fatalf("XEP-0199 ping to %s: %v", env.XMPPDomain, err)
	}
	defer resp.Close()
	tok, err := resp.Token()
	if err != nil {
		t.Fatal(err)
	}
	start, ok := tok.(xml.StartElement)
	if !ok {
		t.Fatalf("ping answer starts with %T", tok)
	}
	iq, err := stanza.NewIQ(start)
	if err != nil || iq.Type != stanza.ResultIQ {
		t.Fatalf("ping answered with %+v (%v), want a result IQ", iq, err)
	}

	// Every spare component domain is accepted with its own secret, and only with it.
	if len(env.ComponentSpares) < 2 {
		t.Fatalf("want spare component domains, got %v", env.ComponentSpares)
	}
	for _, d := range env.ComponentSpares {
		c := testkit.Dial(t, env.AddrFor(d))
		sp, err := component.NewSession(ctx, jid.MustParse(d), []byte(env.SecretFor(d)), c)
		if err != nil {
			t.Fatalf("handshake as %s: %v", d, err)
		}
		_ = sp.Close()
		_ = c.Close()
		if env.SecretFor(d) == env.ComponentSecret {
			t.Fatalf("spare %s shares the main secret: its connections would get the main domain's routes", d)
		}
	}

	// A wrong secret must be refused: the listener really checks the handshake.
	bad := testkit.Dial(t, env.ComponentAddr)
	if _, err := component.NewSession(ctx, addr, []byte("wrong-secret"), bad); err == nil {
		t.Fatal("handshake with a wrong secret succeeded")
	}
}

// Spare component domains are isolated: results of pings sent as one never reach
// another's connection (ejabberd would route them at random over shared routes).
func TestSpareComponentsAreIsolated(t *testing.T) {
	env, ctx := stacktest.GetWithTimeout(t, 30*time.Second)
	if len(env.ComponentSpares) < 2 {
		t.Fatalf("want spare component domains, got %v", env.ComponentSpares)
	}
	open := func(domain string) *xmpp.Session {
		c := testkit.Dial(t, env.AddrFor(domain))
		s, err := component.NewSession(ctx, jid.MustParse(domain), []byte(env.SecretFor(domain)), c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := jid.MustParse(env.ComponentSpares[0]), env.ComponentSpares[1]
	sa := open(a.String())
	sb := open(b)
	sb2 := open(b) // a second connection of b, to see that a's results stay on a
	stray := make(chan string, 100)
	for _, s := range []*xmpp.Session{sb, sb2} {
		go func() {
			_ = s.Serve(xmpp.HandlerFunc(func(_ xmlstream.TokenReadEncoder, start *xml.StartElement) error {
				stray <- start.Name.Local
				return nil
			}))
		}()
	}
	go func() { _ = sa.Serve(nil) }()
	for i := 0; i < 20; i++ {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		req := ping.IQ{IQ: stanza.IQ{Type: stanza.GetIQ, To: jid.MustParse(env.XMPPDomain), From: a}}
		resp, err := sa.SendIQ(pctx, req.TokenReader())
		pcancel()
		if err != nil {
			t.Fatalf("ping %d from %s not answered on its own connection: %v (strays: %d)", i, a, err, len(stray))
		}
		_ = resp.Close()
	}
	select {
	case el := <-stray:
		t.Fatalf("a %s for %s reached %s's connection", el, a, b)
	default:
	}
}
