// Package mysqlstore reads channels and channel members from the first
// generation's MySQL/MariaDB schema (ws_channel_data, ws_channel_members).
//
// Members are read in keyset pages on an index led by (member_channelid,
// member_id): each page is one index range read, however deep into the
// channel it is. The first generation paged without ORDER BY by offset, and
// MariaDB rescanned the channel for every page.
//
// The pages name their index (FORCE INDEX): left to itself, MariaDB 10.11
// reads a deep page of a big channel either from the start of the channel's
// index entries (a "ref" on member_channelid alone, so the pages add up to a
// quadratic walk: 7.5 s of server CPU for a 950k-member channel) or by primary
// key through every other channel's rows. The index is found in
// information_schema at the first page, preferring one that also holds
// member_username, so a page never reads the table rows.
package mysqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Store is the MySQL MemberStore.
type Store struct {
	db  *sql.DB
	log zerolog.Logger

	mu      sync.Mutex
	queries *memberQueries // nil until the index is known
	index   string
	state   IndexState
}

// IndexState says what the member pages read, for a gauge.
type IndexState int

const (
	IndexUnknown  IndexState = -1 // not looked up yet (no channel page read so far)
	IndexNone     IndexState = 0  // no index led by (member_channelid, member_id): pages may scan
	IndexRows     IndexState = 1  // such an index, then each member's row
	IndexCovering IndexState = 2  // such an index holding member_username: the index alone
)

// memberQueries are the keyset page queries, with their index hint.
type memberQueries struct {
	open, bounded string
	first, next   string // shard starts
}

var _ audience.MemberStore = (*Store)(nil)

// DSN builds the driver config from [mysql]. interpolateParams saves the
// prepare round trip per query (all parameters are integers or escaped by the driver).
func DSN(c config.MySQL) *mysql.Config {
	mc := mysql.NewConfig()
	mc.User = c.Username
	mc.Passwd = c.Password.Value()
	mc.Net = "tcp"
	mc.Addr = c.Address
	mc.DBName = c.DB
	mc.InterpolateParams = true
	mc.Timeout = 5 * time.Second
	mc.ReadTimeout = 30 * time.Second
	mc.WriteTimeout = 30 * time.Second
	return mc
}

// Open connects lazily (a database that is down at start-up is retried by the
// use case, not fatal) with the pool sizes of [mysql].
func Open(c config.MySQL, log zerolog.Logger) (*Store, error) {
	conn, err := mysql.NewConnector(DSN(c))
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(max(c.MaxOpenConn, 1))
	db.SetMaxIdleConns(max(c.MaxIdleConn, 1))
	db.SetConnMaxIdleTime(5 * time.Minute)
	return New(db, log), nil
}

// New wraps an open pool (tests, tools).
func New(db *sql.DB, log zerolog.Logger) *Store {
	return &Store{db: db, log: log, state: IndexUnknown}
}

// IndexState is what the member pages read (IndexUnknown before the first page).
func (s *Store) IndexState() IndexState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// DB is the pool.
func (s *Store) DB() *sql.DB { return s.db }

// Close closes the pool.
func (s *Store) Close() error { return s.db.Close() }

// Ping is the readiness check.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Channel implements audience.MemberStore.
func (s *Store) Channel(ctx context.Context, ref announcement.ChannelRef) (audience.Channel, error) {
	// The state is compared by the server, under the column's collation, as
	// the first generation's WHERE channel_state = 'ACCEPTED' was: 'accepted'
	// and 'ACCEPTED ' pass under the usual _ci ones.
	var row *sql.Row
	if ref.IsString {
		row = s.db.QueryRowContext(ctx, channelQuery+"channel_channelid = ?", audience.StateAccepted, ref.StringID)
	} else {
		row = s.db.QueryRowContext(ctx, channelQuery+"channel_id = ?", audience.StateAccepted, ref.ID)
	}
	var c audience.Channel
	var (
		state    sql.NullString // NULL in a schema that allows it: not ACCEPTED
		accepted sql.NullBool   // NULL = 'ACCEPTED' is NULL
	)
	err := row.Scan(&c.ID, &state, &accepted)
	if errors.Is(err, sql.ErrNoRows) {
		return audience.Channel{}, audience.ErrChannelNotFound
	}
	if err != nil {
		return audience.Channel{}, fmt.Errorf("mysql: channel %s: %w", ref, classify(err))
	}
	c.State, c.Accepted = state.String, accepted.Bool
	return c, nil
}

