"""The task scripts about finished tasks: archiving them to SQLite and waiting for them.

Plain script bodies, filled in and loaded like every other by
:func:`hivemind.taskstore.scripts.load` (which re-exports them, so that the task store finds
every script in one module).
"""

ARCHIVE_BATCH = """
-- ARGV: limit. Up to ``limit`` finished tasks that wait for the archive, each as its id, hash,
-- history and log chunks: one round trip, where a pipeline made three commands per task.
local out = {}
for _, id in ipairs(redis.call('SRANDMEMBER', '%(archive_pending)s', ARGV[1])) do
  local tk = tkey(id)
  out[#out + 1] = {id, redis.call('HGETALL', tk), redis.call('LRANGE', thistory(id), 0, -1),
                   redis.call('LRANGE', tlog(id), 0, -1)}
end
return out
"""

ARCHIVED = """
-- ARGV: retention (s), ids... The tasks are in the archive: Redis forgets them after the
-- retention period.
for i = 2, #ARGV do
  local tk = tkey(ARGV[i])
  redis.call('EXPIRE', tk, ARGV[1])
  redis.call('EXPIRE', thistory(ARGV[i]), ARGV[1])
  redis.call('EXPIRE', tlog(ARGV[i]), ARGV[1])
  redis.call('SREM', '%(archive_pending)s', ARGV[i])
end
return #ARGV - 1
"""

ENDED_AMONG = """
-- ARGV: owner ('' for an admin, who may see every task), ids... Read only: which of the
-- tasks have ended (or are gone from Redis: their records are in the archive), and which of
-- the others belong to someone else. One call instead of a status read per id: a waiter
-- asks for a thousand tasks at a time, most still running.
local terminal = {%(terminal)s}
local ended, foreign = {}, {}
for i = 2, #ARGV do
  local f = redis.call('HMGET', tkey(ARGV[i]), 'owner', 'status')
  if not f[2] or terminal[f[2]] then
    ended[#ended + 1] = ARGV[i]
  elseif ARGV[1] ~= '' and f[1] ~= ARGV[1] then
    foreign[#foreign + 1] = ARGV[i]
  end
end
return {ended, foreign}
"""
