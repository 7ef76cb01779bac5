-- spec/waits_helper.lua — one blocking call of every kind lmp has, for the timeout-rule specs
-- and the stress spec. Each case makes an object on which its call blocks; a helper process
-- can unblock it. A call returns true when it got what it waited for and false when it timed
-- out (Empty, Full, TimeoutError, BrokenBarrierError and nil exit codes become false).
local mp = require "lmp"

local W = {}

local TIMED_OUT = { Empty = true, Full = true, TimeoutError = true, BrokenBarrierError = true }

-- Calls f(...); a timeout error becomes false, any other error is raised again.
local function timed(f, ...)
  local ok, r = pcall(f, ...)
  if ok then return r end
  if mp.iserror(r) and TIMED_OUT[r.type] then return false end
  error(r, 0)
end
W.timed = timed

--- The cases: name; make() -> state, on which call(state, timeout) -> boolean blocks;
--- unblock(state), run in a helper process, lets it through; close(state) releases what make
--- made.
W.cases = {
  { name = "Lock:acquire", -- held here; any process may release a Lock
    make = function() local l = mp.Lock(); l:acquire(); return { l = l } end,
    call = function(s, t) return s.l:acquire(true, t) end,
    unblock = function(s) s.l:release() end },
  { name = "RLock:acquire", -- held by another process until unblock
    make = function()
      local s = { l = mp.RLock(), held = mp.Event(), go = mp.Event() }
      s.holder = mp.Process(function(s)
        s.l:acquire(); s.held:set(); s.go:wait(60); s.l:release()
      end, { s })
      s.holder:start()
      assert(s.held:wait(30), "the holder did not take the lock")
      return s
    end,
    call = function(s, t) local ok = s.l:acquire(true, t); if ok then s.l:release() end; return ok end,
    unblock = function(s) s.go:set() end,
    close = function(s) s.go:set(); s.holder:join(30); s.holder = nil end },
  { name = "Semaphore:acquire",
    make = function() return { s = mp.Semaphore(0) } end,
    call = function(s, t) return s.s:acquire(true, t) end,
    unblock = function(s) s.s:release() end },
  { name = "BoundedSemaphore:acquire",
    make = function() local b = mp.BoundedSemaphore(1); b:acquire(); return { s = b } end,
    call = function(s, t) return s.s:acquire(true, t) end,
    unblock = function(s) s.s:release() end },
  { name = "Event:wait",
    make = function() return { e = mp.Event() } end,
    call = function(s, t) return s.e:wait(t) end,
    unblock = function(s) s.e:set() end },
  { name = "Condition:wait",
    make = function() return { c = mp.Condition() } end,
    call = function(s, t) s.c:acquire(); local r = s.c:wait(t); s.c:release(); return r end,
    unblock = function(s) s.c:acquire(); s.c:notify(); s.c:release() end },
  { name = "Condition:wait_for",
    make = function() return { c = mp.Condition(), v = mp.Value("i", 0) } end,
    call = function(s, t)
      s.c:acquire()
      local r = s.c:wait_for(function() return s.v.value == 1 end, t)
      s.c:release()
      return r
    end,
    unblock = function(s) s.c:acquire(); s.v.value = 1; s.c:notify_all(); s.c:release() end },
  { name = "Barrier:wait", fresh = true, -- a wait that times out breaks the barrier
    make = function() return { b = mp.Barrier(2) } end,
    call = function(s, t) return timed(s.b.wait, s.b, t) ~= false end,
    unblock = function(s) s.b:wait(10) end },
  { name = "Barrier(timeout):wait", fresh = true,
    make = function(t) return { b = mp.Barrier(2, nil, t) } end, ctor_timeout = true,
    call = function(s) return timed(s.b.wait, s.b) ~= false end,
    unblock = function(s) s.b:wait(10) end },
  { name = "Queue:get",
    make = function() return { q = mp.Queue() } end,
    call = function(s, t) return timed(s.q.get, s.q, true, t) == "item" end,
    unblock = function(s) s.q:put("item") end },
  { name = "Queue:put",
    make = function() local q = mp.Queue(1); q:put(0); return { q = q } end,
    call = function(s, t) return timed(s.q.put, s.q, 1, true, t) ~= false end,
    unblock = function(s) s.q:get(true, 10) end },
  { name = "JoinableQueue:join",
    make = function() local q = mp.JoinableQueue(); q:put(0); return { q = q } end,
    call = function(s, t) return s.q:join(t) end,
    unblock = function(s) s.q:get(true, 10); s.q:task_done() end },
  { name = "Connection:poll",
    make = function() local a, b = mp.Pipe(); return { a = a, b = b } end,
    call = function(s, t) return s.a:poll(t) end,
    unblock = function(s) s.b:send("x") end,
    close = function(s) s.a:close(); s.b:close() end },
  { name = "mp.wait",
    make = function() local a, b = mp.Pipe(); return { a = a, b = b, q = mp.Queue() } end,
    call = function(s, t) return #mp.wait({ s.a, s.q }, t) > 0 end,
    unblock = function(s) s.q:put(1) end,
    close = function(s) s.a:close(); s.b:close() end },
  { name = "Process:join",
    make = function()
      local go = mp.Event()
      local p = mp.Process(function(go) go:wait(60) end, { go })
      p:start()
      return { go = go, p = p }
    end,
    call = function(s, t) return s.p:join(t) ~= nil end,
    unblock = function(s) s.go:set() end,
    close = function(s) s.go:set(); s.p:join(30) end },
}

