// Package channeldb holds the channel database's schema (the first generation's tables with the
// index keyset pages need): one file, applied by the local stack, by docker compose, and by
// tests and benchmarks that create private databases.
package channeldb

import (
	"context"
	"database/sql"
	_ "embed"
	"fmt"
	"strings"
)

// Schema is schema.sql: idempotent CREATE TABLE IF NOT EXISTS statements.
//
//go:embed schema.sql
var Schema string

// Create applies Schema to db's database, one statement at a time (no multi-statement DSN needed).
func Create(ctx context.Context, db *sql.DB) error {
	for _, stmt := range strings.Split(Schema, ";") {
		if !hasSQL(stmt) {
			continue
		}
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("channeldb: schema: %w", err)
		}
	}
	return nil
}

// hasSQL reports whether stmt holds more than blank lines and -- comments.
func hasSQL(stmt string) bool {
	for _, line := range strings.Split(stmt, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "--") {
			return true
		}
	}
	return false
}
