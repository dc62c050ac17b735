package audiencetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// MemberFixture is a MemberStore the contract can fill with rows.
type MemberFixture interface {
	audience.MemberStore
	AddChannel(ctx context.Context, id int64, strID, state string) error
	// AddMembers appends members with increasing member_id, in the given order.
	AddMembers(ctx context.Context, channelID int64, usernames ...string) error
}

// MemberStoreContract checks what the audience use case relies on. newStore
// must return an empty store of its own (e.g. a fresh database).
func MemberStoreContract(t *testing.T, newStore func(t *testing.T) MemberFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// twoChannels is a new store with accepted channels 1 and 2 of n members
	// each ("a…" and "b…"), added in turns so each channel's rows interleave
	// with the other's.
	twoChannels := func(t *testing.T, n int) MemberFixture {
		s := newStore(t)
		must(t, s.AddChannel(ctx, 1, "one", audience.StateAccepted))
		must(t, s.AddChannel(ctx, 2, "two", audience.StateAccepted))
		a, b := Names("a", n), Names("b", n)
		for i := range n {
			must(t, s.AddMembers(ctx, 1, a[i]))
			must(t, s.AddMembers(ctx, 2, b[i]))
		}
		return s
	}

	t.Run("Channel", func(t *testing.T) {
		s := newStore(t)
		must(t, s.AddChannel(ctx, 7, "seven", audience.StateAccepted))
		must(t, s.AddChannel(ctx, 8, "eight", "PENDING"))
		// The first generation's WHERE channel_state = 'ACCEPTED' took these
		// too (MariaDB's default collations ignore case and trailing spaces).
		must(t, s.AddChannel(ctx, 10, "ten", "accepted"))
		must(t, s.AddChannel(ctx, 11, "eleven", "Accepted  "))
		// But not these.
		must(t, s.AddChannel(ctx, 12, "twelve", " ACCEPTED"))
		must(t, s.AddChannel(ctx, 13, "thirteen", "ACCEPTEDX"))
		for _, tc := range []struct {
			ref   announcement.ChannelRef
			want  audience.Channel
			found bool
		}{
			{announcement.ChannelRef{ID: 7}, audience.Channel{ID: 7, State: audience.StateAccepted, Accepted: true}, true},
			{announcement.ChannelRef{StringID: "eight", IsString: true}, audience.Channel{ID: 8, State: "PENDING"}, true},
			{announcement.ChannelRef{ID: 10}, audience.Channel{ID: 10, State: "accepted", Accepted: true}, true},
			{announcement.ChannelRef{StringID: "eleven", IsString: true}, audience.Channel{ID: 11, State: "Accepted  ", Accepted: true}, true},
			{announcement.ChannelRef{ID: 12}, audience.Channel{ID: 12, State: " ACCEPTED"}, true},
			{announcement.ChannelRef{ID: 13}, audience.Channel{ID: 13, State: "ACCEPTEDX"}, true},
			{announcement.ChannelRef{ID: 9}, audience.Channel{}, false},
			{announcement.ChannelRef{StringID: "nine", IsString: true}, audience.Channel{}, false},
			// A numeric-looking string id is a string id, not channel 7.
			{announcement.ChannelRef{StringID: "7", IsString: true}, audience.Channel{}, false},
		} {
			got, err := s.Channel(ctx, tc.ref)
			if !tc.found {
				if !errors.Is(err, audience.ErrChannelNotFound) {
					t.Errorf("%v: err %v, want ErrChannelNotFound", tc.ref, err)
				}
				continue
			}
			if err != nil || got != tc.want {
				t.Errorf("%v: got %+v, %v; want %+v", tc.ref, got, err, tc.want)
			}
		}
	})

	t.Run("MembersKeysetPages", func(t *testing.T) {
		// Interleaved channels: pages must skip the other channel's rows.
		s := twoChannels(t, 25)
		var (
			got   []string
			ids   []int64
			after int64
			buf   []audience.Member
		)
		for {
			page, err := s.Members(ctx, 1, after, audience.NoUpperBound, 10, buf)
			must(t, err)
			if len(page) > 10 {
				t.Fatalf("page of %d, limit 10", len(page))
			}
			for _, m := range page {
				got = append(got, m.Username)
				ids = append(ids, m.ID)
			}
			if len(page) < 10 {
				break
			}
			after = page[len(page)-1].ID
			buf = page
		}
		if !slices.Equal(got, Names("a", 25)) {
			t.Fatalf("members %v", got)
		}
		if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
			t.Fatalf("ids not strictly increasing: %v", ids)
		}
		// Upper bound is exclusive.
		page, err := s.Members(ctx, 1, ids[2], ids[6], 100, nil)
		must(t, err)
		if len(page) != 3 || page[0].ID != ids[3] || page[2].ID != ids[5] {
			t.Fatalf("bounded page %+v, want ids %v", page, ids[3:6])
		}
		// 0 is a bound like any other: none of these ids is below it.
		page, err = s.Members(ctx, 1, -1, 0, 100, nil)
		must(t, err)
		if len(page) != 0 {
			t.Fatalf("members below 0: %+v", page)
		}
		// Unknown channel: no members, no error.
		page, err = s.Members(ctx, 99, 0, audience.NoUpperBound, 10, nil)
		must(t, err)
		if len(page) != 0 {
			t.Fatalf("unknown channel: %+v", page)
		}
	})

	t.Run("Starts", func(t *testing.T) {
		s := twoChannels(t, 10)
		all, err := s.Members(ctx, 1, 0, audience.NoUpperBound, 100, nil)
		must(t, err)
		for _, tc := range []struct {
			every int
			want  []int64
		}{
			{3, []int64{all[0].ID, all[3].ID, all[6].ID, all[9].ID}},
			{5, []int64{all[0].ID, all[5].ID}},
			{10, []int64{all[0].ID}},
			{1000, []int64{all[0].ID}},
		} {
			got, err := s.Starts(ctx, 1, tc.every)
			must(t, err)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("starts every %d: %v, want %v", tc.every, got, tc.want)
			}
		}
		got, err := s.Starts(ctx, 99, 3)
		must(t, err)
		if len(got) != 0 {
			t.Fatalf("empty channel: %v", got)
		}
	})
}

