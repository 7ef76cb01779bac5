-- cpython_sync_spec.lua — CPython's _test_multiprocessing.py (3.11) tests of Lock, RLock,
-- Semaphore, Condition, Event and Barrier, translated to lmp: same values, same error
-- conditions mapped to lmp's error types, each test named after its CPython test.
-- Translated: 26 — _TestLock (3), _TestSemaphore (3), _TestCondition (7), _TestEvent (2),
-- _TestBarrier (11).
-- Skipped: 0. Deliberate differences, checked as lmp documents them (docs/api/sync.md):
--  - CPython's Condition tests mix a thread and a process; lmp has no threads: two processes.
--  - check_invariant reads CPython's private semaphores: lmp checks the same outcome (no
--    waiter left, a later notify wakes nobody) through the public API instead.
--  - release of an unlocked Lock / un-owned RLock raises ValueError (CPython: ValueError /
--    AssertionError or RuntimeError); KeyboardInterrupt is lmp's InterruptedError.
--  - `with lock:` is lock:with(fn); repr is tostring: "<lmp.Event at 0x... unset>".
local mp = require "lmp"
local H = require "helper"
local S = require "shm_helper"
local C = require "cpython_helper"

local DELTA, TIMEOUT1, TIMEOUT2, TIMEOUT3 = C.DELTA, C.TIMEOUT1, C.TIMEOUT2, C.TIMEOUT3

local function raises(want, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "no error was raised")
  assert(mp.iserror(err, want), ("%s expected, got %s"):format(want, tostring(err)))
  return err
end

describe("CPython _TestLock", function()
  before_each(S.setup)
  after_each(S.teardown)

  it("test_lock", function()
    local lock = mp.Lock()
    assert.are.equal(true, lock:acquire())
    assert.are.equal(false, lock:acquire(false))
    assert.are.equal(0, select("#", lock:release())) -- returns nothing (None)
    raises("ValueError", lock.release, lock)
  end)

  it("test_rlock", function()
    local lock = mp.RLock()
    assert.are.equal(true, lock:acquire())
    assert.are.equal(true, lock:acquire())
    assert.are.equal(true, lock:acquire())
    assert.are.equal(0, select("#", lock:release())) -- returns nothing (None)
    assert.are.equal(0, select("#", lock:release())) -- returns nothing (None)
    assert.are.equal(0, select("#", lock:release())) -- returns nothing (None)
    raises("ValueError", lock.release, lock)
  end)

  it("test_lock_context", function()
    local lock = mp.Lock()
    lock:with(function() assert.is_true(lock:locked()) end)
    assert.is_false(lock:locked())
  end)
end)

describe("CPython _TestSemaphore", function()
  before_each(S.setup)
  after_each(S.teardown)

  local function test_semaphore(sem)
    assert.are.equal(2, sem:get_value())
    assert.are.equal(true, sem:acquire())
    assert.are.equal(1, sem:get_value())
    assert.are.equal(true, sem:acquire())
    assert.are.equal(0, sem:get_value())
    assert.are.equal(false, sem:acquire(false))
    assert.are.equal(0, sem:get_value())
    assert.are.equal(0, select("#", sem:release())) -- returns nothing (None)
    assert.are.equal(1, sem:get_value())
    assert.are.equal(0, select("#", sem:release())) -- returns nothing (None)
    assert.are.equal(2, sem:get_value())
  end

  it("test_semaphore", function()
    local sem = mp.Semaphore(2)
    test_semaphore(sem)
    assert.are.equal(0, select("#", sem:release())) -- returns nothing (None)
    assert.are.equal(3, sem:get_value())
    assert.are.equal(0, select("#", sem:release())) -- returns nothing (None)
    assert.are.equal(4, sem:get_value())
  end)

  it("test_bounded_semaphore", function()
    local sem = mp.BoundedSemaphore(2)
    test_semaphore(sem)
    -- commented out in CPython ("fails on OS/X"); lmp refuses the over-release
    raises("ValueError", sem.release, sem)
    assert.are.equal(2, sem:get_value())
  end)

  it("test_timeout", function()
    local sem = mp.Semaphore(0)
    local acquire = C.timing(sem.acquire)
    assert.are.equal(false, acquire(sem, false))
    assert.is_true(acquire.elapsed < 1)
    assert.are.equal(false, acquire(sem, false, nil))
    assert.is_true(acquire.elapsed < 1)
    assert.are.equal(false, acquire(sem, false, TIMEOUT1))
    assert.is_true(acquire.elapsed < 1)
    assert.are.equal(false, acquire(sem, true, TIMEOUT2))
    C.assert_timing(acquire.elapsed, TIMEOUT2)
    assert.are.equal(false, acquire(sem, true, TIMEOUT3))
    C.assert_timing(acquire.elapsed, TIMEOUT3)
  end)
end)

