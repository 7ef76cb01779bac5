-- queue_spec.lua — Queue, SimpleQueue, JoinableQueue: values, ordering, Full/Empty with and
-- without blocking, processes on both ends, many producers and consumers, huge items, a
-- writer SIGKILLed in the middle of a put, the failure paths of get, and the timeout rule.
local mp = require "lmp"
local H = require "helper"
local S = require "shm_helper"

local W = require "waits_helper"

local err_of = H.error_of

describe("Queue", function()
  before_each(S.setup)
  after_each(S.teardown)
  teardown(H.cleanup)

  it("carries any encodable value, nil included, in order", function()
    local q = mp.Queue()
    local t = { 1, "two", { three = 3 }, n = 3 }
    q:put(1); q:put(nil); q:put("s"); q:put(t); q:put(2.5); q:put(false)
    assert.are.equal(6, q:qsize())
    assert.are.equal(1, q:get())
    assert.is_nil(q:get())
    assert.are.equal("s", q:get())
    assert.are.same(t, q:get())
    local f = q:get()
    assert.are.equal(2.5, f)
    assert.are.equal("float", math.type(f))
    assert.is_false(q:get())
    assert.is_true(q:empty())
  end)

  it("raises Empty and Full, blocking or not, with timeouts", function()
    local q = mp.Queue(2)
    assert.is_true(mp.iserror(err_of(q.get_nowait, q), "Empty"))
    assert.is_true(mp.iserror(err_of(q.get, q, false), "Empty"))
    local t0 = mp.monotonic()
    assert.is_true(mp.iserror(err_of(q.get, q, true, 0.1), "Empty"))
    assert.is_true(mp.monotonic() - t0 >= 0.09)
    q:put("a"); q:put_nowait("b")
    assert.is_true(q:full())
    assert.is_true(mp.iserror(err_of(q.put_nowait, q, "c"), "Full"))
    assert.is_true(mp.iserror(err_of(q.put, q, "c", false), "Full"))
    assert.is_true(mp.iserror(err_of(q.put, q, "c", true, 0.1), "Full"))
    assert.are.equal("a", q:get_nowait())
    q:put("c", true, 1)
    assert.are.same({ "b", "c" }, { q:get(), q:get(true, 1) })
  end)

  it("raises encoding errors in put, and ValueError after close", function()
    local q = mp.Queue()
    local err = err_of(q.put, q, coroutine.create(print))
    assert.is_true(mp.iserror(err, "SerializationError"))
    assert.is_true(q:empty())
    q:close()
    assert.is_true(mp.iserror(err_of(q.put, q, 1), "ValueError"))
  end)

  it("connects a producer and a consumer process (the seed example)", function()
    local q = mp.Queue(10)
    local out = H.tmpname()
    local writer = S.spawn(function(q)
      for _, v in ipairs { "A", "B", "C" } do q:put(v) end
    end, q)
    local reader = S.spawn(function(q, path)
      local f = assert(io.open(path, "w"))
      for _ = 1, 3 do f:write("Get ", q:get(true, 10), " from queue.\n") end
      f:close()
    end, q, out)
    S.join_all({ writer, reader })
    assert.are.equal("Get A from queue.\nGet B from queue.\nGet C from queue.\n", H.slurp(out))
  end)

  it("delivers every item exactly once with 4 producers and 4 consumers", function()
    local N, P = 100000, 4
    local q, results = mp.Queue(1000), mp.Queue()
    local ps = {}
    for k = 1, P do
      ps[#ps + 1] = S.spawn(function(q, k, N, P)
        for i = k, N, P do q:put(i) end
      end, q, k, N, P)
    end
    for _ = 1, P do
      ps[#ps + 1] = S.spawn(function(q, results)
        local count, sum, sq = 0, 0, 0
        while true do
          local v = q:get(true, 20)
          if v == "STOP" then break end
          count, sum, sq = count + 1, sum + v, sq + v * v
        end
        results:put({ count, sum, sq })
      end, q, results)
    end
    for k = 1, P do assert.are.equal(0, ps[k]:join(30)) end
    for _ = 1, P do q:put("STOP") end
    local count, sum, sq = 0, 0, 0
    for _ = 1, P do
      local r = results:get(true, 30)
      count, sum, sq = count + r[1], sum + r[2], sq + r[3]
    end
    S.join_all(ps)
    assert.are.equal(N, count)
    assert.are.equal(N * (N + 1) // 2, sum)
    assert.are.equal(N * (N + 1) * (2 * N + 1) // 6, sq)
  end)

  it("passes a 64 MiB item", function()
    local q = mp.Queue()
    local p = S.spawn(function(q) q:put(string.rep("abcdefgh", 8 << 20)) end, q)
    local s = q:get(true, 30)
    assert.are.equal(64 << 20, #s)
    assert.are.equal("abcdefgh", s:sub(-8))
    S.join_all({ p })
  end)

  it("stays consistent when a writer is SIGKILLed in the middle of a big put", function()
    local q = mp.Queue()
    q:put("before")
    local p = S.spawn(function(q) q:put(string.rep("x", 16 << 20)) end, q)
    mp.sleep(0.3) -- the ring is full: the writer is blocked mid-item
    p:kill()
    p:join(5)
    local other = S.spawn(function(q) q:put("after") end, q)
    assert.are.equal("before", q:get(true, 5))
    assert.are.equal("after", q:get(true, 5))
    assert.is_true(mp.iserror(err_of(q.get, q, true, 0.1), "Empty"))
    S.join_all({ other })
  end)

  it("carries Locks and Queues to other processes", function()
    local q, back = mp.Queue(), mp.Queue()
    local p = S.spawn(function(q, back)
      local lock, v = q:get(true, 10), q:get(true, 10)
      lock:acquire()
      v.value = 42
      lock:release()
      back:put(back)
    end, q, back)
    local lock, v = mp.Lock(), mp.Value("i", 0)
    q:put(lock); q:put(v)
    local b2 = back:get(true, 10)
    S.join_all({ p })
    assert.are.equal(42, v.value)
    b2:put("x")
    assert.are.equal("x", back:get(true, 1))
  end)

  it("Ctrl-C during a blocking get or a big put raises InterruptedError; the queue still works", function()
    local q = mp.Queue()
    local function interrupt_me(after)
      return S.spawn(function(pid, after)
        mp.sleep(after)
        os.execute("kill -INT " .. pid)
      end, mp.getpid(), after)
    end
    local p = interrupt_me(0.2)
    assert.is_true(mp.iserror(err_of(q.get, q, true, 10), "InterruptedError"))
    S.join_all({ p })
    local big = string.rep("x", 8 << 20) -- made before: Ctrl-C must come during the put's wait
    p = interrupt_me(0.5)
    assert.is_true(mp.iserror(err_of(q.put, q, big, true, 10), "InterruptedError"))
    S.join_all({ p })
    -- the withdrawn part still fills the ring until a reader drops it
    assert.is_true(mp.iserror(err_of(q.get, q, true, 0.2), "Empty"))
    q:put("fine")
    assert.are.equal("fine", q:get(true, 1))
  end)

  describe("failure paths", function()
    it("an item that cannot be decoded leaves the queue sound; Ctrl-C still interrupts", function()
      S.assert_ok(S.run_bounded([[
        local q = mp.Queue()
        -- shared objects made by a child that has exited: their handles cannot be mapped
        local p = mp.Process(function(q)
          q:put(mp.Lock()); q:put(mp.Value("i", 7)); q:put({ mp.Condition() }); q:put("fine")
        end, { q })
        p:start()
        assert(p:join(20) == 0)
        for _ = 1, 3 do
          local ok, e = pcall(q.get, q, true, 5)
          assert(not ok and mp.iserror(e, "SerializationError") and e.message:match("exited"),
            tostring(e))
        end
        assert(q:get(true, 5) == "fine")
        local t0 = mp.monotonic()
        local ok, e = pcall(q.get, q, true, 0.05)
        assert(not ok and mp.iserror(e, "Empty"), tostring(e))
        assert(mp.monotonic() - t0 < 2, "get(true, 0.05) took too long")
        assert(q:qsize() == 0 and q:empty())
        local k = mp.Process(function(pid) mp.sleep(0.3); os.execute("kill -INT " .. pid) end,
          { mp.getpid() })
        k:start()
        ok, e = pcall(q.get, q, true, 20)
        assert(not ok and mp.iserror(e, "InterruptedError"), tostring(e))
        assert(k:join(10) == 0)
        q:put("again")
        assert(q:get(true, 1) == "again")
        print("ok")
      ]], 60))
    end)

    it("an item there is no memory for is dropped with ProcessError and stops counting", function()
      S.assert_ok(S.run_bounded([[
        local q, made = mp.Queue(), mp.Event()
        local w = mp.Process(function(q, made)
          local s = string.rep("x", 300 << 20)
          made:set()
          q:put(s)
          q:put("after")
        end, { q, made })
        w:start()
        assert(made:wait(60), "the writer did not make its item")
        mp.sleep(1) -- the writer has encoded the item and is blocked on the full ring
        local vm
        for l in io.lines("/proc/self/status") do vm = vm or l:match("^VmSize:%s+(%d+)") end
        local limit = ("prlimit --pid %d --as=%%s:"):format(mp.getpid())
        assert(os.execute(limit:format(tonumber(vm) * 1024 + (64 << 20))))
        local ok, e = pcall(q.get, q, true, 20)
        assert(os.execute(limit:format("unlimited")))
        assert(not ok and mp.iserror(e, "ProcessError") and e.message:match("memory"), tostring(e))
        assert(q:get(true, 60) == "after") -- the rest of the big item streams past first
        assert(q:qsize() == 0 and q:empty(), "the dropped item still counts")
        assert(w:join(30) == 0)
        print("ok")
      ]], 180, "env ASAN_OPTIONS=allocator_may_return_null=1")) -- under ASan too: malloc fails
    end)

    it("a failed put leaves no item and no lock behind", function()
      local q = mp.Queue(1)
      assert.is_true(mp.iserror(err_of(q.put, q, { f = coroutine.create(print) }), "SerializationError"))
      assert.is_true(mp.iserror(err_of(q.put, q, 1, "yes"), "TypeError"))
      assert.is_true(mp.iserror(err_of(q.put, q, 1, true, 0 / 0), "ValueError"))
      assert.are.equal(0, q:qsize())
      q:put(1)
      assert.is_true(mp.iserror(err_of(q.put, q, 2, true, 0.05), "Full"))
      assert.are.equal(1, q:get(true, 1))
      q:put(3, true, 1)
      assert.are.equal(3, q:get(true, 1))
    end)
  end)

  it("follows the one timeout rule in get, put and join", function()
    S.assert_ok(S.run_bounded(W.rule_script { "Queue:get", "Queue:put", "JoinableQueue:join" }, 60))
  end)

  describe("JoinableQueue", function()
    it("task_done and join", function()
      local q = mp.JoinableQueue()
      assert.is_true(q:join(0.05))
      q:put(1); q:put(2)
      assert.is_false(q:join(0.05))
      local p = S.spawn(function(q)
        for _ = 1, 2 do q:get(true, 10); q:task_done() end
      end, q)
      assert.is_true(q:join(10))
      S.join_all({ p })
      assert.is_true(mp.iserror(err_of(q.task_done, q), "ValueError"))
    end)
  end)

  describe("SimpleQueue", function()
    it("puts and gets", function()
      local q = mp.SimpleQueue()
      q:put({ 1 })
      assert.is_false(q:empty())
      assert.are.same({ 1 }, q:get())
      assert.is_true(q:empty())
    end)
  end)
end)
