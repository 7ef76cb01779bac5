-- lmp.manager_proxy_sync — the proxies of a Manager's queues and synchronization objects:
-- the methods of mp.Queue, mp.Lock... with the same arguments, results and errors. Blocking
-- calls are parked by the server (so other clients go on) and follow lmp's timeout rule.
-- Caveat: Ctrl-C during a call the server had already completed undoes what can be undone (a
-- got item goes back to the head of the queue, an acquired lock is released).
local errors = require "lmp.errors"
local P = require "lmp.manager_proxy"

local K, call, bcall = P.K, P.call, P.bcall

local function opt_block(block, fname)
  if block ~= nil and type(block) ~= "boolean" then
    errors.typeerror(fname, "block", "a boolean or nil", block, 1)
  end
  return block ~= false
end

local function nargs(n, max, fname) errors.check_nargs(n, max, fname, 1) end

-- Undoing a call that completed after Ctrl-C interrupted the wait for its reply.
local function unget(q, late) call(q, "_unget", late[1]) end
local function unacquire(p, late) if late[1] then call(p, "release") end end

local function with(self, fn, ...)
  self:acquire()
  local r = table.pack(pcall(fn, ...))
  self:release()
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

-- Queue, JoinableQueue --------------------------------------------------------------------

local function open_queue(q, fname)
  if q[K].closed then errors.raise("ValueError", fname .. ": the queue is closed") end
end

local queue_m = {
  put = function(q, v, block, timeout, ...)
    nargs(select("#", ...) + 3, 3, "Queue:put")
    open_queue(q, "Queue:put")
    block = opt_block(block, "Queue:put")
    return bcall(q, "put", nil, v, block, errors.timeout(timeout, "Queue:put"))
  end,
  get = function(q, block, timeout, ...)
    nargs(select("#", ...) + 2, 2, "Queue:get")
    open_queue(q, "Queue:get")
    block = opt_block(block, "Queue:get")
    return (bcall(q, "get", unget, block, errors.timeout(timeout, "Queue:get")))
  end,
  put_nowait = function(q, v, ...)
    nargs(select("#", ...) + 1, 1, "Queue:put_nowait")
    open_queue(q, "Queue:put_nowait")
    return call(q, "put", v, false)
  end,
  get_nowait = function(q, ...)
    nargs(select("#", ...), 0, "Queue:get_nowait")
    open_queue(q, "Queue:get_nowait")
    return (call(q, "get", false))
  end,
  qsize = function(q) return call(q, "qsize") end,
  empty = function(q) return call(q, "empty") end,
  full = function(q) return call(q, "full") end,
  close = function(q) q[K].closed = true end, -- this proxy only, like mp.Queue's close
  _ready = function(q) return not call(q, "empty") end, -- for mp.wait
  join_thread = function() end,
  cancel_join_thread = function() end,
}
P.class("Queue", "lmp.QueueProxy", queue_m)

local jqueue_m = {
  task_done = function(q) return call(q, "task_done") end,
  join = function(q, timeout)
    return (bcall(q, "join", nil, errors.timeout(timeout, "JoinableQueue:join")))
  end,
}
for k, v in pairs(queue_m) do jqueue_m[k] = v end
P.class("JoinableQueue", "lmp.JoinableQueueProxy", jqueue_m)

-- Lock, RLock, Semaphore, BoundedSemaphore --------------------------------------------------

local function acquire(fname)
  return function(p, block, timeout, ...)
    nargs(select("#", ...) + 2, 2, fname)
    block = opt_block(block, fname)
    return bcall(p, "acquire", unacquire, block, errors.timeout(timeout, fname))
  end
end

local function lock_methods(name)
  return {
    acquire = acquire(name .. ":acquire"),
    release = function(p, ...)
      nargs(select("#", ...), 0, name .. ":release")
      return call(p, "release")
    end,
    locked = function(p) return call(p, "locked") end,
    with = with,
  }
end
P.class("Lock", "lmp.LockProxy", lock_methods("Lock"))
P.class("RLock", "lmp.RLockProxy", lock_methods("RLock"))

local function sem_methods(name)
  return {
    acquire = acquire(name .. ":acquire"),
    release = function(p, n, ...)
      nargs(select("#", ...) + 1, 1, name .. ":release")
      if n ~= nil and math.type(n) ~= "integer" then
        errors.typeerror(name .. ":release", "n", "an integer", n)
      end
      return call(p, "release", n)
    end,
    get_value = function(p) return call(p, "get_value") end,
    with = with,
  }
end
P.class("Semaphore", "lmp.SemaphoreProxy", sem_methods("Semaphore"))
P.class("BoundedSemaphore", "lmp.BoundedSemaphoreProxy", sem_methods("BoundedSemaphore"))

-- Event, Condition, Barrier -----------------------------------------------------------------

P.class("Event", "lmp.EventProxy", {
  set = function(e) return call(e, "set") end,
  clear = function(e) return call(e, "clear") end,
  is_set = function(e) return call(e, "is_set") end,
  wait = function(e, timeout, ...)
    nargs(select("#", ...) + 1, 1, "Event:wait")
    return (bcall(e, "wait", nil, errors.timeout(timeout, "Event:wait")))
  end,
})

local cond_m = {
  acquire = acquire("Condition:acquire"),
  release = function(c) return call(c, "release") end,
  wait = function(c, timeout, ...)
    nargs(select("#", ...) + 1, 1, "Condition:wait")
    return (bcall(c, "wait", nil, errors.timeout(timeout, "Condition:wait")))
  end,
  notify = function(c, n, ...)
    nargs(select("#", ...) + 1, 1, "Condition:notify")
    if n ~= nil and math.type(n) ~= "integer" then
      errors.typeerror("Condition:notify", "n", "an integer", n)
    end
    return call(c, "notify", n)
  end,
  notify_all = function(c) return call(c, "notify_all") end,
  with = with,
}
--- Waits until pred() is true (re-checked after each wake-up) or the timeout is spent;
--- returns pred()'s last value. Called holding the lock.
function cond_m.wait_for(c, pred, timeout)
  if type(pred) ~= "function" then errors.typeerror("Condition:wait_for", "pred", "a function", pred) end
  timeout = errors.timeout(timeout, "Condition:wait_for")
  local deadline = timeout and P.monotonic() + timeout
  local result = pred()
  while not result do
    local left
    if deadline then
      left = deadline - P.monotonic()
      if left <= 0 then break end
    end
    c:wait(left)
    result = pred()
  end
  return result
end
P.class("Condition", "lmp.ConditionProxy", cond_m)

local barrier_fields = { parties = true, n_waiting = true, broken = true }
P.class("Barrier", "lmp.BarrierProxy", {
  wait = function(b, timeout, ...)
    nargs(select("#", ...) + 1, 1, "Barrier:wait")
    return (bcall(b, "wait", nil, errors.timeout(timeout, "Barrier:wait")))
  end,
  reset = function(b) return call(b, "reset") end,
  abort = function(b) return call(b, "abort") end,
}, function(b, k)
  if barrier_fields[k] then return call(b, "field", k) end
end)

return P