const (
	channelQuery  = "SELECT channel_id, channel_state, channel_state = ? FROM ws_channel_data WHERE "
	membersSelect = "SELECT member_id, member_username FROM ws_channel_members"
	membersWhere  = " WHERE member_channelid = ? AND member_id > ?"
	membersOrder  = " ORDER BY member_id LIMIT ?"
	// Every index of the table, its columns in order.
	indexQuery = "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS" +
		" WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ws_channel_members'" +
		" ORDER BY INDEX_NAME, SEQ_IN_INDEX"
	// A shard's start: the channel's first member, then the one every-1
	// further on past the last start, read from the member index alone.
	startsSelect = "SELECT member_id FROM ws_channel_members"
	firstStart   = " WHERE member_channelid = ? ORDER BY member_id LIMIT 1"
	nextStart    = " WHERE member_channelid = ? AND member_id > ? ORDER BY member_id LIMIT 1 OFFSET ?"
)

// Members implements audience.MemberStore.
func (s *Store) Members(ctx context.Context, channelID, afterID, beforeID int64, limit int, dst []audience.Member) ([]audience.Member, error) {
	dst = dst[:0]
	var (
		rows *sql.Rows
		err  error
	)
	q, err := s.memberQueries(ctx)
	if err != nil {
		return dst, err
	}
	if beforeID != audience.NoUpperBound {
		rows, err = s.db.QueryContext(ctx, q.bounded, channelID, afterID, beforeID, limit)
	} else {
		rows, err = s.db.QueryContext(ctx, q.open, channelID, afterID, limit)
	}
	if err != nil {
		s.checkIndex(err)
		return dst, fmt.Errorf("mysql: members of %d after %d: %w", channelID, afterID, classify(err))
	}
	defer rows.Close()
	// The id is taken as the driver's value (an int64 from go-sql-driver ≥ 1.8,
	// text before) and the name as RawBytes: database/sql's reflective
	// conversion, and formatting every id only to parse it back, cost a tenth
	// of a page's read time (BenchmarkMembersPage).
	var (
		id   any
		name sql.RawBytes
	)
	for rows.Next() {
		if err := rows.Scan(&id, &name); err != nil {
			return dst[:0], fmt.Errorf("mysql: members of %d: %w", channelID, classify(err))
		}
		mid, err := memberID(id)
		if err != nil {
			return dst[:0], fmt.Errorf("mysql: members of %d: %w", channelID, err)
		}
		// A NULL username (a schema that allows it) is kept as "": the page
		// keeps its length and last id for the keyset, and the empty name is
		// skipped and counted downstream.
		dst = append(dst, audience.Member{ID: mid, Username: string(name)})
	}
	if err := rows.Err(); err != nil {
		// A page cut short by a broken connection must not look like the end of the channel.
		return dst[:0], fmt.Errorf("mysql: members of %d after %d: %w", channelID, afterID, err)
	}
	return dst, nil
}

// MemberIndex is the index the member pages read (found at the first page,
// or now): "" when the table has none led by (member_channelid, member_id).
func (s *Store) MemberIndex(ctx context.Context) (string, error) {
	if _, err := s.memberQueries(ctx); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index, nil
}

// checkIndex forgets the index a query named when the server says it is
// gone (dropped, renamed): the next query looks it up again.
func (s *Store) checkIndex(err error) {
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1176 {
		s.forgetIndex()
	}
}

// forgetIndex makes the next page look the member index up again.
func (s *Store) forgetIndex() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries = nil
}

