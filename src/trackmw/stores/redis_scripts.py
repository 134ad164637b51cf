"""The Lua scripts of the Redis store (see ``trackmw.stores.redis`` for the key layout).

Each runs atomically in Redis. ``WRITE`` applies one batch, once: it returns at once
if the batch's marker key exists, and sets it after its last write. It writes nothing
either if a visitor or user of the batch was erased after one of its events there: it
then answers the tombstones it found, for the client to leave those events out (or,
sent without the batch's tombstone keys when someone was erased since its first event,
-2, for the client to send them). ``TOMBSTONE`` records an erasure.
``ERASE`` removes one visitor (and a linked user's page views) from lists, counters and
exact sets, and ``PURGE`` drops days before a cut-off, in slices.
"""

from __future__ import annotations

__all__ = ["DAY_NOTE", "DROP_TOMBSTONES", "ERASE", "PURGE", "TOMBSTONE", "WRITE"]

#: The ``note`` field of every ``P:d:DAY`` hash. Being longer than 64 bytes (Redis'
#: ``hash-max-listpack-value``), it makes Redis keep the hash as a hash table: in its
#: compact listpack form (up to 512 fields) every ``HINCRBY`` scans the fields one by
#: one, which made a day's few hundred counters the most costly part of a write.
DAY_NOTE = (
    "trackmw day counters: fields t, a, b, ca, cr and KIND:NAME; "
    "this note keeps the hash a hash table"
)

WRITE = (
    "local NOTE = '"
    + DAY_NOTE
    + "'"
    + """
local P, mode, vttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local marker = P .. ':batch:' .. ARGV[2]
if redis.call('EXISTS', marker) == 1 then return -1 end  -- written before: a retry
-- ARGV[7]: the time of the batch's first event of a visitor ('' if none has a visitor
-- id: nothing to check). Unless every tombstone is older (the 'latest' field; tombstones
-- of versions before it have none), the batch needs checking: ARGV[8], ARGV[9], ...: the
-- tombstone key of each visitor and user of the batch, and the time of its earliest event
-- there. Without them, ask for them (-2); with them, answer the tombstones at or after
-- those events, and write nothing.
local erased = P .. ':erased'
local latest = redis.call('HGET', erased, 'latest')
if ARGV[7] ~= '' and ((latest and tonumber(latest) >= tonumber(ARGV[7]))
    or (not latest and redis.call('EXISTS', erased) == 1)) then
  if #ARGV == 7 then return -2 end
  local found = {}
  for i = 8, #ARGV, 1000 do
    local keys = {}
    for j = i, math.min(i + 998, #ARGV), 2 do keys[#keys + 1] = ARGV[j] end
    local at = redis.call('HMGET', erased, unpack(keys))
    for n, when in ipairs(at) do
      local j = i + 2 * (n - 1)
      if when and tonumber(when) >= tonumber(ARGV[j + 1]) then
        found[#found + 1] = ARGV[j]; found[#found + 1] = when
      end
    end
  end
  if #found > 0 then return found end
end
-- The batch comes aggregated (redis_plan.py, as MessagePack): one command per key,
-- nothing to count.
local plan = cmsgpack.unpack(ARGV[1])
local hashes, sets, V, users = plan[1], plan[2], plan[3], plan[4]
local days, firsts = plan[5], plan[6]
-- V: the batch's visitors; a number in a set, a user's visitors or firsts is one's place
-- there (a set of users, u, holds their ids)
local add = mode == 'x' and 'SADD' or 'PFADD'
-- t = {key, x, v1, v2, ...}: cmd key v1 v2 ..., in slices (Lua's stack is limited)
local function put(cmd, t, from)
  for i = from, #t, 500 do
    redis.call(cmd, t[1], unpack(t, i, math.min(i + 499, #t)))
  end
end
for _, h in ipairs(hashes) do  -- {key, expire at or 0, {field, ...}, {n, ...}}
  local k, fields, adds = h[1], h[3], h[4]
  redis.call('HSETNX', k, 'note', NOTE)
  for i = 1, #fields do redis.call('HINCRBY', k, fields[i], adds[i]) end
  if h[2] > 0 then redis.call('EXPIREAT', k, h[2]) end
end
for _, s in ipairs(sets) do  -- {key, expire at or 0, member, ...}
  for i = 3, #s do  -- a place in V becomes its visitor; a string (a user id) stays
    local v = V[s[i]]
    if v then s[i] = v end
  end
  put(add, s, 3)
  if s[2] > 0 then redis.call('EXPIREAT', s[1], s[2]) end
end
for i = 1, #days, 500 do
  redis.call('ZADD', P .. ':days', unpack(days, i, math.min(i + 499, #days)))
end
local text, at = ARGV[6], 1
local find, sub = string.find, string.sub
for _, v in ipairs(V) do  -- a visitor's list: its element is the next line of ARGV[6]
  local k = P .. ':e:' .. v
  local stop = find(text, '\\n', at, true) or #text + 1
  redis.call('RPUSH', k, sub(text, at, stop - 1))
  at = stop + 1
  if vttl > 0 then redis.call('EXPIRE', k, vttl) end
end
for _, u in ipairs(users) do  -- {key, visitor, ...}
  for i = 2, #u do u[i] = V[u[i]] end
  put('SADD', u, 2)
  if vttl > 0 then redis.call('EXPIRE', u[1], vttl) end
end
for i = 2, #firsts, 2 do firsts[i] = V[firsts[i]] end
for i = 1, #firsts, 1000 do
  redis.call('ZADD', P .. ':first', 'LT', unpack(firsts, i, math.min(i + 999, #firsts)))
end
redis.call('HSETNX', P .. ':meta', 'uniques', mode)
redis.call('SET', marker, '1', 'EX', 86400)
return plan[7]
"""
)

