-- A channel's position, and what it said after a given sequence number, in one snapshot.
-- KEYS: 1 seq, 2 epoch, 3 hist
-- ARGV: 1 after (-1 = position only), 2 candidate epoch, 3 history size,
--       4 history ttl ms (0 = none), 5 key ttl ms (0 = keep)
-- Returns {epoch, last, seq1, key1, data1, seq2, ...}: the retained messages after `after`,
-- oldest first, at most `history size` of them, none older than the ttl.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
  local keep = tonumber(ARGV[5])
  if keep > 0 then
    redis.call('PEXPIRE', KEYS[2], keep)
  end
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {epoch, last}
local after = tonumber(ARGV[1])
local cap = tonumber(ARGV[3])
if after >= 0 and after < last and cap > 0 then
  local n = math.min(last - after, cap)
  local rows = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', n)
  local ttl = tonumber(ARGV[4])
  local oldest = 0
  if ttl > 0 then
    local t = redis.call('TIME')
    oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl
  end
  for i = #rows, 1, -1 do
    local ms = tonumber(string.match(rows[i][1], '^(%d+)'))
    local f = rows[i][2]
    if ms >= oldest and tonumber(f[2]) > after then
      table.insert(out, f[2])
      table.insert(out, f[4])
      table.insert(out, f[6])
    end
  end
end
return out
