-- stress_waits_spec.lua — short waits never hang: waits of 0, 1 µs and 1 ms of every kind
-- (mp.sleep, Process join, AsyncResult get and wait, mp.poll, Queue get, Lock acquire, Event
-- wait, Pipe poll, mp.wait), ten thousand of each kind, with CPU hogs running; and the
-- resource limits of DESIGN §8 (ulimit -n, -u, -v): creating objects and processes past them
-- gives a clean ProcessError and leaks nothing. Everything runs in a child under
-- `timeout -s KILL`, so a hang fails instead of blocking the suite.
local H = require "helper"
local S = require "shm_helper"

-- The bounded script: one child per kind makes N waits of that kind, the timeouts 0, 1 µs and
-- 1 ms in turn, every one timing out (nothing it waits for happens), and reports how many it
-- made and the longest; two busy children keep the CPUs loaded meanwhile.
local STRESS = [==[
local N = tonumber(os.getenv("LMP_STRESS_N") or "10000")
local TIMEOUTS = { 0, 1e-6, 1e-3 }

local function kinds()
  return {
    sleep = function() return function(t) mp.sleep(t) end end,
    join = function(st)
      st.go = mp.Event()
      st.p = mp.Process(function(go) go:wait(120) end, { st.go })
      st.p:start()
      return function(t) assert(st.p:join(t) == nil) end,
        function() st.go:set(); st.p:join(30) end
    end,
    get = function(st)
      st.pool = mp.Pool(1)
      st.res = st.pool:apply_async(function() mp.sleep(3600) end)
      return function(t)
        local ok, e = pcall(st.res.get, st.res, t)
        assert(not ok and mp.iserror(e, "TimeoutError"), tostring(e))
      end, function() st.pool:terminate() end
    end,
    wait = function(st)
      st.pool = mp.Pool(1)
      st.res = st.pool:apply_async(function() mp.sleep(3600) end)
      return function(t) assert(st.res:wait(t) == false) end, function() st.pool:terminate() end
    end,
    poll = function() return function(t) assert(mp.poll(t) == 0) end end,
    queue = function(st)
      st.q = mp.Queue()
      return function(t)
        local ok, e = pcall(st.q.get, st.q, true, t)
        assert(not ok and mp.iserror(e, "Empty"), tostring(e))
      end
    end,
    lock = function(st)
      st.l = mp.Lock(); st.l:acquire()
      return function(t) assert(st.l:acquire(true, t) == false) end
    end,
    event = function(st)
      st.e = mp.Event()
      return function(t) assert(st.e:wait(t) == false) end
    end,
    pipe = function(st)
      st.a, st.b = mp.Pipe()
      return function(t) assert(st.a:poll(t) == false) end
    end,
    mpwait = function(st)
      st.a, st.b = mp.Pipe()
      st.q = mp.Queue()
      return function(t) assert(#mp.wait({ st.a, st.q }, t) == 0) end
    end,
  }
end

local function run_kind(name, N, results)
  local st = {}
  local call, done = kinds()[name](st)
  local calls, longest = 0, 0
  for i = 1, N do -- the three timeouts in turn
    local t0 = mp.monotonic()
    call(TIMEOUTS[i % 3 + 1])
    local took = mp.monotonic() - t0
    if took > longest then longest = took end
    calls = calls + 1
  end
  if done then done() end
  results:put({ name, calls, longest })
end

local hogs = {}
for i = 1, 2 do
  hogs[i] = mp.Process { daemon = true, target = function() local x = 0; while true do x = x + 1 end end }
  hogs[i]:start()
end
local results, ps = mp.Queue(), {}
local t0 = mp.monotonic()
for name in pairs(kinds()) do
  local p = mp.Process(run_kind, { name, N, results })
  p:start()
  ps[#ps + 1] = p
end
-- the bounded process itself waits in short slices meanwhile
local got = {}
while #got < #ps do
  local ok, r = pcall(results.get, results, true, 1e-3)
  if ok then got[#got + 1] = r end
  mp.sleep(1e-6)
end
for _, p in ipairs(ps) do assert(p:join(30) == 0, "a stress child failed") end
for _, h in ipairs(hogs) do h:kill(); h:join(10) end
table.sort(got, function(a, b) return a[1] < b[1] end)
for _, r in ipairs(got) do
  print(("%-7s %6d waits, longest %.4f s"):format(r[1], r[2], r[3]))
  assert(r[2] == N, r[1] .. ": not every wait ran")
  assert(r[3] < 2, r[1] .. ": a wait of at most 1 ms took " .. r[3] .. " s")
end
print(("all kinds in %.1f s"):format(mp.monotonic() - t0))
print("ok")
]==]

describe("waits", function()
  before_each(S.setup)
  after_each(S.teardown)
  teardown(H.cleanup)

  it("of 0, 1 µs and 1 ms, ten thousand of each kind with CPU hogs running, in under a minute", function()
    local out, err, status = S.run_bounded(STRESS, 60)
    io.stderr:write(out)
    S.assert_ok(out, err, status)
  end)
end)

describe("resource limits", function()
  before_each(S.setup)
  after_each(S.teardown)
  teardown(H.cleanup)

  -- Counts this process's descriptors that lmp objects hold: shared-memory arenas, sockets.
  local FDS = [[
    local function fds()
      local p = io.popen("ls -l /proc/" .. mp.getpid() .. "/fd")
      local n = 0
      for l in p:lines() do if l:match("memfd:lmp") or l:match("socket:") then n = n + 1 end end
      p:close()
      return n
    end
  ]]

  it("ulimit -n: Queues, Pipes and small objects past the limit raise ProcessError and leak nothing", function()
    S.assert_ok(S.run_bounded(FDS .. [[
      mp.Lock() -- the first small arena
      local before = fds()
      for _, make in ipairs { mp.Queue, mp.JoinableQueue, mp.Pipe } do
        local kept, err = {}, nil
        for _ = 1, 1000 do
          local ok, a, b = pcall(make)
          if not ok then err = a; break end
          kept[#kept + 1] = { a, b }
        end
        assert(mp.iserror(err, "ProcessError") and err.message:match("open files"), tostring(err))
        for _, k in ipairs(kept) do if k[2] then k[1]:close(); k[2]:close() end end
        kept = nil
        collectgarbage(); collectgarbage()
        assert(fds() == before, ("descriptors leaked: %d, were %d"):format(fds(), before))
        local ok, a, b = pcall(make)
        assert(ok, "cannot create one after releasing: " .. tostring(a))
        if b then a:close(); b:close() end
      end
      -- 10,000 small objects need no descriptor of their own, even at the limit
      local objs = {}
      for i = 1, 10000 do objs[i] = (i % 2 == 0) and mp.Value("i", i) or mp.Event() end
      assert(fds() - before <= 1, "small objects took descriptors: " .. fds() - before)
      objs = nil
      print("ok")
    ]], 60, "prlimit --nofile=48"))
  end)

  it("ulimit -u: starting a Process past the limit raises ProcessError and leaves no child", function()
    -- root is not held to RLIMIT_NPROC: the script runs as nobody
    S.assert_ok(S.run_bounded([[
      local ps, err = {}, nil
      for _ = 1, 200 do
        local p = mp.Process(function() mp.sleep(30) end)
        local ok, e = pcall(p.start, p)
        if not ok then err = e; break end
        ps[#ps + 1] = p
      end
      assert(#ps < 200 and mp.iserror(err, "ProcessError"), tostring(err))
      assert(#mp.active_children() == #ps)
      for _, p in ipairs(ps) do p:kill() end
      for _, p in ipairs(ps) do assert(p:join(10) == -9) end
      assert(#mp.active_children() == 0 and mp.core.children_stats() == 0,
        "entries left in the children table: " .. mp.core.children_stats())
      local p = mp.Process(function() end)
      p:start()
      assert(p:join(10) == 0)
      print("ok")
    ]], 60, "setpriv --reuid=65534 --regid=65534 --clear-groups prlimit --nproc=24"))
  end)

  it("ulimit -v: shared memory past the limit raises ProcessError and leaks nothing", function()
    S.assert_ok(S.run_bounded(FDS .. [[
      mp.Lock()
      local before = fds()
      local vm
      for l in io.lines("/proc/self/status") do vm = vm or tonumber(l:match("^VmSize:%s+(%d+)")) end
      local limit = ("prlimit --pid %d --as=%%s:"):format(mp.getpid())
      assert(os.execute(limit:format(vm * 1024 + (96 << 20))))
      local ok, e = pcall(mp.Array, "d", 1 << 27) -- 1 GiB
      assert(not ok and mp.iserror(e, "ProcessError") and e.message:match("shared memory"), tostring(e))
      ok, e = pcall(mp.RawArray, "b", 1 << 30)
      assert(not ok and mp.iserror(e, "ProcessError"), tostring(e))
      local qs = {}
      for _ = 1, 1000 do
        local ok2, q = pcall(mp.Queue)
        if not ok2 then e = q; break end
        qs[#qs + 1] = q
      end
      assert(mp.iserror(e, "ProcessError"), tostring(e))
      qs = nil
      collectgarbage(); collectgarbage()
      assert(fds() == before, ("descriptors leaked: %d, were %d"):format(fds(), before))
      local a = mp.Array("d", 1000)
      a[1000] = 1.5
      local p = mp.Process(function(a) a[1] = 2.5 end, { a })
      p:start()
      assert(p:join(10) == 0 and a[1] == 2.5)
      assert(os.execute(limit:format("unlimited")))
      print("ok")
    ]], 60))
  end)
end)
