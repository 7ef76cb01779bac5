-- seed_pool_map_print.lua — Pool.map with a task that only prints: each of the 4 workers
-- takes the next input as it becomes free.
local mp = require "lmp"

local function test(i)
  print(i)
end

local list1 = { 0, 1, 2, 3, 4 }
local pool1 = mp.Pool{ processes = 4 } -- a pool of 4 processes
pool1:map(test, list1)
pool1:close()
pool1:join()
