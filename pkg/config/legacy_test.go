package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/announcer/announcer/pkg/testkit"
)

func contains(list []string, sub string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
}

// The documented client sample, written as an operator of the first generation
// has it, runs client mode: the mode comes from the sections.
func TestClientSampleRunsClientMode(t *testing.T) {
	c := mustLoad(t, "testdata/client-mode-sample.toml")
	if c.Sender.Mode != ModeClient || c.UserDomain() != "example.de" || c.Client.JID() != "admin@example.de" {
		t.Fatalf("mode %q, users' domain %q, account %q", c.Sender.Mode, c.UserDomain(), c.Client.JID())
	}
	if !contains(c.Notes, "client mode") {
		t.Errorf("notes %q do not say why client mode", c.Notes)
	}
	// The sample has both presence sections; the first generation used Redis.
	if c.Fanout.Presence != "redis" || !contains(c.Notes, "presence from Redis") {
		t.Errorf("presence %q, notes %q: want Redis, said so", c.Fanout.Presence, c.Notes)
	}
	if c.Log.Dst != "/path/to/dest/file.log" || c.UserActivityREST.Address != "127.0.0.1:8888" {
		t.Errorf("the sample was not read whole: log_dst %q, REST address %q", c.Log.Dst, c.UserActivityREST.Address)
	}
	for _, role := range []Role{RoleIngress, RoleFanout, RoleSender, RoleArchiver} {
		if err := c.Validate(role); err != nil {
			t.Errorf("%s: %v", role, err)
		}
	}
	if r := c.TemplateRules(); r.ClientJID != "admin@example.de" || r.ComponentDomain != "" {
		t.Errorf("template rules %+v", r)
	}
}

