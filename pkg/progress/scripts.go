package progress

import "github.com/redis/go-redis/v9"

// Each script touches one announcement's record (KEYS[1]) only, so it runs
// atomically on a Redis Cluster too: the record's key carries the id as its
// hash tag. ARGV[1] is always the record's TTL in milliseconds, ARGV[2] the
// time in unix milliseconds.
//
// Counters move per batch (or per fenced chunk of a slow batch), never per
// stanza; each is guarded by a marker field so that a batch handled twice (a
// resend, a redelivery after a crash) counts once.
const prelude = `
local rec = KEYS[1]
local now = ARGV[2]
local function terminal(s)
  return s == 'done' or s == 'cancelled' or s == 'rejected' or s == 'failed'
end
local rank = {accepted = 1, resolving = 2, sending = 3}
local function num(v) return tonumber(v or '0') or 0 end
local function advance(st)
  local cur = redis.call('HGET', rec, 'state')
  if cur and (terminal(cur) or (rank[cur] or 0) >= rank[st]) then return end
  redis.call('HSET', rec, 'state', st)
  redis.call('HSETNX', rec, 't_' .. st, now)
end
-- done once every shard is resolved and every batch fenced or dead-lettered
-- (a dry run: once every shard is counted); failed instead when a shard
-- could not be resolved (its reason in 'failed').
local function complete()
  local h = redis.call('HMGET', rec, 'state', 'shards_total', 'shards_done', 'planned', 'bdone', 'dry_run', 'failed')
  if h[1] and terminal(h[1]) then return end
  local total = num(h[2])
  if total == 0 or num(h[3]) < total then return end
  if h[6] == '1' or num(h[5]) >= num(h[4]) then
    if h[7] then
      redis.call('HSET', rec, 'state', 'failed', 'reason', h[7])
    else
      redis.call('HSET', rec, 'state', 'done')
    end
    redis.call('HSETNX', rec, 't_done', now)
  end
end
-- finish ends the record as st (rejected or failed) with why, unless it ended.
local function finish(st, why)
  local cur = redis.call('HGET', rec, 'state')
  if not (cur and terminal(cur)) then
    redis.call('HSET', rec, 'state', st, 'reason', why)
    redis.call('HSETNX', rec, 't_done', now)
  end
end
-- resolved counts one more shard resolved, noting when the last one was.
local function resolved()
  local done = redis.call('HINCRBY', rec, 'shards_done', 1)
  if done >= num(redis.call('HGET', rec, 'shards_total')) then
    redis.call('HSETNX', rec, 't_resolved', now)
  end
end
-- ensure writes the description pairs ARGV[from..] where absent; 1 when the
-- record is new.
local function ensure(from)
  local created = redis.call('EXISTS', rec) == 0 and 1 or 0
  for i = from, #ARGV, 2 do redis.call('HSETNX', rec, ARGV[i], ARGV[i + 1]) end
  if not redis.call('HGET', rec, 'state') then redis.call('HSET', rec, 'state', 'accepted') end
  redis.call('HSETNX', rec, 't_accepted', now)
  return created
end
local function touch() redis.call('PEXPIRE', rec, ARGV[1]) end
`

// accept: ARGV[3..] describe the announcement. Returns {state, created}.
var scriptAccept = redis.NewScript(prelude + `
local created = ensure(3)
touch()
return {redis.call('HGET', rec, 'state'), created}
`)

// begin: ARGV[3] is the unit fanout starts ("top", or "s:<shard>" for a
// shard task), ARGV[4..] describe the announcement. Returns {state, created,
// 1 when the unit was already finished (a copy of its event)}.
var scriptBegin = redis.NewScript(prelude + `
local unit = ARGV[3]
local created = ensure(4)
advance('resolving')
touch()
local done = 0
if unit == 'top' then
  if redis.call('HGET', rec, 't_resolved') or redis.call('HGET', rec, 'split') then done = 1 end
elseif redis.call('HGET', rec, unit) then
  done = 1
end
return {redis.call('HGET', rec, 'state'), created, done}
`)