// memberQueries finds the member index once (again after it was dropped); a failed look-up is retried at
// the next page like any other query.
func (s *Store) memberQueries(ctx context.Context) (*memberQueries, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queries != nil {
		return s.queries, nil
	}
	rows, err := s.db.QueryContext(ctx, indexQuery)
	if err != nil {
		return nil, fmt.Errorf("mysql: indexes of ws_channel_members: %w", classify(err))
	}
	defer rows.Close()
	columns := map[string][]string{}
	var names []string
	for rows.Next() {
		var name, column string
		if err := rows.Scan(&name, &column); err != nil {
			return nil, fmt.Errorf("mysql: indexes of ws_channel_members: %w", err)
		}
		if _, seen := columns[name]; !seen {
			names = append(names, name)
		}
		columns[name] = append(columns[name], strings.ToLower(column))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("mysql: indexes of ws_channel_members: %w", err)
	}
	index, covering := pickIndex(names, columns)
	hint := ""
	if index != "" {
		// Identifiers cannot be parameters: the name is quoted, its backquotes doubled.
		hint = " FORCE INDEX (`" + strings.ReplaceAll(index, "`", "``") + "`)"
	}
	s.index, s.state = index, indexState(index, covering)
	switch s.state {
	case IndexNone:
		s.log.Warn().Msg("ws_channel_members has no index led by (member_channelid, member_id): member pages" +
			" may scan the channel; add one: ALTER TABLE ws_channel_members ADD INDEX" +
			" idx_channel_member (member_channelid, member_id, member_username)")
	case IndexCovering:
		s.log.Info().Str("index", index).Msg("member pages read this index alone")
	default:
		s.log.Warn().Str("index", index).Msg("member pages read this index, then each member's row;" +
			" with member_username as its third column they would read the index alone")
	}
	s.queries = &memberQueries{
		open:    membersSelect + hint + membersWhere + membersOrder,
		bounded: membersSelect + hint + membersWhere + " AND member_id < ?" + membersOrder,
		first:   startsSelect + hint + firstStart,
		next:    startsSelect + hint + nextStart,
	}
	return s.queries, nil
}

// pickIndex returns the first index led by (member_channelid, member_id),
// preferring one whose next column is member_username (it covers the page).
func pickIndex(names []string, columns map[string][]string) (index string, covering bool) {
	for _, n := range names {
		c := columns[n]
		if len(c) < 2 || c[0] != "member_channelid" || c[1] != "member_id" {
			continue
		}
		if len(c) > 2 && c[2] == "member_username" {
			return n, true
		}
		if index == "" {
			index = n
		}
	}
	return index, false
}

func indexState(index string, covering bool) IndexState {
	switch {
	case covering:
		return IndexCovering
	case index != "":
		return IndexRows
	}
	return IndexNone
}

// memberID reads a member_id as the driver gave it: BIGINT UNSIGNED comes
// as uint64 over the text protocol (InterpolateParams).
func memberID(v any) (int64, error) {
	switch id := v.(type) {
	case int64:
		return id, nil
	case uint64:
		if id > math.MaxInt64 {
			return 0, beyondBigint(strconv.FormatUint(id, 10))
		}
		return int64(id), nil
	case []byte:
		n, err := strconv.ParseInt(string(id), 10, 64)
		if errors.Is(err, strconv.ErrRange) {
			return 0, beyondBigint(string(id))
		}
		if err != nil {
			return 0, fmt.Errorf("member_id %q: %w", id, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("%w: member_id: unexpected %T", audience.ErrPermanent, v)
}

// beyondBigint is a member_id fanout cannot page by. The row will not
// change by itself: the announcement is dead-lettered with this reason.
func beyondBigint(id string) error {
	return fmt.Errorf("%w: member_id %s is above %d, the largest id fanout can read (signed BIGINT)",
		audience.ErrPermanent, id, int64(math.MaxInt64))
}

// Starts implements audience.MemberStore: one index look-up a shard, each
// skipping every-1 index entries (about 10 ms per 100,000 on MariaDB).
func (s *Store) Starts(ctx context.Context, channelID int64, every int) ([]int64, error) {
	q, err := s.memberQueries(ctx)
	if err != nil {
		return nil, err
	}
	var starts []int64
	for {
		var id any
		if len(starts) == 0 {
			err = s.db.QueryRowContext(ctx, q.first, channelID).Scan(&id)
		} else {
			err = s.db.QueryRowContext(ctx, q.next, channelID, starts[len(starts)-1], max(every, 1)-1).Scan(&id)
		}
		if errors.Is(err, sql.ErrNoRows) {
			return starts, nil
		}
		var next int64
		if err == nil {
			next, err = memberID(id)
		}
		if err != nil {
			s.checkIndex(err)
			return nil, fmt.Errorf("mysql: shard starts of channel %d: %w", channelID, classify(err))
		}
		starts = append(starts, next)
	}
}

// classify marks the server's answers that no retry can change: the schema
// lacks what the queries read, or the account may not read it.
func classify(err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1054, // unknown column
			1146, // no such table
			1064, // syntax (a server that is not MariaDB/MySQL-compatible enough)
			1142, // command denied
			1143: // column access denied
			return fmt.Errorf("%w: %w", audience.ErrPermanent, err)
		}
	}
	return err
}
