#!lua name=skewless_state_v1
-- Streaming window state of one entity of one declaration: events in, window aggregates out.
-- The design (keys, tiles, window formula, removal) is in skewless/stream_state.py.
--
-- FCALL skewless_state_v1 2 <events key> <tiles key> <config...> <events> <queries>
--   config: levels, level widths (us, coarsest first), windows, window widths (us), delay (us),
--           horizon (us), allowed lateness (us), value columns, raw scan limit
--   events: packed members (time <i8, order >u8 biased, one <f8 per value column), any order
--   queries: packed (time <i8, order >u8 biased), one per event to compute
-- Reply: {events that were new, packed <f8 (count, sums...) per query per window}



local function number(x)
  return string.format('%.17g', x)
end

local function read_config(args)
  local config = {widths = {}, windows = {}}
  local at = 1
  local function take()
    local value = tonumber(args[at])
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
  config.events = args[at]
  config.queries = args[at + 1]
  config.width = 1 + config.columns
  config.format = '<' .. string.rep('d', config.width)
  config.member_size = 16 + 8 * config.columns
  return config
end

local function add_into(target, values, sign, width)
  for j = 1, width do target[j] = target[j] + sign * values[j] end
end

local function zeros(width)
  local values = {}
  for j = 1, width do values[j] = 0 end
  return values
end

