-- Every RedisMatcher decision, run atomically by Redis (one EVALSHA per decision).
--
-- The same rules as matcher/memory.py, read that first: this file is a transcription.
-- "now" and a random seed come from the caller (ARGV), so the caller's clock and rng
-- decide, and nothing depends on how Redis seeds math.random.
--
-- KEYS[1] waiting  sorted set user -> enqueue ticket (INCR of KEYS[2]): enqueue order
-- KEYS[2] seq      the ticket counter
-- KEYS[3] audit    stream of every decision, written only when cfg.audit_maxlen > 0
-- Per-user keys are built here from cfg.base, which carries a {hash tag} so every key
-- of one matcher lives in one Redis Cluster slot:
--   base:user:<id>    hash interests (JSON), since, skips, node, ticket; only while waiting
--   base:last:<id>    the user's most recent partner
--   base:lastof:<id>  set of users whose most recent partner is <id> (so forget is O(own))
--   base:feed:<node>  stream of matches made elsewhere for the users of <node>
-- ARGV: op, cfg (JSON), now, seed, op arguments...

local op = ARGV[1]
local cfg = cjson.decode(ARGV[2])
local NOW = tonumber(ARGV[3])
local rand_state = tonumber(ARGV[4])
local WAITING, SEQ, AUDIT = KEYS[1], KEYS[2], KEYS[3]
local NODE = cfg.node

local function user_key(u) return cfg.base .. ':user:' .. u end
local function last_key(u) return cfg.base .. ':last:' .. u end
local function last_of_key(u) return cfg.base .. ':lastof:' .. u end
local function feed_key(node) return cfg.base .. ':feed:' .. node end

-- Park-Miller: products stay below 2^53, so Lua's doubles compute it exactly.
local function random()
  rand_state = (rand_state * 16807) % 2147483647
  return rand_state / 2147483647
end

local function audit(...)
  if cfg.audit_maxlen > 0 then
    redis.call('XADD', AUDIT, 'MAXLEN', '~', cfg.audit_maxlen, '*', 'node', NODE, ...)
  end
end

local function json_list(t)
  -- cjson encodes an empty table as an object.
  if #t == 0 then return '[]' end
  return cjson.encode(t)
end

-- Every waiting user in enqueue order, with what the rules need. A user whose record
-- has expired is dropped here: its node stopped refreshing it (see RedisMatcher.sweep).
-- TODO(cluster): node death: a registry of live nodes would let this also drop the
-- waiters of a node that is gone without waiting for their record TTL.
local function load_waiting()
  local list = {}
  local ids = redis.call('ZRANGE', WAITING, 0, -1)
  for _, u in ipairs(ids) do
    local f = redis.call('HMGET', user_key(u), 'interests', 'since', 'skips', 'node', 'ticket')
    if f[1] then
      local interests, n = {}, 0
      for _, i in ipairs(cjson.decode(f[1])) do
        interests[i] = true
        n = n + 1
      end
      list[#list + 1] = {
        id = u, interests = interests, n_interests = n, since = tonumber(f[2]),
        skips = tonumber(f[3]), node = f[4], ticket = f[5],
        last = redis.call('GET', last_key(u)), gone = false,
      }
    else
      redis.call('ZREM', WAITING, u)
      audit('op', 'expire', 'user', u)
    end
  end
  return list
end

local function shares(x, y)
  for i in pairs(x.interests) do
    if y.interests[i] then return true end
  end
  return false
end

local function compatible(x, y)
  if shares(x, y) then return true end
  -- Without a shared interest, everyone who named interests must be past their window.
  for _, w in ipairs({x, y}) do
    if w.n_interests > 0 and NOW - w.since < cfg.interest_timeout then return false end
  end
  return true
end

local function recently_paired(x, y)
  -- Mutual: each one's most recent partner is the other.
  return x.last == y.id and y.last == x.id
end

local function rematch_allowed(list, seeker, partner)
  local wait = cfg.rematch_after
  if NOW - seeker.since < wait or NOW - partner.since < wait then return false end
  for _, w in ipairs(list) do
    if not w.gone and w ~= seeker and w ~= partner and compatible(partner, w)
        and not recently_paired(partner, w) then
      return false
    end
  end
  return true
end

local function set_last(u, partner)
  local old = redis.call('GET', last_key(u))
  if old then redis.call('SREM', last_of_key(old), u) end
  redis.call('SET', last_key(u), partner, 'EX', cfg.record_ttl)
  redis.call('SADD', last_of_key(partner), u)
  redis.call('EXPIRE', last_of_key(partner), cfg.record_ttl)
end

