-- sluice: every limit of one request in one atomic step, all or nothing.
--
-- The same arithmetic as src/limiter/{window,gcra}.rs, outcome for outcome (a unit test
-- runs both on the same sequences). Lua numbers are doubles, exact below 2^53, so unix
-- time is kept as (microseconds, nanoseconds 0..999) and products that could pass 2^53
-- are split into 26-bit limbs. `supports` in redis.rs rejects limits whose values could
-- leave that range (periods not in whole microseconds, periods or bursts over 2^53 ns).
--
-- KEYS[i]: counter i.  ARGV[1]: now in unix ns, or '' to read the server's TIME (what
-- sluice does: every replica then agrees whatever its own clock says).  ARGV[2]: 'check'
-- or 'peek'.  Then 7 ARGV per counter: algorithm (f|s|t), limit, period in microseconds,
-- burst, emission interval in ns, cost, shadow (1|0).
-- Returns 6 integers per counter: allowed (1|0), limit, remaining, reset as
-- (microseconds, ns), retry_after in ns.
-- State: fixed window "index:count"; sliding window "index:previous:current"; token
-- bucket the theoretical arrival time in unix ns. Each key expires (PX) once its state is
-- as good as none.

if redis.replicate_commands then
  redis.replicate_commands()
end

local LIMB = 67108864 -- 2^26

-- floor(x / d) and x mod d, exact for 0 <= x < 2^53 (fmod is exact, unlike x / d).
local function divmod(x, d)
  local r = math.fmod(x, d)
  return (x - r) / d, r
end

local now_us, now_ns
if ARGV[1] ~= '' then
  local s = ARGV[1]
  if #s > 3 then
    now_us, now_ns = tonumber(string.sub(s, 1, -4)), tonumber(string.sub(s, -3))
  else
    now_us, now_ns = 0, tonumber(s)
  end
else
  local t = redis.call('TIME')
  now_us, now_ns = tonumber(t[1]) * 1000000 + tonumber(t[2]), 0
end

-- a - now in ns, for a = (us, ns) within 2^53 ns of now.
local function since_now(us, ns)
  return (us - now_us) * 1000 + (ns - now_ns)
end

-- now + d, d >= 0 ns.
local function later(d)
  local carry, ns = divmod(now_ns + d, 1000)
  return now_us + carry, ns
end

-- a * m as (high, low) in base 2^26, for a < 2^21 and m < 2^53.
local function mul2(a, m)
  local m1, m0 = divmod(m, LIMB)
  local carry, low = divmod(a * m0, LIMB)
  return a * m1 + carry, low
end

local function le2(ah, al, bh, bl)
  return ah < bh or (ah == bh and al <= bl)
end

-- floor(a * m / d) for a, d < 2^21, m < 2^53, result < 2^53.
local function muldiv(a, m, d)
  local m1, m0 = divmod(m, LIMB)
  local q1, r1 = divmod(a * m1, d)
  local q2 = divmod(r1 * LIMB + a * m0, d)
  return q1 * LIMB + q2
end

-- floor(prev * e / p) for prev < 2^21 and e < p < 2^53: the float estimate, corrected.
local function share(prev, e, p)
  local k = math.floor(prev * (e / p))
  local xh, xl = mul2(prev, e)
  while k > 0 do
    local h, l = mul2(k, p)
    if le2(h, l, xh, xl) then break end
    k = k - 1
  end
  while true do
    local h, l = mul2(k + 1, p)
    if not le2(h, l, xh, xl) then break end
    k = k + 1
  end
  return k
end

-- One outcome: allowed, limit, remaining, reset_us, reset_ns, retry_after; then the new
-- state (nil: nothing taken) and its time to live in ms.
local function outcome(allowed, limit, remaining, reset_us, reset_ns, retry)
  return { allowed and 1 or 0, limit, remaining, reset_us, reset_ns, retry }
end

local function ttl_ms(idle_us, idle_ns)
  local ms = math.ceil(since_now(idle_us, idle_ns) / 1000000)
  if ms < 1 then ms = 1 end
  return ms
end

