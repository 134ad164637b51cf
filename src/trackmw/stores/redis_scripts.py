"""The Lua scripts of the Redis store (see ``trackmw.stores.redis`` for the key layout).

Each runs atomically in Redis. ``WRITE`` applies one batch, once: it returns at once
if the batch's marker key exists, and sets it after its last write. ``ERASE`` removes
one visitor (and a linked user's page views) from lists, counters and exact sets, and
``PURGE`` drops days before a cut-off, in slices.
"""

from __future__ import annotations

__all__ = ["ERASE", "PURGE", "WRITE"]

WRITE = """
local P, mode, vttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local marker = P .. ':batch:' .. ARGV[2]
if redis.call('EXISTS', marker) == 1 then return -1 end  -- written before: a retry
local batch, null = cjson.decode(ARGV[1]), cjson.null
local U = P .. ':' .. mode
-- Aggregate first, in tables keyed by plain values (no string building per event) ...
local days, lists, firsts, users = {}, {}, {}, {}
local function of(day)
  local d = days[day]
  if not d then
    d = {t = 0, a = 0, b = 0, ca = 0, cr = 0, v = {}, u = {},
         p = {}, r = {}, c = {}, B = {}, O = {}, D = {},
         pv = {}, Bv = {}, Ov = {}, Dv = {}, num = tonumber((string.gsub(day, '-', '')))}
    days[day] = d
  end
  return d
end
local function push(vid, num, entry)
  local l = lists[vid]
  if not l then l = {}; lists[vid] = l end
  l[#l + 1] = cjson.encode(entry)
  if not firsts[vid] or num < firsts[vid] then firsts[vid] = num end
end
local function member(t, name, vid)
  local s = t[name]
  if not s then s = {}; t[name] = s end
  s[vid] = true
end
for _, e in ipairs(batch.p) do
  local day = e[2]
  local d = of(day)
  if e[11] then d.b = d.b + 1 else
    local vid, uid, path, ref, camp = e[3], e[4], e[5], e[6], e[7]
    d.t = d.t + 1
    d.p[path] = (d.p[path] or 0) + 1
    if ref ~= null then d.r[ref] = (d.r[ref] or 0) + 1 end
    if camp ~= null then d.c[camp] = (d.c[camp] or 0) + 1 end
    if vid == null then d.a = d.a + 1 else
      d.v[vid] = true
      member(d.pv, path, vid)
      if uid ~= null then d.u[uid] = true; member(users, uid, vid) end
      local b, o, dv = e[8], e[9], e[10]
      if b ~= null then d.B[b] = (d.B[b] or 0) + 1; member(d.Bv, b, vid) end
      if o ~= null then d.O[o] = (d.O[o] or 0) + 1; member(d.Ov, o, vid) end
      if dv ~= null then d.D[dv] = (d.D[dv] or 0) + 1; member(d.Dv, dv, vid) end
      push(vid, d.num, {'p', e[1], day, uid, path, ref, camp, b, o, dv})
    end
  end
end
for _, c in ipairs(batch.c) do
  local d = of(c[2])
  if c[4] then d.ca = d.ca + 1 else d.cr = d.cr + 1 end
  if c[3] ~= null then push(c[3], d.num, {'c', c[1], c[2], c[4], c[5], c[6], c[7], c[8]}) end
end
-- ... then one command per key.
local add = mode == 'x' and 'SADD' or 'PFADD'
local function keys_of(set)
  local m = {}
  for x in pairs(set) do m[#m + 1] = x end
  return m
end
local function put(cmd, key, members)
  for i = 1, #members, 500 do
    redis.call(cmd, key, unpack(members, i, math.min(i + 499, #members)))
  end
end
local daynums = {}
for day, d in pairs(days) do
  local at = batch.x[day]
  local H = P .. ':d:' .. day
  for _, f in ipairs({'t', 'a', 'b', 'ca', 'cr'}) do
    if d[f] > 0 then redis.call('HINCRBY', H, f, d[f]) end
  end
  for _, k in ipairs({'p', 'r', 'c', 'B', 'O', 'D'}) do
    for name, n in pairs(d[k]) do redis.call('HINCRBY', H, k .. ':' .. name, n) end
  end
  if at then redis.call('EXPIREAT', H, at) end
  local sets = {}
  if next(d.v) then sets[U .. ':v:' .. day] = d.v end
  if next(d.u) then sets[U .. ':u:' .. day] = d.u end
  for _, k in ipairs({'p', 'B', 'O', 'D'}) do
    for name, vids in pairs(d[k .. 'v']) do
      sets[U .. ':' .. k .. ':' .. day .. ':' .. name] = vids
    end
  end
  for key, set in pairs(sets) do
    put(add, key, keys_of(set))
    if at then redis.call('EXPIREAT', key, at) end
  end
  daynums[#daynums + 1] = d.num; daynums[#daynums + 1] = day
end
put('ZADD', P .. ':days', daynums)
for vid, l in pairs(lists) do
  local k = P .. ':e:' .. vid
  put('RPUSH', k, l)
  if vttl > 0 then redis.call('EXPIRE', k, vttl) end
end
for uid, vids in pairs(users) do
  local k = P .. ':usr:' .. uid
  put('SADD', k, keys_of(vids))
  if vttl > 0 then redis.call('EXPIRE', k, vttl) end
end
local order = {}
for vid, n in pairs(firsts) do order[#order + 1] = n; order[#order + 1] = vid end
for i = 1, #order, 1000 do
  redis.call('ZADD', P .. ':first', 'LT', unpack(order, i, math.min(i + 999, #order)))
end
redis.call('HSETNX', P .. ':meta', 'uniques', mode)
redis.call('SET', marker, '1', 'EX', 86400)
return #batch.p + #batch.c
"""

# A visitor's event list rewritten to ``keep`` (its TTL kept), and its first day in the
# ``first`` index updated; shared by ERASE and PURGE.
_KEEP_ONLY = """
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

ERASE = (
    _KEEP_ONLY
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
)

PURGE = (
    _KEEP_ONLY
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
    local day = cjson.decode(raw)[3]
    local n = tonumber((string.gsub(day, '-', '')))
    if n >= cut then keep[#keep + 1] = raw; if not first or n < first then first = n end end
  end
  keep_only(P, key, v, keep, first)
end
if #vids == limit then more = 1 end
return {removed, more}
"""
)