// plan: ARGV[3] shards in all, ARGV[4] '1' once they are queued as tasks.
var scriptPlan = redis.NewScript(prelude + `
redis.call('HSETNX', rec, 'shards_total', ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', rec, 'split', '1') end
complete() -- a plan queued while Redis was away may arrive after the rest
touch()
return 1
`)

// split: ARGV[3] a channel's cut into shards (SplitPlan). The first one
// recorded stays; returns it (nil when there is no record to keep it in).
var scriptSplit = redis.NewScript(prelude + `
if redis.call('EXISTS', rec) == 0 then return false end
redis.call('HSETNX', rec, 'cut', ARGV[3])
touch()
return redis.call('HGET', rec, 'cut')
`)

// emitted: ARGV[3] shard, ARGV[4] batches of the shard acknowledged so far
// (a maximum: a re-resolved shard counts only what it adds).
var scriptEmitted = redis.NewScript(prelude + `
local f = 'e:' .. ARGV[3]
local old, n = num(redis.call('HGET', rec, f)), num(ARGV[4])
if n > old then
  redis.call('HSET', rec, f, n)
  redis.call('HINCRBY', rec, 'emitted', n - old)
  advance('sending')
end
touch()
return 1
`)

// shard: ARGV[3] shard, ARGV[4] members, ARGV[5] online, ARGV[6]
// recipients, ARGV[7] batches, ARGV[8..] node, recipients pairs. Counted
// once per shard.
var scriptShard = redis.NewScript(prelude + `
local s = ARGV[3]
if redis.call('HSETNX', rec, 's:' .. s, '1') == 1 then
  redis.call('HINCRBY', rec, 'members', ARGV[4])
  redis.call('HINCRBY', rec, 'online', ARGV[5])
  redis.call('HINCRBY', rec, 'recipients', ARGV[6])
  redis.call('HINCRBY', rec, 'planned', ARGV[7])
  for i = 8, #ARGV, 2 do redis.call('HINCRBY', rec, 'n:' .. ARGV[i], ARGV[i + 1]) end
  -- A dry run's batches are planned, never written: none is emitted.
  if redis.call('HGET', rec, 'dry_run') ~= '1' then
    local f = 'e:' .. s
    local old, n = num(redis.call('HGET', rec, f)), num(ARGV[7])
    if n > old then
      redis.call('HSET', rec, f, n)
      redis.call('HINCRBY', rec, 'emitted', n - old)
    end
  end
  resolved()
  if num(ARGV[6]) > 0 then advance('sending') end
  complete()
end
touch()
return 1
`)

// fenced: ARGV[3] batch key, ARGV[4] position fenced (recipients of the
// batch before it are processed), ARGV[5] batch length, ARGV[6] stanzas
// confirmed in this step, ARGV[7] invalid recipients skipped in it, ARGV[8]
// stanzas written in it, ARGV[9] digest of the batch's recipients, ARGV[10]
// the position the step started from.
// The position field holds "<pos>:<digest>": a step counts only past the
// position already recorded for the same content, and only what it adds
// past it: two replicas sending one batch at once (a rebalance) fence
// overlapping steps, and confirmed must not pass the recipients. Which of
// the overlap's recipients were invalid is not known here; the step's
// confirmed ones are taken first. A leading '!' marks a
// batch key already counted done: a shard resolved again after a crash
// numbers its batches from 0 again, and a copy with other recipients under
// the same key must not end a second batch.
var scriptFenced = redis.NewScript(prelude + `
local f = 'b:' .. ARGV[3]
redis.call('HINCRBY', rec, 'sent', ARGV[8])
local cur = redis.call('HGET', rec, f) or ''
local ended = string.sub(cur, 1, 1) == '!'
local old = 0
local p, d = string.match(cur, '^!?(%d+):(.*)$')
if d == ARGV[9] then old = num(p) end
local pos, len, from = num(ARGV[4]), num(ARGV[5]), num(ARGV[10])
if pos > old then
  local confirmed, invalid = num(ARGV[6]), num(ARGV[7])
  if old > from then
    confirmed = math.min(confirmed, pos - old)
    invalid = math.min(invalid, pos - old - confirmed)
  end
  local mark = ended and '!' or ''
  if pos >= len and old < len and not ended and not redis.call('HGET', rec, 'd:' .. ARGV[3]) then
    redis.call('HINCRBY', rec, 'bdone', 1)
    mark = '!'
  end
  redis.call('HSET', rec, f, mark .. pos .. ':' .. ARGV[9])
  redis.call('HINCRBY', rec, 'confirmed', confirmed)
  if invalid > 0 then redis.call('HINCRBY', rec, 'invalid', invalid) end
end
advance('sending')
complete()
touch()
return 1
`)