// An explicit [sender] mode wins over what the sections suggest.
func TestExplicitModeWins(t *testing.T) {
	c, err := Parse([]byte("[client]\nusername = \"a\"\ndomain = \"d\"\n[sender]\nmode = \"component\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Sender.Mode != ModeComponent {
		t.Fatalf("mode %q, want the explicit component", c.Sender.Mode)
	}
}

// The first generation's repository spellings: [kafka] for the input, keys it
// retired, max_retry and gmet_buffer under their names here.
func TestOldSectionAndKeyNamesLoad(t *testing.T) {
	c := mustLoad(t, "testdata/old-section-names.toml")
	expect(t, []check{
		{"[kafka] topics", c.KafkaConsumer.Topics, "push-in"},
		{"[kafka] group_name", c.KafkaConsumer.GroupName, "pusher"},
		{"[kafka] buffer", c.KafkaConsumer.Buffer, 500},
		{"[kafka] zookeeper", c.KafkaConsumer.Zookeeper, "10.0.0.5:2181/"},
		{"max_retry", c.KafkaProducer.MaxRetry, 7},
		{"gmet_buffer", c.UserActivityAskBuffer, 250},
		{"mysql address", c.MySQL.Address, "10.0.0.6:3306"},
	})
	for _, n := range []string{"[kafka] read as [kafka-consumer]", "max_retry read as [kafka-producer] MaxRetry", "gmet_buffer read as user_activity_ask_buffer"} {
		if !contains(c.Notes, n) {
			t.Errorf("notes %q lack %q", c.Notes, n)
		}
	}
	for _, w := range []string{"[user-activity-redis] check_interval", "[mysql] check_interval"} {
		if !contains(c.Warnings, w+" is no longer needed") {
			t.Errorf("warnings %q lack %q", c.Warnings, w)
		}
	}
	// "online:" names no node's set (10.0.0.8): the operator is told what to write.
	if !contains(c.Warnings, `set_prefix "online:" is not read`) || !contains(c.Warnings, "does not match 10.0.0.8") {
		t.Errorf("warnings %q do not explain set_prefix", c.Warnings)
	}
	if c.Sender.Mode != ModeComponent || c.Fanout.Presence != "redis" {
		t.Errorf("mode %q presence %q, want component and redis", c.Sender.Mode, c.Fanout.Presence)
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.String(), "[kafka-consumer]") || strings.Contains(c.String(), "[kafka]\n") {
		t.Errorf("-check-config output does not show the mapping:\n%s", c.String())
	}
}

// Keys the first generation's code read in its 2018 versions (service/main.go,
// and example/main.go before it): the queue lengths, the Kafka commit interval,
// mget_buffer and log_point, under the [kafka] and [redis] aliases too.
func TestFirstGenerationCodeKeysLoad(t *testing.T) {
	c, err := Parse([]byte(`input_queue_length = 300
output_queue_length = 400

[log]
log_level = "info"
log_point = "/var/log/announcer/announcer.log"

[kafka]
topics = "push-in"
commit_offset_interval = 5

[redis]
cluster_nodes = "10.0.0.7:6379"
mget_buffer = 120

[mysql]
address = "10.0.0.6:3306"
db = "d"

[kafka-producer]
topics = "storage"

[ejabberd]
cluster_nodes = "10.0.0.8:8889"

[component]
name = "announcer"
secret = "s"
domain = "example.org"
`))
	if err != nil {
		t.Fatal(err)
	}
	expect(t, []check{
		{"input_queue_length", c.InputBuffer, 300},
		{"output_queue_length", c.OutputBuffer, 400},
		{"mget_buffer", c.UserActivityAskBuffer, 120},
		{"log_point", c.Log.Dst, "/var/log/announcer/announcer.log"},
		{"[log] log_level", c.Log.Level, "info"},
		{"[kafka] topics", c.KafkaConsumer.Topics, "push-in"},
		{"[redis] cluster_nodes", c.UserActivityRedis.ClusterNodes, "10.0.0.7:6379"},
	})
	for _, n := range []string{
		"input_queue_length read as input_buffer",
		"output_queue_length read as output_buffer",
		"[user-activity-redis] mget_buffer read as user_activity_ask_buffer",
		"[log] log_point read as [log] log_dst",
	} {
		if !contains(c.Notes, n) {
			t.Errorf("notes %q lack %q", c.Notes, n)
		}
	}
	if !contains(c.Warnings, "[kafka-consumer] commit_offset_interval is no longer needed and ignored: offsets are committed per record") {
		t.Errorf("warnings %q do not retire commit_offset_interval", c.Warnings)
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Fatal(err)
	}
	for _, old := range []string{"input_queue_length", "output_queue_length", "mget_buffer", "log_point", "commit_offset_interval"} {
		if strings.Contains(c.String(), old) {
			t.Errorf("-check-config output still shows %s:\n%s", old, c.String())
		}
	}
}

// Next to this generation's name, an old one is ignored with a warning; of the
// two old names of the presence chunk, gmet_buffer (the later one) wins.
func TestFirstGenerationCodeKeysLoseToTheirNewNames(t *testing.T) {
	c, err := Parse([]byte(`input_buffer = 10
input_queue_length = 300
output_queue_length = 400

[log]
log_dst = "/new.log"
log_point = "/old.log"

[kafka-consumer]
commit_offset_interval = 5

[user-activity-redis]
gmet_buffer = 250
mget_buffer = 120
`))
	if err != nil {
		t.Fatal(err)
	}
	expect(t, []check{
		{"input_buffer", c.InputBuffer, 10},
		{"output_queue_length alone", c.OutputBuffer, 400},
		{"gmet_buffer", c.UserActivityAskBuffer, 250},
		{"log_dst", c.Log.Dst, "/new.log"},
	})
	for _, w := range []string{
		"input_queue_length is ignored: input_buffer is also set and wins",
		"[log] log_point is ignored: [log] log_dst is also set and wins",
		"[user-activity-redis] mget_buffer is ignored: [user-activity-redis] gmet_buffer (read as user_activity_ask_buffer) is also set and wins",
		"[kafka-consumer] commit_offset_interval is no longer needed",
	} {
		if !contains(c.Warnings, w) {
			t.Errorf("warnings %q lack %q", c.Warnings, w)
		}
	}
}

func TestRedisSectionAlias(t *testing.T) {
	c := mustLoad(t, "testdata/redis-section.toml")
	if c.UserActivityRedis.ClusterNodes != "10.0.0.7:6379,10.0.0.9:6379" || c.UserActivityRedis.Password.Value() != "pw" ||
		c.UserActivityRedis.ReadTimeout != 500 || c.KafkaProducer.MaxRetry != 2 || c.Fanout.Presence != "redis" {
		t.Fatalf("redis %+v, MaxRetry %d, presence %q", c.UserActivityRedis, c.KafkaProducer.MaxRetry, c.Fanout.Presence)
	}
	if err := c.Validate(RoleFanout); err != nil {
		t.Fatal(err)
	}
}

// A file with only the REST presence section uses it, as the first generation did.
func TestRESTPresenceOnlyChoosesREST(t *testing.T) {
	c := mustLoad(t, "testdata/rest-presence-only.toml")
	if c.Fanout.Presence != "rest" || c.Sender.Mode != ModeComponent || !contains(c.Notes, "REST API") {
		t.Fatalf("presence %q, mode %q, notes %q", c.Fanout.Presence, c.Sender.Mode, c.Notes)
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Fatal(err)
	}
}

func TestAliasAndSectionTogetherAreRefused(t *testing.T) {
	_, err := Parse([]byte("[kafka]\ntopics = \"a\"\n[kafka-consumer]\ntopics = \"b\"\n"))
	mustName(t, err, "both [kafka] and [kafka-consumer]")
}

// Keys nobody ever read are still an error, under an alias too.
func TestUnknownKeysStillFail(t *testing.T) {
	_, err := Parse([]byte("[redis]\ncluster_nodes = \"a:1\"\nclustr = true\n"))
	mustName(t, err, "clustr")
}

// A moved key next to its new name: the new name wins, and the old one is warned about.
func TestMovedKeyNextToItsNewName(t *testing.T) {
	c, err := Parse([]byte("[kafka-producer]\nMaxRetry = 4\nmax_retry = 9\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.KafkaProducer.MaxRetry != 4 || !contains(c.Warnings, "max_retry is ignored") {
		t.Fatalf("MaxRetry %d, warnings %q", c.KafkaProducer.MaxRetry, c.Warnings)
	}
}

// A wrong value in a file with old names is placed where the file has it,
// not in the text those names were rewritten into.
func TestErrorLinesOfAFileWithOldNames(t *testing.T) {
	_, err := Parse([]byte("[kafka]\ntopics = \"in\"\n\n[mysql]\naddress = \"db:3306\"\nmax_open_conn = \"50\"\n"))
	if err == nil || !strings.Contains(err.Error(), "line 6 column") {
		t.Fatalf("err = %v, want it placed on the file's line 6", err)
	}
	// A wrong value under an old name has no place in the file's own decode: no line is made up.
	_, err = Parse([]byte("[mysql]\naddress = \"db:3306\"\n\n[kafka]\nbuffer = \"many\"\n"))
	if err == nil || strings.Contains(err.Error(), "line ") || !strings.Contains(err.Error(), "old name") {
		t.Fatalf("err = %v, want it without a line, saying an old name was read", err)
	}
}

// The first generation connected a component only when [component] secret
// was set: commenting out the secret alone chose client mode.
func TestClientModeWithoutAComponentSecret(t *testing.T) {
	const client = "[client]\nusername = \"admin\"\npassword = \"p\"\ndomain = \"example.de\"\n"
	for _, tc := range []struct{ component, mode string }{
		{"[component]\nname = \"announcer\"\ndomain = \"example.de\"\n#secret = \"s\"\n", ModeClient},
		{"[component]\nname = \"announcer\"\nsecret = \"\"\ndomain = \"example.de\"\n", ModeClient},
		{"[component]\nname = \"announcer\"\nsecret = \"s\"\ndomain = \"example.de\"\n", ModeComponent},
		{"[component]\nname = \"announcer\"\ndomain = \"example.de\"\n[sender]\nmode = \"component\"\n", ModeComponent}, // said, not chosen
	} {
		c, err := Parse([]byte(client + tc.component))
		if err != nil {
			t.Fatal(err)
		}
		if c.Sender.Mode != tc.mode {
			t.Errorf("%q: mode %q, want %q (notes %q)", tc.component, c.Sender.Mode, tc.mode, c.Notes)
		}
		if tc.mode == ModeClient && !contains(c.Notes, "client mode: the file has [client] and no [component] secret") {
			t.Errorf("%q: notes %q lack why client mode", tc.component, c.Notes)
		}
	}
}

// Every fixture proves which sender mode and which presence source it chose,
// and loads for every service; a new fixture without a row fails here.
func TestEveryFixtureChoosesModeAndPresence(t *testing.T) {
	want := map[string]struct{ mode, presence string }{
		"client-mode-sample.toml": {ModeClient, "redis"}, // both presence sections: Redis, as the first generation chose
		"first-generation.toml":   {ModeComponent, "redis"},
		"minimal.toml":            {ModeComponent, "redis"},
		"old-section-names.toml":  {ModeComponent, "redis"},
		"redis-section.toml":      {ModeComponent, "redis"},
		"rest-presence-only.toml": {ModeComponent, "rest"},
	}
	files, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(f.Name(), func(t *testing.T) {
			w, ok := want[f.Name()]
			if !ok {
				t.Fatalf("no expected mode and presence for this fixture")
			}
			c, err := Load(filepath.Join("testdata", f.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if c.Sender.Mode != w.mode || c.Fanout.Presence != w.presence {
				t.Errorf("mode %q presence %q, want %q %q (notes %q)", c.Sender.Mode, c.Fanout.Presence, w.mode, w.presence, c.Notes)
			}
			if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
				t.Error(err)
			}
		})
	}
}

// How the first generation's main.go chose presence: Redis whenever
// [user-activity-redis] cluster_nodes is set, else the REST API. The new key wins.
func TestPresenceChosenAsTheFirstGenerationDid(t *testing.T) {
	rest := "[user-activity-rest-api]\naddress = \"10.0.0.10:8888\"\n"
	for _, tc := range []struct {
		name, file, want, note string
	}{
		{"both, as documented", rest + "[user-activity-redis]\ncluster_nodes = \"10.0.0.7:6379\"\n", "redis", "preferred over [user-activity-rest-api]"},
		{"REST and an empty Redis section", rest + "[user-activity-redis]\ncluster_nodes = \"\"\ndb = 0\n", "rest", "no Redis cluster_nodes"},
		{"REST only", rest, "rest", "no Redis cluster_nodes"},
		{"Redis only", "[redis]\ncluster_nodes = \"10.0.0.7:6379\"\n", "redis", ""},
		{"explicit key wins", rest + "[user-activity-redis]\ncluster_nodes = \"10.0.0.7:6379\"\n[fanout]\npresence = \"rest\"\n", "rest", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if c.Fanout.Presence != tc.want {
				t.Errorf("presence %q, want %q", c.Fanout.Presence, tc.want)
			}
			if tc.note != "" && !contains(c.Notes, tc.note) {
				t.Errorf("notes %q lack %q", c.Notes, tc.note)
			}
			if tc.note == "" && contains(c.Notes, "presence") {
				t.Errorf("notes %q: nothing was chosen from the sections", c.Notes)
			}
		})
	}
}

// set_prefix was the first generation's KEYS pattern for the online-users
// sets; the warning says which sets are read instead and which of them the
// pattern would not have matched.
func TestSetPrefixIsCheckedAgainstPresenceAddresses(t *testing.T) {
	base := "[ejabberd]\ncluster_nodes = \"192.168.1.5:8889,10.0.0.8:8889\"\n[user-activity-redis]\ncluster_nodes = \"r:6379\"\n"
	c, err := Parse([]byte(base + "set_prefix = \"192.168.*\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 {
		t.Fatalf("warnings %q, want one", c.Warnings)
	}
	w := c.Warnings[0]
	for _, s := range []string{`set_prefix "192.168.*" is not read`, "presence_addresses (192.168.1.5, 10.0.0.8)", "does not match 10.0.0.8:"} {
		if !strings.Contains(w, s) {
			t.Errorf("warning lacks %q:\n%s", s, w)
		}
	}

	c, err = Parse([]byte(base + "set_prefix = \"*\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "which the pattern matches") {
		t.Errorf("a pattern matching every node's set: %q", c.Warnings)
	}
	if strings.Contains(c.String(), "set_prefix") != true {
		t.Errorf("the effective config hides the key it was given:\n%s", c.String())
	}
	c, err = Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 0 || strings.Contains(c.String(), "set_prefix") {
		t.Errorf("no set_prefix: warnings %q", c.Warnings)
	}
}

// [client] ca_file is read at validation: a missing or non-PEM file stops the
// start naming the key; a PEM certificate is added to the roots.
func TestClientCAFile(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(good, testkit.SelfSignedCA(t, "d"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := func(ca string) string {
		return "[ejabberd]\ncluster_nodes = \"127.0.0.1:5222\"\n[client]\nusername = \"a\"\npassword = \"p\"\ndomain = \"d\"\nca_file = \"" + ca + "\"\n"
	}
	for _, tc := range []struct{ ca, want string }{
		{filepath.Join(dir, "missing.pem"), "[client] ca_file: open"},
		{notPEM, "no PEM certificate"},
	} {
		c, err := Parse([]byte(file(tc.ca)))
		if err != nil {
			t.Fatal(err)
		}
		mustName(t, c.Validate(RoleSender), tc.want)
		if err := c.Validate(RoleIngress); err != nil {
			t.Errorf("only the sender reads ca_file: %v", err)
		}
	}
	c, err := Parse([]byte(file(good)))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(RoleSender); err != nil {
		t.Fatal(err)
	}
	pool, err := c.Client.RootCAs()
	if err != nil || pool == nil {
		t.Fatalf("pool %v, err %v", pool, err)
	}
	if pool, err := (Client{}).RootCAs(); pool != nil || err != nil {
		t.Errorf("no ca_file: pool %v err %v, want the system roots (nil)", pool, err)
	}
}

// Keys of the first generation's 2018-04 and 2018-05 samples (example/config-sample.toml,
// README): a ZooKeeper section and a named default cluster, the presence hash, and the
// offline hash, which is offline_hash here.
func TestFirstGeneration2018SampleKeysLoad(t *testing.T) {
	c, err := Parse([]byte(`rest_api_port=":8080"

[zookeeper]
cluster_nodes="192.168.95.171:2181"
namespace="/watch"

[mysql]
address="127.0.0.1:3306"
db="test"

[redis]
cluster_nodes="127.0.0.1:6379"
db=0
hash_table="UserPresence"
offline_hash_table="Offline"

[ejabberd]
cluster_nodes="192.168.95.180:8889"
default_cluster="A"

[component]
name="announcer"
secret="announcer"
domain="soroush.ir"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.UserActivityRedis.OfflineHash != "Offline" || !contains(c.Notes, "[user-activity-redis] offline_hash_table read as [user-activity-redis] offline_hash") {
		t.Errorf("offline_hash %q, notes %q", c.UserActivityRedis.OfflineHash, c.Notes)
	}
	for _, w := range []string{
		"[zookeeper] is no longer needed and ignored:",
		"[user-activity-redis] hash_table is no longer needed and ignored:",
		"[ejabberd] default_cluster is no longer needed and ignored:",
		"offline_hash is not read",
	} {
		if !contains(c.Warnings, w) {
			t.Errorf("warnings %q lack %q", c.Warnings, w)
		}
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender); err != nil {
		t.Fatal(err)
	}
	for _, old := range []string{"zookeeper]", "hash_table", "default_cluster", "namespace"} {
		if strings.Contains(c.String(), old) {
			t.Errorf("-check-config output still shows %s:\n%s", old, c.String())
		}
	}
	// The name here wins over the old one.
	c, err = Parse([]byte("[user-activity-redis]\noffline_hash = \"last-seen\"\noffline_hash_table = \"Offline\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.UserActivityRedis.OfflineHash != "last-seen" || !contains(c.Warnings, "offline_hash_table is ignored: [user-activity-redis] offline_hash is also set") {
		t.Errorf("offline_hash %q, warnings %q", c.UserActivityRedis.OfflineHash, c.Warnings)
	}
}
