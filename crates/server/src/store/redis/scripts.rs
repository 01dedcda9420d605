//! The Lua scripts: every change to Redis is one of these, so each is
//! atomic and publishes its own diff, numbered, from inside the script —
//! the order of messages on a channel is the order of changes in Redis.
//!
//! Times come from Redis's clock (`TIME`); node clocks are never compared.
//!
//! Every script touches the keys of one slot only, so each runs whole on
//! one shard of a Redis Cluster: a channel's scripts (`apply`, `snapshot`,
//! `reap`) its `{tag}` keys and pub/sub channel, the lease scripts
//! (`heartbeat`, `claim`) the lease keys, `register` and `reap_begin` one
//! node's keys. On a Redis Cluster the scripts publish with `SPUBLISH`
//! (sharded pub/sub: a diff goes to its channel's shard only).

use redis::Script;

/// The scripts, loaded once (`EVALSHA`, re-sent after a Redis restart).
pub struct Scripts {
    pub apply: Script,
    pub snapshot: Script,
    pub reap: Script,
    pub heartbeat: Script,
    pub claim: Script,
    pub register: Script,
    pub reap_begin: Script,
    pub unwrite: Script,
}

impl Scripts {
    /// `sharded`: publish with `SPUBLISH` (Redis Cluster), else `PUBLISH`.
    pub fn new(sharded: bool) -> Self {
        let script = |parts: &[&str]| {
            let text = parts.concat();
            if sharded {
                Script::new(&text.replace("'PUBLISH'", "'SPUBLISH'"))
            } else {
                Script::new(&text)
            }
        };
        Scripts {
            apply: script(&[NOW, KEEP_META, LAST_SEEN, APPLY_BODY]),
            snapshot: script(&[KEEP_META, SNAPSHOT_BODY]),
            reap: script(&[NOW, KEEP_META, LAST_SEEN, REAP_BODY]),
            heartbeat: script(&[NOW, HEARTBEAT_BODY]),
            claim: script(&[NOW, CLAIM_BODY]),
            register: script(&[REGISTER_BODY]),
            reap_begin: script(&[REAP_BEGIN_BODY]),
            unwrite: script(&[KEEP_META, UNWRITE_BODY]),
        }
    }
}

const NOW: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// A channel's meta hash outlives its last entry by ten minutes, so a
/// brief empty spell keeps the epoch (and nobody resyncs for nothing).
const KEEP_META: &str = r"
local function settle_meta(data, meta)
  if redis.call('EXISTS', data) == 1 then
    redis.call('PERSIST', meta)
  else
    redis.call('PEXPIRE', meta, 600000)
  end
end
";

/// Last seen: the keys of deleted entries, stamped with Redis's time, in
/// the channel's sorted set (`wire::last_seen_key`), which is then trimmed
/// to `max_age` ms and `cap` keys (the oldest first) and expires `max_age`
/// after its last write. A key with entries left is stamped too: readers
/// only ask about keys that are offline, whose latest stamp is then the
/// moment their last entry went. `cap` 0 = off.
const LAST_SEEN: &str = r"
local function key_of(entry)
  return string.match(entry, '^[^\31]*')
end
local function note_left(seen, keys, max_age, cap)
  if cap <= 0 or #keys == 0 then return end
  local now = now_ms()
  for _, key in ipairs(keys) do redis.call('ZADD', seen, now, key) end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. (now - max_age))
  local over = redis.call('ZCARD', seen) - cap
  if over > 0 then redis.call('ZREMRANGEBYRANK', seen, 0, over - 1) end
  redis.call('PEXPIRE', seen, max_age)
end
";

/// The owner's batched writes for one channel.
/// KEYS: data, meta, orphans, last seen, fence, and on one Redis the lease
/// set (nodes). ARGV: owner nid, pub/sub
/// channel, topic, a fresh epoch (used if the channel has none), last-seen
/// age limit ms and cap, then ops:
/// `P mid entry` put, `D mid` delete, `O mid` mark orphan (leave grace),
/// `T mid fallback prefix suffix` take over an orphan whose entry starts
/// with `prefix` (the key) and ends with `suffix` (the state), keeping its
/// ref, else put `fallback`. Refused with `FENCED reaped` when a reaper
/// fenced the owner off this channel, and on one Redis (where the lease set
/// shares the script) with `FENCED lease lost` unless the owner holds a
/// live lease. On a Redis Cluster the lease lives on another shard; the
/// fence alone keeps a reaped node's writes out (ARCHITECTURE.md).
/// Returns `{epoch, seq, message or false}`.
const APPLY_BODY: &str = r"
local data, meta, orphans = KEYS[1], KEYS[2], KEYS[3]
local nid = ARGV[1]
local left = {}
if redis.call('HEXISTS', KEYS[5], nid) == 1 then
  return redis.error_reply('FENCED reaped')
end
if KEYS[6] then
  local lease = redis.call('ZSCORE', KEYS[6], nid)
  if not lease or tonumber(lease) < now_ms() then
    return redis.error_reply('FENCED lease lost')
  end
