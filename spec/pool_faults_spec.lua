-- pool_faults_spec.lua — the pool's crash matrix: workers killed, segfaulting or exiting
-- mid-task or idle, results and arguments that cannot be encoded, errors in callbacks,
-- terminate and Ctrl-C during a map, the parent killed, a failing initializer, and many tasks
-- under random worker kills. Each fault is real; each test asserts the exact error type, that
-- nothing hangs, and that no child is left behind.
local mp = require "lmp"
local H = require "helper"

local pcall_err = H.error_of

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- Runs the loop until pred() holds (or fails the test after timeout seconds).
local function poll_until(pred, timeout, what)
  local deadline = mp.monotonic() + (timeout or 10)
  while not pred() do
    assert.is_true(mp.monotonic() < deadline, "timed out waiting for " .. (what or "a condition"))
    mp.poll(0.02)
  end
end

-- True while pid names a live process (zombies count as gone).
local function alive(pid)
  local st = H.slurp("/proc/" .. pid .. "/stat")
  return st ~= nil and not st:match("^%d+ %b() [ZX]")
end

local function wait_gone(pids, timeout)
  local deadline = mp.monotonic() + (timeout or 5)
  local left
  repeat
    left = {}
    for _, pid in ipairs(pids) do if alive(pid) then left[#left + 1] = pid end end
    if #left == 0 then return left end
    mp.sleep(0.05)
  until mp.monotonic() > deadline
  return left
end

-- A task that writes its pid to path, then sleeps.
local function report_pid_and_sleep(path, seconds)
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write(mp.getpid())
  f:close()
  os.rename(path .. ".tmp", path)
  mp.sleep(seconds)
  return "woke"
end

describe("mp.Pool faults", function()
  before_each(H.setup)
  after_each(H.teardown)
  teardown(H.cleanup)

  describe("a worker that dies mid-task", function()
    it("SIGKILLed by another process: WorkerLostError, replaced, the pool goes on", function()
      local pool <close> = mp.Pool(2)
      local path = H.tmpname(); os.remove(path)
      local r = pool:apply_async(report_pid_and_sleep, { path, 30 })
      poll_until(function() return H.slurp(path) end, 10, "the task to start")
      local pid = tonumber(H.slurp(path))
      assert.is_true(contains(pool:stats().workers, pid))
      os.execute("kill -9 " .. pid)
      local err = pcall_err(r.get, r, 10)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.matches("signal 9", err.message)
      assert.matches("SIGKILL", err.message)
      assert.are.equal(pid, err.pid)
      local workers = pool:stats().workers
      assert.are.equal(2, #workers)
      assert.is_false(contains(workers, pid))
      assert.are.same({ 1, 4, 9, n = 3 }, pool:map(function(x) return x * x end, { 1, 2, 3 }))
    end)

    it("a real segfault: WorkerLostError naming SIGSEGV", function()
      local pool <close> = mp.Pool(2)
      local err = pcall_err(pool.apply, pool, function() require("lmp_testhelper").segfault() end)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.matches("SIGSEGV", err.message)
      assert.are.equal(5, pool:apply(function(x) return x + 1 end, { 4 }))
    end)

    it("a segfault inside map fails the map with the item's index", function()
      local pool <close> = mp.Pool(2)
      local err = pcall_err(pool.map, pool, function(x)
        if x == 3 then require("lmp_testhelper").segfault() end
        return x
      end, range(6), 1)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.are.equal(3, err.index)
      assert.are.same({ 1, 2, n = 2 }, pool:map(function(x) return x end, { 1, 2 }))
    end)

    it("os.exit(3): WorkerLostError naming the status", function()
      local pool <close> = mp.Pool(2)
      local err = pcall_err(pool.apply, pool, function() os.exit(3) end)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.matches("status 3", err.message)
      assert.are.equal(3, err.exitcode)
      assert.are.equal("ok", pool:apply(function() return "ok" end))
    end)

    it("abort(): WorkerLostError naming SIGABRT", function()
      local pool <close> = mp.Pool(1)
      local err = pcall_err(pool.apply, pool, function() require("lmp_testhelper").abort() end)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.matches("SIGABRT", err.message)
      assert.are.equal("ok", pool:apply(function() return "ok" end))
    end)

    it("only the running task fails: tasks queued behind it still run", function()
      local pool <close> = mp.Pool(1)
      local rs = {}
      rs[1] = pool:apply_async(function() os.exit(9) end)
      for i = 2, 6 do rs[i] = pool:apply_async(function(x) return x end, { i }) end
      local err = pcall_err(rs[1].get, rs[1], 10)
      assert.is_true(mp.iserror(err, "WorkerLostError"))
      for i = 2, 6 do assert.are.equal(i, rs[i]:get(10)) end
    end)
  end)

  describe("results around a death", function()
    it("a result finished before its worker died is still delivered", function()
      local pool <close> = mp.Pool(1)
      local a = pool:apply_async(function() return "a" end)
      local b = pool:apply_async(function() mp.sleep(0.2); os.exit(5) end)
      local err = pcall_err(b.get, b, 10)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.matches("status 5", err.message)
      assert.are.equal("a", a:get(10))
    end)

    it("with retries=0 the task that killed its worker never runs twice", function()
      local pool <close> = mp.Pool(1)
      local trace = H.tmpname(); os.remove(trace)
      local rs = {}
      for i = 1, 4 do
        rs[i] = pool:apply_async(function(x, p)
          local f = assert(io.open(p, "a")); f:write(x, "\n"); f:close()
          if x == 2 then os.exit(4) end
          return x
        end, { i, trace })
      end
      for i = 1, 4 do rs[i]:wait(10) end
      local runs = {}
      for x in (H.slurp(trace) or ""):gmatch("%d+") do runs[#runs + 1] = tonumber(x) end
      table.sort(runs)
      assert.are.same({ 1, 2, 3, 4 }, runs)
      assert.is_true(rs[1]:successful())
      assert.is_false(rs[2]:successful())
      assert.is_true(mp.iserror(pcall_err(rs[2].get, rs[2]), "WorkerLostError"))
      assert.are.equal(3, rs[3]:get())
      assert.are.equal(4, rs[4]:get())
    end)
  end)

  it("a worker killed while idle is replaced and new tasks run", function()
    local pool <close> = mp.Pool(2)
    local before = pool:stats().workers
    assert.are.equal(2, #before)
    os.execute("kill -9 " .. before[1])
    poll_until(function()
      local w = pool:stats().workers
      return #w == 2 and not contains(w, before[1])
    end, 10, "a replacement worker")
    local r = pool:map(function() mp.sleep(0.05); return mp.getpid() end, range(8), 1)
    assert.are.equal(8, r.n)
    for i = 1, 8 do assert.are_not.equal(before[1], r[i]) end
  end)

  describe("encoding", function()
    it("a result that cannot be encoded: SerializationError, the pool goes on", function()
      local pool <close> = mp.Pool(2)
      local err = pcall_err(pool.apply, pool, function() return coroutine.create(print) end)
      assert.is_true(mp.iserror(err, "SerializationError"), tostring(err))
      assert.matches("thread", err.message)
      err = pcall_err(pool.map, pool, function(x)
        if x == 2 then return { co = coroutine.create(print) } end
        return x
      end, range(3), 1)
      assert.is_true(mp.iserror(err, "SerializationError"), tostring(err))
      assert.are.equal(2, err.index)
      assert.are.same({ 1, 2, 3, n = 3 }, pool:map(function(x) return x end, range(3)))
    end)

    -- An apply's task never runs; a map's chunks before the bad item may have been handed out
    -- already (they are released as they are encoded, as CPython's task thread does), but no
    -- item from the bad one on ever runs.
    it("an argument that cannot be encoded raises in the caller, naming the path", function()
      local pool <close> = mp.Pool(1)
      local trace, ran = H.tmpname(), H.tmpname()
      os.remove(trace); os.remove(ran)
      local function touch(p) io.open(p, "a"):close() end
      local function note(x) local f = io.open(ran, "a"); f:write(tostring(x), "\n"); f:close() end
      local co = coroutine.create(print)
      local err = pcall_err(pool.apply_async, pool, touch, { trace, { conf = { cb = co } } })
      assert.is_true(mp.iserror(err, "SerializationError"), tostring(err))
      assert.matches("args%[2%]%.conf%.cb", err.message)
      assert.matches("thread", err.message)
      err = pcall_err(pool.map, pool, note, { 1, 2, co, 4 })
      assert.is_true(mp.iserror(err, "SerializationError"), tostring(err))
      assert.matches("seq%[3%]", err.message)
      err = pcall_err(pool.map, pool, note, { 11, 12, 13, { f = co }, 15, 16 }, 2)
      assert.matches("seq%[4%]%.f", err.message)
      pool:apply(function() end) -- whatever was handed out has finished
      for x in (H.slurp(ran) or ""):gmatch("%S+") do
        assert.is_true(x == "1" or x == "2" or x == "11" or x == "12",
          "item " .. x .. " ran, at or after an item that could not be encoded")
      end
      local anon = require("lmp_testhelper").get_anonymous()
      err = pcall_err(pool.apply, pool, touch, { anon })
      assert.is_true(mp.iserror(err, "SerializationError"), tostring(err))
      assert.matches("args%[1%]", err.message)
      err = pcall_err(pool.apply, pool, function() return co end)
      assert.is_true(mp.iserror(err, "SerializationError"), tostring(err))
      pool:apply(function() end)
      assert.is_nil(H.slurp(trace), "a task ran although its call failed to encode")
      assert.are.equal(2, pool:apply(function(x) return x * 2 end, { 1 }))
    end)
  end)

  describe("errors in callbacks", function()
    it("are reported on stderr and the pool goes on", function()
      local out, err, code = H.run_lmp([[
        local mp = require "lmp"
        local pool = mp.Pool(2)
        local r1 = pool:apply_async(function() return 1 end, {}, function() error("cb-broke") end)
        r1:wait(10)
        local r2 = pool:apply_async(function() error("task-broke") end, {}, nil,
          function() error("errcb-broke") end)
        r2:wait(10)
        local r3 = pool:map_async(function(x) return x end, { 1, 2 },
          { callback = function() error({ "table error" }) end })
        r3:wait(10)
        print("r1", r1:get())
        print("r3", #r3:get())
        print("later", pool:apply(function() return 42 end))
        pool:close(); pool:join()
      ]])
      assert.are.equal(0, code, err)
      assert.matches("r1\t1", out)
      assert.matches("r3\t2", out)
      assert.matches("later\t42", out)
      assert.matches("error in callback", err)
      assert.matches("cb%-broke", err)
      assert.matches("error in error_callback", err)
      assert.matches("errcb%-broke", err)
    end)
  end)

  describe("terminate during a map", function()
    it("map_async then terminate: get raises WorkerLostError", function()
      local pool = mp.Pool(2)
      local r = pool:map_async(function(x) mp.sleep(0.2); return x end, range(20), 1)
      mp.sleep(0.1)
      pool:terminate()
      local t0 = mp.monotonic()
      local err = pcall_err(r.get, r, 10)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.is_true(mp.monotonic() - t0 < 3)
      assert.is_true(pool:join(10))
    end)

    it("terminate from a callback fails the running map", function()
      local pool = mp.Pool(2)
      pool:apply_async(function() mp.sleep(0.2) end, {}, function() pool:terminate() end)
      local t0 = mp.monotonic()
      local err = pcall_err(pool.map, pool, function(x) mp.sleep(0.2); return x end, range(30), 1)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.is_true(mp.monotonic() - t0 < 3)
      assert.is_true(pool:join(10))
    end)

    it("imap during terminate raises instead of waiting forever", function()
      local pool = mp.Pool(2)
      pool:apply_async(function() mp.sleep(0.2) end, {}, function() pool:terminate() end)
      local err = pcall_err(function()
        for _ in pool:imap(function(x) mp.sleep(0.2); return x end, range(30)) do end
      end)
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.is_true(pool:join(10))
    end)
  end)

  it("Ctrl-C during a map raises InterruptedError and leaves no orphan", function()
    local out, err, code = H.run_lmp([[
      local mp = require "lmp"
      local pool = mp.Pool(2)
      print("workers " .. table.concat(pool:stats().workers, " "))
      io.stdout:flush()
      os.execute(("sh -c 'sleep 0.5; kill -INT %d' &"):format(mp.getpid()))
      local seq = {}
      for i = 1, 40 do seq[i] = i end
      local t0 = mp.monotonic()
      local ok, e = pcall(pool.map, pool, function(x) mp.sleep(0.5); return x end, seq, 1)
      print("caught", ok, mp.iserror(e) and e.type or tostring(e))
      print("quick", mp.monotonic() - t0 < 5)
      print("workers " .. table.concat(pool:stats().workers, " "))
      print("after", pool:apply(function() return 42 end))
      pool:terminate(); pool:join(10)
      print("done")
    ]])
    assert.are.equal(0, code, err)
    assert.matches("caught\tfalse\tInterruptedError", out)
    assert.matches("quick\ttrue", out)
    assert.matches("after\t42", out)
    assert.matches("done", out)
    local pids = {}
    for list in out:gmatch("workers ([%d ]+)") do
      for p in list:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
    end
    assert.is_true(#pids >= 2)
    assert.are.same({}, wait_gone(pids, 5), "orphan workers")
  end)

  it("no worker survives its parent SIGKILLed", function()
    local pidfile = H.tmpname()
    local out, err, code = H.run_lmp(([[
      local mp = require "lmp"
      local pool = mp.Pool(2)
      pool:apply_async(function() mp.sleep(60) end)
      pool:apply_async(function() mp.sleep(60) end)
      mp.sleep(0.1)
      local f = io.open(%q, "w"); f:write(table.concat(pool:stats().workers, " ")); f:close()
      os.execute("kill -9 " .. mp.getpid())
      mp.sleep(10)
    ]]):format(pidfile))
    assert.are.equal(-9, code, err)
    local pids = {}
    for p in (H.slurp(pidfile) or ""):gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
    assert.are.equal(2, #pids)
    assert.are.same({}, wait_gone(pids, 5), "workers outlived their killed parent")
  end)

  it("a failing initializer makes calls fail, never hang", function()
    local pool <close> = mp.Pool { processes = 2, initializer = function() error("init boom") end }
    local t0 = mp.monotonic()
    local ok, err = pcall(function()
      local r = pool:apply_async(function() return 1 end)
      return r:get(20)
    end)
    assert.is_false(ok)
    assert.is_true(mp.iserror(err, "ProcessError") or mp.iserror(err, "WorkerLostError"),
      tostring(err))
    assert.is_true(mp.monotonic() - t0 < 15)
    -- later calls fail too, at once or when run
    ok, err = pcall(pool.map, pool, function(x) return x end, { 1, 2 })
    assert.is_false(ok)
    assert.is_true(mp.iserror(err, "ProcessError") or mp.iserror(err, "WorkerLostError"),
      tostring(err))
    pool:terminate()
    assert.is_true(pool:join(10))
  end)

  it("10,000 tasks under random worker kills: each resolves exactly once", function()
    local N = 10000
    local pool <close> = mp.Pool { processes = 2, retries = 0 }
    local oks, losts, bad, resolved = {}, {}, {}, 0
    for i = 1, N do
      pool:apply_async(function(x) mp.sleep(0.0003); return x * 2 end, { i },
        function(v)
          if v ~= i * 2 then bad[#bad + 1] = ("task %d returned %s"):format(i, tostring(v)) end
          oks[i] = (oks[i] or 0) + 1
          resolved = resolved + 1
        end,
        function(e)
          if not mp.iserror(e, "WorkerLostError") then
            bad[#bad + 1] = ("task %d failed with %s"):format(i, tostring(e))
          end
          losts[i] = (losts[i] or 0) + 1
          resolved = resolved + 1
        end)
    end
    local kills, next_kill = 0, mp.monotonic() + 0.02
    local deadline = mp.monotonic() + 60
    math.randomseed(12345)
    while resolved < N do
      assert.is_true(mp.monotonic() < deadline, ("only %d of %d tasks resolved"):format(resolved, N))
      mp.poll(0.005)
      if mp.monotonic() >= next_kill then
        local w = pool:stats().workers
        if #w > 0 then
          os.execute("kill -9 " .. w[math.random(#w)] .. " 2>/dev/null")
          kills = kills + 1
        end
        next_kill = mp.monotonic() + 0.02
      end
    end
    for _ = 1, 10 do mp.poll(0.02) end -- nothing may arrive twice later
    assert.are.same({}, bad)
    local nlost = 0
    for i = 1, N do
      local n = (oks[i] or 0) + (losts[i] or 0)
      assert.are.equal(1, n, ("task %d resolved %d times"):format(i, n))
      nlost = nlost + (losts[i] or 0)
    end
    assert.is_true(kills >= 5, kills .. " kills")
    assert.is_true(nlost >= 1, "no task was lost to " .. kills .. " kills")
    assert.is_true(nlost <= kills, nlost .. " tasks lost to " .. kills .. " kills")
    assert.are.equal(N, resolved)
    assert.are.same({ 1, 2, n = 2 }, pool:map(function(x) return x end, { 1, 2 }))
  end)
end)
