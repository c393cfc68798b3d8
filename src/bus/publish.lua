-- Numbers one message of a channel, keeps it in the channel's history and publishes it.
-- The channel's single ordering point: Redis runs the script atomically, so INCR's order is
-- the order of the history and of the pub/sub deliveries.
-- KEYS: 1 seq, 2 epoch, 3 hist (all with the channel's hash tag)
-- ARGV: 1 pub/sub topic, 2 data, 3 conflation key ('' = none), 4 history size,
--       5 history ttl ms (0 = none), 6 candidate epoch, 7 key ttl ms (0 = keep)
-- Returns {seq, epoch}.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[2], epoch)
  -- A new epoch starts a new numbering: never continue an old counter under it.
  redis.call('DEL', KEYS[1], KEYS[3])
end
local seq = redis.call('INCR', KEYS[1])
local cap = tonumber(ARGV[4])
if cap > 0 then
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', cap, '*', 's', seq, 'k', ARGV[3], 'd', ARGV[2])
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then
    local ms = tonumber(string.match(id, '^(%d+)'))
    if ms > ttl then
      redis.call('XTRIM', KEYS[3], 'MINID', tostring(ms - ttl))
    end
  end
end
local keep = tonumber(ARGV[7])
if keep > 0 then
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[3], keep)
end
redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. #ARGV[3] .. ' ' .. ARGV[3] .. ARGV[2])
return {seq, epoch}
