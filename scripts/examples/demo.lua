-- demo.lua — what `make run` shows: the same CPU-bound job (counting the primes below a limit,
-- range by range) done serially, then on every core with mp.Pool, and the speed-up; then a
-- short look at apply_async with a callback and imap_unordered.
-- usage: lmp scripts/examples/demo.lua [limit]
local mp = require "lmp"

local LIMIT = tonumber(arg and arg[1]) or 3000000
local PIECES = 48 -- ranges the job is cut into (several per worker, so they balance)

-- Counts the primes in [lo, hi] by trial division: pure integer work, no allocation.
local function count_primes(range)
  local lo, hi = range[1], range[2]
  local count = 0
  for n = math.max(lo, 2), hi do
    if n < 4 then
      count = count + 1
    elseif n % 2 ~= 0 then
      local prime, d = true, 3
      while d * d <= n do
        if n % d == 0 then prime = false break end
        d = d + 2
      end
      if prime then count = count + 1 end
    end
  end
  return count
end

local ranges = {}
local step = LIMIT // PIECES + 1
for lo = 1, LIMIT, step do ranges[#ranges + 1] = { lo, math.min(lo + step - 1, LIMIT) } end

local function sum(t)
  local s = 0
  for i = 1, #t do s = s + t[i] end
  return s
end

print(("lmp %s: counting the primes below %d in %d ranges"):format(mp.version, LIMIT, #ranges))

-- Serial: one process, one range after the other.
local t0 = mp.monotonic()
local serial_counts = {}
for i, r in ipairs(ranges) do serial_counts[i] = count_primes(r) end
local serial = mp.monotonic() - t0
print(("  serial:         %d primes in %.2f s"):format(sum(serial_counts), serial))

-- Parallel: the same function, shipped by value to mp.cpu_count() workers.
local pool <close> = mp.Pool()
t0 = mp.monotonic()
local counts = pool:map(count_primes, ranges)
local parallel = mp.monotonic() - t0
print(("  Pool(%d) map:    %d primes in %.2f s"):format(pool.processes, sum(counts), parallel))
assert(sum(counts) == sum(serial_counts), "the parallel count differs from the serial one")
print(("  speed-up:       %.2fx on %d workers"):format(serial / parallel, pool.processes))

-- apply_async: submit, go on, and let a callback collect the result.
print("\napply_async with a callback:")
local who = {}
local results = {}
for i = 1, 4 do
  results[i] = pool:apply_async(function(n)
    return n, mp.current_process().name, count_primes({ 1, n * 100000 })
  end, { i }, function(n, name, c) who[#who + 1] = ("%d:%s"):format(n, name) end)
end
for i = 1, 4 do
  local n, name, c = results[i]:get()
  print(("  primes below %7d: %6d  (computed by %s)"):format(n * 100000, c, name))
end
print("  callbacks ran for " .. #who .. " results")

-- imap_unordered: results as they complete; i is the position in the input.
print("\nimap_unordered (each task sleeps a different time, so they finish out of order):")
local delays = { 0.4, 0.1, 0.3, 0.2 }
for i, d in pool:imap_unordered(function(d) mp.sleep(d) return d end, delays) do
  print(("  input #%d finished (slept %.1f s)"):format(i, d))
end

pool:close()
pool:join()
print("\ndone")
