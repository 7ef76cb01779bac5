-- manager_spec.lua — mp.Manager: every proxy method, proxies travelling to any process
-- (grandchildren, pool workers forked before the manager, queues), reference counting in the
-- server, custom types, authentication, TCP, faults (a client SIGKILLed, the server killed) and
-- shutdown by every road, with no server process or socket file left behind.
local mp = require "lmp"
local H = require "helper"

local err_of = H.error_of
local warm_arena = mp.Lock() -- the process's first shared-memory arena stays: make it now

-- Managers made by a test, checked gone (process and socket) after it.
local made = {}
local function Manager(opts)
  local m = mp.Manager(opts)
  made[#made + 1] = { pid = m.pid, path = rawget(m, "_path"), dir = rawget(m, "_dir") }
  return m
end

local function exists(path) return path ~= nil and os.rename(path, path) ~= nil end

local function mgr_setup()
  made = {}
  H.setup()
end

local function mgr_teardown()
  collectgarbage()
  collectgarbage()
  H.teardown()
  for _, m in ipairs(made) do
    assert.is_false(exists(m.path), "socket left behind: " .. tostring(m.path))
    assert.is_false(exists(m.dir), "socket directory left behind: " .. tostring(m.dir))
    assert.is_false(mp.core.pid_alive(m.pid), "server process left behind")
  end
end

-- Runs code with the lmp executable, killed after 60 s; returns stdout, stderr, status.
local function run_lmp(code)
  local src, out, errf = H.tmpname(), H.tmpname(), H.tmpname()
  local f = assert(io.open(src, "w"))
  f:write(code)
  f:close()
  local _, how, rc = os.execute(("timeout -s KILL 60 %s %s >%s 2>%s"):format(
    os.getenv("LMP_EXE") or "build/lmp", src, out, errf))
  return H.slurp(out), H.slurp(errf), how == "exit" and rc or -rc
end

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

local function until_true(f, seconds)
  local deadline = mp.monotonic() + (seconds or 10)
  while not f() do
    if mp.monotonic() > deadline then return false end
    mp.sleep(0.01)
  end
  return true
end

local function objects(m)
  collectgarbage()
  collectgarbage()
  return m:_stats().objects
end

describe("Manager", function()
  before_each(mgr_setup)
  after_each(mgr_teardown)
  teardown(H.cleanup)

  describe("server", function()
    it("listens on a Unix socket in a directory only the owner can enter", function()
      local m = Manager()
      assert.are.equal(rawget(m, "_path"), m.address)
      local p = io.popen("stat -c %a " .. rawget(m, "_dir"))
      assert.are.equal("700", p:read("l"))
      p:close()
      assert.are.equal(32, #m.authkey)
      assert.is_true(mp.core.pid_alive(m.pid))
      m:shutdown()
      assert.is_false(exists(m.address))
      assert.is_false(mp.core.pid_alive(m.pid))
      assert.are.equal(0, m.exitcode)
    end)

    it("stops with shutdown(), <close> and collection, and proxies then fail fast", function()
      local m = Manager()
      local d = m:dict()
      d.x = 1
      m:shutdown()
      m:shutdown() -- twice is fine
      local err = err_of(function() return d.x end)
      assert.is_true(mp.iserror(err, "ProcessError"))
      assert.matches("is gone %(it was shut down%)", err.message)
      local pid
      do
        local m2 <close> = Manager()
        pid = m2.pid
        assert.are.equal(3, #m2:list { 1, 2, 3 })
      end
      assert.is_false(mp.core.pid_alive(pid))
      local info
      do
        local m3 = Manager()
        info = made[#made]
        m3:dict().y = 2
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(until_true(function() return not exists(info.dir) end))
    end)

    it("keeps running while a proxy made here lives (mp.Manager():Queue())", function()
      local q = mp.Manager():Queue()
      local owner = q[require("lmp.manager_proxy").K].owner
      made[#made + 1] = { pid = owner.pid, path = rawget(owner, "_path"), dir = rawget(owner, "_dir") }
      owner = nil
      collectgarbage()
      collectgarbage()
      q:put("still here")
      assert.are.equal("still here", q:get())
    end)

    it("stops when the process that started it exits, however it exits", function()
      for _, ending in ipairs { "", "os.exit(0)", "os.exit(3, false)", "error('boom')",
                                "os.execute('kill -9 ' .. mp.getpid())" } do
        local out = run_lmp(([[
          local mp = require "lmp"
          local m = mp.Manager()
          m:dict().x = 1
          print(m.pid, rawget(m, "_dir"))
          io.stdout:flush()
          %s
        ]]):format(ending))
        local pid, dir = out:match("^(%d+)%s+(%S+)")
        assert.is_not_nil(pid, ending)
        assert.is_true(until_true(function() return not mp.core.pid_alive(tonumber(pid)) end), ending)
        assert.is_true(until_true(function() return not exists(dir) end), ending .. ": " .. dir)
      end
    end)

    it("checks its options", function()
      assert.is_true(mp.iserror(err_of(mp.Manager, { adress = "x" }), "ValueError"))
      assert.matches("unknown option 'adress'", err_of(mp.Manager, { adress = "x" }).message)
      assert.is_true(mp.iserror(err_of(mp.Manager, { authkey = "" }), "ValueError")) -- a wrong value
      assert.is_true(mp.iserror(err_of(mp.Manager, { types = { Bad = 3 } }), "TypeError"))
      assert.is_true(mp.iserror(err_of(mp.Manager, { types = { dict = function() end } }), "ValueError"))
      assert.is_true(mp.iserror(err_of(mp.Manager, "x"), "TypeError"))
      assert.is_true(mp.iserror(err_of(mp.Manager, {}, 2), "ValueError"))
      assert.is_true(mp.iserror(err_of(mp.Manager, { types = { T = function() return coroutine.create(print) end,
        U = coroutine.create(print) } }), "TypeError"))
    end)

    it("does not keep descriptors it inherited open (a Pipe's end of file is seen)", function()
      local a, b = mp.Pipe()
      local m = Manager()
      local p = mp.Process(function(b) b:send("hi") end, { b })
      p:start()
      b:close()
      assert.are.equal("hi", a:recv())
      p:join()
      assert.is_true(mp.iserror(err_of(a.recv, a), "EOFError"))
      a:close()
      m:shutdown()
    end)
  end)

  describe("dict", function()
    it("indexes, assigns, deletes with nil, counts and iterates in insertion order", function()
      local m = Manager()
      local d = m:dict { 1, 2, b = "B", a = "A" }
      assert.are.same({ 1, 2, "a", "b" }, d:keys())
      d.z = true
      d[3.0] = "three"
      d.a = nil
      assert.are.equal(5, #d)
      assert.are.equal("three", d[3])
      local ks, vs = {}, {}
      for k, v in pairs(d) do ks[#ks + 1], vs[#vs + 1] = k, v end
      assert.are.same({ 1, 2, "b", "z", 3 }, ks)
      assert.are.same({ 1, 2, "B", true, "three" }, vs)
      assert.is_nil(d.missing)
      assert.are.same({ { 1, 1 }, { 2, 2 }, { "b", "B" }, { "z", true }, { 3, "three" } }, d:items())
      assert.are.same({ 1, 2, "B", true, "three" }, d:values())
      assert.is_true(mp.iserror(err_of(function() d[nil] = 1 end), "ValueError"))
      assert.is_true(mp.iserror(err_of(function() d[0 / 0] = 1 end), "ValueError"))
      assert.matches('^{%[1%] = 1, %[2%] = 2, b = "B", z = true, %[3%] = "three"}$', tostring(d))
    end)

    it("has get, update, pop, popitem, setdefault, clear and copy", function()
      local m = Manager()
      local d = m:dict()
      assert.are.equal("dflt", d:get("k", "dflt"))
      d:update { k = 1, f = false }
      assert.is_false(d:get("f", "dflt"))
      assert.are.equal(1, d:get("k"))
      assert.are.equal(1, d:pop("k"))
      assert.are.equal("none", d:pop("k", "none"))
      assert.is_nil(d:pop("k", nil))
      local err = err_of(d.pop, d, "k")
      assert.is_true(mp.iserror(err, "KeyError"))
      d.x = 10
      d.y = 20
      assert.are.same({ "y", 20 }, { d:popitem() })
      assert.are.equal(10, d:setdefault("x", 99))
      assert.are.equal(99, d:setdefault("w", 99))
      local c = d:copy()
      assert.are.same({ f = false, x = 10, w = 99 }, c)
      c.x = "changed" -- a copy: the dict is untouched (values are stored by value)
      assert.are.equal(10, d.x)
      local t = { 1, 2 }
      d.t = t
      local back = d.t
      back[1] = "changed"
      assert.are.same({ 1, 2 }, d.t)
      d:clear()
      assert.are.equal(0, #d)
      assert.is_true(mp.iserror(err_of(d.popitem, d), "KeyError"))
      local other = m:dict { o = 1 }
      d:update(other)
      assert.are.equal(1, d.o)
    end)
  end)

  describe("list", function()
    it("is 1-based with #, ipairs, pairs and appending at #l + 1", function()
      local m = Manager()
      local l = m:list { "a", "b" }
      assert.are.equal("a", l[1])
      assert.is_nil(l[0])
      assert.is_nil(l[3])
      l[3] = "c"
      l[1] = "A"
      assert.is_true(mp.iserror(err_of(function() l[5] = "x" end), "ValueError"))
      assert.are.equal(3, #l)
      local seen = {}
      for i, v in ipairs(l) do seen[i] = v end
      assert.are.same({ "A", "b", "c" }, seen)
      seen = {}
      for i, v in pairs(l) do seen[i] = v end
      assert.are.same({ "A", "b", "c" }, seen)
      assert.are.equal('{"A", "b", "c"}', tostring(l))
      local withnil = m:list { n = 3, 1, nil, 3 }
      assert.are.equal(3, #withnil)
      assert.are.same({ n = 3, 1, nil, 3 }, withnil:copy())
    end)

    it("has append, extend, insert, pop, remove, index, count, copy, sort, reverse, clear", function()
      local m = Manager()
      local l = m:list()
      l:append(3)
      l:extend { 1, 2 }
      l:extend(m:list { 5, 4 })
      assert.are.same({ n = 5, 3, 1, 2, 5, 4 }, l:copy())
      l:insert(1, 0)
      l:insert(#l + 1, 9)
      assert.are.same({ n = 7, 0, 3, 1, 2, 5, 4, 9 }, l:copy())
      assert.are.equal(9, l:pop())
      assert.are.equal(0, l:pop(1))
      l:remove(5)
      assert.is_true(mp.iserror(err_of(l.remove, l, 42), "ValueError"))
      assert.are.equal(2, l:index(1))
      assert.is_true(mp.iserror(err_of(l.index, l, 42), "ValueError"))
      l:append(1)
      assert.are.equal(2, l:count(1))
      l:sort()
      assert.are.same({ n = 5, 1, 1, 2, 3, 4 }, l:copy())
      l:sort(function(a, b) return a > b end)
      assert.are.same({ n = 5, 4, 3, 2, 1, 1 }, l:copy())
      l:reverse()
      assert.are.same({ n = 5, 1, 1, 2, 3, 4 }, l:copy())
      local pairs_ = m:list { { 2, "a" }, { 1, "b" }, { 2, "c" }, { 1, "d" } }
      pairs_:sort(function(x, y) return x[1] < y[1] end) -- stable
      assert.are.same({ n = 4, { 1, "b" }, { 1, "d" }, { 2, "a" }, { 2, "c" } }, pairs_:copy())
      local mixed = m:list { 1, "x" }
      assert.is_true(mp.iserror(err_of(mixed.sort, mixed), "TypeError"))
      l:clear()
      assert.are.equal(0, #l)
      assert.is_true(mp.iserror(err_of(l.pop, l), "ValueError"))
    end)
  end)

  describe("Namespace, Value and Array", function()
    it("Namespace: attributes, nil deletes, pairs and tostring", function()
      local m = Manager()
      local ns = m:Namespace { name = "Bob" }
      ns.job = "Builder"
      ns._hidden = 1
      assert.are.same({ "Bob", "Builder" }, { ns.name, ns.job })
      ns.job = nil
      assert.is_nil(ns.job)
      assert.are.equal('Namespace(name="Bob")', tostring(ns))
      local seen = {}
      for k, v in pairs(ns) do seen[k] = v end
      assert.are.same({ name = "Bob", _hidden = 1 }, seen)
      assert.is_true(mp.iserror(err_of(function() ns[1] = 2 end), "TypeError"))
    end)

    it("Value: typed like mp.Value, with a lock", function()
      local m = Manager()
      local v = m:Value("i", 1)
      assert.are.equal(1, v.value)
      v.value = v.value + 1
      assert.are.equal(2, v:get())
      v:set(3.0)
      assert.are.equal(3, v.value)
      assert.are.equal("integer", math.type(v.value))
      assert.is_true(mp.iserror(err_of(function() v.value = 2 ^ 40 end), "ValueError"))
      assert.is_true(mp.iserror(err_of(function() v.value = 1.5 end), "ValueError"))
      assert.is_true(mp.iserror(err_of(m.Value, m, "z", 1), "ValueError"))
      assert.are.equal(0.0, m:Value("d").value)
      assert.are.equal(0.5, m:Value("f", 0.5).value)
      assert.are.equal("x", m:Value("c", "x").value)
      assert.are.equal(7, v:with(function(vv, k) vv.value = vv.value + k; return vv.value end, 4))
      assert.is_true(v:acquire())
      v:release()
      assert.are.equal("lmp.RLockProxy", getmetatable(v:get_lock()).__name)
    end)

    it("Array: 1-based, typed, totable, 'c' arrays with .value and .raw", function()
      local m = Manager()
      local a = m:Array("i", { 1, 2, 3 })
      assert.are.equal(3, #a)
      a[2] = 20
      assert.are.same({ 1, 20, 3 }, a:totable())
      assert.is_true(mp.iserror(err_of(function() return a[4] end), "ValueError"))
      assert.is_true(mp.iserror(err_of(function() a[1] = "x" end), "TypeError")) -- as mp.Array: a wrong type
      local seen = {}
      for i, x in pairs(a) do seen[i] = x end
      assert.are.same({ 1, 20, 3 }, seen)
      assert.are.same({ 0, 0 }, m:Array("d", 2):totable())
      local c = m:Array("c", 5)
      c.value = "hi"
      assert.are.equal("hi", c.value)
      assert.are.equal("hi\0\0\0", c.raw)
      c.raw = "abcde"
      assert.are.equal("abcde", c.value)
      assert.are.equal("b", c[2])
      assert.is_true(mp.iserror(err_of(function() c.value = "too long!" end), "ValueError"))
      assert.are.equal(6, a:with(function(aa) return aa[1] + 5 end))
    end)
  end)

  describe("queues", function()
    it("Queue: put and get with blocking, timeouts, Full and Empty, any value", function()
      local m = Manager()
      local q = m:Queue(2)
      assert.is_true(q:empty())
      q:put(nil)
      q:put_nowait({ x = 1 })
      assert.is_true(q:full())
      assert.are.equal(2, q:qsize())
      assert.is_true(mp.iserror(err_of(q.put_nowait, q, 3), "Full"))
      assert.is_true(mp.iserror(err_of(q.put, q, 3, false), "Full"))
      local t0 = mp.monotonic()
      assert.is_true(mp.iserror(err_of(q.put, q, 3, true, 0.1), "Full"))
      assert.is_true(mp.monotonic() - t0 >= 0.09)
      assert.is_nil(q:get())
      assert.are.same({ x = 1 }, q:get_nowait())
      assert.is_true(mp.iserror(err_of(q.get_nowait, q), "Empty"))
      assert.is_true(mp.iserror(err_of(q.get, q, false), "Empty"))
      t0 = mp.monotonic()
      assert.is_true(mp.iserror(err_of(q.get, q, true, 0.1), "Empty"))
      assert.is_true(mp.monotonic() - t0 >= 0.09)
      assert.is_true(mp.iserror(err_of(q.get, q, true, 0 / 0), "ValueError"))
      assert.is_true(mp.iserror(err_of(q.get, q, "yes"), "TypeError"))
      assert.is_true(mp.iserror(err_of(q.get, q, true, 1, "extra"), "ValueError"))
      q:join_thread()
      q:cancel_join_thread()
      q:close()
      assert.is_true(mp.iserror(err_of(q.put, q, 1), "ValueError"))
      assert.is_true(mp.iserror(err_of(m.Queue, m, -1), "ValueError"))
    end)

    it("Queue: a get blocked in one process is woken by a put in another; a full put waits", function()
      local m = Manager()
      local q, back = m:Queue(1), m:Queue()
      local p = mp.Process(function(q, back)
        back:put(q:get())
        back:put(q:get(true, 5))
      end, { q, back })
      p:start()
      mp.sleep(0.1)
      q:put("first")
      q:put("second", true, 5)
      q:put("third", true, 5) -- waits until the child took "second"
      assert.are.equal("first", back:get(true, 5))
      assert.are.equal("second", back:get(true, 5))
      assert.are.equal(0, p:join(10))
      assert.are.equal("third", q:get_nowait())
    end)

    it("JoinableQueue: task_done and join", function()
      local m = Manager()
      local q = m:JoinableQueue()
      assert.is_true(q:join(0))
      q:put(1)
      q:put(2)
      assert.is_false(q:join(0.05))
      local p = mp.Process(function(q)
        for _ = 1, 2 do q:get(); mp.sleep(0.05); q:task_done() end
      end, { q })
      p:start()
      assert.is_true(q:join(10))
      assert.are.equal(0, p:join(10))
      assert.is_true(mp.iserror(err_of(q.task_done, q), "ValueError"))
    end)
  end)

  describe("locks", function()
    it("Lock: acquire, release, locked, with, timeouts", function()
      local m = Manager()
      local lock = m:Lock()
      assert.is_true(lock:acquire())
      assert.is_true(lock:locked())
      assert.is_false(lock:acquire(false))
      local t0 = mp.monotonic()
      assert.is_false(lock:acquire(true, 0.1))
      assert.is_true(mp.monotonic() - t0 >= 0.09)
      lock:release()
      assert.is_true(mp.iserror(err_of(lock.release, lock), "ValueError"))
      assert.are.same({ 3, 4 }, { lock:with(function(a, b) return a, b end, 3, 4) })
      assert.is_false(lock:locked())
      local err = err_of(lock.with, lock, function() error("inside") end)
      assert.matches("inside", err)
      assert.is_false(lock:locked())
    end)

    it("Lock: any process may release it; a dead holder's lock is taken over, abandoned", function()
      local m = Manager()
      local lock = m:Lock()
      local p = mp.Process(function(lock) lock:acquire() end, { lock })
      p:start()
      assert.are.equal(0, p:join(10))
      assert.is_true(lock:locked())
      assert.are.same({ true, "abandoned" }, { lock:acquire(true, 5) })
      lock:release()
      -- a waiter gets it at once when the holder dies
      local ev = m:Event()
      local holder = mp.Process(function(lock, ev) lock:acquire(); ev:set(); mp.sleep(60) end, { lock, ev })
      holder:start()
      assert.is_true(ev:wait(10))
      local q = m:Queue()
      local waiter = mp.Process(function(lock, q) q:put({ lock:acquire(true, 20) }) end, { lock, q })
      waiter:start()
      mp.sleep(0.1)
      holder:kill()
      holder:join()
      assert.are.same({ true, "abandoned" }, q:get(true, 10))
      assert.are.equal(0, waiter:join(10))
      lock:release() -- held by the waiter, which exited: any process may release it
      assert.is_false(lock:locked())
      -- released by another process while its holder lives
      ev:clear()
      local p2 = mp.Process(function(lock, ev) lock:acquire(); ev:set(); mp.sleep(0.5) end, { lock, ev })
      p2:start()
      assert.is_true(ev:wait(10))
      lock:release()
      assert.is_false(lock:locked())
      p2:join()
    end)

    it("RLock: recursive and owned by a process", function()
      local m = Manager()
      local r = m:RLock()
      assert.is_true(r:acquire())
      assert.is_true(r:acquire())
      local p = mp.Process(function(r)
        local ok, e = pcall(r.release, r)
        os.exit(not ok and mp.iserror(e, "ValueError") and not r:acquire(false) and 0 or 1)
      end, { r })
      p:start()
      assert.are.equal(0, p:join(10))
      r:release()
      r:release()
      assert.is_true(mp.iserror(err_of(r.release, r), "ValueError"))
      assert.is_false(r:locked())
    end)

    it("Semaphore and BoundedSemaphore", function()
      local m = Manager()
      local s = m:Semaphore(2)
      assert.is_true(s:acquire())
      assert.is_true(s:acquire())
      assert.is_false(s:acquire(false))
      assert.is_false(s:acquire(true, 0.05))
      assert.are.equal(0, s:get_value())
      s:release(2)
      assert.are.equal(2, s:get_value())
      s:release()
      assert.are.equal(3, s:get_value())
      local b = m:BoundedSemaphore(1)
      assert.is_true(b:acquire())
      b:release()
      assert.is_true(mp.iserror(err_of(b.release, b), "ValueError"))
      assert.are.equal("w", b:with(function() return "w" end))
      assert.are.equal(1, m:Semaphore():get_value())
      assert.is_true(mp.iserror(err_of(m.Semaphore, m, -1), "ValueError"))
      local z = m:Semaphore(0)
      local p = mp.Process(function(z) mp.sleep(0.1); z:release() end, { z })
      p:start()
      assert.is_true(z:acquire(true, 10))
      p:join()
    end)
  end)

  describe("Event, Condition and Barrier", function()
    it("Event: set, clear, is_set, wait", function()
      local m = Manager()
      local e = m:Event()
      assert.is_false(e:is_set())
      assert.is_false(e:wait(0))
      assert.is_false(e:wait(0.05))
      local p = mp.Process(function(e) mp.sleep(0.1); e:set() end, { e })
      p:start()
      assert.is_true(e:wait(10))
      assert.is_true(e:is_set())
      e:clear()
      assert.is_false(e:is_set())
      p:join()
    end)

    it("Condition: wait, notify, notify_all, wait_for, and the lock rules", function()
      local m = Manager()
      local c = m:Condition()
      assert.is_true(mp.iserror(err_of(c.wait, c, 1), "ValueError"))
      assert.is_true(mp.iserror(err_of(c.notify, c), "ValueError"))
      c:acquire()
      assert.is_false(c:wait(0.05))
      c:release()
      local state = m:Namespace { v = 0 }
      local woken = m:Queue()
      local ps = {}
      for i = 1, 3 do
        ps[i] = mp.Process(function(c, state, woken)
          c:with(function()
            state.v = state.v + 1
            woken:put(c:wait(20))
          end)
        end, { c, state, woken })
        ps[i]:start()
      end
      -- each child counts itself holding the lock, then waits (releasing it)
      assert.is_true(until_true(function() return state.v == 3 end))
      c:with(function() c:notify() end)
      assert.is_true(woken:get(true, 10))
      assert.is_true(mp.iserror(err_of(woken.get, woken, true, 0.1), "Empty"))
      c:with(function() c:notify_all() end)
      assert.is_true(woken:get(true, 10))
      assert.is_true(woken:get(true, 10))
      for i = 1, 3 do assert.are.equal(0, ps[i]:join(10)) end
      local p = mp.Process(function(c, state)
        for _ = 1, 3 do
          mp.sleep(0.02)
          c:with(function() state.v = state.v + 1; c:notify() end)
        end
      end, { c, state })
      p:start()
      c:with(function() assert.is_true(c:wait_for(function() return state.v == 6 end, 20)) end)
      assert.are.equal(0, p:join(10))
      local lk = m:Lock()
      local c2 = m:Condition(lk)
      c2:acquire()
      assert.is_true(lk:locked())
      assert.is_false(c2:wait_for(function() return false end, 0.05))
      c2:release()
      assert.is_true(mp.iserror(err_of(m.Condition, m, mp.Lock()), "TypeError"))
    end)

    it("Barrier: indices, fields, an action run in the server, abort, reset, timeouts", function()
      local m = Manager()
      local log = m:list()
      local b = m:Barrier(3, function() log:append("action") end)
      assert.are.equal(3, b.parties)
      assert.is_false(b.broken)
      local q = m:Queue()
      local ps = {}
      for i = 1, 2 do
        ps[i] = mp.Process(function(b, q) q:put(b:wait(10)) end, { b, q })
        ps[i]:start()
      end
      assert.is_true(until_true(function() return b.n_waiting == 2 end))
      local mine = b:wait(10)
      local idx = { mine, q:get(true, 10), q:get(true, 10) }
      table.sort(idx)
      assert.are.same({ 0, 1, 2 }, idx)
      assert.are.same({ n = 1, "action" }, log:copy())
      for i = 1, 2 do ps[i]:join() end
      local t0 = mp.monotonic()
      assert.is_true(mp.iserror(err_of(b.wait, b, 0.1), "BrokenBarrierError"))
      assert.is_true(mp.monotonic() - t0 >= 0.09)
      assert.is_true(b.broken)
      assert.is_true(mp.iserror(err_of(b.wait, b), "BrokenBarrierError"))
      b:reset()
      assert.is_false(b.broken)
      b:abort()
      assert.is_true(b.broken)
      local single = m:Barrier(1)
      assert.are.equal(0, single:wait())
      local failing = m:Barrier(1, function() error("action failed") end)
      local err = err_of(failing.wait, failing)
      assert.is_true(mp.iserror(err, "RemoteError"))
      assert.matches("action failed", err.message)
      assert.is_true(failing.broken)
    end)
  end)

  describe("proxies travel", function()
    it("nesting: a dict holding a list proxy, used from a grandchild", function()
      local m = Manager()
      local d = m:dict()
      local l = m:list { 1 }
      d.l = l
      local p = mp.Process(function(d)
        local q = mp.Process(function(d)
          d.l:append(mp.getpid())
          d.from_grandchild = d.l
        end, { d })
        q:start()
        os.exit(q:join())
      end, { d })
      p:start()
      assert.are.equal(0, p:join(20))
      assert.are.equal(2, #l)
      assert.are.equal("lmp.ListProxy", getmetatable(d.l).__name)
      assert.is_true(d.l == l)
      assert.are.equal(l[2], d.from_grandchild[2])
      local outer = m:list { { 88, 99 }, l }
      assert.is_nil(getmetatable(outer[1]))
      assert.are.equal(1, outer[2][1])
    end)

    it("to pool workers forked before the manager: args, upvalues, results", function()
      local pool <close> = mp.Pool(2)
      pool:apply(function() end, {})
      local m = Manager()
      local d = m:dict()
      local res = pool:map(function(x) d[x] = x * x; return x end, { 1, 2, 3, 4 })
      assert.are.equal(4, res.n)
      assert.are.same({ 1, 4, 9, 16 }, { d[1], d[2], d[3], d[4] })
      assert.are.equal(6, pool:apply(function(dd) return dd[1] + dd[2] + 1 end, { d }))
      local made_there = pool:apply(function(dd) return dd end, { d })
      assert.is_true(made_there == d)
      local q = m:Queue()
      pool:apply_async(function(q) for i = 1, 3 do q:put(i) end end, { q }):get(10)
      assert.are.same({ 1, 2, 3 }, { q:get(), q:get(), q:get() })
      pool:close()
      pool:join()
    end)

    it("through an mp.Queue and a Pipe, even after the sender dropped its proxy", function()
      local m = Manager()
      local q = mp.Queue()
      local a, b = mp.Pipe()
      do
        q:put(m:list { "via queue" })
        b:send(m:dict { via = "pipe" })
      end
      collectgarbage()
      collectgarbage()
      local out = m:Queue()
      local p = mp.Process(function(q, a, out)
        out:put(q:get()[1])
        out:put(a:recv().via)
      end, { q, a, out })
      p:start()
      assert.are.equal("via queue", out:get(true, 10))
      assert.are.equal("pipe", out:get(true, 10))
      assert.are.equal(0, p:join(10))
      a:close()
      b:close()
    end)

    it("the manager object itself: its factories work in the process it is sent to", function()
      local m = Manager()
      local q = m:Queue()
      local p = mp.Process(function(m, q)
        q:put(m:dict { made = "in the child" })
        os.exit(pcall(m.shutdown, m) and 1 or 0) -- not the owner there
      end, { m, q })
      p:start()
      assert.are.same({ q }, mp.wait({ q }, 10))
      assert.are.equal("in the child", q:get().made)
      assert.are.equal(0, p:join(10))
      local d = m:dict { x = 1 }
      d.self = d
      assert.matches("^{x = 1, self = <lmp%.DictProxy #%d+ at .+>}$", tostring(d))
    end)

    it("a proxy of one manager stored in another reads back as a proxy of the first", function()
      local m1, m2 = Manager(), Manager()
      local d1 = m1:dict { x = 1 }
      local holder = m2:dict()
      holder.foreign = d1
      local back = holder.foreign
      assert.is_true(back == d1)
      back.x = 2
      assert.are.equal(2, d1.x)
      m2:shutdown()
      m1:shutdown()
    end)
  end)

  describe("reference counting", function()
    it("frees objects no proxy refers to, nested ones and ones in flight included", function()
      local m = Manager()
      assert.are.equal(0, objects(m))
      do
        local d = m:dict()
        d.inner = m:list { 1 }
      end
      assert.are.equal(0, objects(m))
      local outer = m:dict()
      outer.inner = m:dict { v = 1 }
      assert.are.equal(2, objects(m))
      outer.inner = nil
      assert.are.equal(1, objects(m))
      local q = mp.Queue()
      do q:put(m:list { 1, 2 }) end
      assert.are.equal(2, objects(m)) -- kept by the hold while it travels
      local p = mp.Process(function(q, outer) outer.n = #q:get() end, { q, outer })
      p:start()
      p:join()
      assert.are.equal(2, outer.n)
      assert.is_true(until_true(function() return objects(m) == 1 end))
      assert.are.equal(1, m:_stats().holds) -- the hold of `outer`, which is still here
      outer, p = nil, nil -- the Process object holds its arguments
      assert.is_true(until_true(function() return objects(m) == 0 and m:_stats().holds == 0 end))
    end)
  end)

  describe("errors", function()
    it("values that cannot be sent fail in the caller, results that cannot in the server", function()
      local m = Manager { types = { Odd = function()
        return { thread = function() return coroutine.create(print) end }
      end } }
      local d = m:dict()
      local err = err_of(function() d.x = { co = coroutine.create(print) } end)
      assert.is_true(mp.iserror(err, "SerializationError"))
      assert.matches("args%[2%]%.co: cannot send a thread", err.message)
      err = err_of(m:Odd().thread, m:Odd())
      assert.is_true(mp.iserror(err, "SerializationError"))
      local a, b = mp.Pipe()
      assert.is_true(mp.iserror(err_of(function() d.pipe = a end), "SerializationError"))
      a:close()
      b:close()
      d.value = mp.Value("i", 5) -- shared memory travels as a handle
      assert.are.equal(5, d.value.value)
      d.y = 1 -- the connection and the server go on
      assert.are.equal(1, d.y)
      assert.is_true(mp.iserror(err_of(m.dict, m, 42), "TypeError"))
      assert.is_true(mp.iserror(err_of(m.Barrier, m, "3"), "TypeError"))
      assert.is_true(mp.iserror(err_of(m.Barrier, m, 0), "ValueError"))
    end)
  end)

  describe("custom types", function()
    it("builds objects in the server and runs their methods there", function()
      local base = 100
      local m = Manager { types = {
        Counter = function(start)
          local c = { n = start or 0, pid = mp.getpid() }
          function c:incr(k) self.n = self.n + (k or 1); return self.n end
          function c:where() return self.pid, base end
          function c:_secret() return "hidden" end
          function c:fail() error({ code = 42 }) end
          return c
        end,
        Open = { new = function() return { f = function() return "f" end, _h = function() return "_h" end } end,
                 exposed = { "f", "_h" } },
      } }
      local c = m:Counter(5)
      assert.are.equal(6, c:incr())
      assert.are.equal(16, c:incr(10))
      assert.are.same({ m.pid, 100 }, { c:where() })
      assert.is_nil(c._secret)
      assert.is_nil(c.nothing)
      local err = err_of(c._call, c, "_secret")
      assert.is_true(mp.iserror(err, "RemoteError"))
      err = err_of(c.fail, c)
      assert.is_true(mp.iserror(err, "RemoteError"))
      assert.are.same({ code = 42 }, err.value)
      assert.is_string(err.traceback)
      local o = m:Open()
      assert.are.equal("_h", o:_h())
      assert.are.equal("f", o:f())
      local p = mp.Process(function(c) c:incr(100) end, { c })
      p:start()
      p:join()
      assert.are.equal(116, c:incr(0))
    end)
  end)

  describe("many clients", function()
    it("8 processes x 10k increments of a dict counter under a manager Lock: the exact total", function()
      local m = Manager()
      local d, lock = m:dict { count = 0 }, m:Lock()
      local ps = {}
      for i = 1, 8 do
        ps[i] = mp.Process(function(d, lock)
          for _ = 1, 10000 do
            lock:acquire()
            d.count = d.count + 1
            lock:release()
          end
        end, { d, lock })
        ps[i]:start()
      end
      for i = 1, 8 do assert.are.equal(0, ps[i]:join(300)) end
      assert.are.equal(80000, d.count)
    end)

    it("a blocked get of one client never stalls the others", function()
      local m = Manager()
      local q, d = m:Queue(), m:dict()
      local p = mp.Process(function(q, d) d.got = q:get() end, { q, d })
      p:start()
      mp.sleep(0.1)
      local t0 = mp.monotonic()
      for i = 1, 500 do d[i] = i end
      assert.is_true(mp.monotonic() - t0 < 10)
      assert.are.equal(500, #d)
      q:put("done")
      assert.are.equal(0, p:join(10))
      assert.are.equal("done", d.got)
    end)

    it("a client SIGKILLed in the middle of a stream of calls harms nobody", function()
      local m = Manager()
      local d, lock, q = m:dict(), m:Lock(), m:Queue()
      local function writer(d, lock, q, name, n)
        for i = 1, n do
          lock:acquire()
          d[name] = i
          lock:release()
          q:put(i)
        end
      end
      local victim = mp.Process(writer, { d, lock, q, "victim", 1e9 })
      victim:start()
      assert.is_true(until_true(function() return (d.victim or 0) > 100 end))
      local others = {}
      for i = 1, 3 do
        others[i] = mp.Process(writer, { d, lock, q, "w" .. i, 2000 })
        others[i]:start()
      end
      mp.sleep(0.05)
      victim:kill()
      victim:join()
      for i = 1, 3 do assert.are.equal(0, others[i]:join(120)) end
      for i = 1, 3 do assert.are.equal(2000, d["w" .. i]) end
      local ok = lock:acquire(true, 5) -- free, or abandoned by the victim: never stuck
      assert.is_true(ok)
      lock:release()
      local n = 0
      while pcall(q.get_nowait, q) do n = n + 1 end
      assert.is_true(n >= 6000)
    end)

    it("a killed server makes every call raise ProcessError at once", function()
      local m = Manager()
      local d, q = m:dict { x = 1 }, m:Queue()
      local out = mp.Queue()
      local p = mp.Process(function(q, out)
        local ok, e = pcall(q.get, q)
        out:put(not ok and e.type .. ": " .. e.message or "no error")
      end, { q, out })
      p:start()
      mp.sleep(0.2)
      os.execute("kill -9 " .. m.pid)
      assert.matches("^ProcessError: the manager at .* is gone", out:get(true, 10))
      assert.are.equal(0, p:join(10))
      local t0 = mp.monotonic()
      for _ = 1, 3 do
        local err = err_of(function() return d.x end)
        assert.is_true(mp.iserror(err, "ProcessError"))
        assert.matches("is gone", err.message)
      end
      assert.is_true(mp.iserror(err_of(m.dict, m), "ProcessError"))
      assert.is_true(mp.monotonic() - t0 < 2)
      m:shutdown()
    end)
  end)

  describe("security and addresses", function()
    it("refuses a wrong key with ProcessError saying authentication failed", function()
      local m = Manager { authkey = "right key" }
      assert.are.equal("right key", m.authkey)
      local err = err_of(mp.Manager.connect, m.address, "wrong key")
      assert.is_true(mp.iserror(err, "ProcessError"))
      assert.matches("authentication failed", err.message)
      local out = run_lmp(([[
        local mp = require "lmp"
        local ok, e = pcall(mp.Manager.connect, %q, "wrong key")
        print(ok, e.type, e.message)
        local m = mp.Manager.connect(%q, "right key")
        print(m:dict{ a = 1 }.a)
      ]]):format(m.address, m.address))
      assert.matches("^false\tProcessError\t.*authentication failed", out)
      assert.matches("\n1\n$", out)
      -- a client that speaks nonsense is dropped; the server goes on
      os.execute(("timeout 10 python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); " ..
        "s.connect('%s'); s.recv(64); s.sendall(b'garbage' * 100); s.close()\""):format(m.address))
      assert.are.equal(2, #m:list { 1, 2 })
    end)

    it("listens on a Unix socket path of the caller's choosing, removed at shutdown", function()
      local path = H.tmpname()
      os.remove(path)
      local m = Manager { address = path }
      assert.are.equal(path, m.address)
      assert.is_true(exists(path))
      local err = err_of(mp.Manager, { address = path })
      assert.is_true(mp.iserror(err, "ProcessError"))
      assert.matches("cannot listen on", err.message)
      assert.are.equal(1, m:dict { a = 1 }.a)
      m:shutdown()
      assert.is_false(exists(path))
    end)

    it("listens on TCP and is reached from an unrelated process with Manager.connect", function()
      local m = Manager { address = "127.0.0.1:0" }
      assert.matches("^127%.0%.0%.1:%d+$", m.address)
      local q = m:Queue()
      local ns = m:Namespace()
      local out, err, rc = run_lmp(([[
        local mp = require "lmp"
        local key = (%q):gsub("..", function(h) return string.char(tonumber(h, 16)) end)
        local m = mp.Manager.connect(%q, key)
        local q = m:Queue()
        q:put("made remotely")
        local d = m:dict { from = mp.getpid() }
        print(m.pid, d.from == mp.getpid())
        local ok, e = pcall(m.shutdown, m)
        print(e.type)
      ]]):format(hex(m.authkey), m.address))
      assert.are.equal(0, rc, err)
      assert.matches("^" .. m.pid .. "\ttrue\nValueError\n$", out)
      local m2 = mp.Manager.connect(m.address, m.authkey)
      assert.are.equal(m.pid, m2.pid)
      m2:Queue():put(1)
      ns.x = 1
      m:shutdown()
      assert.is_true(mp.iserror(err_of(mp.Manager.connect, m.address, m.authkey), "ProcessError"))
    end)
  end)

  describe("callbacks and Ctrl-C", function()
    it("calls answered at once work in callbacks; calls that would wait raise ValueError there", function()
      local pool <close> = mp.Pool(1)
      local m = Manager()
      local d, q = m:dict(), m:Queue()
      q:put("ready")
      local seen = {}
      pool:apply_async(function() return 7 end, {}, function(v)
        d.cb = v
        seen.got = q:get()
        seen.err = select(2, pcall(q.get, q))
        seen.lock = m:Lock():acquire()
      end):get(10)
      assert.are.equal(7, d.cb)
      assert.are.equal("ready", seen.got)
      assert.is_true(mp.iserror(seen.err, "ValueError"))
      assert.is_true(seen.lock)
      pool:close()
      pool:join()
    end)

    it("Ctrl-C during a parked get raises InterruptedError and loses no item", function()
      local out, err, rc = run_lmp([[
        local mp = require "lmp"
        local m = mp.Manager()
        local q = m:Queue()
        local p = mp.Process(function(q, ppid)
          mp.sleep(0.3)
          os.execute("kill -INT " .. ppid)
          mp.sleep(0.3)
          q:put("after")
        end, { q, mp.getpid() })
        p:start()
        local ok, e = pcall(q.get, q)
        print(ok, e.type)
        print(q:get(true, 10), q:qsize())
        p:join()
        m:shutdown()
      ]])
      assert.are.equal(0, rc, err)
      assert.are.equal("false\tInterruptedError\nafter\t0\n", out)
    end)
  end)
end)
