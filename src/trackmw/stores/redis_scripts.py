"""The Lua scripts of the Redis store (see ``trackmw.stores.redis`` for the key layout).

Each runs atomically in Redis. ``WRITE`` applies one batch (once: it starts by setting
the batch's marker key), ``ERASE`` removes one visitor (and a linked user's page views)
from lists, counters and exact sets, ``PURGE`` drops days before a cut-off in slices,
``UNION`` counts the members of several exact sets.
"""

from __future__ import annotations

__all__ = ["ERASE", "PURGE", "UNION", "WRITE"]

WRITE = """
local P, mode, vttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
if not redis.call('SET', P .. ':batch:' .. ARGV[2], '1', 'NX', 'EX', 86400) then return -1 end
local batch, null = cjson.decode(ARGV[1]), cjson.null
local U = P .. ':' .. mode
local incr, sets, lists, firsts, keyday = {}, {}, {}, {}, {}
local function bump(day, field)
  local k = P .. ':d:' .. day
  local h = incr[k]; if not h then h = {}; incr[k] = h; keyday[k] = day end
  h[field] = (h[field] or 0) + 1
end
local function member(day, key, m)
  local s = sets[key]; if not s then s = {}; sets[key] = s; keyday[key] = day end
  s[m] = true
end
local function push(vid, day, entry)
  local k = P .. ':e:' .. vid
  local l = lists[k]; if not l then l = {}; lists[k] = l end
  l[#l + 1] = cjson.encode(entry)
  local n = tonumber((string.gsub(day, '-', '')))
  if not firsts[vid] or n < firsts[vid] then firsts[vid] = n end
end
for _, e in ipairs(batch.p) do
  local day, vid, uid, path = e[2], e[3], e[4], e[5]
  if e[11] then bump(day, 'b') else
    bump(day, 't'); bump(day, 'p:' .. path)
    if e[6] ~= null then bump(day, 'r:' .. e[6]) end
    if e[7] ~= null then bump(day, 'c:' .. e[7]) end
    if vid == null then bump(day, 'a') else
      member(day, U .. ':v:' .. day, vid)
      member(day, U .. ':p:' .. day .. ':' .. path, vid)
      if uid ~= null then
        member(day, U .. ':u:' .. day, uid)
        member(nil, P .. ':usr:' .. uid, vid)
      end
      for i, c in ipairs({'B', 'O', 'D'}) do
        local name = e[7 + i]
        if name ~= null then
          bump(day, c .. ':' .. name)
          member(day, U .. ':' .. c .. ':' .. day .. ':' .. name, vid)
        end
      end
      push(vid, day, {'p', e[1], day, uid, path, e[6], e[7], e[8], e[9], e[10]})
    end
  end
end
for _, c in ipairs(batch.c) do
  bump(c[2], c[4] and 'ca' or 'cr')
  if c[3] ~= null then push(c[3], c[2], {'c', c[1], c[2], c[4], c[5], c[6], c[7], c[8]}) end
end
local add = mode == 'x' and 'SADD' or 'PFADD'
local function expire(k)
  local at = keyday[k] and batch.x[keyday[k]]
  if at then redis.call('EXPIREAT', k, at) end
end
for k, h in pairs(incr) do
  for f, n in pairs(h) do redis.call('HINCRBY', k, f, n) end
  redis.call('ZADD', P .. ':days', 'NX', tonumber((string.gsub(keyday[k], '-', ''))), keyday[k])
  expire(k)
end
for k, s in pairs(sets) do
  local m = {}
  for x in pairs(s) do m[#m + 1] = x end
  for i = 1, #m, 500 do
    redis.call(keyday[k] and add or 'SADD', k, unpack(m, i, math.min(i + 499, #m)))
  end
  expire(k)
end
for k, l in pairs(lists) do
  for i = 1, #l, 500 do redis.call('RPUSH', k, unpack(l, i, math.min(i + 499, #l))) end
  if vttl > 0 then redis.call('EXPIRE', k, vttl) end
end
for vid, n in pairs(firsts) do redis.call('ZADD', P .. ':first', 'LT', n, vid) end
redis.call('HSETNX', P .. ':meta', 'uniques', mode)
return #batch.p + #batch.c
"""

UNION = "return #redis.call('SUNION', unpack(KEYS))"

ERASE = """
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
  local keep, keepraw, gone, has, first = {}, {}, {}, {}, nil
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local e = cjson.decode(raw)
    if v == vid or (e[1] == 'p' and e[4] == uid) then gone[#gone + 1] = e else
      keepraw[#keepraw + 1] = raw
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
    local ttl = redis.call('PTTL', key)
    redis.call('DEL', key)
    if #keepraw > 0 then
      for i = 1, #keepraw, 500 do
        redis.call('RPUSH', key, unpack(keepraw, i, math.min(i + 499, #keepraw)))
      end
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      redis.call('ZADD', P .. ':first', first, v)
    else
      redis.call('ZREM', P .. ':first', v)
    end
  end
end
-- A user stays counted on a day while one of its visitors still has a page view then.
if mode == 'x' then
  for _, ud in pairs(lost_users) do
    local u, day, still = ud[1], ud[2], false
    if u ~= uid then
      for _, v in ipairs(redis.call('SMEMBERS', P .. ':usr:' .. u)) do
        for _, raw in ipairs(redis.call('LRANGE', P .. ':e:' .. v, 0, -1)) do
          local e = cjson.decode(raw)
          if e[1] == 'p' and e[4] == u and e[3] == day then still = true; break end
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

PURGE = """
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
    local day = cjson.decode(raw)[3]
    local n = tonumber((string.gsub(day, '-', '')))
    if n >= cut then keep[#keep + 1] = raw; if not first or n < first then first = n end end
  end
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
if #vids == limit then more = 1 end
return {removed, more}
"""