# Shared by ERASE and PURGE: a visitor's list element read as its entries; what is left
# of it when only some entries stay; the list rewritten to ``keep`` (its TTL kept) and
# its first day in the ``first`` index updated.
_LISTS = """
local function entries_of(raw)  -- one event, or (as WRITE stores them) an array of some
  local doc = cjson.decode(raw)
  if type(doc[1]) == 'table' then return doc end
  return {doc}
end
local function rest_of(raw, all, kept)
  if #kept == #all then return raw end
  if #kept > 0 then return cjson.encode(kept) end
  return nil
end
local function keep_only(P, key, v, keep, first)
  local ttl = redis.call('PTTL', key)
  redis.call('DEL', key)
  if #keep > 0 then
    for i = 1, #keep, 500 do redis.call('RPUSH', key, unpack(keep, i, math.min(i + 499, #keep))) end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    redis.call('ZADD', P .. ':first', first, v)
  else
    redis.call('ZREM', P .. ':first', v)
  end
end
"""

#: Tombstones (``P:erased``: key -> Unix time) for ``ARGV[2..]``, erased at ``ARGV[1]``, and
#: the hash's ``latest`` field: each raised to that time, never lowered (hosts' clocks
#: may differ), as SQLite and PostgreSQL keep the greater time.
TOMBSTONE = """
local at = ARGV[1]
local function raise(field)
  local old = redis.call('HGET', KEYS[1], field)
  if not old or tonumber(old) < tonumber(at) then redis.call('HSET', KEYS[1], field, at) end
end
for i = 2, #ARGV do raise(ARGV[i]) end
raise('latest')
return 1
"""

#: Drop the tombstones of ``KEYS[1]`` older than ``ARGV[1]`` (``purge``), in one step:
#: one raised meanwhile by ``TOMBSTONE`` is not lost. ``latest`` stays.
DROP_TOMBSTONES = """
local all, old = redis.call('HGETALL', KEYS[1]), {}
for i = 1, #all, 2 do
  if all[i] ~= 'latest' and tonumber(all[i + 1]) < tonumber(ARGV[1]) then
    old[#old + 1] = all[i]
  end
end
for i = 1, #old, 500 do redis.call('HDEL', KEYS[1], unpack(old, i, math.min(i + 499, #old))) end
return #old
"""