local function fixed(state, c, take)
  local index = divmod(now_us, c.period_us)
  local count = 0
  if state then
    local si, sc = string.match(state, '^(%d+):(%d+)$')
    if tonumber(si) == index then count = tonumber(sc) end
  end
  local reset_us = (index + 1) * c.period_us
  local after = count + c.cost
  if after > c.limit then
    local left = c.limit - count
    if left < 0 then left = 0 end
    return outcome(false, c.limit, left, reset_us, 0, since_now(reset_us, 0))
  end
  if not take then
    return outcome(true, c.limit, c.limit - count, reset_us, 0, 0)
  end
  return outcome(true, c.limit, c.limit - after, reset_us, 0, 0),
    string.format('%.0f:%.0f', index, after), ttl_ms(reset_us, 0)
end

local function sliding(state, c, take)
  local pu = c.period_us
  local p = pu * 1000
  local index = divmod(now_us, pu)
  local prev, cur = 0, 0
  if state then
    local si, sp, sc = string.match(state, '^(%d+):(%d+):(%d+)$')
    si = tonumber(si)
    if si == index then
      prev, cur = tonumber(sp), tonumber(sc)
    elseif si == index - 1 then
      prev = tonumber(sc)
    end
  end
  local elapsed = (now_us - index * pu) * 1000 + now_ns
  -- The previous window's count weighted by the share of it still in the trailing
  -- period, rounded up: ceil(prev * (p - elapsed) / p).
  local weighted = prev - share(prev, elapsed, p)
  local function view(cur_count, allowed, retry)
    local left = c.limit - cur_count - weighted
    if left < 0 then left = 0 end
    local idle_us, idle_ns
    if cur_count > 0 then
      idle_us, idle_ns = (index + 2) * pu, 0
    elseif prev > 0 then
      idle_us, idle_ns = (index + 1) * pu, 0
    else
      idle_us, idle_ns = now_us, now_ns
    end
    return outcome(allowed, c.limit, left, idle_us, idle_ns, retry), idle_us, idle_ns
  end
  if cur + c.cost + weighted <= c.limit then
    if not take then
      return (view(cur, true, 0))
    end
    local after = cur + c.cost
    local o, idle_us, idle_ns = view(after, true, 0)
    return o, string.format('%.0f:%.0f:%.0f', index, prev, after), ttl_ms(idle_us, idle_ns)
  end
  -- The earliest wait after which `cost` fits, given no other traffic.
  local retry
  local needed = cur + c.cost
  if needed <= c.limit and prev > 0 then
    local at = p - muldiv(c.limit - needed, p, prev)
    if at < p then
      retry = at - elapsed
      if retry < 1 then retry = 1 end
    end
  end
  if not retry then
    local until_next = p - elapsed
    if cur == 0 then
      retry = until_next
    else
      local free = c.limit - c.cost
      if free < 0 then free = 0 end
      retry = until_next + p - muldiv(free, p, cur)
    end
  end
  return (view(cur, false, retry))
end

local function bucket(state, c, take)
  local interval = c.interval
  local tolerance = interval * c.burst
  -- ahead: how far the theoretical arrival time is past now (0 when the bucket is full).
  local start_us, start_ns, ahead = now_us, now_ns, 0
  if state and #state > 3 then
    local tat_us, tat_ns = tonumber(string.sub(state, 1, -4)), tonumber(string.sub(state, -3))
    local d = since_now(tat_us, tat_ns)
    if d > 0 then
      start_us, start_ns, ahead = tat_us, tat_ns, d
    end
  end
  local after = ahead + interval * c.cost
  if after > tolerance then
    local left = tolerance - ahead
    if left < 0 then left = 0 end
    return outcome(false, c.burst, (divmod(left, interval)), start_us, start_ns, after - tolerance)
  end
  if not take then
    return outcome(true, c.burst, (divmod(tolerance - ahead, interval)), start_us, start_ns, 0)
  end
  local tat_us, tat_ns = later(after)
  return outcome(true, c.burst, (divmod(tolerance - after, interval)), tat_us, tat_ns, 0),
    string.format('%.0f%03d', tat_us, tat_ns), ttl_ms(tat_us, tat_ns)
end

local algorithms = { f = fixed, s = sliding, t = bucket }

-- `mode: sync` (ARGV[2] == 'lease'): each counter on its own, not all or nothing. The
-- replica gives back `back` units it leased and did not spend, then is granted as many of
-- the `cost` units it asks for as fit now, taken exactly as requests of that cost would
-- be. 8 ARGV per counter: the 7 above, then `back`. Returns 6 integers per counter
-- (granted, limit, remaining, reset as (microseconds, ns), 0), then the time the script
-- ran as (microseconds, ns).

