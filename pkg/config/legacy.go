package config

import (
	"fmt"
	"sort"
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
	"user-activity-redis": {
		"check_interval": "connections are checked when used and by /readyz, and failures are retried with backoff",
		"set_prefix": "the online-users sets are read by the exact names in [[node]] presence_addresses " +
			"(put the prefix there if your sets carry one)",
	},
	"mysql": {
		"check_interval": "connections are checked when used and by /readyz, and failures are retried with backoff",
	},
}

// movedKeys are keys with another name here: section.key → section.key ("" section = top level).
var movedKeys = []struct{ fromSection, fromKey, toSection, toKey string }{
	{"kafka-producer", "max_retry", "kafka-producer", "MaxRetry"},
	{"user-activity-redis", "gmet_buffer", "", "user_activity_ask_buffer"},
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
	for _, m := range movedKeys {
		from := tableOf(raw, m.fromSection)
		v, ok := from[m.fromKey]
		if !ok {
			continue
		}
		delete(from, m.fromKey)
		changed = true
		to := raw
		if m.toSection != "" {
			to = tableOf(raw, m.toSection)
		}
		if _, set := to[m.toKey]; set {
			warnings = append(warnings, fmt.Sprintf("%s is ignored: %s is also set and wins", keyName(m.fromSection, m.fromKey), keyName(m.toSection, m.toKey)))
			continue
		}
		to[m.toKey] = v
		notes = append(notes, fmt.Sprintf("%s read as %s", keyName(m.fromSection, m.fromKey), keyName(m.toSection, m.toKey)))
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
