-- seed_with_pool_map.lua — Python's `with Pool(5) as p:` is a to-be-closed variable in Lua:
-- the pool is terminated when the block ends.
local mp = require "lmp"

local function start(x)
  return x * x * x
end

do
  local p <close> = mp.Pool(5) -- a pool of 5 processes
  local cubes = p:map(start, { 0, 1, 2, 3 })
  print("[" .. table.concat(cubes, ", ") .. "]")
end
