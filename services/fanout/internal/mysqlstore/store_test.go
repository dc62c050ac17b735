package mysqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/audience/audiencetest"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore/mysqltest"
)

type fixture struct {
	*mysqlstore.Store
	mysqltest.Seed
}

func newFixture(t *testing.T) audiencetest.MemberFixture {
	cfg := mysqltest.New(t, stacktest.Get(t))
	st, err := mysqlstore.Open(cfg, testkit.Log(t, zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return fixture{st, mysqltest.Seed{DB: st.DB()}}
}

// The same contract the in-memory fake passes, against real MariaDB.
func TestMemberStoreContract(t *testing.T) {
	audiencetest.MemberStoreContract(t, newFixture)
}

func TestPingAndUnreachableServer(t *testing.T) {
	f := newFixture(t).(fixture)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := mysqltest.New(t, stacktest.Get(t))
	cfg.Address = "127.0.0.1:1" // nothing listens there
	down, err := mysqlstore.Open(cfg, testkit.Log(t, zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err) // opening is lazy: a database that is down is not fatal
	}
	defer down.Close()
	if _, err := down.Members(ctx, 1, 0, audience.NoUpperBound, 10, nil); err == nil {
		t.Fatal("no error from an unreachable server")
	}
	if _, err := down.Channel(ctx, audienceRef(1)); err == nil || errors.Is(err, audience.ErrChannelNotFound) {
		t.Fatalf("unreachable server reported as %v", err)
	}
}

// The keyset page must be served by idx_channel_member as a range read, not a
// scan of the channel: that was the first generation's 248 s.
func TestMembersQueryUsesTheIndexRange(t *testing.T) {
	f := newFixture(t).(fixture)
	ctx := context.Background()
	// Many channels, so that reading by primary key would be the wrong plan.
	for ch := int64(1); ch <= 20; ch++ {
		if err := f.AddMembers(ctx, ch, audiencetest.Names("u", 200)...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Store.DB().ExecContext(ctx, "ANALYZE TABLE ws_channel_members"); err != nil {
		t.Fatal(err)
	}
	rows, err := f.Store.DB().QueryContext(ctx, "EXPLAIN SELECT member_id, member_username FROM ws_channel_members"+
		" WHERE member_channelid = 3 AND member_id > 5 ORDER BY member_id LIMIT 100")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	defer rows.Close()
	cols, _ := rows.Columns()
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := map[string]string{}
		for i, c := range cols {
			if b, ok := vals[i].([]byte); ok {
				row[c] = string(b)
			}
		}
		seen++
		if row["key"] != "idx_channel_member" || row["type"] != "range" {
			t.Fatalf("plan: key %q type %q, want a range of idx_channel_member: %v", row["key"], row["type"], row)
		}
	}
	if err := rows.Err(); err != nil || seen != 1 {
		t.Fatalf("EXPLAIN gave %d rows, err %v", seen, err)
	}
}

func audienceRef(id int64) announcement.ChannelRef { return announcement.ChannelRef{ID: id} }

// A production schema may allow NULL where ours does not: a NULL username is
// read as "" (skipped and counted downstream, the keyset page intact), a NULL
// state as a channel that is not ACCEPTED. A schema without a column the
// store reads is a permanent failure, not one to retry forever.
func TestNullsAndMissingColumns(t *testing.T) {
	f := newFixture(t).(fixture)
	ctx := context.Background()
	execAll(t, f.Store.DB(),
		"ALTER TABLE ws_channel_members MODIFY member_username VARCHAR(191) NULL",
		"ALTER TABLE ws_channel_data MODIFY channel_state VARCHAR(32) NULL",
		"INSERT INTO ws_channel_data (channel_id, channel_channelid, channel_state) VALUES (1, 'one', 'ACCEPTED'), (2, 'two', NULL)",
		"INSERT INTO ws_channel_members (member_id, member_channelid, member_username) VALUES (1, 1, 'a'), (2, 1, NULL), (3, 1, 'c')",
	)
	page, err := f.Members(ctx, 1, 0, audience.NoUpperBound, 10, nil)
	if err != nil || len(page) != 3 || page[1].ID != 2 || page[1].Username != "" || page[2].Username != "c" {
		t.Fatalf("members %+v, err %v; want the NULL row as an empty name, in its place", page, err)
	}
	ch, err := f.Channel(ctx, announcement.ChannelRef{ID: 2})
	if err != nil || ch.Accepted {
		t.Fatalf("channel with a NULL state: %+v %v", ch, err)
	}
	if _, err := f.Store.DB().ExecContext(ctx, "ALTER TABLE ws_channel_members DROP COLUMN member_username"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Members(ctx, 1, 0, audience.NoUpperBound, 10, nil); !errors.Is(err, audience.ErrPermanent) {
		t.Fatalf("a missing column: %v, want ErrPermanent", err)
	}
}

// A schema whose member_id is BIGINT UNSIGNED (the driver hands those out as
// uint64) reads like the signed one.
func TestUnsignedMemberIDs(t *testing.T) {
	f := newFixture(t).(fixture)
	ctx := context.Background()
	execAll(t, f.Store.DB(),
		"ALTER TABLE ws_channel_members MODIFY member_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT",
		"INSERT INTO ws_channel_data (channel_id, channel_channelid, channel_state) VALUES (1, 'one', 'ACCEPTED')",
		"INSERT INTO ws_channel_members (member_id, member_channelid, member_username) VALUES (5, 1, 'a'), (9, 1, 'b')",
	)
	page, err := f.Members(ctx, 1, 0, audience.NoUpperBound, 10, nil)
	if err != nil || len(page) != 2 || page[0].ID != 5 || page[1].ID != 9 || page[1].Username != "b" {
		t.Fatalf("members %+v, err %v; want ids 5 and 9", page, err)
	}
}

// An unsigned id beyond int64 cannot be paged by: cutting its channel into
// shards fails for good, with the id in the reason (the announcement is
// dead-lettered), instead of being retried with its partition stalled.
func TestUnsignedMemberIDsBeyondBigint(t *testing.T) {
	f := newFixture(t).(fixture)
	ctx := context.Background()
	execAll(t, f.Store.DB(),
		"ALTER TABLE ws_channel_members MODIFY member_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT",
		"INSERT INTO ws_channel_members (member_id, member_channelid, member_username) VALUES"+
			" (5, 1, 'a'), (9223372036854775808, 1, 'b'),"+ // the largest id beyond
			" (18446744073709551614, 2, 'c'), (18446744073709551615, 2, 'd'),"+ // both ends beyond
			" (7, 3, 'e')",
	)
	for ch, id := range map[int64]string{1: "9223372036854775808", 2: "18446744073709551614"} {
		_, err := f.Starts(ctx, ch, 1)
		if !errors.Is(err, audience.ErrPermanent) || !strings.Contains(err.Error(), "member_id "+id) {
			t.Errorf("shard starts of channel %d: %v, want a permanent failure naming member_id %s", ch, err, id)
		}
	}
	if starts, err := f.Starts(ctx, 3, 1); err != nil || !slices.Equal(starts, []int64{7}) {
		t.Fatalf("shard starts of a channel within range: %v, %v", starts, err)
	}
}

// The index the pages name is dropped under a running fanout (the log's
// advice is to add a covering one, then drop the old): the next page looks
// the index up again instead of failing for good.
func TestDroppedMemberIndexIsLookedUpAgain(t *testing.T) {
	f := newFixture(t).(fixture)
	ctx := context.Background()
	execAll(t, f.Store.DB(),
		"INSERT INTO ws_channel_data (channel_id, channel_channelid, channel_state) VALUES (1, 'one', 'ACCEPTED')",
		"INSERT INTO ws_channel_members (member_id, member_channelid, member_username) VALUES (5, 1, 'a'), (9, 1, 'b')",
		"ALTER TABLE ws_channel_members ADD INDEX newer (member_channelid, member_id, member_username)",
	)
	before, err := f.MemberIndex(ctx)
	if err != nil || before == "" {
		t.Fatalf("index %q, %v", before, err)
	}
	if _, err := f.Store.DB().ExecContext(ctx, "ALTER TABLE ws_channel_members DROP INDEX `"+before+"`"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "a page through the remaining index", func() bool {
		page, err := f.Members(ctx, 1, 0, audience.NoUpperBound, 10, nil)
		return err == nil && len(page) == 2
	})
	if after, _ := f.MemberIndex(ctx); after == before || after == "" {
		t.Fatalf("index %q after dropping %q", after, before)
	}
}

// execAll runs the statements in order, failing t at the first error.
func execAll(t *testing.T, db *sql.DB, statements ...string) {
	t.Helper()
	for _, q := range statements {
		if _, err := db.ExecContext(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// handlerReads is what the session's handler counters say a query read: index
// entries and rows, including the ones index condition pushdown skipped.
func handlerReads(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	rows, err := db.Query("SHOW SESSION STATUS WHERE Variable_name IN" +
		" ('Handler_read_key', 'Handler_read_next', 'Handler_icp_attempts', 'Handler_read_rnd_next')")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var total int64
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			t.Fatal(err)
		}
		if name != "Handler_read_rnd_next" { // SHOW STATUS's own temporary table
			total += v
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// Members of big channels interleaved by id, as joins over time leave them:
// every page, however deep, reads about one index entry per member it
// returns. Left to choose, MariaDB reads a deep page from the start of the
// channel's entries, or by primary key through the other channels' rows.
func TestMemberPagesReadOnlyTheirRange(t *testing.T) {
	cfg := mysqltest.New(t, stacktest.Get(t))
	dsn := mysqlstore.DSN(cfg)
	db, err := sql.Open("mysql", dsn.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1) // one session, so its counters are the store's queries'
	ctx := context.Background()
	const channels, perChannel, page = 3, 4000, 200
	for off := 0; off < perChannel; off += 500 {
		q := "INSERT INTO ws_channel_members (member_channelid, member_username) VALUES "
		var args []any
		for i := off; i < off+500; i++ {
			for ch := 1; ch <= channels; ch++ {
				if len(args) > 0 {
					q += ","
				}
				q += "(?,?)"
				args = append(args, ch, fmt.Sprintf("c%d-%d", ch, i))
			}
		}
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, "ANALYZE TABLE ws_channel_members"); err != nil {
		t.Fatal(err)
	}
	st := mysqlstore.New(db, testkit.Log(t, zerolog.WarnLevel))
	if got := st.IndexState(); got != mysqlstore.IndexUnknown {
		t.Fatalf("index state %d before the first page, want %d", got, mysqlstore.IndexUnknown)
	}
	if idx, err := st.MemberIndex(ctx); err != nil || idx != "idx_channel_member" || st.IndexState() != mysqlstore.IndexCovering {
		t.Fatalf("member index %q (state %d), %v", idx, st.IndexState(), err)
	}
	pagesReadTheirRange(t, db, st, perChannel, page)

	// An older schema's two-column index is named too: each member's row is
	// read after its index entry, never another member's.
	if _, err := db.ExecContext(ctx, "ALTER TABLE ws_channel_members DROP INDEX idx_channel_member,"+
		" ADD INDEX by_channel (member_channelid, member_id)"); err != nil {
		t.Fatal(err)
	}
	older := mysqlstore.New(db, testkit.Log(t, zerolog.ErrorLevel))
	if idx, err := older.MemberIndex(ctx); err != nil || idx != "by_channel" || older.IndexState() != mysqlstore.IndexRows {
		t.Fatalf("member index %q (state %d), %v", idx, older.IndexState(), err)
	}
	pagesReadTheirRange(t, db, older, perChannel, page)

	if _, err := db.ExecContext(ctx, "ALTER TABLE ws_channel_members DROP INDEX by_channel"); err != nil {
		t.Fatal(err)
	}
	none := mysqlstore.New(db, testkit.Log(t, zerolog.ErrorLevel))
	if idx, err := none.MemberIndex(ctx); err != nil || idx != "" || none.IndexState() != mysqlstore.IndexNone {
		t.Fatalf("member index %q (state %d), %v", idx, none.IndexState(), err)
	}
	if got, err := none.Members(ctx, 2, 0, audience.NoUpperBound, page, nil); err != nil || len(got) != page {
		t.Fatalf("without an index: %d members, %v", len(got), err)
	}
}

// pagesReadTheirRange pages through channel 2, unbounded and bounded, and
// fails when a page reads much more than its own members.
func pagesReadTheirRange(t *testing.T, db *sql.DB, st *mysqlstore.Store, perChannel, page int) {
	t.Helper()
	ctx := context.Background()
	var lo, hi int64
	if err := db.QueryRowContext(ctx, "SELECT MIN(member_id), MAX(member_id) FROM ws_channel_members WHERE member_channelid = 2").Scan(&lo, &hi); err != nil {
		t.Fatal(err)
	}
	// The shard starts read the channel's index entries once, not the table.
	n0 := handlerReads(t, db)
	starts, err := st.Starts(ctx, 2, page)
	if err != nil {
		t.Fatal(err)
	}
	if reads := handlerReads(t, db) - n0; len(starts) != (perChannel+page-1)/page || reads > int64(perChannel+2*len(starts)+8) {
		t.Fatalf("%d shard starts of %d members in shards of %d, reading %d index entries and rows", len(starts), perChannel, page, reads)
	}
	for _, bounded := range []bool{false, true} {
		before := audience.NoUpperBound
		if bounded {
			before = hi + 1
		}
		after, got, worst := lo-1, 0, int64(0)
		for {
			n0 := handlerReads(t, db)
			members, err := st.Members(ctx, 2, after, before, page, nil)
			if err != nil {
				t.Fatal(err)
			}
			worst = max(worst, handlerReads(t, db)-n0)
			got += len(members)
			if len(members) < page {
				break
			}
			after = members[len(members)-1].ID
		}
		t.Logf("bounded %v: %d members, worst page read %d", bounded, got, worst)
		if got != perChannel {
			t.Fatalf("bounded %v: %d members, want %d", bounded, got, perChannel)
		}
		if worst > int64(2*page+8) {
			t.Fatalf("bounded %v: a page of %d read %d index entries and rows", bounded, page, worst)
		}
	}
}

// BenchmarkMembersPage reads one keyset page of 5,000 members from the real
// MariaDB: the fanout's largest CPU share on a giant channel is this read.
func BenchmarkMembersPage(b *testing.B) {
	cfg := mysqltest.New(b, stacktest.Get(b))
	st, err := mysqlstore.Open(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	const page = 5000
	if err := (mysqltest.Seed{DB: st.DB()}).AddMembers(ctx, 1, audiencetest.Names("bench-user-", page)...); err != nil {
		b.Fatal(err)
	}
	buf := make([]audience.Member, 0, page)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got, err := st.Members(ctx, 1, 0, audience.NoUpperBound, page, buf)
		if err != nil || len(got) != page {
			b.Fatalf("%d members, %v", len(got), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*page), "ns/member")
}
