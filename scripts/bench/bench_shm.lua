-- bench_shm.lua — shared-memory objects against the figures of DESIGN.md §7 (lmp side).
-- Prints rows "name<TAB>value<TAB>unit"; bench_shm.py runs the same workloads on CPython.
-- Usage: lmp scripts/bench/bench_shm.lua   (or lua5.4 with lmp on the package paths)
local mp = require "lmp"

local function row(name, value, unit)
  io.write(("%s\t%.6g\t%s\n"):format(name, value, unit))
  io.flush()
end

-- Queue: one producer process -> parent, N small items.
local function bench_queue(n)
  local q = mp.Queue()
  local p = mp.Process(function(q, n)
    for i = 1, n do q:put(i) end
  end, { q, n })
  local t0 = mp.monotonic()
  p:start()
  for _ = 1, n do q:get() end
  local dt = mp.monotonic() - t0
  p:join()
  row("queue_small_items", n / dt, "msgs/s")
end

-- Lock-protected shared counter, 2 processes each doing n increments.
local function bench_lock(n)
  local lock = mp.Lock()
  local v = mp.Value("q", 0, { lock = false })
  local function work(lock, v, n)
    for _ = 1, n do
      lock:acquire()
      v.value = v.value + 1
      lock:release()
    end
  end
  local t0 = mp.monotonic()
  local ps = {}
  for i = 1, 2 do
    ps[i] = mp.Process(work, { lock, v, n })
    ps[i]:start()
  end
  for i = 1, 2 do ps[i]:join() end
  local dt = mp.monotonic() - t0
  assert(v.value == 2 * n, "lost increments")
  row("lock_counter_2proc", 2 * n / dt, "ops/s")
end

-- Pipe: child sends n messages of size bytes with send_bytes; parent receives.
local function bench_pipe(name, n, size, duplex)
  local a, b = mp.Pipe(duplex)
  local p = mp.Process(function(b, n, size)
    local s = string.rep("x", size)
    for _ = 1, n do b:send_bytes(s) end
  end, { b, n, size })
  local t0 = mp.monotonic()
  p:start()
  b:close()
  for _ = 1, n do a:recv_bytes() end
  local dt = mp.monotonic() - t0
  p:join()
  a:close()
  if size >= 1 << 20 then row(name, n * size / dt / 1e9, "GB/s")
  else row(name, n / dt, "msgs/s") end
end

bench_queue(200000)
bench_lock(1000000)
bench_pipe("pipe_1MiB", 2000, 1 << 20, true)
bench_pipe("pipe_16B", 500000, 16, true)
bench_pipe("pipe_oneway_1MiB", 2000, 1 << 20, false)
bench_pipe("pipe_oneway_16B", 500000, 16, false)