describe("CPython _TestCondition", function()
  before_each(S.setup)
  after_each(S.teardown)
  teardown(H.cleanup)

  -- CPython's f: acquire, tell the parent it sleeps, wait, tell it it woke.
  local function f(cond, sleeping, woken, timeout)
    cond:acquire()
    sleeping:release()
    cond:wait(timeout)
    woken:release()
    cond:release()
  end

  local function start(...)
    local p = mp.Process { daemon = true, target = f, args = table.pack(...) }
    p:start()
    return p
  end

  -- What check_invariant means, with the public API: nobody is left waiting.
  local function check_invariant(cond)
    cond:acquire()
    cond:notify_all()
    assert.is_false(cond:wait(0))
    cond:release()
  end

  it("test_notify", function()
    local cond = mp.Condition()
    local sleeping, woken = mp.Semaphore(0), mp.Semaphore(0)
    local p1 = start(cond, sleeping, woken)
    local p2 = start(cond, sleeping, woken) -- CPython: a thread
    -- wait for both children to start sleeping
    sleeping:acquire()
    sleeping:acquire()
    -- check no process has woken up
    mp.sleep(DELTA)
    assert.are.equal(0, woken:get_value())
    -- wake up one process
    cond:acquire(); cond:notify(); cond:release()
    C.reaches(function() return woken:get_value() end, 1)
    -- wake up another
    cond:acquire(); cond:notify(); cond:release()
    C.reaches(function() return woken:get_value() end, 2)
    check_invariant(cond)
    assert.are.equal(0, p1:join(10))
    assert.are.equal(0, p2:join(10))
  end)

  it("test_notify_all", function()
    local cond = mp.Condition()
    local sleeping, woken = mp.Semaphore(0), mp.Semaphore(0)
    local ps = {}
    -- start some processes which will timeout
    for _ = 1, 6 do ps[#ps + 1] = start(cond, sleeping, woken, TIMEOUT1) end
    for _ = 1, 6 do sleeping:acquire() end
    -- check they have all timed out
    for _ = 1, 6 do woken:acquire() end
    assert.are.equal(0, woken:get_value())
    check_invariant(cond)
    -- start some more processes
    for _ = 1, 6 do ps[#ps + 1] = start(cond, sleeping, woken) end
    for _ = 1, 6 do sleeping:acquire() end
    mp.sleep(DELTA)
    assert.are.equal(0, woken:get_value())
    -- wake them all up
    cond:acquire(); cond:notify_all(); cond:release()
    C.reaches(function() return woken:get_value() end, 6)
    check_invariant(cond)
    for _, p in ipairs(ps) do assert.are.equal(0, p:join(10)) end
  end)

  it("test_notify_n", function()
    local cond = mp.Condition()
    local sleeping, woken = mp.Semaphore(0), mp.Semaphore(0)
    local ps = {}
    for _ = 1, 6 do ps[#ps + 1] = start(cond, sleeping, woken) end
    for _ = 1, 6 do sleeping:acquire() end
    mp.sleep(DELTA)
    assert.are.equal(0, woken:get_value())
    -- wake some of them up
    cond:acquire(); cond:notify(2); cond:release()
    C.reaches(function() return woken:get_value() end, 2)
    -- wake the rest of them
    cond:acquire(); cond:notify(4); cond:release()
    C.reaches(function() return woken:get_value() end, 6)
    -- doesn't do anything more
    cond:acquire(); cond:notify(3); cond:release()
    assert.are.equal(6, woken:get_value())
    check_invariant(cond)
    for _, p in ipairs(ps) do assert.are.equal(0, p:join(10)) end
  end)

  it("test_timeout", function()
    local cond = mp.Condition()
    local wait = C.timing(cond.wait)
    cond:acquire()
    local res = wait(cond, TIMEOUT1)
    cond:release()
    assert.are.equal(false, res)
    C.assert_timing(wait.elapsed, TIMEOUT1)
  end)

  it("test_waitfor", function()
    local cond = mp.Condition()
    local state = mp.Value("i", -1)
    local p = mp.Process { daemon = true, args = { cond, state }, target = function(cond, state)
      cond:with(function()
        state.value = 0
        cond:notify()
        local result = cond:wait_for(function() return state.value == 4 end)
        if not result or state.value ~= 4 then os.exit(1) end
      end)
    end }
    p:start()
    cond:with(function()
      local result = cond:wait_for(function() return state.value == 0 end)
      assert.is_true(result)
      assert.are.equal(0, state.value)
    end)
    for _ = 1, 4 do
      mp.sleep(0.01)
      cond:with(function()
        state.value = state.value + 1
        cond:notify()
      end)
    end
    assert.are.equal(0, C.join_process(p))
  end)

  it("test_waitfor_timeout", function()
    local cond = mp.Condition()
    local state, success, sem = mp.Value("i", 0), mp.Value("i", 0), mp.Semaphore(0)
    local p = mp.Process { daemon = true, args = { cond, state, success, sem, C.CLOCK_RES },
      target = function(cond, state, success, sem, clock_res)
        sem:release()
        cond:with(function()
          local expected = 0.100
          local dt = mp.monotonic()
          local result = cond:wait_for(function() return state.value == 4 end, expected)
          dt = mp.monotonic() - dt
          if not result and expected - clock_res <= dt then success.value = 1 end
        end)
      end }
    p:start()
    assert.is_true(sem:acquire(true, C.LONG_TIMEOUT))
    -- only increment 3 times, so state == 4 is never reached
    for _ = 1, 3 do
      mp.sleep(0.010)
      cond:with(function()
        state.value = state.value + 1
        cond:notify()
      end)
    end
    C.join_process(p)
    assert.are.equal(1, success.value)
  end)

  it("test_wait_result", function()
    local pid = mp.getpid()
    local c = mp.Condition()
    c:with(function()
      assert.is_false(c:wait(0))
      assert.is_false(c:wait(0.1))
      local p = mp.Process(function(c, pid)
        c:with(function() c:notify() end)
        mp.sleep(1)
        os.execute("kill -INT " .. pid)
      end, { c, pid })
      p:start()
      assert.is_true(c:wait(60))
      raises("InterruptedError", c.wait, c, 60) -- KeyboardInterrupt
      assert.are.equal(0, p:join(10))
    end)
  end)
end)

describe("CPython _TestEvent", function()
  before_each(S.setup)
  after_each(S.teardown)

  it("test_event", function()
    local event = mp.Event()
    local wait = C.timing(event.wait)
    assert.are.equal(false, event:is_set())
    assert.are.equal(false, wait(event, 0.0))
    assert.is_true(wait.elapsed < 1)
    assert.are.equal(false, wait(event, TIMEOUT1))
    C.assert_timing(wait.elapsed, TIMEOUT1)
    event:set()
    assert.are.equal(true, event:is_set())
    assert.are.equal(true, wait(event))
    assert.is_true(wait.elapsed < 1)
    assert.are.equal(true, wait(event, TIMEOUT1))
    assert.is_true(wait.elapsed < 1)
    event:clear()
    local p = mp.Process { daemon = true, args = { event, TIMEOUT2 },
      target = function(event, t) mp.sleep(t); event:set() end }
    p:start()
    assert.are.equal(true, wait(event))
    assert.are.equal(0, p:join(10))
  end)

  it("test_repr", function()
    local event = mp.Event()
    assert.matches("^<lmp%.Event at .* unset>$", tostring(event))
    event:set()
    assert.matches("^<lmp%.Event at .* set>$", tostring(event))
    event:clear()
    assert.matches("^<lmp%.Event at .* unset>$", tostring(event))
  end)
end)

describe("CPython _TestBarrier", function()
  before_each(S.setup)
  after_each(S.teardown)

  local N, defaultTimeout = 5, 30.0
  local barrier

  before_each(function() barrier = mp.Barrier(N, nil, defaultTimeout) end)
  after_each(function() barrier:abort(); barrier = nil end)

  -- run_threads: N-1 processes and this one run f(...).
  local function run_threads(f, ...)
    local args = table.pack(...)
    local b = C.Bunch(f, args, N - 1)
    local ok, err = pcall(f, table.unpack(args, 1, args.n))
    b.wait_for_finished()
    b.close()
    if not ok then error(err, 0) end
  end

  local function multipass(barrier, results, n, N)
    local m = barrier.parties
    assert(m == N)
    for i = 0, n - 1 do
      C.append(results[1])
      assert(C.len(results[2]) == i * m)
      barrier:wait()
      C.append(results[2])
      assert(C.len(results[1]) == (i + 1) * m)
      barrier:wait()
    end
    assert(barrier.n_waiting == 0)
    assert(not barrier.broken)
  end

  local function test_barrier(passes)
    local results = { C.DummyList(), C.DummyList() }
    run_threads(multipass, barrier, results, passes, N)
  end

  it("test_barrier", function() test_barrier(1) end)

  it("test_barrier_10", function() test_barrier(10) end)

  it("test_wait_return", function()
    local queue = mp.Queue()
    run_threads(function(barrier, queue) queue:put(barrier:wait()) end, barrier, queue)
    local zeros = 0
    for _ = 1, N do if queue:get(true, 10) == 0 then zeros = zeros + 1 end end
    assert.are.equal(1, zeros)
  end)

  it("test_action", function()
    local results = C.DummyList()
    local b = mp.Barrier(N, function() C.append(results) end)
    run_threads(function(barrier, results)
      barrier:wait()
      if C.len(results) ~= 1 then error("RuntimeError") end
    end, b, results)
    assert.are.equal(1, C.len(results))
  end)

  local function abort_f(barrier, results1, results2, N)
    local ok, err = pcall(function()
      local i = barrier:wait()
      if i == N // 2 then error("RuntimeError") end
      barrier:wait()
      C.append(results1)
    end)
    if not ok then
      if mp.iserror(err, "BrokenBarrierError") then C.append(results2) else barrier:abort() end
    end
  end

  it("test_abort", function()
    local results1, results2 = C.DummyList(), C.DummyList()
    run_threads(abort_f, barrier, results1, results2, N)
    assert.are.equal(0, C.len(results1))
    assert.are.equal(N - 1, C.len(results2))
    assert.is_true(barrier.broken)
  end)

  it("test_reset", function()
    local results1, results2, results3 = C.DummyList(), C.DummyList(), C.DummyList()
    run_threads(function(barrier, results1, results2, results3, N)
      local i = barrier:wait()
      if i == N // 2 then
        -- wait until the other processes are all in the barrier
        while barrier.n_waiting < N - 1 do mp.sleep(0.001) end
        barrier:reset()
      else
        local ok, err = pcall(barrier.wait, barrier)
        if ok then C.append(results1)
        elseif mp.iserror(err, "BrokenBarrierError") then C.append(results2)
        else error(err, 0) end
      end
      -- now, pass the barrier again
      barrier:wait()
      C.append(results3)
    end, barrier, results1, results2, results3, N)
    assert.are.equal(0, C.len(results1))
    assert.are.equal(N - 1, C.len(results2))
    assert.are.equal(N, C.len(results3))
  end)

  it("test_abort_and_reset", function()
    local results1, results2, results3 = C.DummyList(), C.DummyList(), C.DummyList()
    local barrier2 = mp.Barrier(N)
    run_threads(function(barrier, barrier2, results1, results2, results3, N)
      abort_f(barrier, results1, results2, N)
      -- synchronize and reset the barrier: everyone has left it when it is reset, and nobody
      -- enters it before the reset
      if barrier2:wait() == N // 2 then barrier:reset() end
      barrier2:wait()
      barrier:wait()
      C.append(results3)
    end, barrier, barrier2, results1, results2, results3, N)
    assert.are.equal(0, C.len(results1))
    assert.are.equal(N - 1, C.len(results2))
    assert.are.equal(N, C.len(results3))
  end)

  it("test_timeout", function()
    local results = C.DummyList()
    run_threads(function(barrier, results, N)
      local i = barrier:wait()
      if i == N // 2 then mp.sleep(1.0) end -- one process is late
      local ok, err = pcall(barrier.wait, barrier, 0.5)
      if not ok then
        assert(mp.iserror(err, "BrokenBarrierError"), tostring(err))
        C.append(results)
      end
    end, barrier, results, N)
    assert.are.equal(barrier.parties, C.len(results))
  end)

  it("test_default_timeout", function()
    local b = mp.Barrier(N, nil, 0.5)
    local results = C.DummyList()
    run_threads(function(barrier, results, N, t)
      local i = barrier:wait(t)
      if i == N // 2 then mp.sleep(1.0) end -- later than the default timeout
      local ok, err = pcall(barrier.wait, barrier)
      if not ok then
        assert(mp.iserror(err, "BrokenBarrierError"), tostring(err))
        C.append(results)
      end
    end, b, results, N, defaultTimeout)
    assert.are.equal(b.parties, C.len(results))
  end)

  it("test_single_thread", function()
    local b = mp.Barrier(1)
    b:wait()
    b:wait()
  end)

  it("test_thousand", function()
    local passes = 1000
    local lock = mp.Lock()
    local conn, child_conn = mp.Pipe(false)
    local ps = {}
    for j = 1, N do
      ps[j] = mp.Process(function(barrier, passes, conn, lock)
        for i = 0, passes - 1 do
          barrier:wait()
          lock:with(function() conn:send(i) end)
        end
      end, { barrier, passes, child_conn, lock })
      ps[j]:start()
    end
    for i = 0, passes - 1 do
      for _ = 1, N do assert.are.equal(i, conn:recv()) end
    end
    for _, p in ipairs(ps) do assert.are.equal(0, p:join(30)) end
    conn:close(); child_conn:close()
  end)
end)
