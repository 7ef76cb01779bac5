-- spec/cpython_helper.lua — what the translations of CPython's _test_multiprocessing.py share:
-- its constants (DELTA, TIMEOUT1..3, CLOCK_RES...), TimingWrapper, assertReachesEventually, and
-- the Bunch / DummyList helpers of its Barrier tests, over lmp's primitives.
local mp = require "lmp"

local C = {}

-- CPython's values (CHECK_TIMINGS is False there: timings are not asserted tightly).
C.DELTA = 0.1
C.TIMEOUT1, C.TIMEOUT2, C.TIMEOUT3 = 0.1, 0.1, 0.1
C.CLOCK_RES = 0.100
C.SHORT_TIMEOUT = 30.0
C.LONG_TIMEOUT = 300.0

--- A function that records how long each call of f took in .elapsed (TimingWrapper).
function C.timing(f)
  local w = { elapsed = nil }
  return setmetatable(w, { __call = function(_, ...)
    local t0 = mp.monotonic()
    local r = table.pack(pcall(f, ...))
    w.elapsed = mp.monotonic() - t0
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end })
end

--- Asserts that a timed call took about t seconds: at least t - CLOCK_RES and, on a loaded
--- machine, not absurdly more (CPython checks this only with CHECK_TIMINGS).
function C.assert_timing(elapsed, t)
  assert(elapsed >= t - C.CLOCK_RES, ("took %.3f s, expected about %.3f"):format(elapsed, t))
  assert(elapsed < t + 5, ("took %.3f s, expected about %.3f"):format(elapsed, t))
end

--- Polls func() until it returns value (10 × DELTA, then generously more on a loaded machine)
--- and asserts it does (assertReachesEventually).
function C.reaches(func, value)
  local deadline = mp.monotonic() + 10
  while func() ~= value and mp.monotonic() < deadline do mp.sleep(C.DELTA) end
  mp.sleep(C.DELTA)
  assert(func() == value, ("expected %s, got %s"):format(tostring(value), tostring(func())))
end

--- A counter shared by processes (CPython's _DummyList: append() adds one, len() reads).
function C.DummyList()
  local v = mp.Value("i", 0)
  return { v = v }
end
function C.append(list) list.v:with(function() list.v.value = list.v.value + 1 end) end
function C.len(list) return list.v:with(function() return list.v.value end) end

--- Bunch: n processes each running f(table.unpack(args)) (started/finished counted), that do
--- not exit before do_finish() when wait_before_exit.
function C.Bunch(f, args, n, wait_before_exit)
  local b = { started = C.DummyList(), finished = C.DummyList(), can_exit = mp.Event(), n = n,
              procs = {} }
  if not wait_before_exit then b.can_exit:set() end
  for i = 1, n do
    local p = mp.Process { daemon = true, target = function(b, f, args)
      C.append(b.started)
      local ok, err = pcall(f, table.unpack(args, 1, args.n))
      C.append(b.finished)
      b.can_exit:wait(30)
      if not ok then error(err, 0) end
    end, args = { b, f, table.pack(table.unpack(args, 1, args.n or #args)) } }
    p:start()
    b.procs[i] = p
  end
  function b.wait_for_started() while C.len(b.started) < n do mp.sleep(0.01) end end
  function b.wait_for_finished() while C.len(b.finished) < n do mp.sleep(0.01) end end
  function b.do_finish() b.can_exit:set() end
  function b.close()
    for _, p in ipairs(b.procs) do
      local code = p:join(60)
      assert(code == 0, "a process of the bunch failed: " .. tostring(code))
    end
  end
  return b
end

--- Joins p (CPython's join_process: with a generous bound) and returns its exit code.
function C.join_process(p)
  local code = p:join(C.SHORT_TIMEOUT)
  assert(code ~= nil, "the process did not end in time")
  return code
end

--- true when list contains v (by identity).
function C.contains(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

return C