--- The case named name.
function W.case(name)
  for _, c in ipairs(W.cases) do if c.name == name then return c end end
  error("no case " .. name)
end

--- Starts the helper process of case c on state s: unblock after delay seconds. Returns it
--- once it runs.
function W.helper(c, s, delay)
  local ready = mp.Event()
  local p = mp.Process(function(c, s, ready, delay)
    ready:set()
    mp.sleep(delay)
    c.unblock(s)
  end, { c, s, ready, delay })
  p:start()
  assert(ready:wait(30), "the helper did not start")
  return p
end

--- Checks the one timeout rule on case c (in the calling process; use run_bounded):
--- 0, negative and tiny timeouts look once; a positive one waits about that long; nil,
--- math.huge and 1e300 wait until a helper unblocks the call; NaN and non-numbers raise
--- ValueError naming the timeout.
function W.check_rule(c)
  local function run(t, helper_delay)
    local ok, s = pcall(c.make, t)
    if not ok then return false, s end
    local t0 = mp.monotonic() -- before the helper starts: it unblocks no sooner than delay after
    local h = helper_delay and W.helper(c, s, helper_delay)
    local ok2, r = pcall(c.call, s, t)
    local took = mp.monotonic() - t0
    if h then assert(h:join(30) == 0, c.name .. ": the helper failed") end
    W.close(c, s)
    return ok2, r, took
  end
  local function say(t) return type(t) == "number" and ("%.17g"):format(t) or tostring(t) end
  for _, t in ipairs { 0, -1, -1e300, -math.huge, 1e-9 } do
    local ok, r, took = run(t)
    assert(ok and r == false, ("%s(%s): %s"):format(c.name, say(t), tostring(r)))
    assert(took < 2, ("%s(%s) took %.3f s"):format(c.name, say(t), took))
  end
  local ok, r, took = run(0.1)
  assert(ok and r == false and took >= 0.09 and took < 5,
    ("%s(0.1): %s after %s s"):format(c.name, tostring(r), tostring(took)))
  for _, t in ipairs { "nil", math.huge, 1e300 } do
    if t == "nil" then t = nil end
    ok, r, took = run(t, 0.2)
    assert(ok and r == true and took >= 0.15,
      ("%s(%s): %s after %s s (no limit: must wait for the helper)"):format(c.name, say(t),
        tostring(r), tostring(took)))
  end
  for _, t in ipairs { 0 / 0, "1", {}, true } do
    ok, r = run(t)
    assert(not ok and mp.iserror(r, "ValueError") and r.message:match("timeout"),
      ("%s(%s) must raise ValueError naming the timeout, got %s"):format(c.name, say(t),
        tostring(ok and "no error" or r)))
  end
end

--- A script for S.run_bounded that checks the rule on the named cases and prints ok.
function W.rule_script(names)
  return ('local W = require "waits_helper"\nfor _, n in ipairs { %s } do W.check_rule(W.case(n)) end\nprint("ok")\n')
    :format(table.concat((function()
      local q = {}
      for i, n in ipairs(names) do q[i] = ("%q"):format(n) end
      return q
    end)(), ", "))
end

--- Releases what make made.
function W.close(c, s)
  if c.close then c.close(s) end
end

return W