-- Pair the seeker if anyone is eligible; returns the match as 5 strings, or nil.
local function try_match(list, seeker)
  local eligible, fresh = {}, {}
  for _, w in ipairs(list) do
    if not w.gone and w ~= seeker and compatible(seeker, w) then
      eligible[#eligible + 1] = w
      if not recently_paired(seeker, w) then fresh[#fresh + 1] = w end
    end
  end
  local pool = fresh
  if #pool == 0 then
    -- A recent partner is an option only when nobody fresh is.
    for _, w in ipairs(eligible) do
      if rematch_allowed(list, seeker, w) then pool[#pool + 1] = w end
    end
  end
  if #pool == 0 then return nil end

  local chosen = nil
  for _, w in ipairs(pool) do
    -- Pool order is enqueue order: the first overdue candidate has waited longest.
    if w.skips >= cfg.max_skips then
      chosen = w
      break
    end
  end
  if not chosen then
    local choices = pool
    if cfg.prefer_same_node then
      -- Only among candidates the rules rank equal: skips still count for the others,
      -- so max_skips bounds how long a remote candidate can be passed over.
      local same = {}
      for _, w in ipairs(pool) do
        if w.node == seeker.node then same[#same + 1] = w end
      end
      if #same > 0 then choices = same end
    end
    chosen = choices[math.floor(random() * #choices) + 1]
  end
  for _, w in ipairs(pool) do
    if w ~= chosen then
      w.skips = w.skips + 1
      redis.call('HINCRBY', user_key(w.id), 'skips', 1)
    end
  end

  seeker.gone, chosen.gone = true, true
  redis.call('ZREM', WAITING, seeker.id, chosen.id)
  redis.call('DEL', user_key(seeker.id), user_key(chosen.id))
  set_last(seeker.id, chosen.id)
  set_last(chosen.id, seeker.id)
  local shared = {}
  for i in pairs(seeker.interests) do
    if chosen.interests[i] then shared[#shared + 1] = i end
  end
  table.sort(shared)
  shared = json_list(shared)
  audit('op', 'match', 'a', seeker.id, 'b', chosen.id,
    'ticket_a', seeker.ticket, 'ticket_b', chosen.ticket)
  -- Tell every other node that holds one of the two; this node's caller learns it from
  -- the reply. Written here so that no match can be made without its notice.
  local told = {}
  for _, node in ipairs({seeker.node, chosen.node}) do
    if node ~= NODE and not told[node] then
      told[node] = true
      redis.call('XADD', feed_key(node), 'MAXLEN', '~', cfg.feed_maxlen, '*',
        'a', seeker.id, 'b', chosen.id, 'shared', shared, 'by', NODE)
      redis.call('EXPIRE', feed_key(node), cfg.record_ttl)
    end
  end
  return {seeker.id, chosen.id, seeker.node, chosen.node, shared}
end

local function append(out, match)
  for _, v in ipairs(match) do out[#out + 1] = v end
end

-- Drop a waiting user; the ticket they held, or false.
local function remove_waiting(u)
  local ticket = redis.call('HGET', user_key(u), 'ticket')
  redis.call('DEL', user_key(u))
  if redis.call('ZREM', WAITING, u) == 1 and ticket then return ticket end
  return false
end

if op == 'enqueue' then
  local u, interests = ARGV[5], ARGV[6]
  if redis.call('EXISTS', user_key(u)) == 1 then return {'already_waiting'} end
  local ticket = redis.call('INCR', SEQ)
  redis.call('HSET', user_key(u), 'interests', interests, 'since', ARGV[3], 'skips', 0,
    'node', NODE, 'ticket', ticket)
  redis.call('PEXPIRE', user_key(u), cfg.waiting_ttl_ms)
  redis.call('ZADD', WAITING, ticket, u)
  audit('op', 'enqueue', 'user', u, 'ticket', ticket)
  local out = {'ok'}
  local list = load_waiting()
  for _, w in ipairs(list) do
    if w.id == u then
      local match = try_match(list, w)
      if match then append(out, match) end
      break
    end
  end
  return out
elseif op == 'sweep' then
  -- Each node re-tries its own waiters only, so every match has a user on the node that
  -- made it, and the sweep doubles as the heartbeat that keeps their records alive.
  local out = {'ok'}
  local list = load_waiting()
  for _, w in ipairs(list) do
    if not w.gone and w.node == NODE then
      redis.call('PEXPIRE', user_key(w.id), cfg.waiting_ttl_ms)
      local match = try_match(list, w)
      if match then append(out, match) end
    end
  end
  return out
elseif op == 'dequeue' then
  local u = ARGV[5]
  local ticket = remove_waiting(u)
  audit('op', 'dequeue', 'user', u, 'ticket', ticket or '')
  return {ticket and 1 or 0}
elseif op == 'forget' then
  local u = ARGV[5]
  local ticket = remove_waiting(u)
  for _, other in ipairs(redis.call('SMEMBERS', last_of_key(u))) do
    if redis.call('GET', last_key(other)) == u then redis.call('DEL', last_key(other)) end
  end
  redis.call('DEL', last_of_key(u))
  local old = redis.call('GET', last_key(u))
  if old then
    redis.call('SREM', last_of_key(old), u)
    redis.call('DEL', last_key(u))
  end
  audit('op', 'forget', 'user', u, 'ticket', ticket or '')
  return {ticket and 1 or 0}
end
return redis.error_reply('unknown matcher op ' .. tostring(op))
