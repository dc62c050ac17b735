-- Schema of the announcer database (names kept from the first generation).
-- Idempotent: applied by scripts/stack/stack.sh at every `up`, by the compose MariaDB on first
-- start, and by tests through the Go package beside it (pkg/channeldb), which embeds this file.

-- One row per channel. channel_channelid is the channel's public string id.
CREATE TABLE IF NOT EXISTS ws_channel_data (
  channel_id        BIGINT       NOT NULL,
  channel_channelid VARCHAR(191) NOT NULL,
  channel_state     VARCHAR(32)  NOT NULL,
  PRIMARY KEY (channel_id),
  UNIQUE KEY uq_channel_channelid (channel_channelid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Members of a channel. member_channelid refers to ws_channel_data.channel_id (a logical reference:
-- no FOREIGN KEY constraint, so member rows can be bulk-loaded in any order).
-- idx_channel_member serves keyset pages, and holds the username so a page never reads the rows:
--   WHERE member_channelid = ? AND member_id > ? ORDER BY member_id LIMIT n
-- (fanout finds an index led by (member_channelid, member_id) under any name and names it in its
-- queries. One without member_username works too, with a row read per member.)
CREATE TABLE IF NOT EXISTS ws_channel_members (
  member_id        BIGINT       NOT NULL AUTO_INCREMENT,
  member_channelid BIGINT       NOT NULL,
  member_username  VARCHAR(191) NOT NULL,
  PRIMARY KEY (member_id),
  KEY idx_channel_member (member_channelid, member_id, member_username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
