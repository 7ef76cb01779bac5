-- seed_value_array.lua — the seeds' shared-memory state with lmp: a child changes a Value and
-- an Array that live in shared memory; the parent sees the changes.
local mp = require "lmp"

local function f(n, a)
  n.value = 3.1415927
  for i = 1, #a do a[i] = -a[i] end
end

local num = mp.Value("d", 0.0)
local init = {}
for i = 0, 9 do init[#init + 1] = i end
local arr = mp.Array("i", init)

local p = mp.Process { target = f, args = { num, arr } }
p:start()
p:join()

print(num.value)                                 -- 3.1415927
print("[" .. table.concat(arr:totable(), ", ") .. "]") -- [0, -1, -2, ..., -9]
