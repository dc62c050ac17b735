package e2e

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

// quiet is how long a client must stay without (further) messages to count as "received nothing".
const quiet = 3 * time.Second

func template(from string) string {
	return "<message to='%s' from='" + from + "' type='chat' id='e2e-[inc_id]'><body>n=[inc_id] for %s</body></message>"
}

var idRe = regexp.MustCompile(`^e2e-(\d+)$`)

// checkRendered asserts m is exactly the template rendered for jid and returns its [inc_id].
func checkRendered(t *testing.T, m xmpptest.Message, jid, from string) uint64 {
	t.Helper()
	g := idRe.FindStringSubmatch(m.ID)
	children := m.Children
	if m.Delay != nil { // added by ejabberd's offline storage
		children--
	}
	if m.To != jid || m.From != from || m.Type != "chat" || g == nil || children != 1 || len(m.Bodies) != 1 {
		t.Fatalf("stanza for %s: %+v", jid, m)
	}
	// Only the first %s is the recipient; [inc_id] is replaced everywhere.
	if want := "n=" + g[1] + " for %s"; m.Bodies[0] != want {
		t.Fatalf("body %q, want %q", m.Bodies[0], want)
	}
	n, _ := strconv.ParseUint(g[1], 10, 64)
	return n
}

// newDefaultSystem is a system with the default options (one node) and the
// 90 s that each of this file's tests on it may take.
func newDefaultSystem(t *testing.T) (*system, context.Context) {
	t.Helper()
	s := newSystem(t, options{})
	return s, s.deadline(90 * time.Second)
}

func expectNothing(t *testing.T, c *xmpptest.Client, already int) {
	t.Helper()
	time.Sleep(quiet)
	if got := c.Messages(); len(got) != already {
		t.Fatalf("%s received %d messages, want %d: %+v", c.JID, len(got), already, got)
	}
}

