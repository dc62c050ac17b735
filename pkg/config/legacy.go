package config

import (
	"fmt"
	"path"
	"sort"
	"strings"
)

// The first generation's configs were written over years against its code,
// not only its documentation: other section names, keys it read and later
// stopped needing. migrate rewrites them into this generation's names before
// the strict decoding, so such a file loads and means what it meant; truly
// unknown keys are still an error.

// sectionAliases are other names of a section, as the first generation's repository spells them.
var sectionAliases = map[string]string{
	"kafka": "kafka-consumer",
	"redis": "user-activity-redis",
}

// retiredKeys are keys the first generation read that have no meaning here, and why.
var retiredKeys = map[string]map[string]string{
	"kafka-consumer": {
		"commit_offset_interval": "offsets are committed per record, once the next stage (the internal topic or the dead-letter topic) has it",
	},
	"mysql": {
		"check_interval": "connections are checked when used and by /readyz, and failures are retried with backoff",
	},
	"user-activity-redis": {
		"check_interval": "connections are checked when used and by /readyz, and failures are retried with backoff",
		// 2018-04: the online users' hash.
		"hash_table": "presence is read from the per-user keys (<username> = server address) and the nodes' online-users sets, " +
			"the data model the first generation itself moved to in 2018-05; a presence hash is not read",
	},
	"ejabberd": {
		// 2018-04: the name of the cluster kept in [zookeeper].
		"default_cluster": "the ejabberd nodes are [ejabberd] cluster_nodes (or [[node]] tables) of this file; there are no named clusters",
	},
}

// retiredSections are whole sections the first generation read that have no meaning here, and why.
var retiredSections = map[string]string{
	// 2018-04: a runtime store of the cluster's connection settings.
	"zookeeper": "the whole configuration is this file (ejabberd nodes: [ejabberd] cluster_nodes or [[node]] tables), and Kafka needs no ZooKeeper",
}

// movedKeys are keys with another name here: section.key → section.key ("" section = top level).
// The name here wins over an old one; of two old names of one key, the earlier entry wins.
var movedKeys = []struct{ fromSection, fromKey, toSection, toKey string }{
	// From 2018-09 the first generation read these instead of input_buffer/output_buffer.
	{"", "input_queue_length", "", "input_buffer"},
	{"", "output_queue_length", "", "output_buffer"},
	{"kafka-producer", "max_retry", "kafka-producer", "MaxRetry"},
	{"user-activity-redis", "gmet_buffer", "", "user_activity_ask_buffer"},
	{"user-activity-redis", "mget_buffer", "", "user_activity_ask_buffer"}, // 2018's spelling of gmet_buffer
	{"log", "log_point", "log", "log_dst"},                                 // 2018-08's name of the log file
	// 2018-05's name of the last-seen hash (<hash> <username> <ms>).
	{"user-activity-redis", "offline_hash_table", "user-activity-redis", "offline_hash"},
}

// migrate rewrites raw (a decoded TOML document) in place. notes say what was
// mapped, warnings what was accepted and ignored; changed is true when raw
// differs from the file.
func migrate(raw map[string]any) (notes, warnings []string, changed bool, err error) {
	for _, old := range sortedKeys(sectionAliases) {
		table, ok := raw[old]
		if !ok {
			continue
		}
		name := sectionAliases[old]
		if _, both := raw[name]; both {
			return nil, nil, false, fmt.Errorf("config: both [%s] and [%s] are set; they are one section, keep [%s]", old, name, name)
		}
		raw[name] = table
		delete(raw, old)
		changed = true
		notes = append(notes, fmt.Sprintf("[%s] read as [%s]", old, name))
	}
	// movedBy names the old key a target was filled from, so that a second
	// old name of it is warned about as what the file really set.
	movedBy := map[string]string{}
	for _, m := range movedKeys {
		from := sectionOf(raw, m.fromSection)
		v, ok := from[m.fromKey]
		if !ok {
			continue
		}
		delete(from, m.fromKey)
		changed = true
		to := sectionOf(raw, m.toSection)
		fromName, toName := keyName(m.fromSection, m.fromKey), keyName(m.toSection, m.toKey)
		if _, set := to[m.toKey]; set {
			winner := toName
			if by, ok := movedBy[toName]; ok {
				winner = by + " (read as " + toName + ")"
			}
			warnings = append(warnings, fmt.Sprintf("%s is ignored: %s is also set and wins", fromName, winner))
			continue
		}
		to[m.toKey] = v
		movedBy[toName] = fromName
		notes = append(notes, fmt.Sprintf("%s read as %s", fromName, toName))
	}
	for _, section := range sortedKeys(retiredSections) {
		if _, ok := raw[section].(map[string]any); ok {
			delete(raw, section)
			changed = true
			warnings = append(warnings, fmt.Sprintf("[%s] is no longer needed and ignored: %s", section, retiredSections[section]))
		}
	}
	for _, section := range sortedKeys(retiredKeys) {
		table := tableOf(raw, section)
		for _, key := range sortedKeys(retiredKeys[section]) {
			if _, ok := table[key]; ok {
				delete(table, key)
				changed = true
				warnings = append(warnings, fmt.Sprintf("%s is no longer needed and ignored: %s", keyName(section, key), retiredKeys[section][key]))
			}
		}
	}
	return notes, warnings, changed, nil
}

// tableOf returns raw's table section, or an empty one that is not in raw.
func tableOf(raw map[string]any, section string) map[string]any {
	if t, ok := raw[section].(map[string]any); ok {
		return t
	}
	return map[string]any{}
}

// sectionOf returns raw itself for the top level ("") and otherwise raw's
// table section, which is not in raw when the file has no such section.
func sectionOf(raw map[string]any, section string) map[string]any {
	if section == "" {
		return raw
	}
	return tableOf(raw, section)
}

// has reports whether the file set section.key.
func has(raw map[string]any, section, key string) bool {
	_, ok := tableOf(raw, section)[key]
	return ok
}

func keyName(section, key string) string {
	if section == "" {
		return key
	}
	return "[" + section + "] " + key
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// setPrefixWarning explains a [user-activity-redis] set_prefix. The first
// generation sent an all-online announcement (channel_id < 0) to the members
// of every set `KEYS <set_prefix>` matched (a Redis glob, not a prefix: its
// sample "192.168." matches only a key named so). Here those sets are the
// nodes' presence_addresses, which also route each user to its node, so the
// pattern is not read; the warning names the sets that are read and those the
// pattern would not have matched, which is what the operator has to check.
func (c *Config) setPrefixWarning() string {
	pattern := c.UserActivityRedis.SetPrefix
	if pattern == "" {
		return ""
	}
	var read, unmatched []string
	for _, n := range c.Nodes {
		for _, a := range n.PresenceAddresses {
			read = append(read, a)
			// path.Match is Redis's glob for names without '/' (an address has none).
			if ok, err := path.Match(pattern, a); err != nil || !ok {
				unmatched = append(unmatched, a)
			}
		}
	}
	w := fmt.Sprintf("[user-activity-redis] set_prefix %q is not read: the first generation sent an all-online announcement "+
		"(channel_id < 0) to the members of the Redis sets KEYS %q matched; here it reads the sets named by the nodes' presence_addresses (%s)",
		pattern, pattern, strings.Join(read, ", "))
	if len(unmatched) == 0 {
		return w + ", which the pattern matches: list in [[node]] presence_addresses any other set it matched"
	}
	return w + fmt.Sprintf("; the pattern does not match %s: name your online-users sets in [[node]] presence_addresses "+
		"(each node's own), or all-online announcements miss their users", strings.Join(unmatched, ", "))
}
