-- pool_trust_spec.lua — what users hit before the pool could be trusted: results that never
-- settled, crashes on a pool's first call, work that could not be stopped, timeouts that meant
-- the wrong thing, blocking calls inside callbacks, limits that leaked workers, errors that said
-- too little. Anything that could hang runs in a child lmp under `timeout -s KILL`.
local mp = require "lmp"
local H = require "helper"

local pcall_err = H.error_of

-- Runs code in a bounded child lmp; returns its output, failing the test on a bad exit.
local function run(code, opts)
  local out, err, status = H.run_lmp(code, nil, opts)
  assert.are.equal(0, status, ("child exited %s\nstdout:\n%s\nstderr:\n%s"):format(status, out, err))
  return out, err
end

describe("a pool users can trust", function()
  before_each(H.setup)
  after_each(H.teardown)

  describe("results that cannot be decoded settle with SerializationError", function()
    it("a task that returns a Pipe end: get and map raise instead of waiting forever", function()
      local out = run([[
        local mp = require "lmp"
        local pool <close> = mp.Pool(1)
        local r = pool:apply_async(function() local a, b = mp.Pipe(); return a end)
        local ok, e = pcall(r.get, r, 20)
        print("get", ok, e.type)
        ok, e = pcall(pool.map, pool, function() local a, b = mp.Pipe(); return a end, { 1, 2 })
        print("map", ok, e.type)
        print("after", pool:apply(function() return "alive" end))
      ]], { timeout = 60 })
      assert.matches("get\tfalse\tSerializationError", out)
      assert.matches("map\tfalse\tSerializationError", out)
      assert.matches("after\talive", out)
    end)

    it("a result naming a module the parent cannot load", function()
      local out = run([[
        local mp = require "lmp"
        local pool <close> = mp.Pool(1)
        local ok, e = pcall(pool.apply, pool, function()
          package.loaded.only_in_the_worker = { f = function() end }
          return package.loaded.only_in_the_worker.f
        end)
        print("apply", ok, e.type, e.message)
      ]], { timeout = 60 })
      assert.matches("apply\tfalse\tSerializationError\t[^\n]*only_in_the_worker", out)
    end)
  end)

  it("a progress function that raises is reported and map_async still settles", function()
    local out, err = run([[
      local mp = require "lmp"
      local pool <close> = mp.Pool(2)
      local r = pool:map_async(function(x) return x * 2 end, { 1, 2, 3, 4 },
        { chunksize = 1, progress = function(done, total) if done == total then error("progress boom") end end })
      print("ready", r:wait(20), r:successful(), r:get()[4])
    ]], { timeout = 60 })
    assert.matches("ready\ttrue\ttrue\t8", out)
    assert.matches("progress boom", err)
  end)

  describe("the first call of a fresh pool works with every kind of function", function()
    local dir
    before_each(function()
      dir = H.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local f = assert(io.open(dir .. "/trustmod.lua", "w"))
      f:write("local M = {}\nfunction M.scale(x) return x * 10 end\nreturn M\n")
      f:close()
    end)
    after_each(function() os.execute("rm -rf " .. dir) end)

    it("a module function, an lmp function, a C function, a closure", function()
      local out = run(([[
        package.path = %q .. "/?.lua;" .. package.path
        local mp = require "lmp"
        local mymod = require "trustmod"
        local function fresh(f, args)
          local pool <close> = mp.Pool(2)
          return pool:map(f, args)
        end
        print("module", table.concat(fresh(mymod.scale, { 1, 2, 3 }), " "))
        local pool <close> = mp.Pool(1)
        print("lmp", select("#", pool:apply(mp.sleep, { 0.01 })))
        print("C", table.concat(fresh(string.upper, { "a", "b" }), " "))
        local k = 3
        print("closure", table.concat(fresh(function(x) return x + k end, { 1, 2 }), " "))
        print("stdlib", fresh(math.sqrt, { 16 })[1])
      ]]):format(dir), { timeout = 60 })
      assert.matches("module\t10 20 30", out)
      assert.matches("lmp\t0", out)
      assert.matches("C\tA B", out)
      assert.matches("closure\t4 5", out)
      assert.matches("stdlib\t4.0", out)
    end)
  end)

  describe("stopping work", function()
    -- quick tasks first, so the dispatch windows have grown when the slow call comes
    local WARM = [[
      local mp = require "lmp"
      local pool = mp.Pool(2)
      local quick = {}
      for i = 1, 20000 do quick[i] = i end
      pool:map(function(x) return x end, quick, 1)
      for i = 1, 2000 do pool:apply_async(function(s) if s > 0 then mp.sleep(s) end return s end, { 0 }) end
      pool:apply(function() return true end)
    ]]

    it("Ctrl-C of a map after the windows grew: the pool is usable at once", function()
      local out = run(WARM .. [[
        os.execute(("sh -c 'sleep 0.5; kill -INT %d' &"):format(mp.getpid()))
        local t0 = mp.monotonic()
        local ok, e = pcall(pool.map, pool, function(x) mp.sleep(3) return x end, { 1, 2, 3, 4, 5, 6, 7, 8 }, 1)
        print("caught", ok, e.type)
        local t1 = mp.monotonic()
        print("next", pool:apply(function() return 42 end))
        print("took", mp.monotonic() - t1 < 1.5, mp.monotonic() - t0 < 2.5)
        pool:terminate()
      ]], { timeout = 60 })
      assert.matches("caught\tfalse\tInterruptedError", out)
      assert.matches("next\t42", out)
      assert.matches("took\ttrue\ttrue", out)
    end)

    -- A callback runs under lmp's own protected call, which reports its errors and goes on: a
    -- Ctrl-C raised inside it would be reported as a callback error and lost to the caller.
    it("Ctrl-C that lands while a callback runs is raised to the caller, not lost as a callback error", function()
      local out, err = run([[
        local mp = require "lmp"
        local pool = mp.Pool(1)
        local ran = false
        pool:apply_async(function() return 1 end, {}, { callback = function()
          ran = true
          -- from the background (system() ignores SIGINT while it waits): it arrives mid-spin
          os.execute(("sh -c 'sleep 0.1; kill -INT %d' &"):format(mp.getpid()))
          local t = mp.monotonic()
          while mp.monotonic() - t < 0.6 do end
        end })
        local t = mp.monotonic()
        while mp.monotonic() - t < 0.5 do end -- the result arrives; nothing runs it yet
        local ok, e = pcall(mp.poll) -- the callback runs in this loop turn, outside any wait
        print("poll", ran, ok, mp.iserror(e) and e.type)
        ok, e = pcall(mp.sleep, 0.5)
        print("next wait", ok, e)
        pool:terminate()
      ]], { timeout = 60 })
      assert.matches("poll	true	false	InterruptedError", out)
      assert.matches("next wait	true", out)
      assert.not_matches("error in callback", err)
    end)

    it("breaking out of an imap loop stops its other tasks", function()
      local out = run(WARM .. [[
        local ran = mp.Value("i", 0)
        local seq = {}
        for i = 1, 40 do seq[i] = i end
        for i, v in pool:imap(function(x) ran.value = ran.value + 1; mp.sleep(0.2) return x end, seq) do
          break
        end
        mp.sleep(1.0)
        print("ran", ran.value)
        pool:terminate()
      ]], { timeout = 60 })
      local ran = tonumber(out:match("ran\t(%d+)"))
      assert.is_true(ran ~= nil and ran <= 4, "tasks that ran after the break: " .. tostring(ran))
    end)

    it("cancel() reaches tasks that sit in a worker's window", function()
      local out = run(WARM .. [[
        local f = function(s) if s > 0 then mp.sleep(s) end return s end
        local rs = {}
        for i = 1, 10 do rs[i] = pool:apply_async(f, { 1.0 }) end
        mp.sleep(0.2) -- two of them are running
        local n = 0
        for i = 1, 10 do if rs[i]:cancel() then n = n + 1 end end
        print("cancelled", n, pool:stats().inflight)
        local e = select(2, pcall(rs[10].get, rs[10]))
        print("get", e.type, rs[10].cancelled)
        print("ran", rs[1]:get(), rs[2]:get())
        pool:terminate()
      ]], { timeout = 60 })
      assert.matches("cancelled\t8\t2", out)
      assert.matches("get\tValueError\ttrue", out)
      assert.matches("ran\t1.0\t1.0", out)
    end)
  end)

  it("a function that first travelled in a withdrawn task still reaches its worker", function()
    local pool <close> = mp.Pool(2)
    local f = function(x) if x == "stop" then error("stop here") end return x end
    local seq, bad = {}, {}
    for i = 1, 64 do seq[i], bad[i] = i, i == 3 and "stop" or i end
    for round = 1, 100 do
      -- odd rounds stop at item 3 once the windows filled, withdrawing tasks that carried f
      local ok, e = pcall(pool.map, pool, f, round % 2 == 1 and bad or seq, 1)
      if round % 2 == 1 then
        assert.is_true(mp.iserror(e, "RemoteError") and e.index == 3, tostring(e))
      else
        assert.is_true(ok, tostring(e))
      end
    end
  end)

  describe("timeouts follow one rule", function()
    it("math.huge and 1e300 wait without limit; 0 and negative look once; NaN is an error", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(function() mp.sleep(0.3) return "done" end)
      assert.is_false(r:wait(0))
      assert.is_false(r:wait(-1))
      assert.is_false(r:wait(1e-7))
      local e = pcall_err(r.get, r, -5)
      assert.is_true(mp.iserror(e, "TimeoutError"), tostring(e))
      e = pcall_err(r.get, r, 0 / 0)
      assert.is_true(mp.iserror(e, "ValueError"), tostring(e))
      e = pcall_err(r.get, r, "1")
      assert.is_true(mp.iserror(e, "ValueError"), tostring(e))
      assert.are.equal("done", r:get(math.huge))
      local r2 = pool:apply_async(function() mp.sleep(0.1) return "again" end)
      assert.are.equal("again", r2:get(1e300))
      assert.is_true(r2:wait(math.huge))
      e = pcall_err(pool.join, pool, 0 / 0)
      assert.is_true(mp.iserror(e, "ValueError"), tostring(e))
      e = pcall_err(pool.map, pool, print, { 1 }, { timeout = 0 / 0 })
      assert.is_true(mp.iserror(e, "ValueError"), tostring(e))
      e = pcall_err(pool.apply_async, pool, print, {}, { timeout = -1 })
      assert.is_true(mp.iserror(e, "ValueError"), tostring(e))
      pool:close()
      assert.is_true(pool:join(math.huge))
    end)

    it("short waits repeated thousands of times never hang", function()
      local out = run([[
        local mp = require "lmp"
        local pool <close> = mp.Pool(2)
        local slow = pool:apply_async(function() mp.sleep(30) end)
        for _, t in ipairs { 0, 1e-6, 1e-3 } do
          local n = t == 1e-3 and 500 or 5000
          for i = 1, n do
            assert(slow:wait(t) == false)
            assert(not pcall(slow.get, slow, t))
            mp.poll(t)
          end
        end
        print("done")
      ]], { timeout = 60 })
      assert.matches("done", out)
    end)
  end)

  describe("blocking calls inside a callback raise ValueError instead of blocking", function()
    it("get, map and sleep from a callback; a look with timeout 0 is allowed", function()
      H.watchdog(60)
      local pool <close> = mp.Pool(2)
      local slow = pool:apply_async(function() mp.sleep(2) return 1 end)
      local done = pool:apply_async(function() return 2 end)
      done:wait(10)
      local seen = {}
      local r = pool:apply_async(function() return 3 end, {}, function()
        seen.get = select(2, pcall(slow.get, slow))
        seen.map = select(2, pcall(pool.map, pool, math.abs, { -1 }))
        seen.sleep = select(2, pcall(mp.sleep, 0.1))
        seen.look = select(2, pcall(slow.get, slow, 0))
        seen.settled = done:get()
      end)
      assert.is_true(r:wait(10))
      assert.is_true(mp.iserror(seen.get, "ValueError"), tostring(seen.get))
      assert.is_true(mp.iserror(seen.map, "ValueError"), tostring(seen.map))
      assert.is_true(mp.iserror(seen.sleep, "ValueError"), tostring(seen.sleep))
      assert.is_true(mp.iserror(seen.look, "TimeoutError"), tostring(seen.look))
      assert.are.equal(2, seen.settled)
      pool:terminate()
    end)
  end)

  describe("resource limits give clean errors and leak nothing", function()
    it("a Pool that cannot start all its workers raises ProcessError and reaps them", function()
      local out = run([[
        local mp = require "lmp"
        local ok, e = pcall(mp.Pool, 64)
        print("pool", ok, mp.iserror(e) and e.type, mp.iserror(e) and e.message)
        local f = io.open(("/proc/%d/task/%d/children"):format(mp.getpid(), mp.getpid()))
        print("children", (f:read("a"):gsub("%s", "")))
        f:close()
        local p <close> = mp.Pool(2) -- with the descriptors back, a smaller pool starts
        print("small", p:apply(function() return "ok" end))
      ]], { shell = "ulimit -n 40", timeout = 60 })
      assert.matches("pool\tfalse\tProcessError\tPool: cannot start worker", out)
      assert.matches("children\t\n", out)
      assert.matches("small\tok", out)
    end)

    it("a thousand queued tasks carrying one Value share its descriptor", function()
      local out = run([[
        local mp = require "lmp"
        local pool <close> = mp.Pool(1)
        local v, go = mp.Value("i", 0), mp.Event()
        pool:apply_async(function(e) e:wait(30) end, { go })
        local rs = {}
        for i = 1, 1000 do rs[i] = pool:apply_async(function(x) return x.value end, { v }) end
        go:set()
        local n = 0
        for i = 1, 1000 do n = n + rs[i]:get(30) + 1 end
        print("done", n)
      ]], { shell = "ulimit -n 256", timeout = 90 })
      assert.matches("done\t1000", out)
    end)

    it("a worker that runs out of memory says so", function()
      if os.getenv("LMP_SANITIZED") then
        -- ASan reserves terabytes of shadow memory: it cannot run under an address-space limit
        pending("under AddressSanitizer: ulimit -v and ASan's shadow memory exclude each other")
        return
      end
      local out = run([[
        local mp = require "lmp"
        local pool <close> = mp.Pool(1)
        local ok, e = pcall(pool.apply, pool, function()
          local t = {}
          for i = 1, 1e9 do t[i] = ("x"):rep(4096) .. i end
        end)
        print("oom", ok, e.type, e.message)
        print("after", pool:apply(function() return "alive" end))
      ]], { shell = "ulimit -v 600000", timeout = 90 })
      assert.matches("oom\tfalse\tRemoteError\t[^\n]*ran out of memory", out)
      assert.matches("after\talive", out)
    end)
  end)

  describe("a task's error says where it came from", function()
    it("the parent's call site and the item, and no lmp frames in the worker's traceback", function()
      local out = run([[
        local mp = require "lmp"
        local pool <close> = mp.Pool(2)
        local ok, e = xpcall(function()
          local r = pool:map(function(x) if x == 3 then error("bad item") end return x end, { 1, 2, 3, 4 }, 1)
          return r
        end, function(e) return e end)
        print("where", e.where, e.index)
        print("text", tostring(e))
      ]], { timeout = 60 })
      assert.matches("where\t[^\n]*:4\t3", out)
      assert.matches("raised in the parent at [^\n]*:4", out)
      assert.matches("bad item", out)
      assert.is_nil(out:match("lmp/worker"), out)
      assert.is_nil(out:match("in %?"), out)
    end)
  end)

  describe("misuse raises mp.Error naming what was wrong", function()
    local pool
    before_each(function() pool = mp.Pool(1) end)
    after_each(function() pool:terminate() pool:join(10) end)

    it("misspelt option keys and extra arguments", function()
      local cases = {
        { function() return mp.Pool { procs = 2 } end, "ValueError", "procs" },
        { function() return pool:map(math.abs, { 1 }, { chunk_size = 1 }) end, "ValueError", "chunk_size" },
        { function() return pool:apply_async(math.abs, { 1 }, { callbak = print }) end, "ValueError", "callbak" },
        { function() return pool:apply(math.abs, { 1 }, 3) end, "ValueError", "apply" },
        { function() return pool:map_async(math.abs, { 1 }, { chunksize = 1, cb = print }) end, "ValueError", "cb" },
      }
      for i, c in ipairs(cases) do
        local e = pcall_err(c[1])
        assert.is_true(mp.iserror(e, c[2]), i .. ": " .. tostring(e))
        assert.matches(c[3], e.message, 1, true)
      end
    end)

    it("wrong types name the function and the argument", function()
      local e = pcall_err(mp.Pool, { processes = "4" })
      assert.is_true(mp.iserror(e, "TypeError"), tostring(e))
      assert.are.equal('Pool: processes must be an integer from 1 to 4096, got string "4"', e.message)
      e = pcall_err(pool.apply, pool, math.abs, 5)
      assert.is_true(mp.iserror(e, "TypeError"), tostring(e))
      assert.matches("^apply:", e.message)
      e = pcall_err(pool.map, math.abs, { 1 })
      assert.is_true(mp.iserror(e, "TypeError"), tostring(e))
      assert.matches("Pool.map", e.message, 1, true)
      assert.matches("pool:map", e.message, 1, true)
      e = pcall_err(pool.map, pool, 42, { 1 })
      assert.is_true(mp.iserror(e, "TypeError"), tostring(e))
      e = pcall_err(pool.imap, pool, math.abs, 42)
      assert.is_true(mp.iserror(e, "TypeError"), tostring(e))
    end)
  end)
end)
