#!lua name=skewless_state_v2
-- Streaming window state of a declaration's entities: events in, window aggregates out.
-- The design (keys, tiles, window formula, removal) is in skewless/stream_state.py.
--
-- FCALL skewless_state_v2 <6n> <events key 1> <tiles key 1> <arrays key 1> <index key 1>
--   <known key 1> <pending key 1> ... <config> <events 1> <queries 1> <known 1> ...
--   config: packed <f8: levels, level widths (us, coarsest first), windows, window widths (us),
--           delay (us), horizon (us), allowed lateness (us), value columns, raw scan limit,
--           and for a load of the state a stream starting at `until` needs: until (us; else -inf)
--   events: packed members (time <i8, order >u8 biased, one <f8 per value column), any order
--   queries: packed (time <i8, order >u8 biased), one per event to compute
--   known: packed (time <i8, order >u8 biased) of transactions a delayed declaration's events
--          (labels) may name; empty for an undelayed declaration
-- Reply: {events that were new, packed <f8 (count, sums...) per query per window, entity by
-- entity, the events refused: per label whose transaction the entity did not know within the
-- state's horizon, its entity's position in the call (<f8) and its member}.
--
-- Identity: the order key (the transaction id) identifies an event within its entity. The index
-- hash maps it to the member counted for it; an event whose member differs replaces
-- that member (removed from the events and the tiles, the new one added), an identical one is a
-- no-op. A delayed declaration's events (labels) count at the time of the transaction they
-- name, known from the known sorted set (score: time, member: order key); a label for a
-- transaction not known yet waits in the pending sorted set (and in the index
-- as 'p' .. member) until the transaction comes, and is refused once older than the tiles kept.
--
-- An aggregate is `width` doubles: a count, then one sum per value column. The top tiles of an
-- entity are one packed array of *running* aggregates (entry i: tiles base..base+i) in the
-- `days` field of its tiles hash, after `base` (so a run of whole tiles costs two entries).
-- In the arrays hash, each tile holding more than `raw scan limit` events has the packed array
-- of its sub-tiles one level finer, field `<top tile>/<level>:<index of the tile at its own
-- level within the top tile>`. A tile holding at most that many events is read from the
-- sorted set of events instead. The six keys of an entity are all the keys a call touches
-- (one hash tag: one Redis Cluster slot). Allocation is what costs most in Redis's Lua: the code
-- reuses tables and reads packed entries in place.

local formats = {}
local configs = {}
local configs_size = 0
local numbers = {}
local numbers_size = 0
-- Scratch tables, reused by every entity of every call (calls never run concurrently).
local up_to, below, row, parent, carry = {}, {}, {}, {}, {}

local function doubles(n)
  local format = formats[n]
  if not format then
    format = '<' .. string.rep('d', n)
    formats[n] = format
  end
  return format
end

local function number(x)
  return string.format('%.17g', x)
end

-- `number` of a tile start, remembered (the same few tile starts come back call after call).
local function start_number(x)
  local text = numbers[x]
  if not text then
    if numbers_size > 100000 then
      numbers, numbers_size = {}, 0
    end
    text = number(x)
    numbers[x] = text
    numbers_size = numbers_size + 1
  end
  return text
end

