package config

import (
	"slices"
	"strings"
	"testing"
)

func contains(list []string, sub string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
}

// The documented client sample, written as an operator of the first generation
// has it, runs client mode: the mode comes from the sections.
func TestClientSampleRunsClientMode(t *testing.T) {
	c, err := Load("testdata/client-mode-sample.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Sender.Mode != ModeClient || c.UserDomain() != "example.de" || c.Client.JID() != "admin@example.de" {
		t.Fatalf("mode %q, users' domain %q, account %q", c.Sender.Mode, c.UserDomain(), c.Client.JID())
	}
	if !contains(c.Notes, "client mode") {
		t.Errorf("notes %q do not say why client mode", c.Notes)
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
	c, err := Load("testdata/old-section-names.toml")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"[kafka] topics", c.KafkaConsumer.Topics, "push-in"},
		{"[kafka] group_name", c.KafkaConsumer.GroupName, "pusher"},
		{"[kafka] buffer", c.KafkaConsumer.Buffer, 500},
		{"[kafka] zookeeper", c.KafkaConsumer.Zookeeper, "10.0.0.5:2181/"},
		{"max_retry", c.KafkaProducer.MaxRetry, 7},
		{"gmet_buffer", c.UserActivityAskBuffer, 250},
		{"mysql address", c.MySQL.Address, "10.0.0.6:3306"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	for _, n := range []string{"[kafka] read as [kafka-consumer]", "max_retry read as [kafka-producer] MaxRetry", "gmet_buffer read as user_activity_ask_buffer"} {
		if !contains(c.Notes, n) {
			t.Errorf("notes %q lack %q", c.Notes, n)
		}
	}
	for _, w := range []string{"[user-activity-redis] set_prefix", "[user-activity-redis] check_interval", "[mysql] check_interval"} {
		if !contains(c.Warnings, w+" is no longer needed") {
			t.Errorf("warnings %q lack %q", c.Warnings, w)
		}
	}
	if err := c.Validate(RoleIngress, RoleFanout, RoleSender, RoleArchiver); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.String(), "[kafka-consumer]") || strings.Contains(c.String(), "[kafka]\n") {
		t.Errorf("-check-config output does not show the mapping:\n%s", c.String())
	}
}

func TestRedisSectionAlias(t *testing.T) {
	c, err := Load("testdata/redis-section.toml")
	if err != nil {
		t.Fatal(err)
	}
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
	c, err := Load("testdata/rest-presence-only.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Fanout.Presence != "rest" || !contains(c.Notes, "REST API") {
		t.Fatalf("presence %q, notes %q", c.Fanout.Presence, c.Notes)
	}
	if err := c.Validate(RoleFanout); err != nil {
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
