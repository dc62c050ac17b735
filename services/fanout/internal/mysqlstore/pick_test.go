package mysqlstore

import "testing"

func TestPickIndex(t *testing.T) {
	cases := []struct {
		name     string
		indexes  map[string][]string
		order    []string
		want     string
		covering bool
	}{
		{"none", map[string][]string{"PRIMARY": {"member_id"}}, []string{"PRIMARY"}, "", false},
		{"channel alone does not serve keyset pages",
			map[string][]string{"by_channel": {"member_channelid"}}, []string{"by_channel"}, "", false},
		{"wrong order", map[string][]string{"k": {"member_id", "member_channelid"}}, []string{"k"}, "", false},
		{"plain", map[string][]string{"PRIMARY": {"member_id"}, "k": {"member_channelid", "member_id"}},
			[]string{"PRIMARY", "k"}, "k", false},
		{"covering preferred over an earlier plain one",
			map[string][]string{"a": {"member_channelid", "member_id"}, "b": {"member_channelid", "member_id", "member_username"}},
			[]string{"a", "b"}, "b", true},
		{"first plain one kept", map[string][]string{"a": {"member_channelid", "member_id"}, "b": {"member_channelid", "member_id", "x"}},
			[]string{"a", "b"}, "a", false},
		{"username elsewhere does not cover",
			map[string][]string{"k": {"member_channelid", "member_username", "member_id"}}, []string{"k"}, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, covering := pickIndex(c.order, c.indexes)
			if got != c.want || covering != c.covering {
				t.Fatalf("pickIndex = %q, %v; want %q, %v", got, covering, c.want, c.covering)
			}
		})
	}
}