local function read_config(packed)
  local config = configs[packed]
  if config then return config end
  config = {widths = {}, windows = {}}
  local numbers = {struct.unpack(doubles(#packed / 8), packed)}
  local at = 0
  local function take()
    at = at + 1
    return numbers[at]
  end
  for _ = 1, take() do config.widths[#config.widths + 1] = take() end
  for _ = 1, take() do config.windows[#config.windows + 1] = take() end
  config.delay = take()
  config.horizon = take()
  config.lateness = take()
  config.columns = take()
  config.raw_scan_max = take()
  config.reload_until = take()
  config.width = 1 + config.columns
  config.member_size = 16 + 8 * config.columns
  if configs_size > 1000 then  -- (each load for a new `until` has a configuration of its own)
    configs, configs_size = {}, 0
  end
  configs[packed] = config
  configs_size = configs_size + 1
  return config
end

local function pack_flat(flat, from, to)
  local out = {}
  for first = from, to, 240 do
    local last = math.min(first + 239, to)
    out[#out + 1] = struct.pack(doubles(last - first + 1), unpack(flat, first, last))
  end
  return table.concat(out)
end

local function member_values(member, config)
  local values = {1}
  for j = 1, config.columns do values[j + 1] = struct.unpack('<d', member, 8 * j + 9) end
  return values
end

-- Add the events (list of {time, values}) under the tile [start, start + widths[level]) of
-- the top tile whose fields in arrays hash `key` begin with `tile_prefix` to the array of its
-- sub-tiles, and recurse into the sub-tiles that hold more than the raw scan limit. `fresh`:
-- the array does not exist yet and `events` are all the tile's events (the tile just went over
-- the limit). `fetch(start, span)`: the events of [start, start + span).
local function add_to_array(key, tile_prefix, level, start, top_start, events, fresh, fetch,
    config)
  local widths, width = config.widths, config.width
  if level >= #widths then return end
  local sub = widths[level + 1]
  local fanout = widths[level] / sub
  local field = tile_prefix .. level .. ':' .. math.floor((start - top_start) / widths[level])
  local flat
  if fresh then
    flat = {}
    for i = 1, fanout * width do flat[i] = 0 end
  else
    flat = {struct.unpack(doubles(fanout * width), redis.call('HGET', key, field))}
  end
  local by_entry = {}
  for _, event in ipairs(events) do
    local index = math.floor((event[1] - start) / sub)
    local list = by_entry[index]
    if not list then
      list = {}
      by_entry[index] = list
    end
    list[#list + 1] = event
    for j = 1, width do flat[index * width + j] = flat[index * width + j] + event[2][j] end
  end
  redis.call('HSET', key, field, pack_flat(flat, 1, fanout * width))
  for index, list in pairs(by_entry) do
    local after = flat[index * width + 1]
    if after > config.raw_scan_max then
      local entry_start = start + index * sub
      if fresh or after - #list > config.raw_scan_max then
        add_to_array(key, tile_prefix, level + 1, entry_start, top_start, list, fresh, fetch,
          config)
      else
        local all = fetch(entry_start, sub)
        add_to_array(key, tile_prefix, level + 1, entry_start, top_start, all, true, fetch,
          config)
      end
    end
  end
end

-- Delete the sub-tile arrays of the top tiles in `tiles` (a list) from arrays hash `key`.
local function drop_arrays(key, tiles)
  if #tiles == 0 then return end
  local prefixes = {}
  for _, tile in ipairs(tiles) do prefixes[tile .. '/'] = true end
  local doomed = {}
  for _, name in ipairs(redis.call('HKEYS', key)) do
    local slash = string.find(name, '/', 1, true)
    if slash and prefixes[string.sub(name, 1, slash)] then doomed[#doomed + 1] = name end
  end
  for first = 1, #doomed, 1000 do
    redis.call('HDEL', key, unpack(doomed, first, math.min(first + 999, #doomed)))
  end
end

-- One entity: register the transactions it knows, add its events, remove what is too old,
-- append its queries' windows to `out` and its refused events to `refused`.
local function entity(config, position, events_key, tiles_key, arrays_key, index_key, known_key,
                      pending_key, events, queries, known, out, refused)
  local widths, width, top = config.widths, config.width, config.widths[1]
  local size, raw_scan_max = config.member_size, config.raw_scan_max

  -- All events of [start, start + span), as {time, values}.
  local function events_between(start, span)
    local found = {}
    local bound = '(' .. number(start + span)
    local members = redis.call('ZRANGEBYSCORE', events_key, number(start), bound)
    for i, member in ipairs(members) do
      found[i] = {struct.unpack('<i8', member), member_values(member, config)}
    end
    return found
  end

  -- Watermark, the first top tile kept, one past the latest event removed or dropped (-inf:
  -- none ever was; a window reaching below it is incomplete); the top tiles' running aggregates.
  local stored = redis.call('HMGET', tiles_key, 'meta', 'days')
  local mark, keep, lost = -math.huge, -math.huge, -math.huge  -- (-inf: none yet)
  if stored[1] then mark, keep, lost = struct.unpack('<ddd', stored[1]) end
  local days, base, day_count = stored[2], nil, 0
  if days then
    base = struct.unpack('<d', days)
    day_count = (#days - 8) / (8 * width)
    if day_count == 0 then base = nil end
  end
  local old_keep, old_lost = keep, lost

  -- The watermark is the stream's time as the entity sees it: the latest event computed, or
  -- added when the declaration has no delay. Labels (delayed declarations) do not move it: a
  -- worker may read them ahead of the transactions it scores.
  if config.delay == 0 then
    for i = 1, #events / size do
      local time = struct.unpack('<i8', events, (i - 1) * size + 1)
      if time > mark then mark = time end
    end
  end
  for q = 1, #queries / 16 do
    local time = struct.unpack('<i8', queries, (q - 1) * 16 + 1)
    if time > mark then mark = time end
  end
  if config.reload_until > -math.huge then
    -- A load for a stream starting at `until` (maybe earlier than the entity's watermark, for a
    -- replay): it brings every event after `until - horizon`, so from there nothing is lost.
    mark = config.reload_until
    keep = math.floor((mark - config.horizon - config.lateness) / top)
    lost = math.min(lost, mark - config.horizon + 1)
  elseif mark > -math.huge then
    keep = math.max(keep, math.floor((mark - config.horizon - config.lateness) / top))
  end

  -- The running aggregates: `flat` holds entries from..day_count-1 (0-based) once decoded;
  -- an in-order write decodes and re-encodes only the entries from the one before its tile.
  local flat, from = nil, 0
  local function decode(first)
    first = math.max(0, math.min(first, day_count - 1))
    local n = day_count - first
    flat = n > 0 and {struct.unpack(doubles(n * width), days, 9 + first * width * 8)} or {}
    from = first
  end
  local changed = false

  -- Removal: top tiles before `keep`, their sub-tile arrays and their events.
  if base ~= nil and base < keep then
    local drop = math.min(keep - base, day_count)
    decode(0)
    local previous = 0
    local removed = false
    local busy = {}
    for i = 0, drop - 1 do
      local tile_count = flat[i * width + 1] - previous
      previous = flat[i * width + 1]
      if tile_count > 0 then removed = true end
      if tile_count > raw_scan_max then busy[#busy + 1] = base + i end
    end
    drop_arrays(arrays_key, busy)
    local rest = {}
    for i = drop * width + 1, day_count * width do
      local j = (i - 1) % width + 1
      rest[#rest + 1] = flat[i] - flat[(drop - 1) * width + j]
    end
    flat, base, day_count = rest, keep, day_count - drop
    if day_count == 0 then base = nil end
    local bound = '(' .. number(keep * top)
    if removed then  -- windows reaching below the latest removed event are incomplete from now
      local last = redis.call('ZREVRANGEBYSCORE', events_key, bound, '-inf', 'WITHSCORES', 'LIMIT',
        0, 1)
      if last[2] then lost = math.max(lost, tonumber(last[2]) + 1) end
    end
    local gone = redis.call('ZRANGEBYSCORE', events_key, '-inf', bound)
    for first = 1, #gone, 1000 do
      local orders = {}
      for i = first, math.min(first + 999, #gone) do
        orders[#orders + 1] = string.sub(gone[i], 9, 16)
      end
      redis.call('HDEL', index_key, unpack(orders))
    end
    redis.call('ZREMRANGEBYSCORE', events_key, '-inf', bound)
    changed = true
  end
  if keep ~= old_keep and config.delay > 0 then
    -- Transactions too old to be named, and labels that waited for one in vain (refused).
    local bound = '(' .. number(keep * top)
    redis.call('ZREMRANGEBYSCORE', known_key, '-inf', bound)
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', pending_key, '-inf', bound)) do
      redis.call('HDEL', index_key, string.sub(member, 9, 16))
      refused[#refused + 1] = struct.pack('<d', position) .. member
    end
    redis.call('ZREMRANGEBYSCORE', pending_key, '-inf', bound)
  end

  -- Events, by identity: a member new for its order key goes into its tiles, once, and the
  -- member it replaces (if any) comes out of them. `by_tile[tile]`: {time, values, +1 or -1}.
  local added = 0
  local by_tile = {}
  local lowest = keep * top
  local first_tile, last_tile
  local function note(time, values, sign)
    local tile = math.floor(time / top)
    local list = by_tile[tile]
    if not list then
      list = {}
      by_tile[tile] = list
      if first_tile == nil or tile < first_tile then first_tile = tile end
      if last_tile == nil or tile > last_tile then last_tile = tile end
    end
    list[#list + 1] = {time, values, sign}
  end
  local delayed = config.delay > 0
  -- Take the member counted for `order` out of the events, the tiles and the index.
  local function forget(order, counted)
    redis.call('ZREM', events_key, counted)
    redis.call('HDEL', index_key, order)
    note(struct.unpack('<i8', counted), member_values(counted, config), -1)
  end
  -- A label waits in `pending` (and in the index as 'p' .. member) until its transaction comes.
  local function take(member)
    local order = string.sub(member, 9, 16)
    local time = struct.unpack('<i8', member)
    local old = redis.call('HGET', index_key, order)
    local waiting
    if old and #old > size then  -- a label waiting for its transaction: this one replaces it
      waiting, old = string.sub(old, 2), nil
    end
    if delayed then  -- (a label counts at the time of the transaction it names)
      local at = redis.call('ZSCORE', known_key, order)
      if not at then
        if waiting == member then return end
        if waiting then redis.call('ZREM', pending_key, waiting) end
        if time < lowest then
          redis.call('HDEL', index_key, order)
          refused[#refused + 1] = struct.pack('<d', position) .. member
        else
          redis.call('ZADD', pending_key, number(time), member)
          redis.call('HSET', index_key, order, 'p' .. member)
        end
        return
      end
      if waiting then
        redis.call('ZREM', pending_key, waiting)
        redis.call('HDEL', index_key, order)
      end
      if tonumber(at) ~= time then
        time = tonumber(at)
        member = struct.pack('<i8', time) .. string.sub(member, 9)
      end
    end
    if time < lowest then  -- (dropped; the version counted before is not the last one either)
      if old then forget(order, old) end
      lost = math.max(lost, time + 1)
      return
    end
    if old == member then return end
    if old then
      redis.call('ZREM', events_key, old)
      note(struct.unpack('<i8', old), member_values(old, config), -1)
    end
    redis.call('ZADD', events_key, number(time), member)
    redis.call('HSET', index_key, order, member)
    added = added + 1
    note(time, member_values(member, config), 1)
  end
  -- Transactions a delayed declaration's labels may name: a label waiting for one is counted,
  -- a label counted for one whose time changed moves with it.
  for q = 1, #known / 16 do
    local time = struct.unpack('<i8', known, (q - 1) * 16 + 1)
    if time >= lowest then
      local order = string.sub(known, (q - 1) * 16 + 9, q * 16)
      if redis.call('ZADD', known_key, 'CH', number(time), order) == 1 then
        local counted = redis.call('HGET', index_key, order)
        if counted and #counted > size then
          take(string.sub(counted, 2))
        elseif counted and struct.unpack('<i8', counted) ~= time then
          take(counted)
        end
      end
    else  -- a transaction moved to before what is kept: its label is dropped with it
      local order = string.sub(known, (q - 1) * 16 + 9, q * 16)
      if redis.call('ZREM', known_key, order) == 1 then
        local counted = redis.call('HGET', index_key, order)
        if counted and #counted <= size then forget(order, counted) end
      end
      lost = math.max(lost, time + 1)
    end
  end
  for i = 1, #events / size do
    take(string.sub(events, (i - 1) * size + 1, i * size))
  end
  if first_tile ~= nil then
    if base == nil then
      base, day_count, flat, from = first_tile, 0, {}, 0
    elseif first_tile < base then  -- grow downward: leading zero aggregates
      if not flat then decode(0) end
      local grown = {}
      for i = 1, (base - first_tile) * width do grown[i] = 0 end
      for i = 1, day_count * width do grown[#grown + 1] = flat[i] end
      flat, day_count, base = grown, day_count + base - first_tile, first_tile
    elseif not flat then
      decode(first_tile - base - 1)
    end
    -- flat[(e - from) * width + j]: entry e, column j
    local function entry(e, j)
      if e < 0 then return 0 end
      return flat[(e - from) * width + j]
    end
    if last_tile >= base + day_count then  -- grow upward: repeat the last running aggregate
      for e = day_count, last_tile - base do
        for j = 1, width do flat[(e - from) * width + j] = entry(e - 1, j) end
      end
      day_count = last_tile - base + 1
    end
    for j = 1, width do carry[j] = 0 end
    for tile = first_tile, base + day_count - 1 do
      local e = tile - base
      local list = by_tile[tile]
      if list then
        -- (the entry before already carries the batch's changes of the tiles before this one)
        local before = entry(e, 1) - (e > 0 and entry(e - 1, 1) - carry[1] or 0)
        local net, replaced = 0, false
        for _, change in ipairs(list) do
          local sign = change[3]
          for j = 1, width do carry[j] = carry[j] + sign * change[2][j] end
          net = net + sign
          if sign < 0 then replaced = true end
        end
        local tile_prefix, start = tile .. '/', tile * top
        if replaced then  -- (rare: the tile's sub-tiles are built again from its events)
          if before > raw_scan_max then drop_arrays(arrays_key, {tile}) end
          if before + net > raw_scan_max then
            add_to_array(arrays_key, tile_prefix, 1, start, start, events_between(start, top),
              true, events_between, config)
          end
        elseif before + net > raw_scan_max then
          if before > raw_scan_max then
            add_to_array(arrays_key, tile_prefix, 1, start, start, list, false, events_between,
              config)
          else
            drop_arrays(arrays_key, {tile})
            add_to_array(arrays_key, tile_prefix, 1, start, start, events_between(start, top), true,
              events_between, config)
          end
        end
      end
      for j = 1, width do flat[(e - from) * width + j] = entry(e, j) + carry[j] end
    end
    changed = true
  end
  if changed then
    local head = from > 0 and string.sub(days, 1, 8 + from * width * 8)
      or struct.pack('<d', base or 0)
    days = head .. pack_flat(flat, 1, (day_count - from) * width)
  end
  -- (the watermark alone is kept only with other changes: it matters through `keep`)
  if changed or keep ~= old_keep or lost ~= old_lost then
    local meta = struct.pack('<ddd', mark, keep, lost)
    if days then
      redis.call('HSET', tiles_key, 'meta', meta, 'days', days)
    else
      redis.call('HSET', tiles_key, 'meta', meta)
    end
  end

  local query_count = #queries / 16
  if query_count == 0 then return added end

  -- Running aggregate of top tile `tile` (all tiles base..tile) into `into`, times `sign`.
  local function running(into, sign, tile)
    if base == nil or tile < base then return end
    local i = math.min(tile, base + day_count - 1) - base
    local at = 9 + i * width * 8
    for j = 1, width do
      into[j] = into[j] + sign * struct.unpack('<d', days, at + (j - 1) * 8)
    end
  end

  -- Events with low <= time <= high (at time == high only order keys up to `tie`) into `into`.
  local function scan(into, sign, low, high, tie_high, tie_low)
    local members = redis.call('ZRANGEBYSCORE', events_key, start_number(low), number(high))
    for _, member in ipairs(members) do
      local inside = true
      if tie_high ~= nil and struct.unpack('<i8', member) == high then
        local order_high, order_low = struct.unpack('>I4I4', member, 9)
        inside = order_high < tie_high or (order_high == tie_high and order_low <= tie_low)
      end
      if inside then
        into[1] = into[1] + sign
        for j = 1, config.columns do
          into[j + 1] = into[j + 1] + sign * struct.unpack('<d', member, 8 * j + 9)
        end
      end
    end
  end

  local arrays = {}

  -- Events of x's top tile up to x (ties: up to the order key), added into `into` times sign.
  -- Level by level: the sub-tiles of the parent before x's sub-tile, or (when fewer) the
  -- parent's aggregate minus its sub-tiles from x's on; then x's sub-tile becomes the parent.
  local function prefix(into, sign, x, tie_high, tie_low)
    local tile = math.floor(x / top)
    if base == nil or tile < base or tile >= base + day_count then return end
    for j = 1, width do parent[j] = 0 end
    running(parent, 1, tile)
    running(parent, -1, tile - 1)
    local start = tile * top
    local parent_start = start
    local tile_prefix
    for level = 1, #widths - 1 do
      if parent[1] == 0 then return end
      if parent[1] <= raw_scan_max then break end
      tile_prefix = tile_prefix or tile .. '/'
      local sub = widths[level + 1]
      local fanout = widths[level] / sub
      local index = math.floor((parent_start - start) / widths[level])
      local field = tile_prefix .. level .. ':' .. index
      local packed = arrays[field]
      if not packed then
        packed = redis.call('HGET', arrays_key, field)
        arrays[field] = packed
      end
      local at = math.floor((x - parent_start) / sub)
      if at <= fanout - at then
        for i = 0, at - 1 do
          for j = 1, width do
            into[j] = into[j] + sign * struct.unpack('<d', packed, 1 + ((i * width) + j - 1) * 8)
          end
        end
      else
        for j = 1, width do into[j] = into[j] + sign * parent[j] end
        for i = at, fanout - 1 do
          for j = 1, width do
            into[j] = into[j] - sign * struct.unpack('<d', packed, 1 + ((i * width) + j - 1) * 8)
          end
        end
      end
      for j = 1, width do
        parent[j] = struct.unpack('<d', packed, 1 + ((at * width) + j - 1) * 8)
      end
      parent_start = parent_start + at * sub
    end
    if parent[1] > 0 then scan(into, sign, parent_start, x, tie_high, tie_low) end
  end

  local complete_from = lost
  local windows = config.windows
  local row_format = doubles(#windows * width)
  for q = 1, query_count do
    local time = struct.unpack('<i8', queries, (q - 1) * 16 + 1)
    local tie_high, tie_low
    if config.delay == 0 then
      tie_high, tie_low = struct.unpack('>I4I4', queries, (q - 1) * 16 + 9)
    end
    local upper = time - config.delay
    local upper_tile = math.floor(upper / top)
    for j = 1, width do up_to[j] = 0 end
    running(up_to, 1, upper_tile - 1)
    prefix(up_to, 1, upper, tie_high, tie_low)
    for w = 1, #windows do
      local lower = upper - windows[w]
      local at = (w - 1) * width
      if lower + 1 < complete_from then
        for j = 1, width do row[at + j] = 0 / 0 end
      else
        -- (L, U] = running(tile(U) - 1) + P(U) - running(tile(L) - 1) - P(L)
        for j = 1, width do below[j] = 0 end
        running(below, 1, math.floor(lower / top) - 1)
        prefix(below, 1, lower)
        for j = 1, width do row[at + j] = up_to[j] - below[j] end
      end
    end
    out[#out + 1] = struct.pack(row_format, unpack(row, 1, #windows * width))
  end
  return added
end

local function apply(keys, args)
  local config = read_config(args[1])
  local out, refused = {}, {}
  local added = 0
  for i = 1, #keys / 6 do
    local k = 6 * (i - 1)
    added = added + entity(config, i - 1, keys[k + 1], keys[k + 2], keys[k + 3], keys[k + 4],
      keys[k + 5], keys[k + 6], args[3 * i - 1], args[3 * i], args[3 * i + 1], out, refused)
  end
  return {added, table.concat(out), table.concat(refused)}
end

redis.register_function('skewless_state_v2', apply)
