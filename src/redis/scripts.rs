//! The Lua scripts that make every write atomic inside Redis.
//!
//! Each write reads the current record, checks its condition, writes the new record, keeps the
//! id index and publishes the change in one script, so no other client can come between the
//! check and the write, and no watcher can miss a write.
//!
//! Keys and arguments are documented on each script. Expiry by the store's clock is judged from
//! the expiry time in ms the writer computed from its TTL policy, so a record expired by the
//! clock is absent for writers exactly as for readers. On Redis 7 and later that time is the
//! key's own (`SET … PXAT`, read back with `PEXPIRETIME`), and the index is written only when
//! an id is new, so an update touches one key; before Redis 7 it is the index score, written
//! on every write.
//!
//! Writers of one prefix should run the same version of this crate: one from before this
//! layout judges expiry by index scores that newer writers no longer refresh.

use std::sync::LazyLock;

use redis::Script;

/// The highest version a Redis record reaches: 2^53 - 1, the largest integer a Lua number
/// (a double) holds exactly. The write script refuses to go past it.
pub(super) const MAX_VERSION: u64 = (1 << 53) - 1;

/// A versioned write.
///
/// KEYS: record key, index key.
/// ARGV: id, status JSON, now (RFC 3339), now (ms), mode (`o` overwrite, `c` create, `u`
/// update), expected version, PX in ms (empty: no native expiry), expiry time in ms by the
/// store's clock (`PXAT`, and the index score before Redis 7; `+inf`: never), channel,
/// `expires_at` as JSON (an RFC 3339 string or `null`).
///
/// Returns `{kind, number, text}`: `{"ok", new version, created_at as JSON}`,
/// `{"exists", version, ""}`, `{"conflict", version or -1, ""}`, `{"exhausted", 0, version as
/// text}` (the record is at [`MAX_VERSION`] or beyond) or `{"corrupt", 0, reason}`.
///
/// Lua numbers are doubles: versions are exact up to 2^53 - 1, so that is the last one
/// written, and a record found at it or beyond (written by hand) is refused rather than
/// given a version that is not one more than the last.
pub(super) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local modern = redis.REDIS_VERSION_NUM ~= nil
local current = redis.call('GET', KEYS[1])
local stored = current
if current then
  local expires
  if modern then
    expires = redis.call('PEXPIRETIME', KEYS[1])
    if expires < 0 then
      expires = nil
    end
  else
    expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
  end
  if expires and expires <= tonumber(ARGV[4]) then
    current = false
  end
end
local version = 0
local version_text = '0'
local created = nil
if current then
  local v, c = string.match(current, '^{"id":"[^"]*","version":(%d+),"created_at":"([^"\\]*)"')
  if v then
    version = tonumber(v)
    version_text = v
    created = '"' .. c .. '"'
  else
    local ok, record = pcall(cjson.decode, current)
    if not ok or type(record) ~= 'table' or type(record.version) ~= 'number' then
      return {'corrupt', 0, 'the stored value is not a record envelope'}
    end
    version = record.version
    version_text = string.format('%.0f', version)
    if type(record.created_at) == 'string' then
      created = cjson.encode(record.created_at)
    elseif record.created_at == nil then
      created = '"1970-01-01T00:00:00.000Z"'
    else
      return {'corrupt', 0, 'created_at is not a string'}
    end
  end
end
local mode = ARGV[5]
if mode == 'c' and current then
  return {'exists', version, ''}
end
if mode == 'u' then
  if not current then
    return {'conflict', -1, ''}
  end
  if version ~= tonumber(ARGV[6]) then
    return {'conflict', version, ''}
  end
end
if current and version >= 9007199254740991 then
  return {'exhausted', 0, version_text}
end
version = version + 1
if not created then
  created = '"' .. ARGV[3] .. '"'
end
local text = string.format('%d', version)
local record = '{"id":"' .. ARGV[1] .. '","version":' .. text .. ',"created_at":' .. created
  .. ',"updated_at":"' .. ARGV[3] .. '","expires_at":' .. ARGV[10] .. ',"status":' .. ARGV[2] .. '}'
if ARGV[7] == '' then
  redis.call('SET', KEYS[1], record)
elseif modern then
  redis.call('SET', KEYS[1], record, 'PXAT', ARGV[8])
else
  redis.call('SET', KEYS[1], record, 'PX', ARGV[7])
end
if not modern then
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
elseif not stored then
  -- A stored key is indexed already: every writer indexes an id it creates, and only the
  -- scripts that delete the key remove its entry. `+inf` keeps the score-judging writers of
  -- older versions from taking the record for expired.
  redis.call('ZADD', KEYS[2], '+inf', ARGV[1])
end
redis.call('PUBLISH', ARGV[9], ARGV[1] .. ' ' .. text)
return {'ok', version, created}
"#,
    )
});

/// A delete.
///
/// KEYS: record key, index key. ARGV: id, now (ms), channel.
///
/// Returns 1 when a live record was removed, else 0 (a record expired by the clock is
/// removed too, but was not live).
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
local live = 0
if current then
  live = 1
  local expires
  if redis.REDIS_VERSION_NUM ~= nil then
    expires = redis.call('PEXPIRETIME', KEYS[1])
    if expires < 0 then
      expires = nil
    end
  else
    expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
  end
  if expires and expires <= tonumber(ARGV[2]) then
    live = 0
  end
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' 0')
end
redis.call('ZREM', KEYS[2], ARGV[1])
return live
"#,
    )
});

/// The removal step of a cleanup: removes the record only if it is still exactly the value the
/// sweep judged expired (a record rewritten meanwhile is live again), or drops the index entry
/// of a record Redis already expired.
///
/// KEYS: record key, index key. ARGV: id, the value judged expired (empty: the key was found
/// missing), channel.
///
/// Returns 1 when something was removed, else 0.
pub(super) static REMOVE_IF_UNCHANGED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if ARGV[2] == '' then
  if current then
    return 0
  end
  if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' 0')
    return 1
  end
  return 0
end
if current == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' 0')
  return 1
end
return 0
"#,
    )
});

/// Releases a lock if this holder still has it. KEYS: lock key. ARGV: token.
pub(super) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Extends a lock's lease if this holder still has it. KEYS: lock key. ARGV: token, lease ms.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});