// PresenceFixture is a Presence the contract can set users online on.
type PresenceFixture interface {
	audience.Presence
	SetOnline(ctx context.Context, address string, usernames ...string) error
	SetOffline(ctx context.Context, usernames ...string) error
}

// PresenceCaps says what a source can tell.
type PresenceCaps struct {
	NamesServer bool // Lookup returns the server address (else NoAddress)
	CanScan     bool // Scan lists online users (else ErrScanUnsupported)
}

// PresenceContract checks what the audience use case relies on. prefix makes
// usernames and addresses unique to this run when the store is shared.
func PresenceContract(t *testing.T, p PresenceFixture, caps PresenceCaps, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	addrA, addrB := prefix+"10.0.0.1", prefix+"10.0.0.2"
	users := Names(prefix+"u", 2500) // more than one lookup chunk
	t.Cleanup(func() { _ = p.SetOffline(context.Background(), users...) })

	var onA, onB []string
	for i, u := range users {
		switch i % 3 {
		case 0:
			onA = append(onA, u)
		case 1:
			onB = append(onB, u)
		}
	}
	if err := p.SetOnline(ctx, addrA, onA...); err != nil {
		t.Fatal(err)
	}
	if err := p.SetOnline(ctx, addrB, onB...); err != nil {
		t.Fatal(err)
	}

	t.Run("Lookup", func(t *testing.T) {
		where := make([]string, len(users))
		for i := range where {
			where[i] = "garbage" // Lookup must overwrite every slot
		}
		if err := p.Lookup(ctx, users, where); err != nil {
			t.Fatal(err)
		}
		for i, u := range users {
			want := ""
			switch i % 3 {
			case 0:
				want = addrA
			case 1:
				want = addrB
			}
			if want != "" && !caps.NamesServer {
				want = audience.NoAddress
			}
			if where[i] != want {
				t.Fatalf("%s: %q, want %q", u, where[i], want)
			}
		}
		if err := p.Lookup(ctx, nil, nil); err != nil {
			t.Fatalf("empty lookup: %v", err)
		}
	})

	t.Run("Scan", func(t *testing.T) {
		if !caps.CanScan {
			if _, _, err := p.Scan(ctx, addrA, 0, 100); !errors.Is(err, audience.ErrScanUnsupported) {
				t.Fatalf("Scan: %v, want ErrScanUnsupported", err)
			}
			return
		}
		var got []string
		cursor := uint64(0)
		for range 10000 {
			names, next, err := p.Scan(ctx, addrA, cursor, 100)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, names...)
			if next == 0 {
				break
			}
			cursor = next
		}
		slices.Sort(got)
		got = slices.Compact(got) // SSCAN may repeat an element
		want := slices.Sorted(slices.Values(onA))
		if !slices.Equal(got, want) {
			t.Fatalf("scan %s: %d users, want %d", addrA, len(got), len(want))
		}
		names, next, err := p.Scan(ctx, prefix+"10.9.9.9", 0, 100)
		if err != nil || len(names) != 0 || next != 0 {
			t.Fatalf("empty server: %v %d %v", names, next, err)
		}
	})

	t.Run("SetOffline", func(t *testing.T) {
		if err := p.SetOffline(ctx, onA[0]); err != nil {
			t.Fatal(err)
		}
		where := make([]string, 1)
		if err := p.Lookup(ctx, onA[:1], where); err != nil {
			t.Fatal(err)
		}
		if where[0] != "" {
			t.Fatalf("offline user at %q", where[0])
		}
	})
}
