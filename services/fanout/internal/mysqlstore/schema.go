package mysqlstore

import (
	"context"
	"database/sql"
	"fmt"
)

// Schema is the first generation's member schema, as in scripts/stack/schema.sql
// (a copy, so tests and the benchmark can create private databases).
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS ws_channel_data (
  channel_id        BIGINT       NOT NULL,
  channel_channelid VARCHAR(191) NOT NULL,
  channel_state     VARCHAR(32)  NOT NULL,
  PRIMARY KEY (channel_id),
  UNIQUE KEY uq_channel_channelid (channel_channelid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
	`CREATE TABLE IF NOT EXISTS ws_channel_members (
  member_id        BIGINT       NOT NULL AUTO_INCREMENT,
  member_channelid BIGINT       NOT NULL,
  member_username  VARCHAR(191) NOT NULL,
  PRIMARY KEY (member_id),
  KEY idx_channel_member (member_channelid, member_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
}

// CreateSchema creates the tables in the pool's database.
func CreateSchema(ctx context.Context, db *sql.DB) error {
	for _, q := range Schema {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("mysql: schema: %w", err)
		}
	}
	return nil
}