-- Add `deltas` (field -> values) to the packed tiles of hash `key`.
local function flush(key, deltas, config)
  local names = {}
  for name in pairs(deltas) do names[#names + 1] = name end
  for first = 1, #names, 1000 do
    local chunk = {}
    for i = first, math.min(first + 999, #names) do chunk[#chunk + 1] = names[i] end
    local old = redis.call('HMGET', key, unpack(chunk))
    local arguments = {}
    for i, name in ipairs(chunk) do
      local values = deltas[name]
      if old[i] then add_into(values, {struct.unpack(config.format, old[i])}, 1, config.width) end
      arguments[#arguments + 1] = name
      arguments[#arguments + 1] = struct.pack(config.format, unpack(values, 1, config.width))
    end
    redis.call('HSET', key, unpack(arguments))
  end
end

local function accumulate(tiles, name, values, width)
  local tile = tiles[name]
  if not tile then
    tiles[name] = {unpack(values, 1, width)}
  else
    add_into(tile, values, 1, width)
  end
end

-- Removal: every top tile before `keep` (and its sub-tiles and events) goes. Returns how many
-- top tiles and events existed.
local function remove_before(events_key, tiles_key, first, keep, last_possible, config)
  local removed = 0
  local fields = {}
  for tile = first, math.min(keep - 1, last_possible) do
    redis.call('DEL', tiles_key .. ':' .. tile)
    fields[#fields + 1] = tostring(tile)
  end
  for start = 1, #fields, 1000 do
    removed = removed + redis.call('HDEL', tiles_key, unpack(fields, start,
      math.min(start + 999, #fields)))
  end
  local bound = '(' .. number(keep * config.widths[1])
  return removed + redis.call('ZREMRANGEBYSCORE', events_key, '-inf', bound)
end

local function apply(keys, args)
  local config = read_config(args)
  local events_key, tiles_key = keys[1], keys[2]
  local widths, width, top = config.widths, config.width, config.widths[1]
  local events, size = config.events, config.member_size

  -- Watermark (latest event time + delay), the first top tile kept, and the top tile below
  -- which events were removed or dropped (-inf: none ever were).
  local meta = redis.call('HGET', tiles_key, 'meta')
  local mark, first, lost
  if meta then mark, first, lost = struct.unpack('<ddd', meta) else lost = -math.huge end
  local old_lost = lost
  local count = #events / size
  local times = {}
  local new_mark = mark
  for i = 1, count do
    local time = struct.unpack('<i8', events, (i - 1) * size + 1)
    times[i] = time
    if new_mark == nil or time + config.delay > new_mark then new_mark = time + config.delay end
  end
  local keep = first
  if new_mark ~= nil then
    local cut = math.floor((new_mark - config.horizon - config.lateness) / top)
    if keep == nil or cut > keep then keep = cut end
  end
  if first ~= nil and keep > first then
    if remove_before(events_key, tiles_key, first, keep, math.floor(mark / top), config) > 0 then
      lost = keep
    end
  end

  -- Events: a member new to the sorted set goes into its tile at every level, once.
  local added = 0
  local top_deltas, sub_deltas = {}, {}
  local lowest = keep and keep * top
  for i = 1, count do
    local time = times[i]
    if lowest ~= nil and time < lowest then
      lost = math.max(lost, keep)
    else
      local member = string.sub(events, (i - 1) * size + 1, i * size)
      if redis.call('ZADD', events_key, 'NX', number(time), member) == 1 then
        added = added + 1
        local values = {1}
        for j = 1, config.columns do values[j + 1] = struct.unpack('<d', member, 8 * j + 9) end
        local tile = math.floor(time / top)
        accumulate(top_deltas, tostring(tile), values, width)
        local fields = sub_deltas[tile]
        if not fields then
          fields = {}
          sub_deltas[tile] = fields
        end
        local start = tile * top
        for level = 2, #widths do
          accumulate(fields, (level - 1) .. ':' .. math.floor((time - start) / widths[level]), values,
            width)
        end
      end
    end
  end
  flush(tiles_key, top_deltas, config)
  for tile, fields in pairs(sub_deltas) do flush(tiles_key .. ':' .. tile, fields, config) end
  if new_mark ~= nil and (new_mark ~= mark or keep ~= first or lost ~= old_lost) then
    redis.call('HSET', tiles_key, 'meta', struct.pack('<ddd', new_mark, keep, lost))
  end

  local queries = config.queries
  local query_count = #queries / 16
  if query_count == 0 then return {added, ''} end

  -- Reads, cached for the call: top tiles, sub-tiles, both decoded on first use.
  local top_tiles = {}
  local everything = redis.call('HGETALL', tiles_key)
  for i = 1, #everything, 2 do
    if everything[i] ~= 'meta' then top_tiles[tonumber(everything[i])] = everything[i + 1] end
  end
  local decoded = {}
  local function top_tile(tile)
    local values = decoded[tile]
    if values == nil then
      local packed = top_tiles[tile]
      values = packed and {struct.unpack(config.format, packed)} or false
      decoded[tile] = values
    end
    return values
  end
  local sub_cache = {}
  local function sub_tiles(key, level, from, to)
    local cache = sub_cache[key]
    if not cache then
      cache = {}
      sub_cache[key] = cache
    end
    local missing = {}
    for index = from, to do
      local name = level .. ':' .. index
      if cache[name] == nil then missing[#missing + 1] = name end
    end
    if #missing > 0 then
      local found = redis.call('HMGET', key, unpack(missing))
      for i, name in ipairs(missing) do
        cache[name] = found[i] and {struct.unpack(config.format, found[i])} or false
      end
    end
    return cache
  end

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

  -- Events of x's top tile up to x (ties: up to the order key), added into `into` times sign.
  local function prefix(into, sign, x, tie_high, tie_low)
    local tile = math.floor(x / top)
    local total = top_tile(tile)
    if not total or total[1] == 0 then return end
    local start = tile * top
    if total[1] <= config.raw_scan_max then
      return scan(into, sign, start, x, tie_high, tie_low)
    end
    local key = tiles_key .. ':' .. tile
    local parent = start
    local cache
    for level = 2, #widths do
      local w = widths[level]
      local from, to = math.floor((parent - start) / w), math.floor((x - start) / w)
      cache = sub_tiles(key, level - 1, from, to)
      for index = from, to - 1 do
        local values = cache[(level - 1) .. ':' .. index]
        if values then add_into(into, values, sign, width) end
      end
      parent = start + to * w
    end
    local finest = cache[(#widths - 1) .. ':' .. math.floor((x - start) / widths[#widths])]
    if finest and finest[1] > 0 then scan(into, sign, parent, x, tie_high, tie_low) end
  end

  -- Sums of whole top tiles [tile - k, tile - 1], memoised per upper tile.
  local runs = {}
  local function tiles_below(tile, lowest_tile)
    local run = runs[tile]
    if not run then
      run = {[0] = zeros(width)}
      runs[tile] = run
    end
    for k = #run + 1, tile - lowest_tile do
      local values = {unpack(run[k - 1], 1, width)}
      local tile_values = top_tile(tile - k)
      if tile_values then add_into(values, tile_values, 1, width) end
      run[k] = values
    end
    return run[tile - lowest_tile]
  end

  local out = {}
  local complete_from = lost * top
  for q = 1, query_count do
    local time = struct.unpack('<i8', queries, (q - 1) * 16 + 1)
    local tie_high, tie_low
    if config.delay == 0 then
      tie_high, tie_low = struct.unpack('>I4I4', queries, (q - 1) * 16 + 9)
    end
    local upper = config.delay == 0 and time or time - config.delay
    local upper_tile = math.floor(upper / top)
    local up_to = zeros(width)
    prefix(up_to, 1, upper, tie_high, tie_low)
    local row = {}
    for _, window in ipairs(config.windows) do
      local lower = upper - window
      if lower + 1 < complete_from then
        for j = 1, width do row[#row + 1] = 0 / 0 end
      else
        local values = {unpack(up_to, 1, width)}
        add_into(values, tiles_below(upper_tile, math.floor(lower / top)), 1, width)
        prefix(values, -1, lower)
        for j = 1, width do row[#row + 1] = values[j] end
      end
    end
    out[q] = struct.pack('<' .. string.rep('d', #row), unpack(row))
  end
  return {added, table.concat(out)}
end

redis.register_function('skewless_state_v1', apply)
