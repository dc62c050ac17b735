-- Copy of scripts/stack/demo.sql (deployments/compose_test.go keeps the two equal), run after
-- 01-schema.sql by the mariadb container on an empty data volume.

-- Demo data; idempotent (applied at every `up`).
-- Channel 1 'demo' (ACCEPTED): alice, bob, carol. Channel 2 'pending-demo' (PENDING): alice.

INSERT IGNORE INTO ws_channel_data (channel_id, channel_channelid, channel_state) VALUES
  (1, 'demo', 'ACCEPTED'),
  (2, 'pending-demo', 'PENDING');

INSERT INTO ws_channel_members (member_channelid, member_username)
SELECT d.channel_id, d.username
FROM (SELECT 1 AS channel_id, 'alice' AS username, 1 AS ord
      UNION ALL SELECT 1, 'bob', 2
      UNION ALL SELECT 1, 'carol', 3
      UNION ALL SELECT 2, 'alice', 4) AS d
WHERE NOT EXISTS (SELECT 1 FROM ws_channel_members m
                  WHERE m.member_channelid = d.channel_id AND m.member_username = d.username)
ORDER BY d.ord;
