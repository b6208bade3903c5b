-- Every RedisMatcher decision, run atomically by Redis (one EVALSHA per decision).
--
-- The same rules as matcher/memory.py, read that first: this file is a transcription,
-- indexes included. "now" and a random seed come from the caller (ARGV), so the
-- caller's clock and rng decide, and nothing depends on how Redis seeds math.random.
--
-- KEYS[1] waiting  sorted set user -> enqueue ticket (INCR of KEYS[2]): enqueue order
-- KEYS[2] seq      the ticket counter
-- KEYS[3] audit    stream of every decision, written only when cfg.audit_maxlen > 0
-- Other keys are built here from cfg.base, which carries a {hash tag} so every key of
-- one matcher lives in one Redis Cluster slot:
--   base:user:<id>     hash interests, tags, avoid (JSON lists), pool, since, skips, node,
--                      ticket, rematch_at; only while waiting
--   base:int:<n>:<pool>:<interest>  sorted set user -> ticket: who waits naming it
--                      (<n> is the pool's length, so no pool/interest pair collides)
--   base:open:<pool>   sorted set user -> ticket: who waits with no interest, or whose
--                      interest window is over
--   base:windows       sorted set user -> time their interest window ends
--   base:due:<node>    sorted set user -> time <node>'s sweep must re-try them
--   base:nw:<node>     set of the users of <node> who wait; base:nodes the nodes with one
--   base:alive:<node>  present while <node> decides (PX cfg.waiting_ttl_ms, renewed by
--                      every enqueue and sweep of <node>): its waiters are no ghosts
--   base:last:<id>     the user's most recent partner
--   base:lastof:<id>   set of users whose most recent partner is <id> (so forget is O(own))
--   base:feed:<node>   stream of matches made elsewhere for the users of <node>
-- Every key but seq disappears once nobody waits and every user has been forgotten.
-- ARGV: op, cfg (JSON), now, seed, op arguments...

local op = ARGV[1]
local cfg = cjson.decode(ARGV[2])
local NOW = tonumber(ARGV[3])
local rand_state = tonumber(ARGV[4])
local WAITING, SEQ, AUDIT = KEYS[1], KEYS[2], KEYS[3]
local NODE = cfg.node
local WINDOWS = cfg.base .. ':windows'
local NODES = cfg.base .. ':nodes'

local function user_key(u) return cfg.base .. ':user:' .. u end
local function last_key(u) return cfg.base .. ':last:' .. u end
local function last_of_key(u) return cfg.base .. ':lastof:' .. u end
local function feed_key(node) return cfg.base .. ':feed:' .. node end
local function int_key(pool, i) return cfg.base .. ':int:' .. #pool .. ':' .. pool .. ':' .. i end
local function open_key(pool) return cfg.base .. ':open:' .. pool end
local function due_key(node) return cfg.base .. ':due:' .. node end
local function node_waiters_key(node) return cfg.base .. ':nw:' .. node end
local function alive_key(node) return cfg.base .. ':alive:' .. node end

-- Numbers go to Redis as text; Lua's own conversion keeps only 14 digits.
local function num(x) return string.format('%.17g', x) end

-- Park-Miller: products stay below 2^53, so Lua's doubles compute it exactly.
local function random()
  rand_state = (rand_state * 16807) % 2147483647
  return rand_state / 2147483647
end

-- The first time t with t - since >= wait as the rules compute it (matcher/memory.py's
-- _at_least): a timer set there finds the rule satisfied when it fires.
local function at_least(since, wait)
  local t = since + wait
  while t - since < wait do t = t + math.max(math.abs(t), 1) * 2.220446049250313e-16 end
  return t
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

local function as_set(json)
  local set, n = {}, 0
  for _, v in ipairs(cjson.decode(json)) do
    set[v] = true
    n = n + 1
  end
  return set, n
end

-- Records read by this decision, so each user is read once and a user paired or
-- dropped earlier in it is seen as gone.
local records = {}

local function record(u)
  local rec = records[u]
  if rec ~= nil then return rec end
  local f = redis.call('HMGET', user_key(u), 'interests', 'since', 'skips', 'node', 'ticket',
    'pool', 'tags', 'avoid', 'rematch_at')
  if not f[1] then
    records[u] = false
    return false
  end
  local interests, n = as_set(f[1])
  -- "or": a record an older build wrote lacks the newer fields.
  rec = {
    id = u, interests = interests, n_interests = n, since = tonumber(f[2]),
    skips = tonumber(f[3]), node = f[4], ticket = tonumber(f[5]), pool = f[6] or '',
    tags = as_set(f[7] or '[]'), avoid = as_set(f[8] or '[]'),
    rematch_at = tonumber(f[9]) or 0, gone = false,
  }
  records[u] = rec
  return rec
end

local function last_of(rec)
  if rec.last == nil then rec.last = redis.call('GET', last_key(rec.id)) end
  return rec.last
end

-- Drop a waiting user from every index.
local function unindex(rec)
  rec.gone = true
  local u = rec.id
  redis.call('DEL', user_key(u))
  redis.call('ZREM', WAITING, u)
  for i in pairs(rec.interests) do redis.call('ZREM', int_key(rec.pool, i), u) end
  redis.call('ZREM', open_key(rec.pool), u)
  -- Only a user with interests or a rematch wait ever has a timer.
  if rec.n_interests > 0 then redis.call('ZREM', WINDOWS, u) end
  if rec.n_interests > 0 or rec.rematch_at > 0 then redis.call('ZREM', due_key(rec.node), u) end
  redis.call('SREM', node_waiters_key(rec.node), u)
  if redis.call('EXISTS', node_waiters_key(rec.node)) == 0 then
    -- A node without waiters needs no liveness: nobody can be a ghost of it.
    redis.call('SREM', NODES, rec.node)
    redis.call('DEL', alive_key(rec.node))
  end
end

local function keep_alive()
  redis.call('SET', alive_key(NODE), '1', 'PX', cfg.waiting_ttl_ms)
end

-- Every waiter of a node that stopped deciding is dropped: nobody is paired with a ghost.
local function drop_node(node)
  for _, u in ipairs(redis.call('SMEMBERS', node_waiters_key(node))) do
    local rec = record(u)
    if rec then
      unindex(rec)
    else
      redis.call('ZREM', WAITING, u)
    end
    audit('op', 'expire', 'user', u)
  end
  redis.call('DEL', node_waiters_key(node), due_key(node))
  redis.call('SREM', NODES, node)
end

local alive = {[NODE] = true}
local function node_alive(node)
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', alive_key(node)) == 1
    if not alive[node] then drop_node(node) end
  end
  return alive[node]
end

-- Users whose interest window ended join their pool's open index.
local function promote()
  for _, u in ipairs(redis.call('ZRANGEBYSCORE', WINDOWS, '-inf', num(NOW))) do
    local rec = record(u)
    if rec then redis.call('ZADD', open_key(rec.pool), rec.ticket, u) end
    redis.call('ZREM', WINDOWS, u)
  end
end

local function is_open(x)
  return x.n_interests == 0 or NOW - x.since >= cfg.interest_timeout
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
  return is_open(x) and is_open(y)
end

local function blocks(x, y)
  for t in pairs(x.avoid) do
    if y.tags[t] then return true end
  end
  for t in pairs(y.avoid) do
    if x.tags[t] then return true end
  end
  return false
end

local function by_ticket(a, b) return a.ticket < b.ticket end

-- Everyone x may meet now (recent partners included) but `besides`, in enqueue order:
-- the union of x's interest indexes and, if x is open, its pool's open index.
local function eligible(x, besides)
  local keys = {}
  for i in pairs(x.interests) do keys[#keys + 1] = int_key(x.pool, i) end
  if is_open(x) then keys[#keys + 1] = open_key(x.pool) end
  local list, seen = {}, {[x.id] = true}
  if besides then seen[besides.id] = true end
  for _, key in ipairs(keys) do
    for _, u in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if not seen[u] then
        seen[u] = true
        local w = record(u)
        if not w then
          redis.call('ZREM', key, u)  -- an index entry outliving its record
        elseif not w.gone and node_alive(w.node) and not w.gone and compatible(x, w)
            and not blocks(x, w) then
          list[#list + 1] = w
        end
      end
    end
  end
  table.sort(list, by_ticket)
  return list
end

local function recently_paired(x, y)
  -- Mutual: each one's most recent partner is the other.
  return last_of(x) == y.id and last_of(y) == x.id
end

local function set_last(u, partner)
  local old = redis.call('GET', last_key(u))
  if old then redis.call('SREM', last_of_key(old), u) end
  redis.call('SET', last_key(u), partner, 'EX', cfg.record_ttl)
  redis.call('SADD', last_of_key(partner), u)
  redis.call('EXPIRE', last_of_key(partner), cfg.record_ttl)
end

-- The seeker's pool (matcher/memory.py's _pool), and whether a rematch was held back
-- only because the partner has someone else.
local function pool_of(seeker)
  local elig = eligible(seeker, nil)
  local fresh = {}
  for _, w in ipairs(elig) do
    if not recently_paired(seeker, w) then fresh[#fresh + 1] = w end
  end
  if #fresh > 0 or #elig == 0 then return fresh, false end
  -- A recent partner is an option only when nobody fresh is; a mutual one is unique.
  local partner = elig[1]
  local wait = cfg.rematch_after
  if NOW - seeker.since < wait or NOW - partner.since < wait then return {}, false end
  if #eligible(partner, seeker) > 0 then return {}, true end
  return {partner}, false
end

-- Pair the seeker if anyone is eligible; returns the match as 5 strings (or nil) and
-- whether the sweep must re-try the seeker.
local function try_match(seeker)
  local pool, retry = pool_of(seeker)
  if #pool == 0 then return nil, retry end

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

  unindex(seeker)
  unindex(chosen)
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
  return {seeker.id, chosen.id, seeker.node, chosen.node, shared}, false
end

-- When a user who stays waiting must be re-tried next: their interest window's end or
-- their rematch time, whichever is still ahead and sooner.
local function next_due(rec)
  local due = nil
  if rec.n_interests > 0 then
    local window_end = at_least(rec.since, cfg.interest_timeout)
    if window_end > NOW then due = window_end end
  end
  if rec.rematch_at > NOW and (due == nil or rec.rematch_at < due) then due = rec.rematch_at end
  return due
end

local function append(out, match)
  for _, v in ipairs(match) do out[#out + 1] = v end
end

-- Drop a waiting user; the ticket they held, or false.
local function remove_waiting(u)
  local rec = record(u)
  if not rec then
    redis.call('ZREM', WAITING, u)  -- an index entry outliving its record
    return false
  end
  unindex(rec)
  return rec.ticket
end

if op == 'enqueue' then
  local u = ARGV[5]
  if redis.call('EXISTS', user_key(u)) == 1 then return {'already_waiting'} end
  keep_alive()
  promote()
  local ticket = redis.call('INCR', SEQ)
  local interests, n = as_set(ARGV[6])
  local rec = {
    id = u, interests = interests, n_interests = n, since = NOW, skips = 0, node = NODE,
    ticket = ticket, pool = ARGV[7], tags = as_set(ARGV[8]), avoid = as_set(ARGV[9]),
    rematch_at = 0, gone = false,
  }
  local partner = last_of(rec) and record(rec.last)
  if partner and last_of(partner) == u then
    -- The newer of a recent pair waits longest before a rematch is allowed.
    rec.rematch_at = at_least(NOW, cfg.rematch_after)
  end
  redis.call('HSET', user_key(u), 'interests', ARGV[6], 'since', ARGV[3], 'skips', 0,
    'node', NODE, 'ticket', ticket, 'pool', rec.pool, 'tags', ARGV[8], 'avoid', ARGV[9],
    'rematch_at', num(rec.rematch_at))
  redis.call('ZADD', WAITING, ticket, u)
  for i in pairs(interests) do redis.call('ZADD', int_key(rec.pool, i), ticket, u) end
  if is_open(rec) then
    redis.call('ZADD', open_key(rec.pool), ticket, u)
  else
    redis.call('ZADD', WINDOWS, num(at_least(NOW, cfg.interest_timeout)), u)
  end
  local due = next_due(rec)
  if due then redis.call('ZADD', due_key(NODE), num(due), u) end
  redis.call('SADD', node_waiters_key(NODE), u)
  redis.call('SADD', NODES, NODE)
  records[u] = rec
  audit('op', 'enqueue', 'user', u, 'ticket', ticket)
  local out = {'ok'}
  local match = try_match(rec)
  if match then append(out, match) end
  return out
elseif op == 'sweep' then
  -- Each node re-tries its own waiters only, so every match has a user on the node that
  -- made it, and the sweep doubles as the heartbeat that keeps them from being ghosts.
  local out = {'ok'}
  if redis.call('EXISTS', node_waiters_key(NODE)) == 1 then keep_alive() end
  promote()
  for _, node in ipairs(redis.call('SMEMBERS', NODES)) do node_alive(node) end
  local due = {}
  for _, u in ipairs(redis.call('ZRANGEBYSCORE', due_key(NODE), '-inf', num(NOW))) do
    local rec = record(u)
    if rec then due[#due + 1] = rec end
  end
  redis.call('ZREMRANGEBYSCORE', due_key(NODE), '-inf', num(NOW))
  table.sort(due, by_ticket)
  for _, w in ipairs(due) do
    if not w.gone then
      local match, retry = try_match(w)
      if match then
        append(out, match)
      else
        local when = retry and NOW or next_due(w)
        if when then redis.call('ZADD', due_key(NODE), num(when), w.id) end
      end
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
