// Package mysqltest creates private databases with the member schema for
// integration tests and the benchmark, and removes them afterwards.
package mysqltest

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/channeldb"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore"
)

var safeName = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// Create makes database name (with the schema) on the server of dsn and returns
// its [mysql] section and a function that drops it.
func Create(ctx context.Context, dsn, name string) (config.MySQL, func() error, error) {
	if !safeName.MatchString(name) {
		return config.MySQL{}, nil, fmt.Errorf("database name %q: want [A-Za-z0-9_]", name)
	}
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return config.MySQL{}, nil, err
	}
	admin, err := sql.Open("mysql", mc.FormatDSN())
	if err != nil {
		return config.MySQL{}, nil, err
	}
	defer admin.Close()
	// Identifiers cannot be parameters; name is checked against safeName above.
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE `"+name+"` CHARACTER SET utf8mb4"); err != nil {
		return config.MySQL{}, nil, fmt.Errorf("create database %s: %w", name, err)
	}
	drop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := sql.Open("mysql", mc.FormatDSN())
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`")
		return err
	}
	cfg := config.MySQL{
		Address: mc.Addr, Username: mc.User, Password: config.Secret(mc.Passwd), DB: name,
		PaginationLength: 100, MaxIdleConn: 4, MaxOpenConn: 4,
	}
	st, err := mysqlstore.Open(cfg, zerolog.Nop())
	if err != nil {
		return config.MySQL{}, nil, err
	}
	defer st.Close()
	if err := channeldb.Create(ctx, st.DB()); err != nil {
		_ = drop()
		return config.MySQL{}, nil, err
	}
	return cfg, drop, nil
}

// New creates a database for this test alone and drops it at cleanup.
func New(t testing.TB, env stacktest.Env) config.MySQL {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, drop, err := Create(ctx, env.MySQLDSN, stacktest.Name("fanout"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return cfg
}

// Seed writes channel rows and members.
type Seed struct{ DB *sql.DB }

// AddChannel adds or replaces a channel row.
func (s Seed) AddChannel(ctx context.Context, id int64, strID, state string) error {
	_, err := s.DB.ExecContext(ctx,
		"REPLACE INTO ws_channel_data (channel_id, channel_channelid, channel_state) VALUES (?, ?, ?)", id, strID, state)
	return err
}

// AddMembers appends members in order (AUTO_INCREMENT ids), one multi-row INSERT per 1,000.
func (s Seed) AddMembers(ctx context.Context, channelID int64, usernames ...string) error {
	for len(usernames) > 0 {
		n := min(len(usernames), 1000)
		q := make([]byte, 0, 64+n*16)
		q = append(q, "INSERT INTO ws_channel_members (member_channelid, member_username) VALUES "...)
		args := make([]any, 0, 2*n)
		for i, u := range usernames[:n] {
			if i > 0 {
				q = append(q, ',')
			}
			q = append(q, "(?,?)"...)
			args = append(args, channelID, u)
		}
		if _, err := s.DB.ExecContext(ctx, string(q), args...); err != nil {
			return err
		}
		usernames = usernames[n:]
	}
	return nil
}
