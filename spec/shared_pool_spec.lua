-- shared_pool_spec.lua — shared objects given to pool workers that were started before the
-- objects existed: as task arguments and as upvalues (CPython refuses this; lmp does it).
local mp = require "lmp"
local S = require "shm_helper" -- warms the arena objects are carved from, then checks as helper

describe("shared objects in pool tasks", function()
  before_each(S.setup)
  after_each(S.teardown)

  it("a Queue created after the pool, as an argument and as an upvalue", function()
    local pool <close> = mp.Pool(2)
    pool:apply(function() return true end) -- the workers are up before the queue exists
    local q = mp.Queue()
    assert.is_true(pool:apply(function(q) q:put("arg"); return true end, { q }))
    assert.is_true(pool:apply(function() q:put("upvalue"); return true end))
    assert.are.equal("arg", q:get(true, 5))
    assert.are.equal("upvalue", q:get(true, 5))
    -- the seed pattern: a writer task and a reader task on the same pool
    local w = pool:apply_async(function(q) for c in ("itcast"):gmatch(".") do q:put(c) end end, { q })
    w:get(10)
    local got = pool:apply(function(q)
      local t = {}
      for i = 1, 6 do t[i] = q:get(true, 5) end
      return table.concat(t)
    end, { q })
    assert.are.equal("itcast", got)
  end)

  it("a Lock, a Value and an Array shared by all tasks of a map", function()
    local pool <close> = mp.Pool(2)
    pool:apply(function() return true end)
    local lock, v, arr = mp.Lock(), mp.Value("i", 0), mp.Array("d", 8)
    pool:map(function(i)
      lock:with(function() v.value = v.value + i end)
      arr[i] = i * 0.5
      return true
    end, { 1, 2, 3, 4, 5, 6, 7, 8 })
    assert.are.equal(36, v.value)
    assert.are.same({ 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0 }, arr:totable())
  end)

  it("an Event set by a task wakes the parent", function()
    local pool <close> = mp.Pool(1)
    pool:apply(function() return true end)
    local ev = mp.Event()
    pool:apply_async(function(ev) mp.sleep(0.1); ev:set() end, { ev })
    assert.is_true(ev:wait(5))
  end)

  it("Pipe ends created after the pool travel to its workers (SCM_RIGHTS)", function()
    local pool <close> = mp.Pool(2)
    pool:apply(function() return true end)
    local ends, results = {}, {}
    for i = 1, 20 do
      local mine, theirs = mp.Pipe()
      ends[i] = mine
      results[i] = pool:apply_async(function(c, i) c:send({ i = i, pid = mp.getpid() }); c:close(); return i end,
        { theirs, i })
      theirs:close() -- the task holds its own copy
    end
    for i = 1, 20 do
      assert.are.equal(i, results[i]:get(10))
      local msg = ends[i]:recv()
      assert.are.equal(i, msg.i)
      assert.are_not.equal(mp.getpid(), msg.pid)
      ends[i]:close()
    end
    -- and as the items of a map
    local mine, theirs = {}, {}
    for i = 1, 6 do mine[i], theirs[i] = mp.Pipe() end
    local r = pool:map(function(c) c:send("hi"); c:close(); return true end, theirs, 2)
    assert.are.equal(6, r.n)
    for i = 1, 6 do
      theirs[i]:close()
      assert.are.equal("hi", mine[i]:recv())
      mine[i]:close()
    end
  end)
end)
