-- spawn_spec.lua — the "spawn" start method: children are fresh lmp processes (fork + exec),
-- for hosts where fork alone is unsafe. Everything that travels by the codec still works.
local mp = require "lmp"
local H = require "helper"
require "shm_helper" -- warms the shared-memory arena once, before the fd checks

function spawn_global_helper(x) return x + 100 end

local function exe_of(pid)
  local f = io.popen("readlink /proc/" .. pid .. "/exe")
  local s = f:read("l")
  f:close()
  return s
end

describe("the spawn start method", function()
  before_each(function()
    H.setup()
    mp.set_start_method("spawn")
  end)
  after_each(function()
    mp.set_start_method("fork")
    H.teardown()
  end)
  teardown(H.cleanup)

  it("is reported by get_start_method", function()
    assert.are.equal("spawn", mp.get_start_method())
    local ok, err = pcall(mp.set_start_method, "forkserver")
    assert.is_true(mp.iserror(err, "ValueError"))
  end)

  it("runs a Process in a new lmp program, with upvalues, globals and modules", function()
    local out = H.tmpname()
    local cjson = require "cjson"
    local t = { k = "v" }
    t.self = t
    local p = mp.Process(function(x)
      local f = io.open(out, "w")
      f:write(cjson.encode({ spawn_global_helper(x), t.self == t, t.k, mp.current_process().name }))
      f:close()
      mp.sleep(0.3)
      os.exit(5)
    end, { 1 })
    p:start()
    mp.sleep(0.1)
    local exe = exe_of(p.pid)
    assert.matches("lmp$", exe)
    assert.are.equal(5, p:join(10))
    assert.are.equal('[101,true,"v","' .. p.name .. '"]', H.slurp(out))
  end)

  it("hands Pipe ends and shared objects to the new program", function()
    local a, b = mp.Pipe()
    local q, lock = mp.Queue(), mp.Lock()
    local p = mp.Process(function(c, q, lock)
      assert(lock:acquire(true, 5))
      c:send("pipe ok")
      q:put("queue ok")
      lock:release()
    end, { b, q, lock })
    p:start()
    assert.are.equal("pipe ok", a:recv())
    assert.are.equal("queue ok", q:get(true, 5))
    assert.are.equal(0, p:join(10))
    a:close(); b:close()
  end)

  it("is what a spawned child reports, and what its own children are started with", function()
    local q = mp.Queue()
    local p = mp.Process(function(q)
      local c = mp.Process(function(q) q:put(mp.get_start_method()) end, { q })
      c:start()
      c:join(10)
      q:put({ mp.get_start_method(), c:join(10) })
    end, { q })
    p:start()
    assert.are.equal("spawn", q:get(true, 10)) -- the grandchild
    assert.are.same({ "spawn", 0 }, q:get(true, 10)) -- the child
    assert.are.equal(0, p:join(10))
  end)

  it("reports an uncaught error with exit code 1", function()
    local p = mp.Process(function() error("spawned boom") end)
    p:start()
    assert.are.equal(1, p:join(10))
  end)

  it("serves a Pool whose workers are lmp programs", function()
    local pool = mp.Pool(2)
    local r = pool:map(function(x) return x * 3 end, { 1, 2, 3, 4, 5 })
    assert.are.same({ 3, 6, 9, 12, 15, n = 5 }, r)
    for _, pid in ipairs(pool:stats().workers) do assert.matches("lmp$", exe_of(pid)) end
    local ok, err = pcall(pool.apply, pool, function() error({ code = 7 }) end)
    assert.is_true(mp.iserror(err, "RemoteError"))
    assert.are.equal(7, err.value.code)
    local lost = pool:apply_async(function() os.exit(3) end)
    local ok2, err2 = pcall(lost.get, lost, 10)
    assert.is_true(mp.iserror(err2, "WorkerLostError"))
    assert.are.equal(10, pool:apply(function(a, b) return a * b end, { 2, 5 }))
    pool:close()
    assert.is_true(pool:join(10))
  end)
end)
