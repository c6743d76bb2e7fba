#!lua name=skewless_state_v1
-- Streaming window state of one entity of one declaration: events in, window aggregates out.
-- The design (keys, tiles, window formula, removal) is in skewless/stream_state.py.
--
-- FCALL skewless_state_v1 2 <events key> <tiles key> <config> <events> <queries>
--   config: packed <f8: levels, level widths (us, coarsest first), windows, window widths (us),
--           delay (us), horizon (us), allowed lateness (us), value columns, raw scan limit
--   events: packed members (time <i8, order >u8 biased, one <f8 per value column), any order
--   queries: packed (time <i8, order >u8 biased), one per event to compute
-- Reply: {events that were new, packed <f8 (count, sums...) per query per window}
--
-- A tile's aggregate is `width` doubles: its count, then one sum per value column. Tiles are
-- kept as packed arrays: the top tiles of the entity in the `days` field of the tiles hash
-- (after their first tile number), and, in the hash `<tiles key>:<top tile>`, for each tile
-- holding more than `raw scan limit` events the array of its sub-tiles one level finer, field
-- `<level>:<index of the tile at its own level within the top tile>`. A tile holding at most
-- that many events is read from the sorted set of events instead.

local function number(x)
  return string.format('%.17g', x)
end

-- Caches kept between calls (allocation is what costs most in this Lua): format strings by
-- length, decoded configurations by their packed bytes.
local formats = {}
local configs = {}

local function doubles(n)
  local format = formats[n]
  if not format then
    format = '<' .. string.rep('d', n)
    formats[n] = format
  end
  return format
end

