package channeldb_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/announcer/announcer/pkg/channeldb"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// The schema applies to a fresh database, twice (idempotent), and gives keyset pages their index.
func TestCreate(t *testing.T) {
	env := stacktest.Get(t)
	ctx := context.Background()
	root, err := sql.Open("mysql", env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	name := stacktest.Name("channeldb")
	if _, err := root.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = root.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name) }()
	cfg, err := mysql.ParseDSN(env.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DBName, cfg.MultiStatements = name, false
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 2 {
		if err := channeldb.Create(ctx, db); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.statistics
		WHERE table_schema = ? AND table_name = 'ws_channel_members' AND index_name = 'idx_channel_member'`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 { // (member_channelid, member_id, member_username): a member page reads the index alone
		t.Fatalf("idx_channel_member has %d columns, want 3", n)
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ws_channel_data`).Scan(&n); err != nil {
		t.Fatalf("ws_channel_data: %v", err)
	}
}