// resent: ARGV[3] stanzas written before the connection was lost.
var scriptResent = redis.NewScript(prelude + `
redis.call('HINCRBY', rec, 'resent', 1)
redis.call('HINCRBY', rec, 'sent', ARGV[3])
touch()
return 1
`)

// dead: ARGV[3] batch key, ARGV[4] batch length. What the batch had not
// fenced yet counts as dead-lettered, once.
var scriptDead = redis.NewScript(prelude + `
local k = ARGV[3]
if redis.call('HSETNX', rec, 'd:' .. k, '1') == 1 then
  local cur = redis.call('HGET', rec, 'b:' .. k) or '0'
  local pos = num(string.match(cur, '^!?(%d+)'))
  local len = num(ARGV[4])
  if pos < len then redis.call('HINCRBY', rec, 'dead', len - pos) end
  -- The key ends here unless a copy of it ended first (see fenced): pos may
  -- be another copy's, so it does not say whether this one ended.
  if string.sub(cur, 1, 1) ~= '!' then redis.call('HINCRBY', rec, 'bdone', 1) end
  complete()
end
touch()
return 1
`)

// persisted: ARGV[3] batch key, ARGV[4] stanzas stored; once per batch.
var scriptPersisted = redis.NewScript(prelude + `
if redis.call('HSETNX', rec, 'p:' .. ARGV[3], '1') == 1 then
  redis.call('HINCRBY', rec, 'persisted', ARGV[4])
end
touch()
return 1
`)

// shardFailed: ARGV[3] shard, ARGV[4] reason; once per shard. The shard
// counts as resolved with the batches it emitted before it failed, so the
// other shards go on (and can be cancelled); the record ends failed once
// they are done. Without a plan nothing was emitted: it ends failed now.
var scriptShardFailed = redis.NewScript(prelude + `
local s = ARGV[3]
if not redis.call('HGET', rec, 'shards_total') then
  finish('failed', ARGV[4])
elseif redis.call('HSETNX', rec, 's:' .. s, '1') == 1 then
  redis.call('HSETNX', rec, 'failed', ARGV[4])
  redis.call('HINCRBY', rec, 'planned', num(redis.call('HGET', rec, 'e:' .. s)))
  resolved()
  complete()
end
touch()
return 1
`)

// finish: ARGV[3] state (rejected or failed), ARGV[4] reason. A terminal
// state stays.
var scriptFinish = redis.NewScript(prelude + `
finish(ARGV[3], ARGV[4])
touch()
return 1
`)

// cancel: ARGV[3] reason. Returns false for no record, else the state after
// the call (cancelled, or the terminal state it already had).
var scriptCancel = redis.NewScript(prelude + `
if redis.call('EXISTS', rec) == 0 then return false end
local cur = redis.call('HGET', rec, 'state')
if cur and terminal(cur) then return cur end
redis.call('HSET', rec, 'state', 'cancelled', 'reason', ARGV[3])
redis.call('HSETNX', rec, 't_cancelled', now)
touch()
return 'cancelled'
`)

// claim (an idempotency key, KEYS[1]): ARGV[1] the claim, ARGV[2] the
// window in ms. Returns the existing claim, or false after storing ARGV[1].
var scriptClaim = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
`)

// summary (KEYS[1] a record) returns its fields as pairs, without the
// per-batch and per-shard markers (b:, d:, p:, e:, s:): a large
// announcement holds one or more per batch, tens of thousands, and a status
// read needs none of them.
var scriptSummary = redis.NewScript(`
local h = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #h, 2 do
  if not string.find(h[i], '^[bdpes]:') then
    out[#out + 1] = h[i]
    out[#out + 1] = h[i + 1]
  end
end
return out
`)