ERASE = (
    _LISTS
    + """
local P, mode, vid, uid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local U, null = P .. ':' .. mode, cjson.null
local vids = {vid}
if uid ~= '' then
  for _, v in ipairs(redis.call('SMEMBERS', P .. ':usr:' .. uid)) do
    if v ~= vid then vids[#vids + 1] = v end
  end
end
local function dec(day, field)
  local k = P .. ':d:' .. day
  if redis.call('HINCRBY', k, field, -1) <= 0 then redis.call('HDEL', k, field) end
end
local removed, lost_users = 0, {}
for _, v in ipairs(vids) do
  local key = P .. ':e:' .. v
  local keepraw, gone, has, first = {}, {}, {}, nil
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local all, kept = entries_of(raw), {}
    for _, e in ipairs(all) do
      if v == vid or (e[1] == 'p' and e[4] == uid) then gone[#gone + 1] = e else
        kept[#kept + 1] = e
        local n = tonumber((string.gsub(e[3], '-', '')))
        if not first or n < first then first = n end
        if e[1] == 'p' then
          has['v:' .. e[3]] = true; has['p:' .. e[3] .. ':' .. e[5]] = true
          for i, c in ipairs({'B', 'O', 'D'}) do
            if e[7 + i] ~= null then has[c .. ':' .. e[3] .. ':' .. e[7 + i]] = true end
          end
        end
      end
    end
    keepraw[#keepraw + 1] = rest_of(raw, all, kept)
  end
  for _, e in ipairs(gone) do
    removed = removed + 1
    local day = e[3]
    if e[1] == 'c' then dec(day, e[4] and 'ca' or 'cr') else
      dec(day, 't'); dec(day, 'p:' .. e[5])
      if e[6] ~= null then dec(day, 'r:' .. e[6]) end
      if e[7] ~= null then dec(day, 'c:' .. e[7]) end
      local members = {'v:' .. day, 'p:' .. day .. ':' .. e[5]}
      for i, c in ipairs({'B', 'O', 'D'}) do
        if e[7 + i] ~= null then
          dec(day, c .. ':' .. e[7 + i])
          members[#members + 1] = c .. ':' .. day .. ':' .. e[7 + i]
        end
      end
      if mode == 'x' then
        for _, m in ipairs(members) do
          if not has[m] then redis.call('SREM', U .. ':' .. m, v) end
        end
      end
      if e[4] ~= null then lost_users[e[4] .. '\\n' .. day] = {e[4], day} end
    end
  end
  if #gone > 0 then
    keep_only(P, key, v, keepraw, first)
  end
end
-- A user stays counted on a day while one of its visitors still has a page view then.
if mode == 'x' then
  for _, ud in pairs(lost_users) do
    local u, day, still = ud[1], ud[2], false
    if u ~= uid then
      for _, v in ipairs(redis.call('SMEMBERS', P .. ':usr:' .. u)) do
        for _, raw in ipairs(redis.call('LRANGE', P .. ':e:' .. v, 0, -1)) do
          for _, e in ipairs(entries_of(raw)) do
            if e[1] == 'p' and e[4] == u and e[3] == day then still = true; break end
          end
          if still then break end
        end
        if still then break end
      end
    end
    if not still then redis.call('SREM', U .. ':u:' .. day, u) end
  end
end
for _, ud in pairs(lost_users) do redis.call('SREM', P .. ':usr:' .. ud[1], vid) end
if uid ~= '' then redis.call('DEL', P .. ':usr:' .. uid) end
return removed
"""
)

PURGE = (
    _LISTS
    + """
local P, cut, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local removed, more = 0, 0
local days = redis.call('ZRANGEBYSCORE', P .. ':days', '-inf', '(' .. cut, 'LIMIT', 0, limit)
for _, day in ipairs(days) do
  local k, dead = P .. ':d:' .. day, {}
  local h = redis.call('HGETALL', k)
  for i = 1, #h, 2 do
    local f, n = h[i], tonumber(h[i + 1])
    if f == 't' or f == 'b' or f == 'ca' or f == 'cr' then removed = removed + n end
    local kind, name = string.match(f, '^([pBOD]):(.*)$')
    if kind then
      for _, m in ipairs({'h', 'x'}) do
        dead[#dead + 1] = P .. ':' .. m .. ':' .. kind .. ':' .. day .. ':' .. name
      end
    end
  end
  for _, m in ipairs({'h', 'x'}) do
    dead[#dead + 1] = P .. ':' .. m .. ':v:' .. day; dead[#dead + 1] = P .. ':' .. m .. ':u:' .. day
  end
  dead[#dead + 1] = k
  for i = 1, #dead, 500 do redis.call('DEL', unpack(dead, i, math.min(i + 499, #dead))) end
  redis.call('ZREM', P .. ':days', day)
end
if #days == limit then more = 1 end
local vids = redis.call('ZRANGEBYSCORE', P .. ':first', '-inf', '(' .. cut, 'LIMIT', 0, limit)
for _, v in ipairs(vids) do
  local key, keep, first = P .. ':e:' .. v, {}, nil
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local all, kept = entries_of(raw), {}
    for _, e in ipairs(all) do
      local n = tonumber((string.gsub(e[3], '-', '')))
      if n >= cut then kept[#kept + 1] = e; if not first or n < first then first = n end end
    end
    keep[#keep + 1] = rest_of(raw, all, kept)
  end
  keep_only(P, key, v, keep, first)
end
if #vids == limit then more = 1 end
return {removed, more}
"""
)
