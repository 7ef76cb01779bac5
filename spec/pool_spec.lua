-- pool_spec.lua — mp.Pool's API: map, starmap, imap, imap_unordered, apply, apply_async,
-- map_async, AsyncResult, lifecycle (close/join/terminate, <close>, collection), options
-- (initializer, maxtasksperchild, timeouts, retries, progress), task errors, closures and
-- globals shipped to workers, and callbacks delivered by mp.poll.
local mp = require "lmp"
local H = require "helper"

-- A global helper defined after require, used by tasks in workers.
function pool_global_helper(x) return x * 7 end

local function square(x) return x * x end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local pcall_err = H.error_of

local function lines_of(path)
  local s = H.slurp(path) or ""
  local n = 0
  for _ in s:gmatch("[^\n]+") do n = n + 1 end
  return n
end

-- Appends one line to path (a task's trace that it ran).
local function mark(path, what)
  local f = assert(io.open(path, "a"))
  f:write(tostring(what), "\n")
  f:close()
end

describe("mp.Pool", function()
  before_each(H.setup)
  after_each(H.teardown)
  teardown(H.cleanup)

  describe("map", function()
    it("returns the results in order, with field n", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 100 do seq[i] = i end
      local r = pool:map(square, seq)
      assert.are.equal(100, r.n)
      for i = 1, 100 do assert.are.equal(i * i, r[i]) end
    end)

    it("keeps nil results (n counts them)", function()
      local pool <close> = mp.Pool(2)
      local r = pool:map(function(x) if x % 2 == 0 then return x end end, { 1, 2, 3, 4, 5 })
      assert.are.equal(5, r.n)
      assert.is_nil(r[1]); assert.are.equal(2, r[2]); assert.is_nil(r[3])
      assert.are.equal(4, r[4]); assert.is_nil(r[5])
    end)

    it("accepts a chunksize number and a {chunksize=} table", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 37 do seq[i] = i end
      for _, opts in ipairs { 1, 5, 100, { chunksize = 4 }, { chunksize = 37 } } do
        local r = pool:map(square, seq, opts)
        assert.are.equal(37, r.n)
        for i = 1, 37 do assert.are.equal(i * i, r[i]) end
      end
    end)

    it("returns an empty result for an empty input", function()
      local pool <close> = mp.Pool(2)
      local r = pool:map(square, {})
      assert.are.equal(0, r.n)
      assert.is_nil(r[1])
    end)

    it("honours n in the input (nil items)", function()
      local pool <close> = mp.Pool(2)
      local r = pool:map(function(x) return x == nil end, table.pack(1, nil, 3))
      assert.are.equal(3, r.n)
      assert.are.same({ false, true, false }, { r[1], r[2], r[3] })
    end)
  end)

  it("starmap unpacks each argument table", function()
    local pool <close> = mp.Pool(2)
    local r = pool:starmap(function(a, b, c) return a * b + (c or 0) end,
      { { 1, 2 }, { 3, 4, 5 }, { 6, 7 } })
    assert.are.equal(3, r.n)
    assert.are.same({ 2, 17, 42 }, { r[1], r[2], r[3] })
  end)

  describe("imap", function()
    it("yields i, v in input order", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 50 do seq[i] = i end
      local expect = 1
      for i, v in pool:imap(function(x)
        if x % 7 == 0 then mp.sleep(0.02) end -- finish out of order
        return x * 3
      end, seq) do
        assert.are.equal(expect, i)
        assert.are.equal(i * 3, v)
        expect = expect + 1
      end
      assert.are.equal(51, expect)
    end)

    it("reads an iterator input lazily, with a bounded read-ahead", function()
      local pool <close> = mp.Pool(2)
      local reads, total = 0, 20000
      local function items()
        if reads >= total then return nil end
        reads = reads + 1
        return reads
      end
      local got = 0
      for i, v in pool:imap(function(x) mp.sleep(0.01); return -x end, items) do
        assert.are.equal(-i, v)
        got = got + 1
        if got == 5 then
          assert.is_true(reads < 1000, "read ahead " .. reads .. " items for 5 results")
          break
        end
      end
      assert.is_true(reads < 1000, "read " .. reads .. " items")
    end)

    it("consumes a whole iterator input in order", function()
      local pool <close> = mp.Pool(2)
      local k = 0
      local it = function() k = k + 1; if k <= 300 then return k end end
      local n = 0
      for i, v in pool:imap(square, it, { chunksize = 7 }) do
        n = n + 1
        assert.are.equal(n, i)
        assert.are.equal(i * i, v)
      end
      assert.are.equal(300, n)
    end)

    it("breaking out of the loop cancels the rest", function()
      local pool <close> = mp.Pool(2)
      local trace = H.tmpname()
      local seq = {}
      for i = 1, 40 do seq[i] = i end
      for i in pool:imap(function(x) mark(trace, x); mp.sleep(0.1); return x end, seq) do
        if i == 2 then break end
      end
      mp.sleep(1.0) -- long enough for ~20 more tasks had they not been cancelled
      local ran = lines_of(trace)
      assert.is_true(ran < 15, ran .. " tasks ran after the loop was left")
      -- the pool is still usable and no stale result leaks into the next call
      local r = pool:map(square, { 1, 2, 3 })
      assert.are.same({ 1, 4, 9 }, { r[1], r[2], r[3] })
      assert.are.equal(3, r.n)
    end)
  end)

  describe("imap_unordered", function()
    it("yields every index exactly once, with its value", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 60 do seq[i] = i end
      local seen, n = {}, 0
      for i, v in pool:imap_unordered(function(x)
        if x % 5 == 0 then mp.sleep(0.02) end
        return x + 1000
      end, seq) do
        assert.is_nil(seen[i], "index " .. i .. " twice")
        seen[i] = true
        assert.are.equal(i + 1000, v)
        n = n + 1
      end
      assert.are.equal(60, n)
      for i = 1, 60 do assert.is_true(seen[i]) end
    end)

    it("yields each of 50,000 quick results exactly once, in big batches", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 50000 do seq[i] = i end
      local seen, n = {}, 0
      for i, v in pool:imap_unordered(function(x) return -x end, seq, 1) do
        assert.is_nil(seen[i], "index " .. i .. " twice")
        assert.are.equal(-i, v)
        seen[i] = true
        n = n + 1
      end
      assert.are.equal(50000, n)
    end)

    it("does not end the loop at a nil result", function()
      local pool <close> = mp.Pool(2)
      local n, nils = 0, 0
      for _, v in pool:imap_unordered(function(x) if x % 2 == 1 then return x end end,
        { 1, 2, 3, 4, 5, 6, 7, 8 }) do
        n = n + 1
        if v == nil then nils = nils + 1 end
      end
      assert.are.equal(8, n)
      assert.are.equal(4, nils)
    end)
  end)

  describe("apply", function()
    it("returns every value of the task", function()
      local pool <close> = mp.Pool(2)
      local a, b, c, d = pool:apply(function(x, y) return x + y, nil, "s", { x } end, { 1, 2 })
      assert.are.equal(3, a)
      assert.is_nil(b)
      assert.are.equal("s", c)
      assert.are.same({ 1 }, d)
      assert.are.equal(select("#", pool:apply(function() return 1, nil, nil end)), 3)
    end)

    it("honours n in args", function()
      local pool <close> = mp.Pool(1)
      local n, c = pool:apply(function(...) return select("#", ...), (select(3, ...)) end,
        table.pack(nil, nil, 3))
      assert.are.equal(3, n)
      assert.are.equal(3, c)
    end)
  end)

  describe("apply_async and AsyncResult", function()
    it("runs the callback, given positionally, before get returns", function()
      local pool <close> = mp.Pool(2)
      local got
      local r = pool:apply_async(function(a, b) return a + b, "x" end, { 20, 22 },
        function(v, s) got = { v, s } end)
      assert.are.same({ 42, "x" }, { r:get(10) })
      assert.are.same({ 42, "x" }, got)
    end)

    it("runs the error_callback, given positionally, with the error object", function()
      local pool <close> = mp.Pool(2)
      local called, errv = false, nil
      local r = pool:apply_async(function() error("nope", 0) end, {},
        function() called = true end, function(e) errv = e end)
      assert.is_true(r:wait(10))
      assert.is_false(called)
      assert.is_true(mp.iserror(errv, "RemoteError"))
      assert.are.equal("nope", errv.value)
      assert.is_false(r:successful())
      local err = pcall_err(r.get, r)
      assert.are.equal(errv, err)
    end)

    it("accepts callback and error_callback in an options table", function()
      local pool <close> = mp.Pool(2)
      local okv, errv
      local r1 = pool:apply_async(square, { 9 }, { callback = function(v) okv = v end })
      local r2 = pool:apply_async(function() error({ code = 7 }) end, {},
        { error_callback = function(e) errv = e end })
      r1:wait(10); r2:wait(10)
      assert.are.equal(81, okv)
      assert.is_true(mp.iserror(errv, "RemoteError"))
      assert.are.same({ code = 7 }, errv.value)
    end)

    it("ready, successful (ValueError before ready), wait", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(function() mp.sleep(0.3); return "done" end)
      assert.is_false(r:ready())
      local err = pcall_err(r.successful, r)
      assert.is_true(mp.iserror(err, "ValueError"))
      assert.is_false(r:wait(0.05))
      assert.is_true(r:wait(10))
      assert.is_true(r:ready())
      assert.is_true(r:successful())
      assert.are.equal("done", r:get())
    end)

    it("get(timeout) raises TimeoutError and the task goes on", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(function() mp.sleep(0.5); return 5 end)
      local t0 = mp.monotonic()
      local err = pcall_err(r.get, r, 0.1)
      assert.is_true(mp.iserror(err, "TimeoutError"))
      assert.is_true(mp.monotonic() - t0 < 0.45)
      assert.are.equal(5, r:get(10))
    end)

    it("a result arrives when its task ends, not when the worker's next task ends", function()
      local pool <close> = mp.Pool(1)
      local a = pool:apply_async(function() return "quick" end)
      local b = pool:apply_async(function() mp.sleep(1.5); return "slow" end)
      assert.are.equal("quick", a:get(0.7))
      assert.is_false(b:ready())
      assert.are.equal("slow", b:get(10))
    end)

    it("cancel: a queued task on a busy 1-worker pool never runs", function()
      local pool <close> = mp.Pool(1)
      local trace = H.tmpname()
      local busy = pool:apply_async(function() mp.sleep(0.4); return "busy" end)
      local r = pool:apply_async(function(p) mark(p, "ran") end, { trace })
      assert.is_true(r:cancel())
      assert.is_true(r:ready())
      assert.is_false(r:successful())
      assert.are.equal("busy", busy:get(10))
      pool:apply(function() end) -- the worker went past where r would have run
      assert.are.equal(0, lines_of(trace))
      assert.is_false(busy:cancel())
    end)

    it("cancel of a task behind a full worker window", function()
      local pool <close> = mp.Pool(1)
      local trace = H.tmpname()
      local rs = {}
      for i = 1, 4 do rs[i] = pool:apply_async(function() mp.sleep(0.2) end) end
      local r = pool:apply_async(function(p) mark(p, "ran") end, { trace })
      assert.is_true(r:cancel())
      for i = 1, 4 do rs[i]:get(10) end
      pool:apply(function() end)
      assert.are.equal(0, lines_of(trace))
    end)
  end)

  describe("map_async and starmap_async", function()
    it("deliver the results table to the callback", function()
      local pool <close> = mp.Pool(2)
      local got1, got2
      local r1 = pool:map_async(square, { 1, 2, 3 }, function(t) got1 = t end)
      local r2 = pool:starmap_async(function(a, b) return a .. b end, { { "a", 1 }, { "b", 2 } },
        { chunksize = 1, callback = function(t) got2 = t end })
      local t1 = r1:get(10)
      local t2 = r2:get(10)
      assert.are.same({ 1, 4, 9, n = 3 }, t1)
      assert.are.equal(t1, got1)
      assert.are.same({ "a1", "b2", n = 2 }, t2)
      assert.are.equal(t2, got2)
    end)

    it("deliver the first error to the error_callback, with its index", function()
      local pool <close> = mp.Pool(2)
      local errv
      local r = pool:map_async(function(x) if x == 3 then error("three") end return x end,
        { 1, 2, 3, 4 }, 1, nil, function(e) errv = e end)
      assert.is_true(r:wait(10))
      assert.is_false(r:successful())
      assert.is_true(mp.iserror(errv, "RemoteError"))
      assert.are.equal(3, errv.index)
    end)
  end)

  describe("transport", function()
    it("delivers every result when batches overflow the results ring", function()
      local pool <close> = mp.Pool(1)
      local big = string.rep("a", 20000)
      local rs = {}
      for i = 1, 40 do
        rs[i] = pool:apply_async(function(s, i) return string.rep("x", 100000) .. i, #s end, { big, i })
      end
      local t = mp.monotonic()
      while mp.monotonic() - t < 0.3 do end -- busy: results pile up in the ring, then the socket
      for i = 1, 40 do
        local s, n = rs[i]:get(10)
        assert.are.equal(100000 + #tostring(i), #s)
        assert.are.equal(tostring(i), s:sub(100001))
        assert.are.equal(20000, n)
      end
    end)
  end)

  describe("lifecycle", function()
    it("1000 pools, closed, terminated or dropped, leave no process, fd or memory behind", function()
      collectgarbage(); collectgarbage()
      local kb0 = collectgarbage("count")
      for i = 1, 1000 do
        local pool = mp.Pool(1)
        assert.are.equal(i, pool:apply(function(x) return x end, { i }))
        if i % 3 == 0 then
          pool:close()
          assert.is_true(pool:join(10))
        elseif i % 3 == 1 then
          pool:terminate()
          assert.is_true(pool:join(10))
        end -- else dropped: the collector terminates it
        if i % 100 == 0 then collectgarbage() end
      end
      collectgarbage(); collectgarbage()
      mp.poll(0.05) -- the loop frees what the closed handles held
      assert.are.same({}, H.wait_no_children(10))
      assert.is_true(collectgarbage("count") < kb0 + 512, "Lua memory grew by "
        .. math.floor(collectgarbage("count") - kb0) .. " KiB")
    end)

    it("join before close raises ValueError; close then join waits for the work", function()
      local pool = mp.Pool(2)
      local r = pool:map_async(function(x) mp.sleep(0.05); return x end, { 1, 2, 3, 4 })
      local err = pcall_err(pool.join, pool)
      assert.is_true(mp.iserror(err, "ValueError"))
      pool:close()
      assert.is_true(pool:join(10))
      assert.are.same({ 1, 2, 3, 4, n = 4 }, r:get(0))
      assert.are.same({}, H.wait_no_children(5))
    end)

    it("refuses submissions after close and after terminate (ValueError)", function()
      for _, how in ipairs { "close", "terminate" } do
        local pool = mp.Pool(1)
        pool[how](pool)
        for _, call in ipairs {
          function() return pool:apply(square, { 1 }) end,
          function() return pool:apply_async(square, { 1 }) end,
          function() return pool:map(square, { 1 }) end,
          function() return pool:map_async(square, { 1 }) end,
          function() return pool:starmap(square, { { 1 } }) end,
          function() return pool:imap(square, { 1 }) end,
          function() return pool:imap_unordered(square, { 1 }) end,
        } do
          local err = pcall_err(call)
          assert.is_true(mp.iserror(err, "ValueError"), how .. ": " .. tostring(err))
        end
        assert.is_true(pool:join(10))
      end
    end)

    it("terminate stops running work at once", function()
      local pool = mp.Pool(2)
      local r = pool:apply_async(function() mp.sleep(30) end)
      mp.sleep(0.1)
      local t0 = mp.monotonic()
      pool:terminate()
      assert.is_true(pool:join(10))
      assert.is_true(mp.monotonic() - t0 < 3)
      assert.is_true(r:wait(5))
      assert.is_false(r:successful())
    end)

    it("<close> terminates the pool at scope exit", function()
      local pids
      do
        local pool <close> = mp.Pool(2)
        pool:apply_async(function() mp.sleep(30) end)
        pids = pool:stats().workers
        assert.are.equal(2, #pids)
      end
      assert.are.same({}, H.wait_no_children(5))
      for _, pid in ipairs(pids) do assert.is_nil(H.slurp("/proc/" .. pid .. "/stat")) end
    end)

    it("a collected pool terminates its workers", function()
      local function use()
        local pool = mp.Pool(2)
        local r = pool:map(square, { 1, 2, 3 })
        assert.are.equal(9, r[3])
        assert.are.equal(2, #H.children())
      end
      use()
      collectgarbage(); collectgarbage()
      assert.are.same({}, H.wait_no_children(5))
    end)
  end)

  describe("options", function()
    it("initializer/initargs set worker globals visible to tasks", function()
      local pool <close> = mp.Pool { processes = 2, initializer = function(tag, n)
        POOL_SPEC_WORKER_TAG = tag .. n
      end, initargs = { "tag", 7 } }
      assert.is_nil(POOL_SPEC_WORKER_TAG)
      local r = pool:map(function() return POOL_SPEC_WORKER_TAG end, { 1, 2, 3, 4 }, 1)
      assert.are.same({ "tag7", "tag7", "tag7", "tag7", n = 4 }, r)
    end)

    it("maxtasksperchild replaces workers", function()
      local pool <close> = mp.Pool { processes = 1, maxtasksperchild = 2 }
      local seq = {}
      for i = 1, 10 do seq[i] = i end
      local r = pool:map(function() return mp.getpid() end, seq, 1)
      local per = {}
      for i = 1, 10 do per[r[i]] = (per[r[i]] or 0) + 1 end
      assert.is_true(count(per) >= 5, count(per) .. " distinct workers")
      for pid, n in pairs(per) do assert.is_true(n <= 2, pid .. " ran " .. n .. " tasks") end
    end)

    it("task_timeout fails the overdue task with TimeoutError and replaces its worker", function()
      local pool <close> = mp.Pool { processes = 1, task_timeout = 0.3 }
      local before = pool:stats().workers[1]
      local t0 = mp.monotonic()
      local err = pcall_err(pool.apply, pool, function() mp.sleep(30) end)
      assert.is_true(mp.iserror(err, "TimeoutError"), tostring(err))
      assert.is_true(mp.monotonic() - t0 < 5)
      assert.are.equal(6, pool:apply(function(x) return x * 2 end, { 3 }))
      local after = pool:stats().workers[1]
      assert.are_not.equal(before, after)
    end)

    it("a per-call timeout for apply_async and map", function()
      local pool <close> = mp.Pool(2)
      local r = pool:apply_async(function() mp.sleep(30) end, {}, { timeout = 0.2 })
      local err = pcall_err(r.get, r, 10)
      assert.is_true(mp.iserror(err, "TimeoutError"), tostring(err))
      err = pcall_err(pool.map, pool, function(x) if x == 2 then mp.sleep(30) end return x end,
        { 1, 2, 3 }, { chunksize = 1, timeout = 0.2 })
      assert.is_true(mp.iserror(err, "TimeoutError"), tostring(err))
      assert.are.equal(2, err.index)
      local ok = pool:map(square, { 1, 2, 3 })
      assert.are.same({ 1, 4, 9, n = 3 }, ok)
    end)

    it("retries=1 reruns a task whose worker died; without retries it fails", function()
      local function once(marker)
        local f = io.open(marker)
        if f then f:close(); return "second run" end
        f = assert(io.open(marker, "w")); f:close()
        require("lmp_testhelper").raise(9)
      end
      local m1 = H.tmpname(); os.remove(m1)
      local pool <close> = mp.Pool { processes = 1, retries = 1 }
      assert.are.equal("second run", pool:apply(once, { m1 }))
      local m2 = H.tmpname(); os.remove(m2)
      local plain <close> = mp.Pool(1)
      local err = pcall_err(plain.apply, plain, once, { m2 })
      assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
      assert.matches("signal 9", err.message)
      assert.are.equal("second run", plain:apply(once, { m2 }))
    end)

    it("progress as a function is called with done, total up to total", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 20 do seq[i] = i end
      local calls = {}
      pool:map(square, seq, { chunksize = 3, progress = function(d, t) calls[#calls + 1] = { d, t } end })
      assert.is_true(#calls >= 1)
      local last = 0
      for _, c in ipairs(calls) do
        assert.are.equal(20, c[2])
        assert.is_true(c[1] >= last)
        last = c[1]
      end
      assert.are.same({ 20, 20 }, calls[#calls])
    end)
  end)

  describe("output", function()
    it("what tasks print reaches stdout", function()
      local out, err, code = H.run_lmp([[
        local mp = require "lmp"
        local pool = mp.Pool(2)
        pool:map(function(x) print("task " .. x) end, { 1, 2, 3 }, 1)
        pool:close(); pool:join()
        print("end")
      ]])
      assert.are.equal(0, code, err)
      for i = 1, 3 do assert.matches("task " .. i .. "\n", out) end
      assert.matches("end\n$", out)
    end)

    it("what finished tasks printed reaches stdout when the script never closes the pool", function()
      local out, err, code = H.run_lmp([[
        local mp = require "lmp"
        local pool = mp.Pool(2)
        pool:map(function(x) print("task " .. x) end, { 1, 2, 3 }, 1)
      ]])
      assert.are.equal(0, code, err)
      for i = 1, 3 do assert.matches("task " .. i .. "\n", out) end
    end)
  end)

  describe("task errors", function()
    it("arrive as RemoteError with value, traceback, pid", function()
      local pool <close> = mp.Pool(2)
      local line = debug.getinfo(1, "l").currentline + 1
      local function bad(x) error("bad " .. x) end
      local err = pcall_err(pool.apply, pool, bad, { "input" })
      assert.is_true(mp.iserror(err, "RemoteError"))
      assert.matches("bad input", err.value)
      assert.matches("bad input", err.message)
      assert.matches(":" .. line .. ":", err.traceback)
      assert.is_number(err.pid)
      local pids = pool:stats().workers
      assert.is_true(err.pid == pids[1] or err.pid == pids[2])
      assert.matches("RemoteError", tostring(err))
    end)

    it("keep a table error value", function()
      local pool <close> = mp.Pool(1)
      local e = pcall_err(pool.apply, pool, function() error({ code = 42, why = { "deep" } }) end)
      assert.is_true(mp.iserror(e, "RemoteError"))
      assert.are.same({ code = 42, why = { "deep" } }, e.value)
    end)

    it("carry the 1-based input index for map, starmap and imap", function()
      local pool <close> = mp.Pool(2)
      local seq = {}
      for i = 1, 10 do seq[i] = i end
      local function f(x) if x == 7 then error("seven") end return x end
      for _, cs in ipairs { 1, 3, 4, 10 } do
        local err = pcall_err(pool.map, pool, f, seq, cs)
        assert.is_true(mp.iserror(err, "RemoteError"))
        assert.are.equal(7, err.index, "chunksize " .. cs .. ": " .. tostring(err))
      end
      local err = pcall_err(pool.starmap, pool, function(a, b)
        if a == 2 then error("two") end
      end, { { 1, 1 }, { 2, 2 }, { 3, 3 } })
      assert.are.equal(2, err.index)
      local got = {}
      err = pcall_err(function()
        for i, v in pool:imap(f, seq, 2) do got[#got + 1] = i end
      end)
      assert.is_true(mp.iserror(err, "RemoteError"))
      assert.are.equal(7, err.index)
      assert.are.same({ 1, 2, 3, 4, 5, 6 }, got)
    end)

    it("leave the pool working", function()
      local pool <close> = mp.Pool(2)
      for _ = 1, 3 do pcall(pool.map, pool, function() error("x") end, { 1, 2, 3 }) end
      assert.are.same({ 1, 4, n = 2 }, pool:map(square, { 1, 2 }))
    end)
  end)

  describe("functions shipped to workers", function()
    it("a closure with upvalues and a global helper", function()
      local pool <close> = mp.Pool(2)
      local k, conf = 3, { add = 100 }
      local r = pool:map(function(x) return pool_global_helper(x) * k + conf.add end, { 1, 2 })
      assert.are.same({ 121, 142, n = 2 }, r)
    end)

    it("closures made in a loop each use their own upvalue", function()
      local pool <close> = mp.Pool(2)
      for k = 1, 4 do
        local r = pool:map(function(x) return x * k end, { 1, 2, 3 })
        assert.are.same({ k, 2 * k, 3 * k, n = 3 }, r)
      end
    end)

    it("functions defined by the script at run time (the REPL case)", function()
      local pool <close> = mp.Pool(2)
      for k = 1, 3 do
        local f = assert(load("local k = ... return function(x) return x + k end", "=stdin"))(k * 10)
        assert.are.equal(k * 10 + 1, pool:apply(f, { 1 }))
        local g = assert(load("function repl_defined_" .. k .. "(x) return x - " .. k .. " end",
          "=stdin"))
        g()
        local h = _G["repl_defined_" .. k]
        assert.are.same({ 10 - k, 20 - k, n = 2 }, pool:map(h, { 10, 20 }))
        _G["repl_defined_" .. k] = nil
      end
    end)

    it("a function reading a global that changes between calls sees the new value", function()
      local pool <close> = mp.Pool(1)
      pool_spec_setting = 1
      local function read() return pool_spec_setting end
      assert.are.equal(1, pool:apply(read))
      pool_spec_setting = 2
      assert.are.equal(2, pool:apply(read))
      pool_spec_setting = nil
    end)
  end)

  describe("mp.poll", function()
    it("delivers callbacks without blocking and counts them", function()
      local pool <close> = mp.Pool(2)
      local got = {}
      for i = 1, 3 do
        pool:apply_async(function(x) mp.sleep(0.05); return x end, { i },
          function(v) got[#got + 1] = v end)
      end
      local t0 = mp.monotonic()
      assert.are.equal(0, mp.poll())
      assert.is_true(mp.monotonic() - t0 < 0.2, "poll() blocked") -- 0 results: it did not wait
      local ran = 0
      local deadline = mp.monotonic() + 10
      while #got < 3 and mp.monotonic() < deadline do ran = ran + mp.poll(0.05) end
      assert.are.equal(3, #got)
      assert.are.equal(3, ran)
      table.sort(got)
      assert.are.same({ 1, 2, 3 }, got)
    end)

    it("a blocking call inside a callback raises, and the error is reported", function()
      local out, err, code = H.run_lmp([[
        local mp = require "lmp"
        local pool = mp.Pool(2)
        local slow = pool:apply_async(function() mp.sleep(0.5); return 1 end)
        local inner_ok, inner_err
        local r = pool:apply_async(function() return 2 end, {}, function()
          inner_ok, inner_err = pcall(slow.get, slow)
          slow:get() -- uncaught: must be reported
        end)
        r:wait(10)
        print("inner", inner_ok, mp.iserror(inner_err) and inner_err.type or tostring(inner_err))
        print("inner message", mp.iserror(inner_err) and inner_err.message or "")
        print("slow", slow:get(10))
        print("later", pool:apply(function() return 3 end))
        pool:terminate(); pool:join()
      ]])
      assert.are.equal(0, code, err)
      assert.matches("inner\tfalse\t", out)
      assert.matches("callback", out:match("inner message[^\n]*"))
      assert.matches("slow\t1", out)
      assert.matches("later\t3", out)
      assert.matches("error in callback", err)
      assert.matches("callback", err)
    end)
  end)

  it("stats lists the worker pids", function()
    local pool <close> = mp.Pool(3)
    local st = pool:stats()
    assert.are.equal(3, #st.workers)
    local r = pool:map(function() mp.sleep(0.05); return mp.getpid() end, { 1, 2, 3, 4, 5, 6 }, 1)
    local known = {}
    for _, p in ipairs(st.workers) do known[p] = true end
    for i = 1, 6 do assert.is_true(known[r[i]]) end
  end)
end)