end
local out = {}
local function put(mid, value)
  redis.call('HDEL', orphans, mid)
  local old = redis.call('HGET', data, mid)
  if old ~= value then
    redis.call('HSET', data, mid, value)
    if old then out[#out + 1] = '-' .. mid .. '\30' .. old end
    out[#out + 1] = '+' .. mid .. '\30' .. value
  end
end
local function del(mid)
  redis.call('HDEL', orphans, mid)
  local old = redis.call('HGET', data, mid)
  if old then
    redis.call('HDEL', data, mid)
    out[#out + 1] = '-' .. mid .. '\30' .. old
  end
  return old
end
local i = 7
while i <= #ARGV do
  local op, mid = ARGV[i], ARGV[i + 1]
  if op == 'P' then
    put(mid, ARGV[i + 2])
    i = i + 3
  elseif op == 'D' then
    local old = del(mid)
    if old then left[#left + 1] = key_of(old) end
    i = i + 2
  elseif op == 'O' then
    if redis.call('HEXISTS', data, mid) == 1 then redis.call('HSET', orphans, mid, '1') end
    i = i + 2
  else
    local prefix, suffix = ARGV[i + 3], ARGV[i + 4]
    local taken = false
    for _, f in ipairs(redis.call('HKEYS', orphans)) do
      local v = redis.call('HGET', data, f)
      if not v then
        redis.call('HDEL', orphans, f)
      elseif string.sub(v, 1, #prefix) == prefix and string.sub(v, -#suffix) == suffix then
        del(f)
        taken = v
        break
      end
    end
    put(mid, taken or ARGV[i + 2])
    i = i + 5
  end
end
redis.call('HSETNX', meta, 'e', ARGV[4])
redis.call('HSETNX', meta, 't', ARGV[3])
local epoch = redis.call('HGET', meta, 'e')
settle_meta(data, meta)
note_left(KEYS[4], left, tonumber(ARGV[5]), tonumber(ARGV[6]))
if #out == 0 then
  return {epoch, tonumber(redis.call('HGET', meta, 's') or '0'), false}
end
local seq = redis.call('HINCRBY', meta, 's', 1)
local msg = 'P\n' .. epoch .. '\n' .. seq .. '\n' .. nid .. '\n' .. table.concat(out, '\n')
redis.call('PUBLISH', ARGV[2], msg)
return {epoch, seq, msg}
";

/// KEYS: data, meta. ARGV: a fresh epoch, topic. Returns `{epoch, seq, {mid, entry, ...}}`.
const SNAPSHOT_BODY: &str = r"
local data, meta = KEYS[1], KEYS[2]
redis.call('HSETNX', meta, 'e', ARGV[1])
redis.call('HSETNX', meta, 't', ARGV[2])
settle_meta(data, meta)
return {redis.call('HGET', meta, 'e'), tonumber(redis.call('HGET', meta, 's') or '0'), redis.call('HGETALL', data)}
";

/// Sweep one page of a dead owner's fields off a channel, publishing one
/// leave diff. First fences the owner off the channel (`rp:{T}:f`), so no
/// write of it lands after this call: fields present now are found by this
/// scan or a later page, fields it could add later are refused. Only the
/// call whose HDEL removed a field reports it, so each leave is published
/// exactly once however many reapers overlap.
/// KEYS: data, meta, orphans, last seen, fence. ARGV: pub/sub channel,
/// reaper nid, fresh epoch, last-seen age limit ms and cap, dead nid, HSCAN
/// cursor. Returns `{next cursor, mid, entry, mid, entry...}`: the fields
/// this call removed. The
/// origin it publishes is `<reaper>/reap`: no node's replica takes a reap
/// for its own write, so its webhook events come from the reaper's
/// `report_reaped` only.
const REAP_BODY: &str = r"
local data, meta, orphans, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local dead = ARGV[6]
local now = now_ms()
redis.call('HSET', fence, dead, now)
local fenced = redis.call('HGETALL', fence)
for i = 1, #fenced, 2 do
  if tonumber(fenced[i + 1]) < now - 3600000 then redis.call('HDEL', fence, fenced[i]) end
end
redis.call('PEXPIRE', fence, 3600000)
local page = redis.call('HSCAN', data, ARGV[7], 'MATCH', dead .. '|*', 'COUNT', 500)
local fields = page[2]
local out, removed, left = {}, {page[1]}, {}
for i = 1, #fields, 2 do
  local mid, old = fields[i], fields[i + 1]
  redis.call('HDEL', orphans, mid)
  redis.call('HDEL', data, mid)
  out[#out + 1] = '-' .. mid .. '\30' .. old
  removed[#removed + 1] = mid
  removed[#removed + 1] = old
  left[#left + 1] = key_of(old)
end
if #out == 0 then return removed end
note_left(KEYS[4], left, tonumber(ARGV[4]), tonumber(ARGV[5]))
redis.call('HSETNX', meta, 'e', ARGV[3])
local seq = redis.call('HINCRBY', meta, 's', 1)
settle_meta(data, meta)
redis.call('PUBLISH', ARGV[1], 'P\n' .. redis.call('HGET', meta, 'e') .. '\n' .. seq .. '\n' .. ARGV[2] .. '/reap\n' .. table.concat(out, '\n'))
return removed
";

/// Remove again entries this node removed lately, should they be back
/// (a failover to a replica that missed the removal, a restart from an old
/// dump): each listed field goes if it still holds the listed ref, with one
/// leave diff. KEYS: data, meta, orphans. ARGV: pub/sub channel, origin,
/// fresh epoch, then `mid ref` pairs. Returns how many went.
const UNWRITE_BODY: &str = r"
local data, meta, orphans = KEYS[1], KEYS[2], KEYS[3]
local out = {}
for i = 4, #ARGV, 2 do
  local mid, ref = ARGV[i], ARGV[i + 1]
  local v = redis.call('HGET', data, mid)
  if v and string.match(v, '^[^\31]*\31([^\31]*)') == ref then
    redis.call('HDEL', data, mid)
    redis.call('HDEL', orphans, mid)
    out[#out + 1] = '-' .. mid .. '\30' .. v
  end
end
if #out == 0 then return 0 end
redis.call('HSETNX', meta, 'e', ARGV[3])
local seq = redis.call('HINCRBY', meta, 's', 1)
settle_meta(data, meta)
redis.call('PUBLISH', ARGV[1], 'P\n' .. redis.call('HGET', meta, 'e') .. '\n' .. seq .. '\n' .. ARGV[2] .. '\n' .. table.concat(out, '\n'))
return #out
";

/// A node notes a channel it is about to write in (so a reaper finds it),
/// unless a reaper has begun sweeping it. KEYS: the node's channel set, its
/// fenced marker. ARGV: the channel's tag.
const REGISTER_BODY: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.error_reply('FENCED reaped')
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

/// A reaper begins sweeping a dead node: mark it fenced (for an hour, as
/// long as dead ids are remembered), then list its channels; a channel it
/// could register after this is refused. KEYS: the node's channel set, its
/// fenced marker.
const REAP_BEGIN_BODY: &str = r"
redis.call('SET', KEYS[2], '1', 'PX', 3600000)
return redis.call('SMEMBERS', KEYS[1])
";

/// Renew a node's lease. KEYS: nodes, dead. ARGV: nid, lease ms.
/// Returns `{status, live node ids...}`: status `ok`; `late` (the lease had
/// run out, nobody reaped it yet — Redis or this node stalled);
/// `registered` (unknown: first beat, or Redis lost its data); `fenced`
/// (reaped: take a new id, and no list).
const HEARTBEAT_BODY: &str = r"
local nodes, dead = KEYS[1], KEYS[2]
local nid = ARGV[1]
local now = now_ms()
local old = redis.call('ZSCORE', nodes, nid)
local status = 'ok'
if not old then
  if redis.call('ZSCORE', dead, nid) then return {'fenced'} end
  status = 'registered'
elseif tonumber(old) < now then
  status = 'late'
end
redis.call('ZADD', nodes, now + tonumber(ARGV[2]), nid)
local live = redis.call('ZRANGEBYSCORE', nodes, now, '+inf')
table.insert(live, 1, status)
return live
";

/// Claim dead nodes for reaping: leases expired more than `grace` ago, and
/// claims whose reaper died. Only a claimer with a live lease may claim.
/// KEYS: nodes, reaping, dead. ARGV: claimer nid, grace ms, claim ms.
const CLAIM_BODY: &str = r"
local nodes, reaping, dead = KEYS[1], KEYS[2], KEYS[3]
local me = ARGV[1]
local now = now_ms()
local mine = redis.call('ZSCORE', nodes, me)
if not mine or tonumber(mine) < now then return {} end
local claim_until = now + tonumber(ARGV[3])
local out = {}
for _, nid in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now - tonumber(ARGV[2]))) do
  redis.call('ZREM', nodes, nid)
  redis.call('ZADD', dead, now, nid)
  redis.call('HSET', reaping, nid, me .. ':' .. claim_until)
  out[#out + 1] = nid
end
local claims = redis.call('HGETALL', reaping)
for i = 1, #claims, 2 do
  local deadline = tonumber(string.match(claims[i + 1], ':(%d+)$'))
  if deadline and deadline < now then
    redis.call('HSET', reaping, claims[i], me .. ':' .. claim_until)
    out[#out + 1] = claims[i]
  end
end
redis.call('ZREMRANGEBYSCORE', dead, '-inf', now - 3600000)
return out
";

#[cfg(test)]
mod tests {
    use super::*;

    /// The sharded scripts differ only in how they publish.
    #[test]
    fn sharded_scripts_publish_with_spublish() {
        let body = [NOW, KEEP_META, LAST_SEEN, APPLY_BODY].concat();
        assert!(body.contains("redis.call('PUBLISH'"));
        let (one, sharded) = (Scripts::new(false), Scripts::new(true));
        assert_ne!(one.apply.get_hash(), sharded.apply.get_hash());
        assert_ne!(one.reap.get_hash(), sharded.reap.get_hash());
        assert_eq!(one.heartbeat.get_hash(), sharded.heartbeat.get_hash());
    }
}
