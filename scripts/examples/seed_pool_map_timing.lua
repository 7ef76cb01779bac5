-- seed_pool_map_timing.lua — Pool.map over 5 tasks of 1 s each with pools of 4, 5 and 10
-- processes: 4 workers need two rounds (about 2 s), 5 or more finish in one (about 1 s).
local mp = require "lmp"

local function task(n)
  mp.sleep(1)
  return n * 2
end

local function main(x)
  local a = mp.time()
  local pool <close> = mp.Pool(x) -- the default size is mp.cpu_count()
  -- with 4 workers and 5 tasks, the fifth waits until a worker is free
  pool:map(task, { 0, 1, 2, 3, 4 })
  print(("Pool 池指定数量:%d, 用时%s"):format(x, mp.time() - a))
end

main(4)
main(5)
main(10)