func TestChannelReachesExactlyTheOnlineMembers(t *testing.T) {
	s, ctx := newDefaultSystem(t)
	from := s.from
	var online []string
	for i := range 5 {
		online = append(online, s.user(fmt.Sprintf("m%d", i), "node1"))
	}
	offline := s.user("off", "")
	outsider := s.user("outsider", "node1")
	s.channel(10, s.p+"-chan", "ACCEPTED", append(append([]string{}, online[:3]...), append([]string{offline}, online[3:]...)...)...)

	clients := map[string]*xmpptest.Client{}
	for _, u := range online {
		clients[u] = s.login(ctx, u)
	}
	out := s.login(ctx, outsider)

	s.announce("/v1/announce/channel", map[string]any{"channel_id": 10, "message": b64(template(from))})
	ids := map[uint64]bool{}
	for _, u := range online {
		msgs, err := clients[u].Wait(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		ids[checkRendered(t, msgs[0], u+"@"+s.domain, from)] = true
	}
	if len(ids) != len(online) {
		t.Errorf("[inc_id] values %v are not distinct per recipient", ids)
	}
	// The same channel by its string id.
	s.announce("/v1/announce/channel", map[string]any{"channel_id": s.p + "-chan", "message": b64(template(from))})
	for _, u := range online {
		if _, err := clients[u].Wait(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	expectNothing(t, out, 0)
	for _, u := range online {
		if n := len(clients[u].Messages()); n != 2 {
			t.Errorf("%s received %d messages, want 2", u, n)
		}
	}
	// Nothing was sent to the offline member: chat messages would wait in offline storage.
	late := s.login(ctx, offline)
	expectNothing(t, late, 0)
}

func TestAllOnlineUsers(t *testing.T) {
	s, ctx := newDefaultSystem(t)
	from := s.from
	a, b := s.user("a", "node1"), s.user("b", "node1")
	ca, cb := s.login(ctx, a), s.login(ctx, b)
	s.announce("/v1/announce/channel", map[string]any{"channel_id": -1, "message": b64(template(from))})
	for u, c := range map[string]*xmpptest.Client{a: ca, b: cb} {
		msgs, err := c.Wait(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRendered(t, msgs[0], u+"@"+s.domain, from)
	}
}

func TestUsersOnlineAtOnceOfflineFromStorageAndPersisted(t *testing.T) {
	s, ctx := newDefaultSystem(t)
	from := s.from
	on := s.user("on", "")
	off := s.user("off", "")
	con := s.login(ctx, on)
	// persist defaults to true for users announcements.
	s.announce("/v1/announce/users", map[string]any{"usernames": []string{on, off + "@" + s.domain}, "message": b64(template(from))})
	msgs, err := con.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkRendered(t, msgs[0], on+"@"+s.domain, from)

	// The offline user finds it in ejabberd's offline storage when it logs in. Log in only
	// after the batch's fence: then ejabberd has stored the message. Logging in earlier races
	// the store against the login's offline pop, and a message stored after the pop waits
	// for the next login.
	deadline := time.Now().Add(30 * time.Second)
	for s.metric("sender-node1-0", "announcer_sender_fences_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the users batch was never fenced")
		}
		time.Sleep(100 * time.Millisecond)
	}
	coff := s.login(ctx, off)
	msgs, err = coff.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkRendered(t, msgs[0], off+"@"+s.domain, from)
	if msgs[0].Delay == nil {
		t.Errorf("offline delivery without a delay stamp: %+v", msgs[0])
	}

	// One rendered record per recipient on the storage topic.
	got := map[string]string{}
	for _, r := range kafkatest.ReadAll(t, s.env.KafkaBrokers, s.storage, 2, 60*time.Second) {
		got[string(r.Key)] = string(r.Value)
	}
	for _, u := range []string{on, off} {
		jid := u + "@" + s.domain
		v, ok := got[jid]
		if !ok || !regexp.MustCompile(`^<message to='`+regexp.QuoteMeta(jid)+`' from='`+regexp.QuoteMeta(from)+`' type='chat' id='e2e-\d+'><body>n=\d+ for %s</body></message>$`).MatchString(v) {
			t.Errorf("storage record for %s: %q (all: %v)", jid, v, got)
		}
	}
}

func TestCraftedUsernamesCannotInjectXML(t *testing.T) {
	s, ctx := newDefaultSystem(t)
	from := s.from
	member := s.user("member", "node1")
	victim := s.user("victim", "node1")
	cm, cv := s.login(ctx, member), s.login(ctx, victim)
	vjid := victim + "@" + s.domain
	crafted := []string{
		"x'/><message to='" + vjid + "' from='" + from + "' type='chat'><body>pwned</body></message><x a='",
		`y"><body>pwned</body>`,
		"z&amp;<b>",
	}
	// At the door: refused with the field named.
	for _, u := range crafted {
		code, out := s.post("/v1/announce/users", map[string]any{"usernames": []string{u}, "message": b64(template(from))})
		if code != http.StatusBadRequest || out["field"] != "usernames" {
			t.Errorf("crafted username %q: %d %v, want 400 on usernames", u, code, out)
		}
	}
	// From the channel database (written by someone else): never rendered into a stanza.
	for _, u := range crafted {
		s.online(u, "node1")
		s.users = append(s.users, u)
	}
	s.channel(20, s.p+"-crafted", "ACCEPTED", append([]string{member}, crafted...)...)
	s.announce("/v1/announce/channel", map[string]any{"channel_id": 20, "message": b64(template(from))})
	msgs, err := cm.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkRendered(t, msgs[0], member+"@"+s.domain, from)
	expectNothing(t, cv, 0)
	expectNothing(t, cm, 1)
}

func TestPendingAndUnknownChannelsDeliverNothing(t *testing.T) {
	s, ctx := newDefaultSystem(t)
	from := s.from
	m := s.user("m", "node1")
	cm := s.login(ctx, m)
	s.channel(30, s.p+"-pending", "PENDING", m)
	s.announce("/v1/announce/channel", map[string]any{"channel_id": 30, "message": b64(template(from))})
	s.announce("/v1/announce/channel", map[string]any{"channel_id": 31, "message": b64(template(from))})
	s.announce("/v1/announce/channel", map[string]any{"channel_id": s.p + "-nope", "message": b64(template(from))})
	deadline := time.Now().Add(30 * time.Second)
	for s.metric("fanout", "announcer_fanout_rejected_total") < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := s.metric("fanout", "announcer_fanout_rejected_total"); n != 3 {
		t.Errorf("fanout reports %v rejected announcements, want 3", n)
	}
	expectNothing(t, cm, 0)
}

// Two nodes each get their own users, and two sender replicas of one node share its work.
func TestTwoNodesAndSenderReplicas(t *testing.T) {
	s := newSystem(t, options{nodes: []string{"node1", "node2"}, senders: map[string]int{"node1": 2, "node2": 1}, batch: 2})
	ctx := s.deadline(150 * time.Second)
	from := s.from
	var members []string
	on := map[string][]string{}
	clients := map[string]*xmpptest.Client{}
	for i := range 30 {
		node := "node1"
		if i%3 == 2 {
			node = "node2"
		}
		u := s.user(fmt.Sprintf("n%d", i), node)
		members = append(members, u)
		on[node] = append(on[node], u)
		clients[u] = s.login(ctx, u)
	}
	s.channel(40, s.p+"-nodes", "ACCEPTED", members...)
	sent := func(name string) float64 { return s.metric(name, "announcer_sender_stanzas_sent_total") }

	// A replica that joined the group late gets partitions only after a rebalance:
	// announce until both replicas of node1 have done some of the work.
	rounds := 0
	var ids []string
	for rounds == 0 || sent("sender-node1-0") == 0 || sent("sender-node1-1") == 0 {
		if rounds == 6 {
			t.Fatalf("node1's replicas never shared the work: %v and %v stanzas", sent("sender-node1-0"), sent("sender-node1-1"))
		}
		rounds++
		ids = append(ids, s.announce("/v1/announce/channel", map[string]any{"channel_id": 40, "message": b64(template(from))}))
		for _, u := range members {
			msgs, err := clients[u].Wait(ctx, rounds)
			if err != nil {
				t.Fatal(err)
			}
			checkRendered(t, msgs[rounds-1], u+"@"+s.domain, from)
		}
		time.Sleep(time.Second)
	}
	expectNothing(t, clients[members[0]], rounds)
	for _, u := range members {
		if n := len(clients[u].Messages()); n != rounds {
			t.Errorf("%s received %d messages in %d rounds", u, n, rounds)
		}
	}
	// Each node's sender sent exactly its own users' stanzas.
	if got, want := sent("sender-node1-0")+sent("sender-node1-1"), float64(len(on["node1"])*rounds); got != want {
		t.Errorf("node1 senders sent %v stanzas, want %v", got, want)
	}
	if got, want := sent("sender-node2-0"), float64(len(on["node2"])*rounds); got != want {
		t.Errorf("node2 sender sent %v stanzas, want %v", got, want)
	}
	// Progress is exact with replicas sharing a node's partitions: every
	// round's record is done, each recipient confirmed once, on its node.
	perNode := map[string]int64{"node1": int64(len(on["node1"])), "node2": int64(len(on["node2"]))}
	for _, id := range ids {
		a := s.until(id, "round "+id+" done", 30*time.Second, isDone)
		if a.Audience.Members != 30 || a.Audience.Online != 30 || a.Audience.Recipients != 30 ||
			fmt.Sprint(a.Audience.PerNode) != fmt.Sprint(perNode) {
			t.Errorf("%s: audience %+v, want 30 members, 30 online, per node %v", id, a.Audience, perNode)
		}
		if a.Batches.Planned == 0 || a.Batches.Emitted != a.Batches.Planned || a.Batches.Done != a.Batches.Planned {
			t.Errorf("%s: batches %+v", id, a.Batches)
		}
		// Sent counts resends too: exact only when nothing was resent.
		if a.Stanzas.Confirmed != 30 || a.Stanzas.DeadLettered != 0 || (a.Batches.Resent == 0 && a.Stanzas.Sent != 30) {
			t.Errorf("%s: stanzas %+v (batches resent %d), want 30 confirmed once each", id, a.Stanzas, a.Batches.Resent)
		}
	}
}

// The first generation's Kafka input: the REST bodies as records. A good record reaches the
// members; a bad one lands on the dead-letter topic with the reason, and neither blocks the other.
func TestKafkaInputReachesClientsAndBadRecordsAreDeadLettered(t *testing.T) {
	s, ctx := newDefaultSystem(t)
	m := s.user("m", "node1")
	cm := s.login(ctx, m)
	s.channel(60, s.p+"-kin", "ACCEPTED", m)
	bad := `{"channel_id": 60, "message": "%%% not base64"}`
	good := `{"channel_id": "` + s.p + `-kin", "message": "` + b64(template(s.from)) + `"}`
	kafkatest.Produce(t, s.env.KafkaBrokers, s.p+"_input",
		kafka.Message{Key: []byte("bad"), Value: []byte(bad)},
		kafka.Message{Key: []byte("good"), Value: []byte(good)})
	msgs, err := cm.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkRendered(t, msgs[0], m+"@"+s.domain, s.from)
	dl := kafkatest.ReadAll(t, s.env.KafkaBrokers, s.p+"_dlq", 1, 30*time.Second)
	if len(dl) != 1 || string(dl[0].Value) != bad || !strings.Contains(dl[0].Headers[kafkabus.HeaderReason], "message") ||
		!strings.HasPrefix(dl[0].Headers[kafkabus.HeaderSource], s.p+"_input/") {
		t.Fatalf("dead letters %+v", dl)
	}
	expectNothing(t, cm, 1)
}

// A users list through ingress and fanout: recipients given as bare JIDs or
// full JIDs (a session's resource) are looked up in Redis by their username,
// so each goes out through the sender of the node it is online on (not one
// picked by hashing the JID).
func TestUsersListIsRoutedByPresence(t *testing.T) {
	s := newSystem(t, options{nodes: []string{"node1", "node2"}})
	ctx := s.deadline(90 * time.Second)
	var list []string
	clients := map[string]*xmpptest.Client{} // the address each was sent to
	for i := range 10 {
		node := "node2"
		if i < 2 {
			node = "node1"
		}
		u := s.user(fmt.Sprintf("routed%d", i), node)
		c := s.login(ctx, u)
		to := u + "@" + s.domain // ingress keeps the username of a bare JID of the domain
		if i%2 == 1 {
			to = c.JID.String() // and the whole JID when it names a resource
		}
		clients[to] = c
		list = append(list, to)
	}
	s.announce("/v1/announce/users", map[string]any{"usernames": list, "message": b64(template(s.from)), "persist": false})
	for to, c := range clients {
		msgs, err := c.Wait(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkRendered(t, msgs[0], to, s.from)
	}
	sent := func(name string) float64 { return s.metric(name, "announcer_sender_stanzas_sent_total") }
	if n1, n2 := sent("sender-node1-0"), sent("sender-node2-0"); n1 != 2 || n2 != 8 {
		t.Fatalf("node1's sender sent %v and node2's %v stanzas, want 2 and 8 (each user through its own node)", n1, n2)
	}
}
