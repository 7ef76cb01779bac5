-- cluster_spec.lua — the same Pool on Redis, served by `lmp worker` processes (each in a
-- process group of its own, like separate hosts) against a private redis-server: the Pool API,
-- keys and tampering, workers killed or stopped, Redis going away, Ctrl-C, memory that stays
-- flat. Real Redis, real processes, real signals.
local mp = require "lmp"
local H = require "helper"
local R = require "redis_helper"

local pcall_err = H.error_of

describe("Pool on Redis", function()
  local srv
  before_each(function()
    H.setup()
    srv = R.start()
  end)
  after_each(function()
    R.stop(srv)
    H.teardown()
  end)

  local function pool(opts)
    opts = opts or {}
    opts.backend = srv.url
    opts.key = srv.key
    opts.processes = opts.processes or 2
    return mp.Pool(opts)
  end

  local function range(n)
    local t = {}
    for i = 1, n do t[i] = i end
    return t
  end

  it("serves map, starmap, imap, imap_unordered, apply and apply_async with 2 workers", function()
    R.worker(srv, "-P 1")
    R.worker(srv, "-P 1")
    local p <close> = pool()
    local k = 10
    local r = p:map(function(x) return x * k end, range(100))
    assert.are.equal(100, r.n)
    assert.are.equal(1000, r[100])
    assert.are.same({ 3, 7, n = 2 }, p:starmap(function(a, b) return a + b end, { { 1, 2 }, { 3, 4 } }))
    local seen = {}
    for i, v in p:imap(function(x) return -x end, range(20), 3) do seen[#seen + 1] = i .. "=" .. v end
    assert.are.equal("20=-20", seen[20])
    local n = 0
    for _, v in p:imap_unordered(function(x) return x end, range(30)) do n = n + v end
    assert.are.equal(465, n)
    local a, b = p:apply(function(x, y) return x .. y, #x end, { "ab", "c" })
    assert.are.equal("abc", a)
    assert.are.equal(2, b)
    local got
    local res = p:apply_async(function() return "cb" end, {}, function(v) got = v end)
    assert.are.equal("cb", res:get(30))
    assert.are.equal("cb", got)
    local err = pcall_err(p.apply, p, function() error("remote boom") end)
    assert.is_true(mp.iserror(err, "RemoteError"), tostring(err))
    assert.matches("remote boom", err.message)
    assert.matches("traceback", tostring(err))
    local calls = 0
    p:map(function(x) return x end, range(40), { chunksize = 5, progress = function() calls = calls + 1 end })
    assert.are.equal(8, calls)
  end)

  it("spreads work over 4 workers, modules required by name there", function()
    for _ = 1, 4 do R.worker(srv, "-P 1") end
    local p <close> = pool { processes = 4 }
    local pids = {}
    for _, pid in ipairs(p:map(function() mp.sleep(0.05) return mp.getppid() end, range(40), 1)) do
      pids[pid] = true
    end
    local count = 0
    for _ in pairs(pids) do count = count + 1 end
    assert.is_true(count >= 3, "tasks ran under " .. count .. " workers only")
    assert.are.same({ "A", "B", n = 2 }, p:map(string.upper, { "a", "b" }))
  end)

  it("Redis unreachable at Pool creation: ProcessError at once", function()
    local t0 = mp.monotonic()
    local err = pcall_err(mp.Pool, { backend = "unix://" .. srv.dir .. "/nothing.sock", key = srv.key })
    assert.is_true(mp.iserror(err, "ProcessError"), tostring(err))
    assert.matches("cannot reach Redis", err.message)
    assert.is_true(mp.monotonic() - t0 < 3)
    err = pcall_err(mp.Pool, { backend = srv.url, key = "short" })
    assert.is_true(mp.iserror(err, "ValueError"), tostring(err))
  end)

  it("a worker without a key refuses to start", function()
    local _, _, status = os.execute(("env -u LMP_CLUSTER_KEY %s worker %s > %s/nokey.log 2>&1")
      :format(os.getenv("LMP_EXE"), srv.url, srv.dir))
    assert.are.equal(2, status)
    assert.matches("no cluster key", H.slurp(srv.dir .. "/nokey.log"))
  end)

  it("a task signed with another key is refused, said so, and fails its call", function()
    local w = R.worker(srv, "-P 1")
    local p <close> = mp.Pool { backend = srv.url, key = "another-key-entirely-" .. mp.core.random_hex(4) }
    local r = p:apply_async(function() return 1 end)
    local err = pcall_err(r.get, r, 30)
    assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
    assert.matches("HMAC", err.message)
    assert.matches("fails its HMAC check", R.log(w))
    local c = R.conn(srv)
    assert.is_true(c:call("XLEN", "lmp:dead") >= 1)
    c:close()
  end)

  it("a tampered task is refused: its function never runs", function()
    -- No worker yet: a worker blocked in XREADGROUP would be handed the task by Redis at once,
    -- before it could be altered. The task waits in the stream, is altered there, and only
    -- then does a worker start.
    local p <close> = pool()
    local flag = srv.dir .. "/ran"
    local r = p:apply_async(function(path) local f = io.open(path, "w") f:write("ran") f:close() return 1 end, { flag })
    local c = R.conn(srv)
    local entries
    for _ = 1, 100 do
      entries = c:call("XRANGE", "lmp:tasks", "-", "+")
      if #entries > 0 then break end
      mp.sleep(0.02)
    end
    assert.are.equal(1, #entries)
    local id, fields = entries[1][1], entries[1][2]
    local altered = false
    for i = 1, #fields, 2 do
      if fields[i] == "a" then fields[i + 1] = fields[i + 1] .. "x" altered = true end
    end
    assert.is_true(altered, "no argument field in the task entry")
    c:call("XDEL", "lmp:tasks", id)
    c:call("XADD", "lmp:tasks", "*", table.unpack(fields, 1, fields.n))
    local w = R.worker(srv, "-P 1")
    local err = pcall_err(r.get, r, 30)
    assert.is_true(mp.iserror(err, "WorkerLostError"), tostring(err))
    assert.is_nil(H.slurp(flag))
    assert.matches("fails its HMAC check", R.log(w))
    -- the pool still serves untampered work afterwards
    assert.are.equal(2, p:apply(function(x) return x + 1 end, { 1 }))
    c:close()
  end)

  it("10,000 tasks under random kill -9 of workers: each resolves exactly once", function()
    H.watchdog(300)
    local ws = {}
    for i = 1, 3 do ws[i] = R.worker(srv, "-P 2 --heartbeat 0.2 --reclaim 1") end
    local p <close> = pool { retries = 5 }
    local rs, done = {}, {}
    local f = function(i) return i * 2 end
    for i = 1, 10000 do
      rs[i] = p:apply_async(f, { i }, function(v) done[i] = (done[i] or 0) + 1 end,
        function(e) done[i] = (done[i] or 0) + 1 end)
    end
    local kills, next_kill = 0, mp.monotonic() + 0.3
    local deadline = mp.monotonic() + 240
    local settled = 0
    while settled < 10000 do
      assert.is_true(mp.monotonic() < deadline, "tasks still pending: " .. (10000 - settled))
      mp.poll(0.05)
      if mp.monotonic() > next_kill and kills < 6 then
        local k = math.random(#ws)
        R.signal(ws[k], "KILL")
        ws[k] = R.worker(srv, "-P 2 --heartbeat 0.2 --reclaim 1")
        kills = kills + 1
        next_kill = mp.monotonic() + 0.4
      end
      settled = 0
      for i = 1, 10000 do if rs[i]:ready() then settled = settled + 1 end end
    end
    local ok = 0
    for i = 1, 10000 do
      assert.are.equal(1, done[i], "task " .. i .. " resolved " .. tostring(done[i]) .. " times")
      if rs[i]:successful() then
        assert.are.equal(i * 2, rs[i]:get())
        ok = ok + 1
      end
    end
    assert.is_true(kills >= 1)
    assert.is_true(ok >= 9900, "only " .. ok .. " tasks succeeded")
  end)

  it("a SIGSTOPped worker's tasks are reclaimed and run elsewhere", function()
    local w1 = R.worker(srv, "-P 1 --heartbeat 0.2 --reclaim 1")
    local p <close> = pool()
    local r = p:apply_async(function() mp.sleep(0.5) return mp.getppid() end)
    mp.sleep(0.2)
    R.signal(w1, "STOP") -- holds the task and says nothing more
    local w2 = R.worker(srv, "-P 1 --heartbeat 0.2 --reclaim 1")
    local ppid = r:get(30)
    assert.are.equal(w2.pid, ppid)
    R.signal(w1, "CONT")
  end)

  it("Redis stopped mid-run: pending results fail with ProcessError, no hang", function()
    R.worker(srv, "-P 1")
    local p <close> = pool { retry_window = 1 }
    assert.are.equal(1, p:apply(function() return 1 end))
    local rs = {}
    for i = 1, 4 do rs[i] = p:apply_async(function() mp.sleep(5) return i end) end
    mp.sleep(0.3)
    os.execute("kill -KILL " .. srv.pid)
    local t0 = mp.monotonic()
    for i = 1, 4 do
      local err = pcall_err(rs[i].get, rs[i], 30)
      assert.is_true(mp.iserror(err, "ProcessError"), tostring(err))
      assert.matches("went away", err.message)
    end
    assert.is_true(mp.monotonic() - t0 < 10)
    local err = pcall_err(p.apply_async, p, function() end)
    assert.is_true(mp.iserror(err, "ProcessError"), tostring(err))
  end)

  it("Ctrl-C of a map removes the pool's pending tasks from Redis", function()
    R.worker(srv, "-P 1")
    local out, err, code = R.run(srv, [[
      local mp = require "lmp"
      local pool = mp.Pool { backend = os.getenv("LMP_SPEC_REDIS"), processes = 1 }
      local seq = {}
      for i = 1, 200 do seq[i] = i end
      os.execute(("sh -c 'sleep 0.5; kill -INT %d' &"):format(mp.getpid()))
      local ok, e = pcall(pool.map, pool, function(x) mp.sleep(0.2) return x end, seq, 1)
      print("caught", ok, e.type)
      local c = mp.core.redis(os.getenv("LMP_SPEC_REDIS"))
      mp.sleep(0.5)
      print("left", c:call("XLEN", "lmp:tasks"))
      pool:terminate()
    ]], 60)
    assert.are.equal(0, code, err)
    assert.matches("caught\tfalse\tInterruptedError", out)
    local left = tonumber(out:match("left\t(%d+)"))
    assert.is_true(left ~= nil and left <= 2, "tasks left in Redis: " .. tostring(left))
  end)

  it("results are trimmed once delivered: Redis memory stays flat over 100k tasks", function()
    H.watchdog(300)
    R.worker(srv, "-P 2")
    local p <close> = pool()
    local c = R.conn(srv)
    local f = function(x) return x end
    local function used()
      local info = c:call("INFO", "memory")
      return tonumber(info:match("used_memory:(%d+)"))
    end
    for i = 1, 1000 do p:apply_async(f, { i }) end
    p:map(f, range(1000), 1)
    local before = used()
    local batch = {}
    for round = 1, 10 do
      for i = 1, 10000 do batch[i] = p:apply_async(f, { i }) end
      for i = 1, 10000 do batch[i]:get(60) end
    end
    local after = used()
    assert.is_true(after - before < 4 * 1024 * 1024, ("Redis grew by %d bytes"):format(after - before))
    -- acknowledged tasks leave the stream moments after their results
    local left
    for _ = 1, 100 do
      left = c:call("XLEN", "lmp:tasks")
      if left == 0 then break end
      mp.sleep(0.02)
    end
    assert.are.equal(0, left)
    c:close()
  end)

  it("SIGTERM drains a worker: it finishes its running task and takes no new one", function()
    local w = R.worker(srv, "-P 1")
    local p <close> = pool()
    local r = p:apply_async(function() mp.sleep(0.5) return "finished" end)
    mp.sleep(0.2)
    R.signal(w, "TERM")
    assert.are.equal("finished", r:get(30))
    local deadline = mp.monotonic() + 10
    while R.alive(w) and mp.monotonic() < deadline do mp.sleep(0.05) end
    assert.is_false(R.alive(w))
    assert.matches("SIGTERM", R.log(w))
  end)

  it("the parent killed: workers serve other pools, and the dead pool's tasks expire unrun", function()
    local w = R.worker(srv, "-P 1")
    local ran = srv.dir .. "/ran.txt"
    local said = srv.dir .. "/submitted"
    -- a parent that submits 40 slow tasks and is then killed with SIGKILL
    local src = srv.dir .. "/parent.lua"
    local f = assert(io.open(src, "w"))
    f:write(([[
      local mp = require "lmp"
      local pool = mp.Pool { backend = os.getenv("LMP_SPEC_REDIS"), processes = 1 }
      for i = 1, 40 do
        pool:apply_async(function(path)
          local f = io.open(path, "a") f:write("x\n") f:close()
          mp.sleep(0.2)
        end, { %q })
      end
      mp.sleep(0.3) -- the tasks are in Redis
      local f = io.open(%q, "w") f:write("yes") f:close()
      mp.sleep(60)
    ]]):format(ran, said))
    f:close()
    os.execute(("LMP_SPEC_REDIS=%q LMP_CLUSTER_KEY=%q setsid %s %s > %s/parent.log 2>&1 & echo $! > %s/parent.pid")
      :format(srv.url, srv.key, os.getenv("LMP_EXE"), src, srv.dir, srv.dir))
    local deadline = mp.monotonic() + 30
    while not H.slurp(said) do
      assert(mp.monotonic() < deadline, "the parent did not submit: " .. tostring(H.slurp(srv.dir .. "/parent.log")))
      mp.sleep(0.05)
    end
    local ppid = tonumber(H.slurp(srv.dir .. "/parent.pid"))
    os.execute("kill -KILL " .. ppid)
    local c = R.conn(srv)
    local keys = c:call("KEYS", "lmp:pool:*")
    assert.are.equal(1, #keys)
    local ttl = c:call("TTL", keys[1])
    assert.is_true(ttl > 0 and ttl <= 30, "the dead pool's liveness key lives " .. ttl .. " s")
    -- its liveness key expires (as Redis does after the TTL, without a refresh): now
    c:call("DEL", keys[1])
    local p <close> = pool()
    assert.are.equal("alive", p:apply(function() return "alive" end))
    deadline = mp.monotonic() + 20
    while c:call("XLEN", "lmp:tasks") > 0 and mp.monotonic() < deadline do mp.sleep(0.05) end
    assert.are.equal(0, c:call("XLEN", "lmp:tasks"), "the dead pool's tasks are still in Redis")
    local runs = select(2, (H.slurp(ran) or ""):gsub("\n", ""))
    assert.is_true(runs < 40, "every task of the dead pool ran")
    assert.is_true(R.alive(w))
    c:close()
  end)

  it("lmp status shows the workers, the tasks in flight and the dead letters", function()
    R.worker(srv, "-P 1 --name spec-worker-a")
    local p <close> = pool()
    p:apply(function() return 1 end)
    local out = H.slurp((function()
      local o = srv.dir .. "/status.txt"
      os.execute(("%s status %s > %s 2>&1"):format(os.getenv("LMP_EXE"), srv.url, o))
      return o
    end)())
    assert.matches("workers: 1", out)
    assert.matches("spec%-worker%-a", out)
    assert.matches("dead letters: 0", out)
    assert.matches("pools alive: 1", out)
  end)
end)
