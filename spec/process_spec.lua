-- process_spec.lua — mp.Process in all its forms, exit codes, join timeouts, identity,
-- closures/globals/modules shipped to the child, and no child left behind.
local mp = require "lmp"
local H = require "helper"
local S = require "shm_helper"
local W = require "waits_helper"

-- A global helper defined after require, used by a closure run in the child.
function global_helper(x) return x * 7 end

describe("mp.Process", function()
  before_each(H.setup)
  after_each(H.teardown)
  teardown(H.cleanup)

  local function writer(path)
    return function(...)
      local f = assert(io.open(path, "w"))
      f:write(table.concat({ ... }, ","))
      f:close()
    end
  end

  it("runs target with args, and exits 0", function()
    local out = H.tmpname()
    local p = mp.Process { target = writer(out), args = { "a", 2, 3.5 } }
    assert.is_nil(p.pid)
    assert.is_nil(p.exitcode)
    p:start()
    assert.is_number(p.pid)
    assert.are.equal(0, p:join(10))
    assert.are.equal(0, p.exitcode)
    assert.are.equal("a,2,3.5", H.slurp(out))
    assert.is_false(p:is_alive())
    p:close()
  end)

  it("accepts the positional form, with and without args", function()
    local out = H.tmpname()
    local p = mp.Process(writer(out), { "x", "y" })
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.equal("x,y", H.slurp(out))
    local q = mp.Process(function() os.exit(3) end)
    q:start()
    assert.are.equal(3, q:join(10))
  end)

  it("runs run(self) with the user fields (the subclass style)", function()
    local out = H.tmpname()
    local p = mp.Process {
      name = "snake", path = out, greeting = "l am a",
      run = function(self)
        local f = assert(io.open(self.path, "w"))
        f:write(self.greeting, " ", self.name, " ", tostring(self.pid == mp.getpid()))
        f:close()
      end,
    }
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.equal("l am a snake true", H.slurp(out))
    assert.are.equal("snake", p.name)
  end)

  it("passes nil holes in args when n is given", function()
    local out = H.tmpname()
    local p = mp.Process(function(a, b, c)
      local f = io.open(out, "w"); f:write(tostring(a), tostring(b), tostring(c)); f:close()
    end, table.pack(1, nil, 3))
    p:start(); p:join(10)
    assert.are.equal("1nil3", H.slurp(out))
  end)

  describe("exitcode", function()
    it("is 1 after an uncaught error, with the traceback on stderr", function()
      local out, err, code = H.run_lmp([[
        local mp = require "lmp"
        local p = mp.Process(function() error("kaboom") end)
        p:start()
        print("exitcode", p:join(10))
      ]])
      assert.are.equal(0, code)
      assert.matches("exitcode\t1", out)
      assert.matches("Process Process%-1:", err)
      assert.matches("kaboom", err)
      assert.matches("stack traceback", err)
    end)

    it("is n after os.exit(n), 0 after os.exit(true), 1 after os.exit(false)", function()
      for n, want in pairs { [7] = 7, [0] = 0 } do
        local p = mp.Process(function() os.exit(n) end)
        p:start()
        assert.are.equal(want, p:join(10))
      end
      local t = mp.Process(function() os.exit(true) end); t:start()
      local f = mp.Process(function() os.exit(false) end); f:start()
      assert.are.equal(0, t:join(10))
      assert.are.equal(1, f:join(10))
    end)

    it("is -9 after kill(), -15 after terminate()", function()
      local a = mp.Process(function() mp.sleep(30) end); a:start()
      local b = mp.Process(function() mp.sleep(30) end); b:start()
      assert.is_true(a:is_alive())
      a:kill()
      b:terminate()
      assert.are.equal(-9, a:join(10))
      assert.are.equal(-15, b:join(10))
      assert.are.equal(-9, a.exitcode)
    end)

    it("is -11 after a real segfault", function()
      local p = mp.Process(function() require("lmp_testhelper").segfault() end)
      p:start()
      assert.are.equal(-11, p:join(10))
    end)

    it("is -9 when another process SIGKILLs the child", function()
      local p = mp.Process(function() mp.sleep(30) end)
      p:start()
      os.execute("kill -9 " .. p.pid)
      assert.are.equal(-9, p:join(10))
    end)
  end)

  it("join with a timeout returns nil while the child sleeps", function()
    local p = mp.Process(function() mp.sleep(1.0) end)
    p:start()
    local t0 = mp.monotonic()
    assert.is_nil(p:join(0.2))
    local waited = mp.monotonic() - t0
    assert.is_true(waited >= 0.19 and waited < 0.9, "waited " .. waited)
    assert.is_true(p:is_alive())
    assert.is_nil(p.exitcode)
    assert.are.equal(0, p:join(10))
  end)

  it("starts and joins 50 processes", function()
    local dir = H.tmpname()
    local ps = {}
    for i = 1, 50 do
      ps[i] = mp.Process(function(k) os.exit(k % 256) end, { i })
      ps[i]:start()
    end
    for i = 1, 50 do assert.are.equal(i, ps[i]:join(30)) end
    local pids = {}
    for i = 1, 50 do pids[ps[i].pid] = true; ps[i]:close() end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.are.equal(50, n)
  end)

  it("ships a closure capturing a table upvalue with a cycle", function()
    local out = H.tmpname()
    local t = { name = "ring" }
    t.self = t
    t.list = { t, t }
    local p = mp.Process(function()
      local ok = t.self == t and t.list[1] == t and t.list[2] == t.self
      local f = io.open(out, "w"); f:write(tostring(ok), " ", t.name); f:close()
    end)
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.equal("true ring", H.slurp(out))
  end)

  it("ships a function that calls a global helper defined after require", function()
    local out = H.tmpname()
    local p = mp.Process(function(x)
      local f = io.open(out, "w"); f:write(tostring(global_helper(x))); f:close()
    end, { 6 })
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.equal("42", H.slurp(out))
  end)

  it("ships a closure that uses require'd cjson through an upvalue", function()
    local cjson = require "cjson"
    local out = H.tmpname()
    local p = mp.Process(function()
      local f = io.open(out, "w"); f:write(cjson.encode({ a = { 1, 2 } })); f:close()
    end)
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.equal('{"a":[1,2]}', H.slurp(out))
  end)

  it("rejects a coroutine argument in the caller, naming the path", function()
    local co = coroutine.create(function() end)
    local p = mp.Process(function() end, { 1, { conf = { cb = co } } })
    local ok, err = pcall(p.start, p)
    assert.is_false(ok)
    assert.is_true(mp.iserror(err, "SerializationError"))
    assert.matches("args%[2%]%.conf%.cb", err.message)
    assert.matches("thread", err.message)
    assert.is_nil(p.pid)
  end)

  it("knows its identity in the child", function()
    local out = H.tmpname()
    local parent = mp.getpid()
    local p = mp.Process { name = "worker-x", target = function()
      local cp, pp = mp.current_process(), mp.parent_process()
      local f = io.open(out, "w")
      f:write(cp.name, " ", tostring(cp.pid == mp.getpid()), " ",
        tostring(pp.pid == parent), " ", tostring(mp.getppid() == parent))
      f:close()
    end }
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.equal("worker-x true true true", H.slurp(out))
    assert.are.equal("MainProcess", mp.current_process().name)
    assert.is_nil(mp.parent_process())
  end)

  it("names processes Process-N", function()
    local p = mp.Process(function() end)
    assert.matches("^Process%-%d+$", p.name)
  end)

  it("lists active children", function()
    local p = mp.Process(function() mp.sleep(30) end)
    p:start()
    local found = false
    for _, c in ipairs(mp.active_children()) do if c == p then found = true end end
    assert.is_true(found)
    p:terminate(); p:join(10)
    for _, c in ipairs(mp.active_children()) do assert.are_not.equal(p, c) end
  end)

  it("refuses misuse with ValueError", function()
    local p = mp.Process(function() end)
    local ok, err = pcall(p.join, p)
    assert.is_true(mp.iserror(err, "ValueError"))
    p:start()
    ok, err = pcall(p.start, p)
    assert.is_true(mp.iserror(err, "ValueError"))
    p:join(10)
    p:close()
    ok, err = pcall(p.is_alive, p)
    assert.is_true(mp.iserror(err, "ValueError"))
    ok, err = pcall(mp.Process, 42)
    assert.is_true(mp.iserror(err, "TypeError"))
    local q = mp.Process(function() mp.sleep(30) end)
    q:start()
    ok, err = pcall(q.close, q)
    assert.is_true(mp.iserror(err, "ValueError"))
    q:kill(); q:join(10)
  end)

  it("flushes stdio: output written before start is not duplicated", function()
    local out, err, code = H.run_lmp([[
      local mp = require "lmp"
      io.write("before ")
      local p = mp.Process(function() io.write("child ") end)
      p:start(); p:join()
      io.write("after\n")
    ]])
    assert.are.equal(0, code)
    assert.are.equal("before child after\n", out)
  end)

  it("waits for non-daemon children at exit and terminates daemon ones", function()
    local mark, dmark = H.tmpname(), H.tmpname()
    os.remove(mark); os.remove(dmark)
    local out, err, code = H.run_lmp(([[
      local mp = require "lmp"
      mp.Process(function() mp.sleep(0.5); io.open(%q, "w"):close() end):start()
      local d = mp.Process { daemon = true, target = function() mp.sleep(3); io.open(%q, "w"):close() end }
      d:start()
    ]]):format(mark, dmark))
    assert.are.equal(0, code)
    assert.is_not_nil(H.slurp(mark), "the non-daemon child finished before the parent left")
    mp.sleep(0.2)
    assert.is_nil(H.slurp(dmark), "the daemon child was terminated")
  end)

  it("leaves no orphan when the parent is SIGKILLed", function()
    local pidfile = H.tmpname()
    local out, err, code = H.run_lmp(([[
      local mp = require "lmp"
      local p = mp.Process(function() mp.sleep(60) end)
      p:start()
      local f = io.open(%q, "w"); f:write(p.pid); f:close()
      os.execute("kill -9 " .. mp.getpid())
    ]]):format(pidfile))
    assert.are.equal(-9, code)
    local cpid = tonumber(H.slurp(pidfile))
    assert.is_number(cpid)
    local deadline = mp.monotonic() + 5
    local alive = true
    while alive and mp.monotonic() < deadline do
      local st = H.slurp("/proc/" .. cpid .. "/stat")
      alive = st ~= nil and not st:match("^%d+ %b() [ZX]")
      if alive then mp.sleep(0.05) end
    end
    assert.is_false(alive, "the child outlived its killed parent")
  end)

  it("follows the one timeout rule in join", function()
    S.assert_ok(S.run_bounded(W.rule_script { "Process:join" }, 60))
  end)

  it("forgets a child once its exit code is taken: joined, or ended and never joined", function()
    local base = mp.core.children_stats()
    for _ = 1, 100 do
      local p = mp.Process(function() end)
      p:start()
      assert.are.equal(0, p:join(10)) -- joined, never closed
    end
    assert.is_true(mp.core.children_stats() - base <= 1, "entries: " .. mp.core.children_stats())
    local ps = {}
    for i = 1, 30 do
      ps[i] = mp.Process(function(i) os.exit(i) end, { i })
      ps[i]:start()
    end
    local deadline = mp.monotonic() + 10
    while #mp.active_children() > 0 and mp.monotonic() < deadline do mp.sleep(0.02) end
    assert.is_true(mp.core.children_stats() - base <= 1)
    for i = 1, 30 do
      assert.are.equal(i, ps[i].exitcode) -- the code lives in the Process object now
      assert.are.equal(i, ps[i]:join())
    end
  end)

  describe("join inside a child", function()
    it("a Process started by a Process child: join() and join(2) see its exit", function()
      S.assert_ok(S.run_bounded([[
        local q = mp.Queue()
        local p = mp.Process(function(q)
          local c = mp.Process(function() mp.sleep(0.2) end)
          c:start()
          local t0 = mp.monotonic()
          local code = c:join()
          local c2 = mp.Process(function() os.exit(4) end)
          c2:start()
          local t1 = mp.monotonic()
          local code2 = c2:join(2)
          q:put({ code, mp.monotonic() - t0, code2, mp.monotonic() - t1 })
        end, { q })
        p:start()
        local r = q:get(true, 20)
        assert(p:join(20) == 0)
        assert(r[1] == 0 and r[2] < 1.5, "join(): " .. tostring(r[1]) .. " after " .. r[2])
        assert(r[3] == 4 and r[4] < 1.5, "join(2): " .. tostring(r[3]) .. " after " .. r[4])
        print("ok")
      ]], 30))
    end)

    it("nested three deep, each level starting and joining its own children", function()
      S.assert_ok(S.run_bounded([[
        local v = mp.Value("i", 0)
        local function level(depth, v)
          v:with(function() v.value = v.value + 1 end)
          if depth == 0 then return end
          local kids = {}
          for i = 1, 2 do
            kids[i] = mp.Process(level, { depth - 1, v })
            kids[i]:start()
          end
          for i = 1, 2 do assert(kids[i]:join(10) == 0, "a child failed") end
        end
        local p = mp.Process(level, { 3, v })
        p:start()
        assert(p:join(30) == 0)
        assert(v.value == 15, "processes that ran: " .. v.value) -- 1 + 2 + 4 + 8
        print("ok")
      ]], 60))
    end)

    it("a Pool made inside a Process: map, close and join", function()
      S.assert_ok(S.run_bounded([[
        local q = mp.Queue()
        local p = mp.Process(function(q)
          local pool = mp.Pool(2)
          local r = pool:map(function(x) return x * x end, { 1, 2, 3, 4 })
          pool:close()
          local t0 = mp.monotonic()
          local joined = pool:join(10)
          q:put({ r, joined, mp.monotonic() - t0 })
        end, { q })
        p:start()
        local r = q:get(true, 30)
        assert(p:join(20) == 0)
        assert(r[1][4] == 16 and r[1].n == 4, "map")
        assert(r[2] ~= false and r[3] < 5, "pool:join took " .. r[3])
        print("ok")
      ]], 60))
    end)
  end)

  it("a target that sets io.stdout and io.stderr to nil still exits normally", function()
    local out, err, code = H.run_lmp([[
      local mp = require "lmp"
      local ok = mp.Process(function() print("from the child"); io.stdout = nil end)
      ok:start()
      local bad = mp.Process(function() io.stdout, io.stderr = nil, nil; error("after nil") end)
      bad:start()
      print("exitcodes", ok:join(10), bad:join(10))
    ]])
    assert.are.equal(0, code)
    assert.matches("from the child", out)
    assert.matches("exitcodes\t0\t1", out)
    assert.is_nil(err:match("bootstrap failed"), err)
    assert.matches("after nil", err)
  end)
end)
