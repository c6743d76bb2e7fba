#!lua name=skewless_history_v1
-- Streaming transaction history of a declaration's entities: feature vectors in, each
-- transaction's earlier ones out. The design (keys, members, bounds) is in skewless/history.py.
--
-- FCALL skewless_history_v1 <2n> <members key 1> <index key 1> ... <length> <kept> <size>
--   <read> <members 1> ...
--   members: packed members of the entity (time >u8 and order key >u8, both offset binary, then
--            the feature vector), `size` bytes each, any order
--   read: 1 to reply with each member's earlier members, 0 to only store them (a load)
-- Reply: per entity, a string: per member in the order given, one byte `c` then the `c` (at
-- most `length`) members of the entity before it in (time, order key) order, latest first,
-- then `length - c` runs of `size` zero bytes: `1 + length * size` bytes per member.
--
-- The members key is a sorted set with every score 0, so its order is the members' bytes: the
-- 16 leading bytes order them by (time, order key). The index hash maps the order key to the
-- member stored for it: a member already there is a no-op (a replay), another member with the
-- same order key replaces it (a re-sent transaction). Once the entity holds more than
-- `kept + length` members the oldest leave, with their index entries, down to `kept` (a trim
-- every `length` transactions, not one per transaction).

local function push(keys, args)
  local length, kept, size = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local read = args[4] == '1'
  local padding = string.rep('\0', size)
  local replies = {}
  for entity = 1, #keys / 2 do
    local members, index = keys[2 * entity - 1], keys[2 * entity]
    local blob = args[4 + entity]
    local count = #blob / size
    for at = 0, count - 1 do
      local member = string.sub(blob, at * size + 1, (at + 1) * size)
      local order = string.sub(member, 9, 16)
      local stored = redis.call('HGET', index, order)
      if stored ~= member then
        if stored then
          redis.call('ZREM', members, stored)
        end
        redis.call('ZADD', members, 0, member)
        redis.call('HSET', index, order, member)
      end
    end
    local parts = {}
    if read then
      for at = 0, count - 1 do
        local head = string.sub(blob, at * size + 1, at * size + 16)
        local earlier = redis.call('ZREVRANGEBYLEX', members, '(' .. head, '-', 'LIMIT', 0, length)
        parts[#parts + 1] = string.char(#earlier)
        for _, member in ipairs(earlier) do
          parts[#parts + 1] = member
        end
        for _ = #earlier + 1, length do
          parts[#parts + 1] = padding
        end
      end
    end
    local held = redis.call('ZCARD', members)
    if held > kept + length then
      local gone = redis.call('ZRANGE', members, 0, held - kept - 1)
      redis.call('ZREMRANGEBYRANK', members, 0, held - kept - 1)
      for _, member in ipairs(gone) do
        redis.call('HDEL', index, string.sub(member, 9, 16))
      end
    end
    replies[entity] = table.concat(parts)
  end
  return replies
end

redis.register_function('skewless_history_v1', push)
