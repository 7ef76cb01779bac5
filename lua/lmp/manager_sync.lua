-- lmp.manager_sync — the Manager's queues and synchronization objects as they live in the
-- server. A request that must wait is parked (a waiter in the object's list, a deadline for
-- the server's timer) and answered when it can go on; nothing else waits meanwhile.
-- Ownership: a Lock or RLock is held by a connection (a process). When that process goes away
-- holding it, the lock stays locked but is "abandoned": the next acquirer (a waiter, at once)
-- takes it over and gets `true, "abandoned"`; a release by anyone clears it. Semaphores have
-- no owner: units a dead process held are not given back.
local errors = require "lmp.errors"

return function(S)
  local TYPES, park, complete, fail = S.TYPES, S.park, S.complete, S.fail

  local function block_ok(ctx) if not ctx.park then errors.raise("ValueError", S.BLOCK_MSG) end end

  -- Parks waiter w of the current request in list (the object's waiting line).
  local function wait_in(list, ctx, w, timeout)
    w.deadline = S.deadline(timeout)
    local r = park(ctx, w)
    list[#list + 1] = w
    return r
  end

  local function leave(list)
    return function(w) S.remove(list, w) end
  end

  local function check_count(n, fname, what, min)
    if n == nil then return nil end
    if math.type(n) ~= "integer" then errors.typeerror(fname, what, "an integer", n, 1) end
    if n < min then errors.raise("ValueError", ("%s: %s must be >= %d, got %d"):format(fname, what, min, n)) end
    return n
  end

  -- Locks (Lock, RLock): the operations Condition shares ------------------------------------

  local function free_for(o, cid)
    if o.kind == "RLock" then return o.owner == nil or o.abandoned or o.owner == cid end
    return not o.locked or o.abandoned
  end

  local function owned(o, cid)
    if o.kind == "RLock" then return o.owner == cid end
    return o.locked and o.holder == cid
  end

  -- Takes o for cid (count: RLock recursion levels to restore); returns "abandoned" when the
  -- previous holder had died holding it.
  local function take(o, cid, count)
    local ab = o.abandoned and "abandoned" or nil
    o.abandoned = false
    if o.kind == "RLock" then
      if o.owner == cid and not ab then
        o.count = o.count + (count or 1)
      else
        o.owner, o.count = cid, count or 1
      end
    else
      o.locked, o.holder = true, cid
    end
    S.hold_lock(cid, o, true)
    return ab
  end

  -- Gives o to the first waiter whose process is alive; false when nobody waits.
  local function handover(o)
    while #o.waiters > 0 do
      local w = table.remove(o.waiters, 1)
      if S.alive(w.cid) then
        w:grant(take(o, w.cid, w.count))
        return true
      end
    end
    return false
  end

  local function unlock(o)
    if o.kind == "RLock" then S.hold_lock(o.owner, o, false); o.owner, o.count = nil, 0
    else S.hold_lock(o.holder, o, false); o.locked, o.holder = false, nil end
    o.abandoned = false
    handover(o)
  end

  -- The holder died: the lock stays locked, abandoned; a waiter takes it over at once.
  local function abandon(o, cid)
    if owned(o, cid) then
      o.abandoned = true
      if o.kind == "RLock" then o.owner = nil end
      handover(o)
    end
  end

  local function grant_acquire(w, ab)
    if ab then complete(w, true, ab) else complete(w, true) end
  end

  local function lock_acquire(o, ctx, block, timeout)
    if free_for(o, ctx.cid) then
      local ab = take(o, ctx.cid)
      if ab then return true, ab end
      return true
    end
    if not block or timeout == 0 then return false end
    return wait_in(o.waiters, ctx, { grant = grant_acquire, drop = leave(o.waiters),
      timeout = function(w) S.remove(o.waiters, w); complete(w, false) end }, timeout)
  end

  local function lock_release(o, ctx)
    if o.kind == "RLock" then
      if o.owner ~= ctx.cid then
        errors.raise("ValueError", "RLock:release: cannot release an RLock this process does not hold")
      end
      o.count = o.count - 1
      if o.count == 0 then unlock(o) end
    else
      if not o.locked then errors.raise("ValueError", "Lock:release: the lock is not locked") end
      unlock(o)
    end
  end

  local function lock_type(kind)
    TYPES[kind] = {
      new = function()
        return { waiters = {}, locked = false, count = 0, abandoned = false, abandon = abandon }
      end,
      methods = {
        acquire = lock_acquire,
        release = lock_release,
        locked = function(o) return o.locked or o.owner ~= nil or o.abandoned end,
      },
    }
  end
  lock_type("Lock")
  lock_type("RLock")

  -- Semaphore, BoundedSemaphore --------------------------------------------------------------

  local function sem_type(kind, bounded)
    TYPES[kind] = {
      new = function(_, n)
        n = check_count(n, "Manager:" .. kind, "value", 0) or 1
        return { value = n, bound = bounded and n or nil, waiters = {} }
      end,
      methods = {
        acquire = function(o, ctx, block, timeout)
          if o.value > 0 then
            o.value = o.value - 1
            return true
          end
          if not block or timeout == 0 then return false end
          return wait_in(o.waiters, ctx, { drop = leave(o.waiters),
            timeout = function(w) S.remove(o.waiters, w); complete(w, false) end }, timeout)
        end,
        release = function(o, _, n)
          n = check_count(n, kind .. ":release", "n", 1) or 1
          if o.bound and o.value + n > o.bound then
            errors.raise("ValueError", kind .. ":release: released too many times")
          end
          o.value = o.value + n
          while o.value > 0 and #o.waiters > 0 do
            local w = table.remove(o.waiters, 1)
            if S.alive(w.cid) then
              o.value = o.value - 1
              complete(w, true)
            end
          end
        end,
        get_value = function(o) return o.value end,
      },
    }
  end
  sem_type("Semaphore", false)
  sem_type("BoundedSemaphore", true)

  -- Event ---------------------------------------------------------------------------------------

  TYPES.Event = {
    new = function() return { flag = false, waiters = {} } end,
    methods = {
      set = function(o)
        o.flag = true
        local ws = o.waiters
        o.waiters = {}
        for _, w in ipairs(ws) do complete(w, true) end
      end,
      clear = function(o) o.flag = false end,
      is_set = function(o) return o.flag end,
      wait = function(o, ctx, timeout)
        if o.flag then return true end
        if timeout == 0 then return false end
        return wait_in(o.waiters, ctx, { drop = function(w) S.remove(o.waiters, w) end,
          timeout = function(w) S.remove(o.waiters, w); complete(w, false) end }, timeout)
      end,
    },
  }

  -- Condition -----------------------------------------------------------------------------------

  -- After a wait (notified or timed out), the waiter takes its lock back before it is answered.
  local function reacquire(c, w, notified)
    local lk = c.lock
    S.retime(w, nil)
    w.grant = function(w2) complete(w2, notified) end
    w.drop = function(w2) S.remove(lk.waiters, w2) end
    if free_for(lk, w.cid) and #lk.waiters == 0 then
      take(lk, w.cid, w.count)
      complete(w, notified)
    else
      lk.waiters[#lk.waiters + 1] = w
    end
  end

  local function cond_lock(c, ctx, fname)
    if not owned(c.lock, ctx.cid) then
      errors.raise("ValueError", fname .. ": the condition's lock is not held by this process")
    end
    return c.lock
  end

  TYPES.Condition = {
    new = function(_, lock)
      if lock ~= nil and not (S.is_ref(lock, "Lock") or S.is_ref(lock, "RLock")) then
        errors.typeerror("Manager:Condition", "lock", "a Lock or RLock of this manager", lock)
      end
      lock = lock or S.create("RLock", S.LOCAL)
      return { lockref = lock, lock = S.deref(lock), waiters = {} }
    end,
    methods = {
      acquire = function(c, ctx, block, timeout) return lock_acquire(c.lock, ctx, block, timeout) end,
      release = function(c, ctx) return lock_release(c.lock, ctx) end,
      wait = function(c, ctx, timeout)
        local lk = cond_lock(c, ctx, "Condition:wait")
        if timeout == 0 then return false end
        block_ok(ctx)
        local count = lk.kind == "RLock" and lk.count or nil
        unlock(lk)
        local w = { count = count }
        w.drop = function() S.remove(c.waiters, w) end
        w.timeout = function() S.remove(c.waiters, w); reacquire(c, w, false) end
        return wait_in(c.waiters, ctx, w, timeout)
      end,
      notify = function(c, ctx, n)
        cond_lock(c, ctx, "Condition:notify")
        n = check_count(n, "Condition:notify", "n", 0) or 1
        for _ = 1, n do
          local w = table.remove(c.waiters, 1)
          if not w then break end
          reacquire(c, w, true)
        end
      end,
      notify_all = function(c, ctx)
        cond_lock(c, ctx, "Condition:notify_all")
        local ws = c.waiters
        c.waiters = {}
        for _, w in ipairs(ws) do reacquire(c, w, true) end
      end,
    },
  }

  -- Barrier -------------------------------------------------------------------------------------

  local function broken_error() return errors.new("BrokenBarrierError", "barrier is broken") end

  -- Breaks the current round: every waiter gets BrokenBarrierError.
  local function break_barrier(b)
    b.broken = true
    local ws = b.waiting
    b.waiting, b.count = {}, 0
    for _, w in ipairs(ws) do fail(w, broken_error()) end
  end

  local function barrier_release(b)
    local ws = b.waiting
    b.waiting, b.count = {}, 0
    for _, w in ipairs(ws) do complete(w, w.index) end
  end

  TYPES.Barrier = {
    new = function(_, parties, action, timeout)
      if math.type(parties) ~= "integer" then errors.typeerror("Manager:Barrier", "parties", "an integer", parties) end
      if parties < 1 then errors.raise("ValueError", "Manager:Barrier: parties must be >= 1") end
      if action ~= nil and type(action) ~= "function" then
        errors.typeerror("Manager:Barrier", "action", "a function", action)
      end
      timeout = errors.timeout(timeout, "Manager:Barrier", "timeout")
      return { parties = parties, action = action, timeout = timeout, waiting = {}, count = 0, broken = false }
    end,
    methods = {
      wait = function(b, ctx, timeout)
        if b.broken then error(broken_error()) end
        local index = b.count
        if index + 1 == b.parties then
          if b.action then
            local ok, err = xpcall(b.action, S.msgh)
            if not ok then
              break_barrier(b)
              error(err, 0)
            end
          end
          barrier_release(b)
          return index
        end
        block_ok(ctx)
        if timeout == nil then timeout = b.timeout elseif timeout == false then timeout = nil end
        if timeout == 0 then
          break_barrier(b)
          error(broken_error())
        end
        b.count = index + 1
        local w = { index = index }
        w.drop = function()
          S.remove(b.waiting, w)
          break_barrier(b) -- a party that leaves (Ctrl-C, death) breaks the round
        end
        w.timeout = function()
          S.remove(b.waiting, w)
          break_barrier(b)
          fail(w, broken_error())
        end
        return wait_in(b.waiting, ctx, w, timeout)
      end,
      reset = function(b)
        if b.count > 0 then break_barrier(b) end
        b.broken = false
      end,
      abort = function(b) break_barrier(b) end,
      field = function(b, _, k)
        if k == "parties" then return b.parties end
        if k == "n_waiting" then return b.count end
        if k == "broken" then return b.broken end
      end,
    },
    index = function(b, k) return TYPES.Barrier.methods.field(b, nil, k) end,
  }

  -- Queue, JoinableQueue ------------------------------------------------------------------------
  -- Items live in q.items[q.head .. q.tail] (nil items included).

  local function qsize(q) return q.tail - q.head + 1 end
  local function qfull(q) return q.max > 0 and qsize(q) >= q.max end

  local function push(q, v)
    q.tail = q.tail + 1
    q.items[q.tail] = v
  end

  local function shift(q)
    local v = q.items[q.head]
    q.items[q.head] = nil
    q.head = q.head + 1
    if q.head > q.tail then q.head, q.tail = 1, 0 end
    return v
  end

  -- Hands v to a waiting getter (true), or returns false when none is alive.
  local function give(q, v)
    while #q.getters > 0 do
      local w = table.remove(q.getters, 1)
      if complete(w, v) then return true end
    end
    return false
  end

  -- Moves items of waiting putters in while there is room.
  local function admit(q)
    while #q.putters > 0 and not qfull(q) do
      local w = table.remove(q.putters, 1)
      if S.alive(w.cid) then
        push(q, w.item)
        if q.unfinished then q.unfinished = q.unfinished + 1 end
        complete(w)
      end
    end
  end

  local function full_error() return errors.new("Full", "Queue:put: the queue is full") end
  local function empty_error() return errors.new("Empty", "Queue:get: the queue is empty") end

  local queue = {}
  function queue.put(q, ctx, v, block, timeout)
    if qsize(q) == 0 and #q.getters > 0 and give(q, v) then
      if q.unfinished then q.unfinished = q.unfinished + 1 end
      return
    end
    if not qfull(q) then
      push(q, v)
      if q.unfinished then q.unfinished = q.unfinished + 1 end
      return
    end
    if not block or timeout == 0 then error(full_error()) end
    return wait_in(q.putters, ctx, { item = v, drop = leave(q.putters),
      timeout = function(w) S.remove(q.putters, w); fail(w, full_error()) end }, timeout)
  end
  function queue.get(q, ctx, block, timeout)
    if qsize(q) > 0 then
      local v = shift(q)
      admit(q)
      return v
    end
    if not block or timeout == 0 then error(empty_error()) end
    return wait_in(q.getters, ctx, { drop = leave(q.getters),
      timeout = function(w) S.remove(q.getters, w); fail(w, empty_error()) end }, timeout)
  end
  -- An item got by a call interrupted by Ctrl-C goes back to the head of the queue.
  function queue._unget(q, _, v)
    if give(q, v) then return end
    q.head = q.head - 1
    if q.tail < q.head then q.tail = q.head end
    q.items[q.head] = v
  end
  function queue.qsize(q) return qsize(q) end
  function queue.empty(q) return qsize(q) == 0 end
  function queue.full(q) return qfull(q) end
  function queue.task_done(q)
    if q.unfinished <= 0 then errors.raise("ValueError", "JoinableQueue:task_done: called more times than items were put") end
    q.unfinished = q.unfinished - 1
    if q.unfinished == 0 then
      local ws = q.joiners
      q.joiners = {}
      for _, w in ipairs(ws) do complete(w, true) end
    end
  end
  function queue.join(q, ctx, timeout)
    if q.unfinished == 0 then return true end
    if timeout == 0 then return false end
    return wait_in(q.joiners, ctx, { drop = leave(q.joiners),
      timeout = function(w) S.remove(q.joiners, w); complete(w, false) end }, timeout)
  end

  local function queue_type(kind, joinable)
    local methods = {}
    for k, f in pairs(queue) do
      if joinable or (k ~= "task_done" and k ~= "join") then methods[k] = f end
    end
    TYPES[kind] = {
      new = function(_, maxsize)
        maxsize = check_count(maxsize, "Manager:" .. kind, "maxsize", 0) or 0
        return { items = {}, head = 1, tail = 0, max = maxsize, getters = {}, putters = {},
                 joiners = {}, unfinished = joinable and 0 or nil }
      end,
      methods = methods,
    }
  end
  queue_type("Queue", false)
  queue_type("JoinableQueue", true)
end
