-- bench.lua — lmp against CPython's multiprocessing, side by side in one run (DESIGN.md §7).
--
--   build/lmp scripts/bench/bench.lua [--quick] [--only row,row] [--list]
--
-- Each row runs its lmp workload here (in-process, with mp) and its CPython counterpart
-- (bench_cpython.py <row>, a subprocess), alternating, N times each (3; 1 with --quick), keeps
-- the best figure of each side, and prints a table of ratios with the target and PASS/MISS.
-- Absolute figures on a shared machine move a lot; the ratios of one run are what count.
-- The exit status is 0 (this is a report) unless a workload fails.
--
-- Adding a row: append to ROWS a table
--   { name = "row", py = "row" (bench_cpython.py's name, or nil),
--     lmp = function(ctx) return figure [, details] end,
--     unit = "tasks/s", better = "higher" | "lower",
--     refs = { name = function(ctx) return figure end } (other figures measured each repetition),
--     checks = { {vs = "cpython"|"<ref name>"|nil, min = x | max = x}, ... },
--     target = "text shown in the table" }
-- A check with vs compares lmp / that figure; without vs it checks lmp's figure itself.
local mp = require "lmp"

-- Setup --------------------------------------------------------------------------------------

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  return d or "."
end

local SCRIPT_DIR = dirname(arg and arg[0] or "scripts/bench/bench.lua")
local LMP_EXE = arg and arg[-1] or "build/lmp"
local BUILD_DIR = os.getenv("LMP_BUILD") or dirname(LMP_EXE)
local PYTHON = os.getenv("PYTHON") or "python3"
local WORKERS = 2
-- seconds a row (all its repetitions) may take before the watchdog interrupts it
local ROW_DEADLINE = tonumber(os.getenv("LMP_BENCH_DEADLINE") or "") or 300

local opts = { reps = 3, only = nil }
do
  local i = 1
  while arg and arg[i] do
    local a = arg[i]
    if a == "--quick" then
      opts.reps = 1
    elseif a == "--only" then
      i = i + 1
      opts.only = {}
      for name in (arg[i] or ""):gmatch("[^,%s]+") do opts.only[name] = true end
    elseif a:match("^%-%-only=") then
      opts.only = {}
      for name in a:sub(8):gmatch("[^,%s]+") do opts.only[name] = true end
    elseif a == "--reps" then
      i = i + 1
      opts.reps = math.tointeger(tonumber(arg[i])) or opts.reps
    elseif a == "--list" then
      opts.list = true
    elseif a == "--inner" then -- run one lmp workload once, in this fresh process
      i = i + 1
      opts.inner = arg[i]
    elseif a == "-h" or a == "--help" then
      print("usage: lmp scripts/bench/bench.lua [--quick] [--reps N] [--only row,row] [--list]")
      os.exit(0)
    else
      io.stderr:write("bench: unknown option " .. a .. "\n")
      os.exit(2)
    end
    i = i + 1
  end
end

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function run(cmd)
  local f = io.popen(cmd .. " 2>&1", "r")
  local out = f:read("a")
  local ok, how, code = f:close()
  return out, ok, how, code
end

local function first_line(cmd)
  local out = run(cmd)
  return (out:match("[^\n]*") or "")
end

-- Task functions (no upvalues: they travel to the workers by the codec) ----------------------

local function square(x) return x * x end
local function ident(x) return x end
local function nothing() return nil end
local function spin(n)
  local s = 0
  for i = 0, n - 1 do s = s + i % 7 end
  return s
end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local now = mp.monotonic
local TIMEOUT = 120 -- seconds any single wait of a workload may take

local function with_pool(fn)
  local pool <close> = mp.Pool(WORKERS)
  pool:apply_async(nothing, {}):get(TIMEOUT) -- workers up and serving
  local a, b = fn(pool)
  pool:close()
  pool:join(TIMEOUT)
  return a, b
end

-- Private memory of a pid: Private_Clean + Private_Dirty in KiB.
local function private_kib(pid)
  local f = io.open(("/proc/%d/smaps_rollup"):format(pid), "r")
  if not f then error("cannot read /proc/" .. pid .. "/smaps_rollup") end
  local total = 0
  for line in f:lines() do
    local k, v = line:match("^(Private_%a+):%s+(%d+)")
    if k == "Private_Clean" or k == "Private_Dirty" then total = total + tonumber(v) end
  end
  f:close()
  return total
end

-- Iterations of spin() that take about target seconds in this process.
local function calibrate(target)
  local n = 100000
  while true do
    local t0 = now()
    spin(n)
    local dt = now() - t0
    if dt > 0.05 then return math.max(1, math.floor(n * target / dt)) end
    n = n * 2
  end
end

-- Messages per second from a child to the parent through a Pipe (send_bytes/recv_bytes).
local function pipe_rate(n, size)
  local a, b = mp.Pipe()
  local p = mp.Process(function(b, n, size)
    local s = string.rep("x", size)
    for _ = 1, n do b:send_bytes(s) end
  end, { b, n, size })
  local t0 = now()
  p:start()
  b:close()
  for _ = 1, n do a:recv_bytes() end
  local dt = now() - t0
  assert(p:join(TIMEOUT) == 0, "pipe: sender failed")
  a:close()
  return n / dt
end

-- Rows ---------------------------------------------------------------------------------------

local ROWS = {
  {
    name = "map", py = "map", unit = "tasks/s", better = "higher",
    desc = "map(square, 1..1e6), default chunking",
    lmp = function()
      local data = range(1000000)
      return with_pool(function(pool)
        local t0 = now()
        local res = pool:map(square, data, { timeout = TIMEOUT })
        local dt = now() - t0
        assert(res.n == 1000000 and res[1000000] == 1000000 * 1000000, "map: wrong results")
        return 1000000 / dt
      end)
    end,
    checks = { { vs = "cpython", min = 3 } },
    target = "≥ 3× CPython",
  },
  {
    name = "apply", py = "apply", unit = "us/rt", better = "lower",
    desc = "apply_async(ident, {i}):get() one at a time, 5000 round trips",
    lmp = function()
      local n = 5000
      return with_pool(function(pool)
        local t0 = now()
        for i = 1, n do
          local v = pool:apply_async(ident, { i }):get(TIMEOUT)
          if v ~= i then error("apply: wrong result " .. tostring(v)) end
        end
        return (now() - t0) / n * 1e6
      end)
    end,
    refs = {
      pingpong = function()
        local exe = BUILD_DIR .. "/pingpong"
        local line = first_line(shell_quote(exe) .. " 20000")
        local v = tonumber(line:match("^pingpong%s+(%S+)"))
        if not v then error("pingpong failed: " .. line) end
        return v
      end,
    },
    ref_labels = { pingpong = "ping-pong" },
    checks = { { vs = "cpython", max = 0.25 }, { vs = "pingpong", max = 1.2 } },
    target = "≤ 0.25× CPython, ≤ 1.2× ping-pong",
  },
  {
    name = "apply_many", py = "apply_many", unit = "tasks/s", better = "higher",
    desc = "100k apply_async, then get all",
    lmp = function()
      local n = 100000
      return with_pool(function(pool)
        local t0 = now()
        local results = {}
        for i = 1, n do results[i] = pool:apply_async(ident, { i }) end
        local total = 0
        for i = 1, n do total = total + results[i]:get(TIMEOUT) end
        local dt = now() - t0
        assert(total == n * (n + 1) // 2, "apply_many: wrong sum")
        return n / dt
      end)
    end,
    checks = { { vs = "cpython", min = 10 } },
    target = "≥ 10× CPython",
  },
  {
    name = "imap_unordered", py = "imap_unordered", unit = "tasks/s", better = "higher",
    desc = "imap_unordered(square, 200k items), chunksize 1",
    lmp = function()
      local n = 200000
      local data = range(n)
      return with_pool(function(pool)
        local t0 = now()
        local count = 0
        for _ in pool:imap_unordered(square, data, { chunksize = 1, timeout = TIMEOUT }) do
          count = count + 1
        end
        local dt = now() - t0
        assert(count == n, "imap_unordered: " .. count .. " results")
        return n / dt
      end)
    end,
    checks = { { vs = "cpython", min = 8 } },
    target = "≥ 8× CPython",
  },
  {
    name = "startstop", py = "startstop", unit = "ms", better = "lower",
    desc = "Pool(2) start + stop: create, one trivial task, close, join (mean of 5)",
    lmp = function()
      local k = 5
      local t0 = now()
      for _ = 1, k do
        local pool = mp.Pool(WORKERS)
        pool:apply_async(nothing, {}):get(TIMEOUT)
        pool:close()
        pool:join(TIMEOUT)
      end
      return (now() - t0) / k * 1e3
    end,
    checks = { { vs = "cpython", max = 0.5 } },
    target = "≤ 0.5× CPython",
  },
  {
    name = "cpu", py = "cpu", unit = "x", better = "higher",
    desc = "CPU-bound: 8 tasks of ~0.25 s pure-language loop, speed-up of 2 workers vs serial",
    lmp = function()
      local tasks = 8
      local n = calibrate(0.25)
      local t0 = now()
      local serial = {}
      for i = 1, tasks do serial[i] = spin(n) end
      local t_serial = now() - t0
      return with_pool(function(pool)
        local args = {}
        for i = 1, tasks do args[i] = n end
        t0 = now()
        local par = pool:map(spin, args, { chunksize = 1, timeout = TIMEOUT })
        local t_pool = now() - t0
        for i = 1, tasks do assert(par[i] == serial[i], "cpu: wrong result") end
        return t_serial / t_pool, ("serial=%.3fs pool=%.3fs"):format(t_serial, t_pool)
      end)
    end,
    checks = { { min = 1.8 } },
    target = "≥ 1.8× speed-up",
    speedup = true,
  },
  {
    name = "queue", py = "queue", unit = "msgs/s", better = "higher",
    desc = "Queue, one producer process -> parent, 200k small items",
    lmp = function()
      local n = 200000
      local q = mp.Queue()
      local p = mp.Process(function(q, n) for i = 1, n do q:put(i) end end, { q, n })
      local t0 = now()
      p:start()
      for _ = 1, n do q:get(true, TIMEOUT) end
      local dt = now() - t0
      assert(p:join(TIMEOUT) == 0, "queue: producer failed")
      return n / dt
    end,
    checks = { { vs = "cpython", min = 4 } },
    target = "≥ 4× CPython",
  },
  {
    name = "pipe_1mib", py = "pipe_1mib", unit = "GB/s", better = "higher",
    desc = "Pipe, 2000 messages of 1 MiB, child -> parent (send_bytes/recv_bytes)",
    lmp = function() return pipe_rate(2000, 1 << 20) * (1 << 20) / 1e9 end,
    checks = { { vs = "cpython", min = 0.9 } },
    target = "≥ 0.9× CPython",
  },
  {
    name = "pipe_16b", py = "pipe_16b", unit = "msgs/s", better = "higher",
    desc = "Pipe, 500k messages of 16 bytes, child -> parent",
    lmp = function() return pipe_rate(500000, 16) end,
    checks = { { vs = "cpython", min = 2 } },
    target = "≥ 2× CPython",
  },
  {
    name = "lock", py = "lock", unit = "ops/s", better = "higher",
    desc = "Lock-protected shared counter, 2 processes",
    lmp = function()
      local n = 1000000
      local lock = mp.Lock()
      local v = mp.Value("q", 0, { lock = false })
      local function work(lock, v, n)
        for _ = 1, n do
          lock:acquire()
          v.value = v.value + 1
          lock:release()
        end
      end
      local ps = {}
      local t0 = now()
      for i = 1, 2 do
        ps[i] = mp.Process(work, { lock, v, n })
        ps[i]:start()
      end
      for i = 1, 2 do assert(ps[i]:join(TIMEOUT) == 0, "lock: worker failed") end
      local dt = now() - t0
      assert(v.value == 2 * n, "lock: lost increments")
      return 2 * n / dt
    end,
    checks = { { vs = "cpython", min = 2 } },
    target = "≥ 2× CPython",
  },
  {
    name = "mem", py = "mem", unit = "MiB", better = "lower",
    desc = "private memory (Private_Clean + Private_Dirty) of the largest idle worker",
    lmp = function()
      return with_pool(function(pool)
        mp.sleep(0.2)
        local sizes = {}
        local max = 0
        for i, pid in ipairs(pool:stats().workers) do
          sizes[i] = private_kib(pid)
          max = math.max(max, sizes[i])
        end
        return max / 1024, "workers_kib=" .. table.concat(sizes, ",")
      end)
    end,
    checks = { { max = 2 }, { vs = "cpython", max = 0.25 } },
    target = "≤ 2 MiB, ≤ 0.25× CPython",
  },
}

-- Data: pool rows over real data (DESIGN §7 Round 2) ----------------------------------------
-- Peaks are the parent's resident memory above what it had just before the call (the peak
-- counter of /proc/self/status reset there), on both sides.

local function mem_kib(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s+(%d+)")
    if v then return tonumber(v) end
  end
  error("no " .. field .. " in /proc/self/status")
end

local function reset_peak()
  local f = assert(io.open("/proc/self/clear_refs", "w"))
  f:write("5")
  f:close()
end

local function record(r) return { id = r.id, total = r.score * #r.tags } end

local BIG = 50 * 1024 * 1024
local function make_big(n) return ("y"):rep(n) end

-- apply_async ×300 of a function reading a captured table of 50k strings (about 1 MB), as an
-- upvalue: through mp.constant (sent once), or plainly (a snapshot each submission).
local function captured_rate(constant)
  local t = {}
  for i = 1, 50000 do t[i] = ("%08d-payload"):format(i) end
  local captured = constant and mp.constant(t) or t
  local function use(i) return #captured + i end
  local n = 300
  return with_pool(function(pool)
    local t0 = now()
    local rs = {}
    for i = 1, n do rs[i] = pool:apply_async(use, { i }) end
    local total = 0
    for i = 1, n do total = total + rs[i]:get(TIMEOUT) end
    local dt = now() - t0
    assert(total == n * 50000 + n * (n + 1) // 2, "apply_captured: wrong results")
    return dt / n * 1e6
  end)
end

for _, row in ipairs {
  {
    name = "map_1e7", py = "map_1e7", unit = "tasks/s", better = "higher",
    desc = "map(square, 1..1e7), default chunking; the parent's peak per item beside it",
    lmp = function()
      local n = 10000000
      local data = range(n)
      return with_pool(function(pool)
        collectgarbage()
        local base = mem_kib("VmRSS")
        reset_peak()
        local t0 = now()
        local res = pool:map(square, data, { timeout = TIMEOUT })
        local dt = now() - t0
        local peak = mem_kib("VmHWM") - base
        assert(res.n == n and res[n] == n * n, "map_1e7: wrong results")
        return n / dt, ("peak_B_per_item=%.1f"):format(peak * 1024 / n)
      end)
    end,
    detail_checks = { { key = "peak_B_per_item", vs = "cpython", max = 0.7, label = "peak" } },
    checks = { { vs = "cpython", min = 3 } },
    target = "≥ 3× CPython, peak ≤ 0.7× CPython's",
  },
  {
    name = "map_records", py = "map_records", unit = "records/s", better = "higher",
    desc = "map over 200k records {id, name, score, tags = {3}}, each returning a small table",
    lmp = function()
      local n = 200000
      local data = {}
      for i = 1, n do
        data[i] = { id = i, name = "user" .. i, score = i * 0.5, tags = { "a", "b", "c" } }
      end
      return with_pool(function(pool)
        collectgarbage() -- the clock times the map, not the collector's debt from `data`
        local t0 = now()
        local res = pool:map(record, data, { timeout = TIMEOUT })
        local dt = now() - t0
        assert(res.n == n and res[n].total == n * 0.5 * 3, "map_records: wrong results")
        return n / dt
      end)
    end,
    checks = { { vs = "cpython", min = 3 } },
    target = "≥ 3× CPython",
  },
  {
    name = "apply_captured", py = "apply_captured", unit = "us/task", better = "lower",
    desc = "apply_async ×300 of a function capturing an unchanged 1 MB table, via mp.constant",
    lmp = function()
      return captured_rate(true), ("plain_capture_us=%.1f"):format(captured_rate(false))
    end,
    checks = { { vs = "cpython", max = 2 } },
    target = "≤ 2× CPython (CPython: a module global)",
  },
  {
    name = "big_arg", py = "big_arg", unit = "x_payload", better = "lower",
    desc = "a 50 MB string as a task argument: the parent's peak / the payload",
    lmp = function()
      return with_pool(function(pool)
        local s = ("x"):rep(BIG)
        collectgarbage()
        local base = mem_kib("VmRSS")
        reset_peak()
        assert(pool:apply(string.len, { s }) == BIG, "big_arg: wrong length")
        local peak = mem_kib("VmHWM") - base
        collectgarbage()
        local kept = mem_kib("VmRSS") - base
        return peak * 1024 / BIG, ("peak_MiB=%.1f kept_MiB=%.1f"):format(peak / 1024, kept / 1024)
      end)
    end,
    detail_checks = { { key = "kept_MiB", max = 5, label = "kept" } },
    checks = { { max = 1.2 } },
    target = "peak ≤ 1.2× the payload, ≤ 5 MB kept",
  },
  {
    name = "big_result", py = "big_result", unit = "x_payload", better = "lower",
    desc = "a 50 MB string as a task's result: the parent's peak / the payload",
    lmp = function()
      return with_pool(function(pool)
        collectgarbage()
        local base = mem_kib("VmRSS")
        reset_peak()
        local r = pool:apply(make_big, { BIG })
        assert(#r == BIG, "big_result: wrong length")
        local peak = mem_kib("VmHWM") - base
        r = nil -- luacheck: ignore
        collectgarbage()
        local kept = mem_kib("VmRSS") - base
        return peak * 1024 / BIG, ("peak_MiB=%.1f kept_MiB=%.1f"):format(peak / 1024, kept / 1024)
      end)
    end,
    detail_checks = { { key = "kept_MiB", max = 5, label = "kept" } },
    checks = { { max = 2.1 } },
    target = "peak ≤ 2.1× the payload, ≤ 5 MB kept",
  },
} do
  ROWS[#ROWS + 1] = row
end

-- Manager: dict get + set round trips, against CPython's Manager().dict() in the same run ------
ROWS[#ROWS + 1] = {
  name = "manager_dict", py = "manager_dict", unit = "pairs/s", better = "higher",
  desc = "Manager dict, 20k pairs of round trips: d.k = i, then read d.k",
  lmp = function()
    local m <close> = mp.Manager()
    local d = m:dict()
    d.k = 0
    local n = 20000
    local t0 = now()
    for i = 1, n do
      d.k = i
      if d.k ~= i then error("manager_dict: wrong value " .. tostring(d.k)) end
    end
    local dt = now() - t0
    return n / dt, ("us_per_call=%.1f"):format(dt / (2 * n) * 1e6)
  end,
  checks = { { vs = "cpython", min = 3 } },
  target = "≥ 3× CPython's Manager",
}

-- lmp --map (the command line): records/s of a trivial transform over 1e6 JSON lines on 2
-- workers, against a serial lua5.4 + lua-cjson loop over the same file and transform, with
-- jq's rate on the same transform beside them. The figure is lmp's rate / the serial rate.
do
  local N = 1000000
  local function timed(cmd)
    local t0 = now()
    local ok = os.execute(cmd)
    local dt = now() - t0
    if not ok then error("failed: " .. cmd, 0) end
    return dt
  end
  local function count_lines(path)
    local f = assert(io.open(path, "rb"))
    local n = 0
    while true do
      local block = f:read(1 << 20)
      if not block then break end
      local _, k = block:gsub("\n", "")
      n = n + k
    end
    f:close()
    return n
  end
  -- How much faster two CPU-bound processes get through work than one, on this machine now
  -- (2.0 on two free cores): the ceiling of any speed-up on 2 workers in this run.
  local function cpu_scaling()
    local loop = "lua5.4 -e 'local s = 0 for i = 1, 1e8 do s = s + i end'"
    local one = timed(loop)
    local two = timed("(" .. loop .. " & " .. loop .. " & wait)")
    return 2 * one / two
  end
  ROWS[#ROWS + 1] = {
    name = "map_cli", unit = "x", better = "higher",
    desc = "lmp --map, trivial transform (.n = .id * 2), 1e6 JSON lines, 2 workers, vs serial lua5.4 + lua-cjson; jq beside",
    lmp = function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. shell_quote(dir)))
      local input, out = dir .. "/in.jsonl", dir .. "/out.jsonl"
      local f = assert(io.open(input, "wb"))
      for i = 1, N, 1000 do
        local buf = {}
        for j = i, math.min(i + 999, N) do
          buf[#buf + 1] = ('{"id":%d,"name":"user%d","score":%.3f,"tags":["a","b"]}\n'):format(j, j, j / 7)
        end
        f:write(table.concat(buf))
      end
      f:close()
      local script = dir .. "/t.lua"
      f = assert(io.open(script, "wb"))
      f:write("return function(r) r.n = r.id * 2 return r end\n")
      f:close()
      local serial = dir .. "/serial.lua"
      f = assert(io.open(serial, "wb"))
      f:write([[
local cjson = require "cjson"
local f = dofile(arg[1])
local out = assert(io.open(arg[3], "wb"))
out:setvbuf("full", 65536)
for line in io.lines(arg[2]) do out:write(cjson.encode(f(cjson.decode(line))), "\n") end
out:close()
]])
      f:close()
      local res = table.pack(pcall(function()
        local t_serial = timed(("lua5.4 %s %s %s %s"):format(shell_quote(serial), shell_quote(script),
          shell_quote(input), shell_quote(out)))
        assert(count_lines(out) == N, "serial loop: wrong line count")
        local t_lmp = timed(("%s --map %s %s -P %d -o %s"):format(shell_quote(LMP_EXE), shell_quote(script),
          shell_quote(input), WORKERS, shell_quote(out)))
        assert(count_lines(out) == N, "lmp --map: wrong line count")
        local jq = "n/a"
        if os.execute("command -v jq >/dev/null 2>&1") then
          local t_jq = timed(("jq -c '.n = .id * 2' %s > %s"):format(shell_quote(input), shell_quote(out)))
          jq = ("%.0f rec/s (lmp %.2f× jq)"):format(N / t_jq, t_jq / t_lmp)
        end
        return t_serial / t_lmp, ("lmp=%.0f rec/s serial=%.0f rec/s jq=%s; 2 CPU-bound processes "
          .. "ran %.2f× one"):format(N / t_lmp, N / t_serial, jq, cpu_scaling())
      end))
      os.execute("rm -rf " .. shell_quote(dir))
      if not res[1] then error(res[2], 0) end
      return res[2], res[3]
    end,
    checks = { { min = 1.6 } },
    target = "≥ 1.6× the serial loop",
  }
end

-- Data: the codec against pickle ------------------------------------------------------------
-- mp.encode / mp.decode against pickle.dumps / pickle.loads (protocol 5) on the same four
-- values, built the same way on both sides: 100k records, a binary tree of 100k small tables,
-- 1e6 floats, a 10 MB string. Each figure is the best of CODEC_REPS runs in one process, a
-- full collection before each (the collector runs as it normally does while timed); sizes are
-- the message's and the pickle's bytes.
local CODEC_REPS = 7

local CODEC_DATA = {
  records = function()
    local t = {}
    for i = 1, 100000 do
      t[i] = { id = i, name = "user" .. i, score = i * 0.5, tags = { "a", "b", "c" } }
    end
    return t, 100000
  end,
  tree = function() -- node i has children 2i+1 and 2i+2, as a heap
    local nodes = {}
    for i = 0, 99999 do nodes[i] = { v = i } end
    for i = 0, 99999 do
      nodes[i].l, nodes[i].r = nodes[2 * i + 1], nodes[2 * i + 2]
    end
    return nodes[0], 100000
  end,
  floats = function()
    local t = {}
    for i = 1, 1000000 do t[i] = i * 0.5 end
    return t, 1000000
  end,
  string = function() return ("x"):rep(10 * 1024 * 1024), 10 * 1024 * 1024 end,
}

-- Checks a decoded value against what CODEC_DATA made.
local CODEC_CHECK = {
  records = function(r)
    return #r == 100000 and r[777].name == "user777" and r[5].tags[3] == "c"
  end,
  tree = function(r) return r.l.r.v == 4 and r.r.l.l.v == 11 end,
  floats = function(r) return #r == 1000000 and r[999999] == 499999.5 end,
  string = function(r) return #r == 10 * 1024 * 1024 end,
}

-- Items per second of mp.encode (op "enc") or mp.decode ("dec") of case, and the message size.
local function codec_rate(case, op)
  local v, items = CODEC_DATA[case]()
  local m = mp.encode(v)
  assert(CODEC_CHECK[case](mp.decode(m)), case .. ": wrong round trip")
  local best = math.huge
  for _ = 1, CODEC_REPS do
    collectgarbage()
    local t0 = now()
    local x
    if op == "enc" then x = mp.encode(v) else x = mp.decode(m) end
    best = math.min(best, now() - t0)
    x = nil -- luacheck: ignore
  end
  return items / best, "size=" .. #m
end

local CODEC_CASES = {
  { "records", "records/s", "100k records {id, name, score, tags = {3 strings}}" },
  { "tree", "tables/s", "a binary tree of 100k tables {v, l, r}" },
  { "floats", "floats/s", "1e6 floats in an array" },
  { "string", "bytes/s", "a 10 MB string" },
}
for _, c in ipairs(CODEC_CASES) do
  local case, unit, what = c[1], c[2], c[3]
  local min = case == "string" and 0.9 or 1.5
  for _, op in ipairs({ "enc", "dec" }) do
    ROWS[#ROWS + 1] = {
      name = op .. "_" .. case, py = op .. "_" .. case, unit = unit, better = "higher",
      desc = (op == "enc" and "mp.encode" or "mp.decode") .. " vs pickle: " .. what,
      lmp = function() return codec_rate(case, op) end,
      checks = { { vs = "cpython", min = min } },
      target = ("≥ %g× pickle"):format(min),
    }
  end
  ROWS[#ROWS + 1] = {
    name = "size_" .. case, py = "size_" .. case, unit = "bytes", better = "lower",
    desc = "message size vs pickle's: " .. what,
    lmp = function() return #mp.encode((CODEC_DATA[case]())) end,
    checks = { { vs = "cpython", max = 1.1 } },
    target = "≤ 1.1× pickle",
  }
end

-- Redis: the same Pool over Redis, served by `lmp worker` processes ---------------------------
-- A private redis-server on a Unix socket in a temporary directory, started for the row and
-- stopped after it, and N `lmp worker URL -P 1` processes (each in a process group of its own).
-- There is no peer to run here: the target quotes published figures (DESIGN §7).

local function cluster(nworkers, fn)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. shell_quote(dir)))
  local sock, key = dir .. "/redis.sock", "bench-cluster-key-" .. mp.core.random_hex(8)
  local url = "unix://" .. sock
  local keyfile = dir .. "/key"
  local f = assert(io.open(keyfile, "w"))
  f:write(key, "\n")
  f:close()
  local pids = {}
  local function stop()
    for _, pid in ipairs(pids) do os.execute(("kill -KILL -%d 2>/dev/null"):format(pid)) end
    local pf = io.open(dir .. "/redis.pid")
    if pf then
      os.execute("kill -KILL " .. pf:read("l") .. " 2>/dev/null")
      pf:close()
    end
    os.execute("rm -rf " .. shell_quote(dir))
  end
  local res = table.pack(pcall(function()
    if not os.execute("command -v redis-server >/dev/null 2>&1") then
      error("redis-server is not installed (make deps installs it)", 0)
    end
    assert(os.execute(("redis-server --port 0 --unixsocket %s --unixsocketperm 700 --save '' "
      .. "--appendonly no --daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log --dir %s")
      :format(shell_quote(sock), dir, dir, dir)), "redis-server did not start")
    local deadline = now() + 10
    while not pcall(function() mp.core.redis(url, 1):close() end) do
      if now() > deadline then error("redis-server does not answer", 0) end
      mp.sleep(0.05)
    end
    for i = 1, nworkers do
      local log, pidf = ("%s/w%d.log"):format(dir, i), ("%s/w%d.pid"):format(dir, i)
      assert(os.execute(("setsid sh -c 'echo $$ > %s; exec %s worker %s --key-file %s -P 1' "
        .. "> %s 2>&1 < /dev/null &"):format(pidf, shell_quote(LMP_EXE), url, keyfile, log)))
      while true do
        local lf = io.open(log)
        local text = lf and lf:read("a") or ""
        if lf then lf:close() end
        if text:match("serving") then break end
        if now() > deadline then error("a worker does not serve: " .. text, 0) end
        mp.sleep(0.02)
      end
      local pf = io.open(pidf)
      pids[i] = tonumber(pf:read("l"))
      pf:close()
    end
    local pool <close> = mp.Pool { backend = url, key = key, processes = nworkers }
    pool:apply(nothing) -- the function reaches Redis, a worker answers
    return fn(pool)
  end))
  stop()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

ROWS[#ROWS + 1] = {
  name = "redis_tasks", unit = "tasks/s", better = "higher",
  desc = "Pool on Redis: 100k apply_async of a tiny task, then get all; 2 `lmp worker -P 1`",
  lmp = function()
    local n = 100000
    local function run(pool)
      local t0 = now()
      local rs = {}
      for i = 1, n do rs[i] = pool:apply_async(ident, { i }) end
      local total = 0
      for i = 1, n do total = total + rs[i]:get(TIMEOUT) end
      local dt = now() - t0
      assert(total == n * (n + 1) // 2, "redis_tasks: wrong sum")
      return n / dt
    end
    local remote = cluster(2, run)
    collectgarbage()
    local here = with_pool(run) -- the same workload on a local pool of 2, beside it
    return remote, ("local_pool=%.0f tasks/s"):format(here)
  end,
  checks = { { min = 20000 } },
  target = "≥ 20k/s (published: RQ ~1k/s, Celery ~1.7k/s, Ray's Pool 1–21k/s)",
}

-- Sleep-bound tasks (10 ms) over N = 1, 2, 4, 8, 16 workers: the rate with N / (N × the rate
-- with one). The figure is the worst N's.
local function sleeper(x) mp.sleep(0.01) return x end
ROWS[#ROWS + 1] = {
  name = "redis_scale", unit = "x_linear", better = "higher",
  desc = "Pool on Redis: 10 ms sleep tasks over N = 1..16 workers, rate / (N × one worker's)",
  lmp = function()
    local base, worst, parts = nil, math.huge, {}
    for _, nw in ipairs { 1, 2, 4, 8, 16 } do
      local rate = cluster(nw, function(pool)
        local n = 40 * nw
        local t0 = now()
        local r = pool:map(sleeper, range(n), { chunksize = 1, timeout = TIMEOUT })
        local dt = now() - t0
        assert(r.n == n and r[n] == n, "redis_scale: wrong results")
        return n / dt
      end)
      base = base or rate
      local eff = rate / (nw * base)
      if nw > 1 then worst = math.min(worst, eff) end
      parts[#parts + 1] = ("N%d=%.2f"):format(nw, eff)
    end
    return worst, table.concat(parts, " ")
  end,
  checks = { { min = 0.8 } },
  target = "≥ 0.8× linear at every N",
}

-- Measuring ----------------------------------------------------------------------------------

-- Runs bench_cpython.py <row>; returns the figure and the rest of its line.
-- Each lmp repetition runs in a fresh lmp process, as each CPython one runs in a fresh python:
-- no workload pays for the heap, garbage or children another left behind.
local function run_lmp_inner(name)
  local cmd = ("timeout %d %s %s --inner %s"):format(ROW_DEADLINE, shell_quote(LMP_EXE),
    shell_quote(SCRIPT_DIR .. "/bench.lua"), shell_quote(name))
  local out, ok = run(cmd)
  local line
  for l in out:gmatch("[^\n]+") do
    if l:match("^" .. name:gsub("%p", "%%%0") .. "%s") then line = l end
  end
  if not ok or not line then error(("lmp %s failed:\n%s"):format(name, out), 0) end
  local value, rest = line:match("^%S+%s+(%S+)%s*(.*)$")
  return assert(tonumber(value), "bad lmp line: " .. line), rest
end

local function run_cpython(row)
  local cmd = ("timeout %d %s %s %s"):format(ROW_DEADLINE, shell_quote(PYTHON),
    shell_quote(SCRIPT_DIR .. "/bench_cpython.py"), shell_quote(row))
  local out, ok = run(cmd)
  local line
  for l in out:gmatch("[^\n]+") do
    if l:match("^" .. row:gsub("%p", "%%%0") .. "%s") then line = l end
  end
  if not ok or not line then
    error(("CPython %s failed:\n%s"):format(row, out), 0)
  end
  local value, rest = line:match("^%S+%s+(%S+)%s+%S+%s*(.*)$")
  return assert(tonumber(value), "bad CPython line: " .. line), rest
end

-- The watchdog: a background shell that interrupts this process (SIGINT, which lmp turns into
-- an InterruptedError in a blocking call) and then kills it if a row runs far too long. It
-- lives while its flag file exists; watchdog_stop removes the file.
local function watchdog_start(seconds)
  local flag = os.tmpname()
  local pid = mp.getpid()
  local script = ("i=0; while [ -e %s ]; do "
    .. "if [ $i -ge %d ]; then echo 'bench: row over %d s, interrupting it' >&2; kill -INT %d; "
    .. "sleep 15; [ -e %s ] && kill -KILL %d; break; fi; sleep 1; i=$((i+1)); done")
    :format(shell_quote(flag), seconds, seconds, pid, shell_quote(flag), pid)
  os.execute(("sh -c %s </dev/null >/dev/null 2>&2 &"):format(shell_quote(script)))
  return flag
end

local function watchdog_stop(flag)
  if flag then os.remove(flag) end
end

local function better_of(row, a, b)
  if a == nil then return b end
  if b == nil then return a end
  if row.better == "lower" then return math.min(a, b) end
  return math.max(a, b)
end

local function errmsg(e)
  if type(e) == "table" and e.message then return tostring(e) end
  return tostring(e)
end

local function measure(row)
  local r = { lmp = nil, py = nil, refs = {}, errors = {} }
  for rep = 1, opts.reps do
    io.stderr:write(("  %s: repetition %d/%d\n"):format(row.name, rep, opts.reps))
    local ok, v, details = pcall(run_lmp_inner, row.name)
    if ok then
      if better_of(row, r.lmp, v) == v then r.lmp, r.lmp_details = v, details end
    else
      r.errors[#r.errors + 1] = "lmp: " .. v
      io.stderr:write(("  %s: lmp workload failed:\n%s\n"):format(row.name, v))
      break -- a broken workload is not retried (it may hang again)
    end
    if row.py then
      local pok, pv, prest = pcall(run_cpython, row.py)
      if pok then
        if better_of(row, r.py, pv) == pv then r.py, r.py_details = pv, prest end
      else
        r.errors[#r.errors + 1] = "cpython: " .. errmsg(pv)
        io.stderr:write(("  %s: %s\n"):format(row.name, errmsg(pv)))
      end
    end
    for name, fn in pairs(row.refs or {}) do
      local rok, rv = pcall(fn)
      if rok then
        r.refs[name] = math.min(r.refs[name] or rv, rv) -- references are latencies
      else
        r.errors[#r.errors + 1] = name .. ": " .. errmsg(rv)
      end
    end
  end
  return r
end

-- Reporting ----------------------------------------------------------------------------------

local function fmt_figure(v, unit)
  if v == nil then return "-" end
  local s
  if unit == "tasks/s" then
    if v >= 1e6 then s = ("%.2f M "):format(v / 1e6)
    elseif v >= 1e3 then s = ("%.1f k "):format(v / 1e3)
    else s = ("%.0f "):format(v) end
    return s .. "tasks/s"
  elseif unit == "us/rt" then
    return ("%.1f µs"):format(v)
  elseif unit == "ms" then
    return ("%.2f ms"):format(v)
  elseif unit == "MiB" then
    return ("%.2f MiB"):format(v)
  elseif unit == "x" then
    return ("%.2f× serial"):format(v)
  end
  return ("%.3g %s"):format(v, unit)
end

-- Evaluates a row's checks: ratio strings and overall verdict.
local function evaluate(row, r)
  local ratios, verdict = {}, "PASS"
  if r.lmp == nil then return { "-" }, "ERROR" end
  for _, c in ipairs(row.checks) do
    local value, label
    if c.vs == "cpython" then
      value, label = r.py and r.lmp / r.py, "CPython"
    elseif c.vs then
      value, label = r.refs[c.vs] and r.lmp / r.refs[c.vs], (row.ref_labels or {})[c.vs] or c.vs
    else
      value = r.lmp
    end
    if c.vs then
      ratios[#ratios + 1] = value and ("%.2f× %s"):format(value, label) or ("? × " .. label)
    end
    if value == nil then
      if verdict == "PASS" then verdict = "N/A" end
    elseif (c.min and value < c.min) or (c.max and value > c.max) then
      verdict = "MISS"
    end
  end
  -- checks of figures in the details ("key=value"): a peak, a size kept
  for _, c in ipairs(row.detail_checks or {}) do
    local function detail(text)
      return tonumber(((text or ""):match(c.key:gsub("%p", "%%%0") .. "=([%d.eE+-]+)")))
    end
    local mine, value = detail(r.lmp_details), nil
    if c.vs == "cpython" then
      local theirs = detail(r.py_details)
      value = mine and theirs and theirs > 0 and mine / theirs
      ratios[#ratios + 1] = value and ("%s %.2f× CPython's"):format(c.label, value)
        or ("%s ? × CPython's"):format(c.label)
    else
      value = mine
      ratios[#ratios + 1] = mine and ("%s %.3g"):format(c.label, mine) or (c.label .. " ?")
    end
    if value == nil then
      if verdict == "PASS" then verdict = "N/A" end
    elseif (c.min and value < c.min) or (c.max and value > c.max) then
      verdict = "MISS"
    end
  end
  if row.speedup and r.py then
    ratios[#ratios + 1] = ("%.2f× serial (CPython %.2f×)"):format(r.lmp, r.py)
  end
  if #ratios == 0 then ratios[1] = "-" end
  return ratios, verdict
end

local function utf8_width(s) return utf8.len(s) or #s end
local function pad(s, w)
  return s .. (" "):rep(math.max(0, w - utf8_width(s)))
end

local function print_table(results)
  local header = { "row", "CPython", "lmp", "ratio", "target", "result" }
  local lines = {}
  for _, e in ipairs(results) do
    local ratios, verdict = evaluate(e.row, e.r)
    lines[#lines + 1] = { e.row.name, fmt_figure(e.r.py, e.row.unit), fmt_figure(e.r.lmp, e.row.unit),
      table.concat(ratios, ", "), e.row.target, verdict }
    e.verdict = verdict
  end
  local widths = {}
  for i, h in ipairs(header) do widths[i] = utf8_width(h) end
  for _, l in ipairs(lines) do
    for i, c in ipairs(l) do widths[i] = math.max(widths[i], utf8_width(c)) end
  end
  local function emit(cells)
    local out = {}
    for i, c in ipairs(cells) do out[i] = pad(c, widths[i]) end
    print("| " .. table.concat(out, " | ") .. " |")
  end
  emit(header)
  local sep = {}
  for i, w in ipairs(widths) do sep[i] = ("-"):rep(w) end
  print("|-" .. table.concat(sep, "-|-") .. "-|")
  for _, l in ipairs(lines) do emit(l) end
end

local function machine_info()
  local nproc = first_line("nproc")
  local cpu = ""
  local f = io.open("/proc/cpuinfo", "r")
  if f then
    for line in f:lines() do
      local m = line:match("^model name%s*:%s*(.*)$")
      if m then cpu = m break end
    end
    f:close()
  end
  local py = first_line(shell_quote(PYTHON) .. " --version")
  print(("lmp benchmark — %s"):format(os.date("!%Y-%m-%d %H:%M UTC")))
  print(("machine: %s cores (nproc), %s, %s"):format(nproc, cpu ~= "" and cpu or "unknown CPU",
    first_line("uname -sr")))
  print(("lmp %s on %s; CPython: %s; %d workers each, CPython start method fork; best of %d")
    :format(tostring(mp.version), _VERSION, py, WORKERS, opts.reps))
end

-- Main ---------------------------------------------------------------------------------------

if opts.inner then
  for _, row in ipairs(ROWS) do
    if row.name == opts.inner then
      local ok, v, details = xpcall(row.lmp, function(e) return debug.traceback(errmsg(e), 2) end)
      if not ok then
        io.stderr:write(v, "\n")
        os.exit(1)
      end
      print(("%s %.17g %s"):format(row.name, v, details or ""))
      os.exit(0)
    end
  end
  io.stderr:write("bench: unknown row " .. tostring(opts.inner) .. "\n")
  os.exit(2)
end

if opts.list then
  for _, row in ipairs(ROWS) do print(("%-16s %s"):format(row.name, row.desc or "")) end
  os.exit(0)
end

local selected = {}
for _, row in ipairs(ROWS) do
  if not opts.only or opts.only[row.name] then selected[#selected + 1] = row end
end
if opts.only then
  for name in pairs(opts.only) do
    local known = false
    for _, row in ipairs(ROWS) do known = known or row.name == name end
    if not known then
      io.stderr:write("bench: unknown row " .. name .. " (--list shows them)\n")
      os.exit(2)
    end
  end
end

machine_info()
io.stdout:flush()

local results, failed = {}, false
for _, row in ipairs(selected) do
  local dog = watchdog_start(ROW_DEADLINE)
  local ok, r = pcall(measure, row)
  watchdog_stop(dog)
  if not ok then r = { refs = {}, errors = { errmsg(r) } } end
  if #r.errors > 0 then failed = true end
  results[#results + 1] = { row = row, r = r }
end

print()
print_table(results)
print()
for _, e in ipairs(results) do
  local r = e.r
  local notes = {}
  if r.lmp_details and r.lmp_details ~= "" then notes[#notes + 1] = "lmp " .. r.lmp_details end
  if r.py_details and r.py_details ~= "" then notes[#notes + 1] = "CPython " .. r.py_details end
  for name, v in pairs(r.refs) do
    notes[#notes + 1] = ("%s %.1f µs"):format((e.row.ref_labels or {})[name] or name, v)
  end
  if #notes > 0 then print(("%s: %s"):format(e.row.name, table.concat(notes, "; "))) end
  for _, err in ipairs(r.errors) do
    print(("%s: ERROR %s"):format(e.row.name, (err:gsub("\n", "\n    "))))
  end
end
io.stdout:flush()
os.exit(failed and 1 or 0)