local function read_config(packed)
  local config = configs[packed]
  if config then return config end
  config = {widths = {}, windows = {}}
  local numbers = {struct.unpack(doubles(#packed / 8), packed)}
  local at = 1
  local function take()
    local value = numbers[at]
    at = at + 1
    return value
  end
  for _ = 1, take() do config.widths[#config.widths + 1] = take() end
  for _ = 1, take() do config.windows[#config.windows + 1] = take() end
  config.delay = take()
  config.horizon = take()
  config.lateness = take()
  config.columns = take()
  config.raw_scan_max = take()
  config.width = 1 + config.columns
  config.member_size = 16 + 8 * config.columns
  configs[packed] = config
  return config
end

-- Entries [from, to] (0-based) of a packed array, as one flat list of doubles.
local function entries(packed, from, to, width)
  if to < from then return {} end
  return {struct.unpack(doubles((to - from + 1) * width), packed, from * width * 8 + 1)}
end

local function pack_flat(flat, count)
  local out = {}
  for first = 1, count, 200 do
    local last = math.min(first + 199, count)
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
-- top tile hash `key` to the array of its sub-tiles, and recurse into the sub-tiles that hold
-- more than the raw scan limit. `fresh`: the array does not exist yet and `events` are all
-- the tile's events (the tile just went over the limit). `fetch(start, span)`: the events of
-- [start, start + span).
local function add_to_array(key, level, start, top_start, events, fresh, fetch, config)
  local widths, width = config.widths, config.width
  if level >= #widths then return end
  local sub = widths[level + 1]
  local fanout = widths[level] / sub
  local field = level .. ':' .. math.floor((start - top_start) / widths[level])
  local flat
  if fresh then
    flat = {}
    for i = 1, fanout * width do flat[i] = 0 end
  else
    flat = entries(redis.call('HGET', key, field), 0, fanout - 1, width)
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
  redis.call('HSET', key, field, pack_flat(flat, fanout * width))
  for index, list in pairs(by_entry) do
    local after = flat[index * width + 1]
    if after > config.raw_scan_max then
      local before = after - #list
      local entry_start = start + index * sub
      if fresh or before > config.raw_scan_max then
        add_to_array(key, level + 1, entry_start, top_start, list, fresh, fetch, config)
      else
        local all = fetch(entry_start, sub)
        add_to_array(key, level + 1, entry_start, top_start, all, true, fetch, config)
      end
    end
  end
end

local function apply(keys, args)
  local config = read_config(args[1])
  local events_key, tiles_key = keys[1], keys[2]
  local widths, width, top = config.widths, config.width, config.widths[1]
  local events, size = args[2], config.member_size

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

  -- Watermark (latest event time + delay), the first top tile kept, the top tile below which
  -- events were removed or dropped (-inf: none ever were); the top tiles as a packed array.
  local stored = redis.call('HMGET', tiles_key, 'meta', 'days')
  local mark, keep, lost
  if stored[1] then mark, keep, lost = struct.unpack('<ddd', stored[1]) else lost = -math.huge end
  local base, days = nil, {}  -- days[(tile - base) * width + j]
  local day_count = 0
  if stored[2] then
    base = struct.unpack('<d', stored[2])
    day_count = (#stored[2] - 8) / (8 * width)
    if day_count > 0 then
      days = {struct.unpack(doubles(day_count * width), stored[2], 9)}
    else
      base = nil
    end
  end
  local old_mark, old_keep, old_lost = mark, keep, lost

  local count = #events / size
  local times = {}
  for i = 1, count do
    local time = struct.unpack('<i8', events, (i - 1) * size + 1)
    times[i] = time
    if mark == nil or time + config.delay > mark then mark = time + config.delay end
  end
  if mark ~= nil then
    local cut = math.floor((mark - config.horizon - config.lateness) / top)
    if keep == nil or cut > keep then keep = cut end
  end

  -- Removal: top tiles before `keep`, their sub-tile arrays and their events.
  local changed = false
  if base ~= nil and base < keep then
    local drop = math.min(keep - base, day_count)
    for i = 0, drop - 1 do
      local tile_count = days[i * width + 1]
      if tile_count > 0 then lost = keep end
      if tile_count > config.raw_scan_max then redis.call('DEL', tiles_key .. ':' .. (base + i)) end
    end
    local rest = {}
    for i = drop * width + 1, day_count * width do rest[#rest + 1] = days[i] end
    days, base, day_count = rest, keep, day_count - drop
    redis.call('ZREMRANGEBYSCORE', events_key, '-inf', '(' .. number(keep * top))
    changed = true
  end

  -- Events: a member new to the sorted set goes into its tiles, once.
  local added = 0
  local new_by_tile = {}
  local lowest = keep and keep * top
  for i = 1, count do
    local time = times[i]
    if time < lowest then
      lost = math.max(lost, keep)
    else
      local member = string.sub(events, (i - 1) * size + 1, i * size)
      if redis.call('ZADD', events_key, 'NX', number(time), member) == 1 then
        added = added + 1
        local tile = math.floor(time / top)
        local list = new_by_tile[tile]
        if not list then
          list = {}
          new_by_tile[tile] = list
        end
        list[#list + 1] = {time, member_values(member, config)}
      end
    end
  end
  for tile in pairs(new_by_tile) do  -- grow the array of top tiles to cover every new tile
    if base == nil then
      base, day_count = tile, 1
      for j = 1, width do days[j] = 0 end
    elseif tile < base then
      local grown = {}
      for i = 1, (base - tile) * width do grown[i] = 0 end
      for i = 1, day_count * width do grown[#grown + 1] = days[i] end
      days, day_count, base = grown, day_count + base - tile, tile
    elseif tile >= base + day_count then
      for i = day_count * width + 1, (tile - base + 1) * width do days[i] = 0 end
      day_count = tile - base + 1
    end
  end
  for tile, list in pairs(new_by_tile) do
    local at = (tile - base) * width
    local before = days[at + 1]
    for _, event in ipairs(list) do
      for j = 1, width do days[at + j] = days[at + j] + event[2][j] end
    end
    if days[at + 1] > config.raw_scan_max then
      local key, start = tiles_key .. ':' .. tile, tile * top
      if before > config.raw_scan_max then
        add_to_array(key, 1, start, start, list, false, events_between, config)
      else
        redis.call('DEL', key)
        add_to_array(key, 1, start, start, events_between(start, top), true, events_between,
          config)
      end
    end
    changed = true
  end
  if changed or mark ~= old_mark or keep ~= old_keep or lost ~= old_lost then
    redis.call('HSET', tiles_key, 'meta', struct.pack('<ddd', mark, keep, lost),
      'days', struct.pack('<d', base or 0) .. pack_flat(days, day_count * width))
  end

  local queries = args[3]
  local query_count = #queries / 16
  if query_count == 0 then return {added, ''} end

  -- Events with low <= time <= high (at time == high only order keys up to `tie`) into `into`.
  local function scan(into, sign, low, high, tie_high, tie_low)
    local members = redis.call('ZRANGEBYSCORE', events_key, number(low), number(high))
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
  local function array(key, field)
    local name = key .. '|' .. field
    local packed = arrays[name]
    if packed == nil then
      packed = redis.call('HGET', key, field)
      arrays[name] = packed
    end
    return packed
  end

  -- Events of x's top tile up to x (ties: up to the order key), added into `into` times sign.
  -- Level by level: the sub-tiles of the parent before x's sub-tile, or (when fewer) the
  -- parent's aggregate minus its sub-tiles from x's on; then x's sub-tile becomes the parent.
  local function prefix(into, sign, x, tie_high, tie_low)
    local tile = math.floor(x / top)
    if base == nil or tile < base or tile >= base + day_count then return end
    local parent = {}
    for j = 1, width do parent[j] = days[(tile - base) * width + j] end
    local start = tile * top
    local parent_start = start
    local key = tiles_key .. ':' .. tile
    for level = 1, #widths - 1 do
      if parent[1] == 0 then return end
      if parent[1] <= config.raw_scan_max then break end
      local sub = widths[level + 1]
      local fanout = widths[level] / sub
      local packed = array(key, level .. ':' .. math.floor((parent_start - start) / widths[level]))
      local at = math.floor((x - parent_start) / sub)
      local flat
      if at <= fanout - at then
        flat = entries(packed, 0, at, width)
        for i = 0, at * width - 1, width do
          for j = 1, width do into[j] = into[j] + sign * flat[i + j] end
        end
        for j = 1, width do parent[j] = flat[at * width + j] end
      else
        flat = entries(packed, at, fanout - 1, width)
        for j = 1, width do into[j] = into[j] + sign * parent[j] end
        for i = 0, (fanout - at) * width - 1, width do
          for j = 1, width do into[j] = into[j] - sign * flat[i + j] end
        end
        for j = 1, width do parent[j] = flat[j] end
      end
      parent_start = parent_start + at * sub
    end
    if parent[1] > 0 then scan(into, sign, parent_start, x, tie_high, tie_low) end
  end

  -- Sums of the top tiles [lowest, upper - 1], accumulated downward once per upper tile.
  local runs = {}
  local function tiles_between(lowest, upper)
    local run = runs[upper]
    if not run then
      run = {next = upper - 1, sums = {}, at = {}}
      for j = 1, width do run.sums[j] = 0 end
      runs[upper] = run
    end
    local done = run.at[lowest]
    if done then return done end
    local sums = run.sums
    if lowest > run.next + 1 then  -- a shorter span than already summed: sum it alone
      sums = {}
      for j = 1, width do sums[j] = 0 end
      for tile = math.max(lowest, base), math.min(upper - 1, base + day_count - 1) do
        for j = 1, width do sums[j] = sums[j] + days[(tile - base) * width + j] end
      end
      return sums
    end
    for tile = run.next, lowest, -1 do
      if tile >= base and tile < base + day_count then
        for j = 1, width do sums[j] = sums[j] + days[(tile - base) * width + j] end
      end
    end
    run.next = math.min(run.next, lowest - 1)
    done = {unpack(sums, 1, width)}
    run.at[lowest] = done
    return done
  end

  local out = {}
  local complete_from = lost * top
  local row_format = doubles(#config.windows * width)
  local up_to, values, row = {}, {}, {}
  for q = 1, query_count do
    local time = struct.unpack('<i8', queries, (q - 1) * 16 + 1)
    local tie_high, tie_low
    if config.delay == 0 then
      tie_high, tie_low = struct.unpack('>I4I4', queries, (q - 1) * 16 + 9)
    end
    local upper = time - config.delay
    local upper_tile = math.floor(upper / top)
    for j = 1, width do up_to[j] = 0 end
    prefix(up_to, 1, upper, tie_high, tie_low)
    for w, window in ipairs(config.windows) do
      local lower = upper - window
      local at = (w - 1) * width
      if lower + 1 < complete_from then
        for j = 1, width do row[at + j] = 0 / 0 end
      else
        for j = 1, width do values[j] = up_to[j] end
        if base ~= nil then
          local between = tiles_between(math.floor(lower / top), upper_tile)
          for j = 1, width do values[j] = values[j] + between[j] end
        end
        prefix(values, -1, lower)
        for j = 1, width do row[at + j] = values[j] end
      end
    end
    out[q] = struct.pack(row_format, unpack(row, 1, #config.windows * width))
  end
  return {added, table.concat(out)}
end

redis.register_function('skewless_state_v1', apply)
