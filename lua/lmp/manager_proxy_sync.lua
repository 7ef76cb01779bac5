-- lmp.manager_proxy_sync — the proxies of a Manager's queues and synchronization objects:
-- the methods of mp.Queue, mp.Lock... with the same arguments, results and errors. Blocking
-- calls are parked by the server (so other clients go on) and follow lmp's timeout rule.
-- Caveat: Ctrl-C during a call the server had already completed undoes what can be undone (a
-- got item goes back to the head of the queue, an acquired lock is released).
local errors = require "lmp.errors"
local P = require "lmp.manager_proxy"

local K, call, bcall, method, ANY = P.K, P.call, P.bcall, P.method, P.ANY

local function opt_block(block, fname)
  if block ~= nil and type(block) ~= "boolean" then
    errors.typeerror(fname, "block", "a boolean or nil", block, 1)
  end
  return block ~= false
end

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

-- Method specs (P.method): the most arguments each takes, the fewest, the function.
local queue_m = {
  put = method(3, function(q, v, block, timeout)
    open_queue(q, "Queue:put")
    block = opt_block(block, "Queue:put")
    return bcall(q, "put", nil, v, block, errors.timeout(timeout, "Queue:put"))
  end, 1),
  get = method(2, function(q, block, timeout)
    open_queue(q, "Queue:get")
    block = opt_block(block, "Queue:get")
    return (bcall(q, "get", unget, block, errors.timeout(timeout, "Queue:get")))
  end),
  put_nowait = method(1, function(q, v)
    open_queue(q, "Queue:put_nowait")
    return call(q, "put", v, false)
  end, 1),
  get_nowait = method(0, function(q)
    open_queue(q, "Queue:get_nowait")
    return (call(q, "get", false))
  end),
  qsize = method(0, function(q) return call(q, "qsize") end),
  empty = method(0, function(q) return call(q, "empty") end),
  full = method(0, function(q) return call(q, "full") end),
  close = method(0, function(q) q[K].closed = true end), -- this proxy only, like mp.Queue's close
  _ready = method(0, function(q) return not call(q, "empty") end), -- for mp.wait
  join_thread = method(0, function() end),
  cancel_join_thread = method(0, function() end),
}
P.class("Queue", "lmp.QueueProxy", queue_m)

local jqueue_m = {
  task_done = method(0, function(q) return call(q, "task_done") end),
  join = method(1, function(q, timeout)
    return (bcall(q, "join", nil, errors.timeout(timeout, "JoinableQueue:join")))
  end),
}
for k, v in pairs(queue_m) do jqueue_m[k] = v end
P.class("JoinableQueue", "lmp.JoinableQueueProxy", jqueue_m)

-- Lock, RLock, Semaphore, BoundedSemaphore --------------------------------------------------

local function acquire(fname)
  return method(2, function(p, block, timeout)
    block = opt_block(block, fname)
    return bcall(p, "acquire", unacquire, block, errors.timeout(timeout, fname))
  end)
end

local function lock_methods(name)
  return {
    acquire = acquire(name .. ":acquire"),
    release = method(0, function(p) return call(p, "release") end),
    locked = method(0, function(p) return call(p, "locked") end),
    with = method(ANY, with),
  }
end
P.class("Lock", "lmp.LockProxy", lock_methods("Lock"))
P.class("RLock", "lmp.RLockProxy", lock_methods("RLock"))

local function sem_methods(name)
  return {
    acquire = acquire(name .. ":acquire"),
    release = method(1, function(p, n)
      if n ~= nil and math.type(n) ~= "integer" then
        errors.typeerror(name .. ":release", "n", "an integer", n)
      end
      return call(p, "release", n)
    end),
    get_value = method(0, function(p) return call(p, "get_value") end),
    with = method(ANY, with),
  }
end
P.class("Semaphore", "lmp.SemaphoreProxy", sem_methods("Semaphore"))
P.class("BoundedSemaphore", "lmp.BoundedSemaphoreProxy", sem_methods("BoundedSemaphore"))

-- Event, Condition, Barrier -----------------------------------------------------------------

P.class("Event", "lmp.EventProxy", {
  set = method(0, function(e) return call(e, "set") end),
  clear = method(0, function(e) return call(e, "clear") end),
  is_set = method(0, function(e) return call(e, "is_set") end),
  wait = method(1, function(e, timeout)
    return (bcall(e, "wait", nil, errors.timeout(timeout, "Event:wait")))
  end),
})

--- Waits until pred() is true (re-checked after each wake-up) or the timeout is spent;
--- returns pred()'s last value. Called holding the lock.
local function wait_for(c, pred, timeout)
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

P.class("Condition", "lmp.ConditionProxy", {
  acquire = acquire("Condition:acquire"),
  release = method(0, function(c) return call(c, "release") end),
  wait = method(1, function(c, timeout)
    return (bcall(c, "wait", nil, errors.timeout(timeout, "Condition:wait")))
  end),
  wait_for = method(2, wait_for),
  notify = method(1, function(c, n)
    if n ~= nil and math.type(n) ~= "integer" then
      errors.typeerror("Condition:notify", "n", "an integer", n)
    end
    return call(c, "notify", n)
  end),
  notify_all = method(0, function(c) return call(c, "notify_all") end),
  with = method(ANY, with),
})

local barrier_fields = { parties = true, n_waiting = true, broken = true }
P.class("Barrier", "lmp.BarrierProxy", {
  wait = method(1, function(b, timeout)
    local t = errors.timeout(timeout, "Barrier:wait")
    if t == nil and timeout ~= nil then t = false end -- no limit, not the barrier's default
    return (bcall(b, "wait", nil, t))
  end),
  reset = method(0, function(b) return call(b, "reset") end),
  abort = method(0, function(b) return call(b, "abort") end),
}, function(b, k)
  if barrier_fields[k] then return call(b, "field", k) end
end)

return P
