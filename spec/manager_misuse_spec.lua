-- manager_misuse_spec.lua — mp.Manager called the wrong way: every method of every proxy and
-- of the manager with '.' instead of ':' (TypeError), with extra arguments (ValueError), with a
-- missing value; option and type-name checks; Value typing as mp.Value's; the timeout rule in
-- every blocking proxy call. Caveat: the timeout checks run in a child under a KILL bound.
local mp = require "lmp"
local H = require "helper"

local err_of = H.error_of
local warm_arena = mp.Lock() -- luacheck: ignore (the process's first arena stays: make it now)

-- The methods of each built-in proxy and the most arguments each takes (docs/api/manager.md;
-- ANY: any number).
local ANY = -1
local LOCK = { acquire = 2, release = 0, locked = 0, with = ANY }
local SEM = { acquire = 2, release = 1, get_value = 0, with = ANY }
local QUEUE = { put = 3, get = 2, put_nowait = 1, get_nowait = 0, qsize = 0, empty = 0, full = 0,
                close = 0, join_thread = 0, cancel_join_thread = 0 }
local JQUEUE = { task_done = 0, join = 1 }
for k, v in pairs(QUEUE) do JQUEUE[k] = v end
local TYPED = { get_lock = 0, acquire = 2, release = 0, with = ANY }
local function plus(t, extra)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  for k, v in pairs(extra) do r[k] = v end
  return r
end
local METHODS = {
  dict = { get = 2, keys = 0, values = 0, items = 0, update = 1, pop = 2, popitem = 0,
           setdefault = 2, clear = 0, copy = 0 },
  list = { append = 1, extend = 1, insert = 2, pop = 1, remove = 1, index = 3, count = 1,
           copy = 0, sort = 1, reverse = 0, clear = 0 },
  Queue = QUEUE, JoinableQueue = JQUEUE, Lock = LOCK, RLock = LOCK, Semaphore = SEM,
  BoundedSemaphore = SEM,
  Event = { set = 0, clear = 0, is_set = 0, wait = 1 },
  Condition = { acquire = 2, release = 0, wait = 1, wait_for = 2, notify = 1, notify_all = 0,
                with = ANY },
  Barrier = { wait = 1, reset = 0, abort = 0 },
  Value = plus(TYPED, { get = 0, set = 1 }),
  Array = plus(TYPED, { totable = 0 }),
}
local ARGS = { Barrier = { 2 }, Value = { "i", 0 }, Array = { "i", 2 } }

describe("Manager misuse", function()
  local m
  before_each(function() H.setup(); m = mp.Manager() end)
  after_each(function()
    m:shutdown()
    m = nil
    collectgarbage()
    H.teardown()
  end)

  local function proxies()
    local t = {}
    for kind in pairs(METHODS) do t[kind] = m[kind](m, table.unpack(ARGS[kind] or {})) end
    return t
  end

  it("every method of every built-in proxy called with a dot is a TypeError naming it", function()
    local ps = proxies()
    local other = m:Namespace()
    for kind, methods in pairs(METHODS) do
      local p = ps[kind]
      for name in pairs(methods) do
        assert.is_function(p[name], kind .. ":" .. name)
        local selves = table.pack(nil, 42, other)
        for i = 1, selves.n do
          local self = selves[i]
          local err = err_of(p[name], self)
          assert.is_true(mp.iserror(err, "TypeError"), ("%s.%s(%s): %s"):format(kind, name,
            tostring(self), tostring(err)))
          assert.matches(kind .. "." .. name .. ": self must be", err.message, 1, true)
        end
      end
    end
  end)

  it("every method of every built-in proxy given an extra argument is a ValueError naming it", function()
    local ps = proxies()
    for kind, methods in pairs(METHODS) do
      local p = ps[kind]
      for name, max in pairs(methods) do
        if max ~= ANY then
          local args = { n = max + 1 } -- nils: counted, and nothing reaches the server
          local err = err_of(p[name], p, table.unpack(args, 1, args.n))
          assert.is_true(mp.iserror(err, "ValueError"), ("%s:%s with %d arguments: %s"):format(kind,
            name, max + 1, tostring(err)))
          assert.matches(kind .. ":" .. name .. ": takes at most " .. max, err.message, 1, true)
        end
      end
    end
    -- nothing was stored or changed by the refused calls
    assert.are.equal(0, ps.Queue:qsize())
    assert.are.equal(0, #ps.list)
    assert.is_false(ps.Lock:locked())
  end)

  it("a value that may be nil must still be given (as mp.Queue:put's)", function()
    local q, jq, l = m:Queue(), m:JoinableQueue(), m:list()
    for name, call in pairs {
      ["q:put()"] = function() return q:put() end,
      ["q:put_nowait()"] = function() return q:put_nowait() end,
      ["jq:put()"] = function() return jq:put() end,
      ["l:append()"] = function() return l:append() end,
      ["l:insert(1)"] = function() return l:insert(1) end,
      ["l:remove()"] = function() return l:remove() end,
      ["l:index()"] = function() return l:index() end,
      ["l:count()"] = function() return l:count() end,
    } do
      assert.is_true(mp.iserror(err_of(call), "TypeError"), name)
    end
    assert.are.equal(0, q:qsize())
    assert.are.equal(0, #l)
    q:put(nil) -- nil given is a value
    l:append(nil)
    l:insert(1, nil)
    assert.are.equal(1, q:qsize())
    assert.are.equal(2, #l)
    assert.are.equal(2, l:count(nil))
  end)

  it("the manager's methods called with a dot are TypeErrors; extra arguments ValueErrors", function()
    for _, kind in ipairs { "dict", "list", "Namespace", "Queue", "Lock", "Event", "Barrier",
                            "Value", "shutdown", "_stats" } do
      local err = err_of(m[kind])
      assert.is_true(mp.iserror(err, "TypeError"), kind .. ": " .. tostring(err))
      assert.matches("Manager." .. kind .. ": self must be a manager", err.message, 1, true)
    end
    for name, call in pairs {
      ["m:dict({}, 1)"] = function() return m:dict({}, 1) end,
      ["m:list({}, 1)"] = function() return m:list({}, 1) end,
      ["m:Queue(1, 2)"] = function() return m:Queue(1, 2) end,
      ["m:Lock(1)"] = function() return m:Lock(1) end,
      ["m:RLock(1)"] = function() return m:RLock(1) end,
      ["m:Event(1)"] = function() return m:Event(1) end,
      ["m:Semaphore(1, 2)"] = function() return m:Semaphore(1, 2) end,
      ["m:Condition(nil, 1)"] = function() return m:Condition(nil, 1) end,
      ["m:Barrier(2, nil, 1, 2)"] = function() return m:Barrier(2, nil, 1, 2) end,
      ["m:Value('i', 1, 2)"] = function() return m:Value("i", 1, 2) end,
      ["m:Array('i', 2, 3)"] = function() return m:Array("i", 2, 3) end,
      ["m:shutdown(1)"] = function() return m:shutdown(1) end,
    } do
      local err = err_of(call)
      assert.is_true(mp.iserror(err, "ValueError"), name .. ": " .. tostring(err))
      assert.matches("^Manager:%a+: takes at most", err.message)
    end
    assert.are.equal(0, m:_stats().objects) -- no object was made by a refused call
  end)

  it("a custom type's factory and methods called with a dot are TypeErrors", function()
    local mm = mp.Manager { types = {
      Counter = function() return { n = 0, incr = function(self, k) self.n = self.n + (k or 1); return self.n end } end,
      Squares = function()
        local i = 0
        return { next = function() i = i + 1; if i <= 3 then return i * i end end }
      end,
    } }
    local c = mm:Counter()
    local errs = { err_of(mm.Counter), err_of(c.incr), err_of(c.incr, 5), err_of(c._call),
                   err_of(c.incr, m:dict()) }
    for i, err in ipairs(errs) do
      assert.is_true(mp.iserror(err, "TypeError"), i .. ": " .. tostring(err))
      assert.matches("self must be", err.message, 1, true)
    end
    assert.are.equal(2, c:incr(2))
    -- a custom method is the user's Lua function: it takes extra arguments as Lua does,
    -- and the generic for passes one
    local got = {}
    local it = mm:Squares()
    for v in it.next, it do got[#got + 1] = v end
    assert.are.same({ 1, 4, 9 }, got)
    mm:shutdown()
  end)

  it("a custom type named like any field or method of the manager is refused, naming it", function()
    for _, name in ipairs { "address", "authkey", "pid", "exitcode", "_owner", "_types", "dict",
                            "shutdown", "_stats" } do
      local ok, err = pcall(mp.Manager, { types = { [name] = function() return {} end } })
      if ok then err:shutdown() end
      assert.is_false(ok, name .. " was accepted")
      assert.is_true(mp.iserror(err, "ValueError"), tostring(err))
      assert.matches("'" .. name .. "'", err.message, 1, true)
    end
  end)

  it("an authkey of the wrong type is a TypeError, an empty one a ValueError", function()
    assert.is_true(mp.iserror(err_of(mp.Manager, { authkey = "" }), "ValueError"))
    assert.is_true(mp.iserror(err_of(mp.Manager, { authkey = 5 }), "TypeError"))
    assert.is_true(mp.iserror(err_of(mp.Manager.connect, m.address, ""), "ValueError"))
    assert.is_true(mp.iserror(err_of(mp.Manager.connect, m.address, 5), "TypeError"))
  end)

  it("a manager Value or Array refuses what mp.Value and mp.Array refuse, with the same type", function()
    local cases = { { "i", "x" }, { "i", 1.5 }, { "i", 2 ^ 40 }, { "i", true }, { "b", 200 },
                    { "B", -1 }, { "d", "x" }, { "f", {} }, { "c", "ab" }, { "c", 300 },
                    { "c", 1.5 }, { "c", {} }, { "Q", -1 } }
    for _, c in ipairs(cases) do
      local want = err_of(mp.Value, c[1], c[2])
      local label = ("Value(%q, %s)"):format(c[1], tostring(c[2]))
      assert.is_true(mp.iserror(want), label)
      local got = err_of(m.Value, m, c[1], c[2])
      assert.is_true(mp.iserror(got, want.type), label .. ": " .. tostring(got) .. ", mp.Value: " .. want.type)
      local v = m:Value(c[1])
      assert.is_true(mp.iserror(err_of(function() v.value = c[2] end), want.type), label .. " (.value =)")
      local a = m:Array(c[1], 1)
      assert.is_true(mp.iserror(err_of(function() a[1] = c[2] end), want.type), label .. " (a[1] =)")
      assert.is_true(mp.iserror(err_of(m.Array, m, c[1], { c[2] }), want.type), label .. " (Array init)")
    end
  end)
end)

describe("Manager timeouts", function()
  before_each(H.setup)
  after_each(H.teardown)

  it("every blocking proxy call follows the one timeout rule", function()
    local out, err, code = H.run_lmp([==[
      local mp = require "lmp"
      local m = mp.Manager()
      local function barrier(b) -- false when the round broke (the timeout), as acquire's false
        return function(t)
          local ok, e = pcall(b.wait, b, t)
          b:reset()
          if ok then return true end
          if mp.iserror(e, "BrokenBarrierError") then return false end
          error(e, 0)
        end
      end
      -- name -> setup() returning the blocked call f(t) and unblock() (run by another process)
      local cases = {
        ["Queue:get"] = function()
          local q = m:Queue()
          return function(t) return q:get(true, t) ~= nil end, function() q:put(1) end
        end,
        ["Queue:put"] = function()
          local q = m:Queue(1); q:put(0)
          return function(t) q:put(1, true, t); return true end, function() q:get() end
        end,
        ["JoinableQueue:join"] = function()
          local q = m:JoinableQueue(); q:put(0)
          return function(t) return q:join(t) end, function() q:get(); q:task_done() end
        end,
        ["Lock:acquire"] = function()
          local l = m:Lock(); l:acquire()
          return function(t) return l:acquire(true, t) end, function() l:release() end
        end,
        ["Semaphore:acquire"] = function()
          local s = m:Semaphore(0)
          return function(t) return s:acquire(true, t) end, function() s:release() end
        end,
        ["Event:wait"] = function()
          local e = m:Event()
          return function(t) return e:wait(t) end, function() e:set() end
        end,
        ["Condition:wait"] = function()
          local c = m:Condition()
          return function(t) c:acquire(); local r = c:wait(t); c:release(); return r end,
            function() c:acquire(); c:notify(); c:release() end
        end,
        ["Condition:wait_for"] = function()
          local c, d = m:Condition(), m:dict()
          return function(t)
            c:acquire(); local r = c:wait_for(function() return d.ok end, t); c:release()
            return r == true
          end, function() c:acquire(); d.ok = true; c:notify(); c:release() end
        end,
        ["Barrier:wait"] = function()
          local b = m:Barrier(2)
          return barrier(b), function() b:wait() end
        end,
        -- an explicit no-limit timeout overrides the barrier's default, as mp.Barrier's
        ["Barrier:wait (default 0.05)"] = function()
          local b = m:Barrier(2, nil, 0.05)
          return barrier(b), function() b:wait() end
        end,
        ["Value:acquire"] = function() -- its lock, held by another process until go is set
          local v, held, go = m:Value("i", 0), m:Event(), m:Event()
          local p = mp.Process(function(v, held, go)
            v:acquire(); held:set(); go:wait(60); v:release()
          end, { v, held, go })
          p:start(); held:wait()
          return function(t) return v:acquire(true, t) end, function() go:set() end,
            function() go:set(); p:join() end
        end,
      }
      local function failed(f, t) -- the call gave up (false, Empty or Full), quickly
        local t0 = mp.monotonic()
        local ok, r = pcall(f, t)
        if not ok and not (mp.iserror(r, "Empty") or mp.iserror(r, "Full")) then error(r, 0) end
        return (not ok or r == false) and mp.monotonic() - t0 < 3
      end
      for name, setup in pairs(cases) do
        for _, t in ipairs { 0, -1, 1e-7, 0.001 } do
          local f, _, cleanup = setup()
          print(failed(f, t) and "ok" or "BAD", name, t)
          if cleanup then cleanup() end
        end
        for _, t in ipairs { 0 / 0, "1" } do
          local f, _, cleanup = setup()
          local ok, e = pcall(f, t)
          print((not ok and mp.iserror(e, "ValueError") and e.message:find("timeout", 1, true))
            and "ok" or "BAD", name, t, e)
          if cleanup then cleanup() end
        end
        for _, t in ipairs { math.huge, 1e9 } do
          local f, unblock, cleanup = setup()
          local p = mp.Process(function(u) mp.sleep(0.2); u() end, { unblock })
          p:start()
          local t0 = mp.monotonic()
          local r = f(t)
          print((r == true and mp.monotonic() - t0 >= 0.15) and "ok" or "BAD", name, t, r)
          p:join()
          if cleanup then cleanup() end
        end
      end
      for _, t in ipairs { 0 / 0, "1" } do
        local ok, e = pcall(m.Barrier, m, 2, nil, t)
        print((not ok and mp.iserror(e, "ValueError") and e.message:find("timeout", 1, true))
          and "ok" or "BAD", "Manager:Barrier", t)
      end
      m:shutdown()
      print("done")
    ]==], "", { timeout = 90 })
    assert.are.equal(0, code, err)
    assert.is_nil(out:find("BAD", 1, true), out)
    assert.matches("done\n$", out)
    local _, n = out:gsub("ok\t", "")
    assert.are.equal(11 * 8 + 2, n, out)
  end)
end)