-- The state after giving back `back` units: a string, false (as good as none), or nil
-- (unchanged: the units belong to a window that is over).
local function give_back(algorithm, state, c, back)
  if algorithm == 'f' then
    local si, sc = string.match(state, '^(%d+):(%d+)$')
    if tonumber(si) ~= (divmod(now_us, c.period_us)) then return nil end
    return string.format('%s:%.0f', si, math.max(tonumber(sc) - back, 0))
  elseif algorithm == 's' then
    local si, sp, sc = string.match(state, '^(%d+):(%d+):(%d+)$')
    if tonumber(si) < (divmod(now_us, c.period_us)) - 1 then return nil end
    return string.format('%s:%s:%.0f', si, sp, math.max(tonumber(sc) - back, 0))
  end
  if #state <= 3 then return nil end
  local ahead = since_now(tonumber(string.sub(state, 1, -4)), tonumber(string.sub(state, -3)))
  if ahead <= 0 then return nil end
  ahead = ahead - back * c.interval
  if ahead <= 0 then return false end
  local tat_us, tat_ns = later(ahead)
  return string.format('%.0f%03d', tat_us, tat_ns)
end

if ARGV[2] == 'lease' then
  local reply = {}
  for i = 1, #KEYS do
    local a = 2 + (i - 1) * 8
    local algorithm = ARGV[a + 1]
    local c = {
      limit = tonumber(ARGV[a + 2]),
      period_us = tonumber(ARGV[a + 3]),
      burst = tonumber(ARGV[a + 4]),
      interval = tonumber(ARGV[a + 5]),
      cost = 1,
    }
    local want, back = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 8])
    local state = redis.call('GET', KEYS[i]) or nil
    local given = nil
    if state and back > 0 then given = give_back(algorithm, state, c, back) end
    if given ~= nil then state = given or nil end
    local step = algorithms[algorithm]
    local o = step(state, c, false)
    local granted = math.min(want, o[3])
    if granted > 0 then
      c.cost = granted
      local new_state, ttl
      o, new_state, ttl = step(state, c, true)
      redis.call('SET', KEYS[i], new_state, 'PX', ttl)
    elseif given then
      redis.call('SET', KEYS[i], given, 'KEEPTTL')
    elseif given == false then
      redis.call('DEL', KEYS[i])
    end
    reply[#reply + 1] = granted
    for k = 2, 5 do reply[#reply + 1] = o[k] end
    reply[#reply + 1] = 0
  end
  reply[#reply + 1] = now_us
  reply[#reply + 1] = now_ns
  return reply
end

local checks = {}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 7
  checks[i] = {
    step = algorithms[ARGV[a + 1]],
    limit = tonumber(ARGV[a + 2]),
    period_us = tonumber(ARGV[a + 3]),
    burst = tonumber(ARGV[a + 4]),
    interval = tonumber(ARGV[a + 5]),
    cost = tonumber(ARGV[a + 6]),
    shadow = ARGV[a + 7] == '1',
    state = redis.call('GET', KEYS[i]) or nil,
  }
end

local take = ARGV[2] == 'check'
local outcomes, writes = {}, {}
local rejected = false
for i, c in ipairs(checks) do
  if rejected or not take then
    outcomes[i] = c.step(c.state, c, false)
  else
    -- A counter named twice in one request sees its own earlier update.
    local state = c.state
    for j = i - 1, 1, -1 do
      if KEYS[j] == KEYS[i] and writes[j] then
        state = writes[j][1]
        break
      end
    end
    local o, new_state, ttl = c.step(state, c, true)
    outcomes[i] = o
    if new_state then writes[i] = { new_state, ttl } end
    if o[1] == 0 and not c.shadow then
      rejected = true
      -- Nothing is taken: earlier counters are reported as they stand.
      for j = 1, i - 1 do
        if outcomes[j][1] == 1 then
          outcomes[j] = checks[j].step(checks[j].state, checks[j], false)
        end
      end
    end
  end
end

if take and not rejected then
  for i = 1, #KEYS do
    local w = writes[i]
    if w then redis.call('SET', KEYS[i], w[1], 'PX', w[2]) end
  end
end

local reply = {}
for i = 1, #outcomes do
  for k = 1, 6 do reply[#reply + 1] = outcomes[i][k] end
end
return reply
