-- seed_apply_async_timing.lua — the same five 1 s tasks submitted one by one with
-- apply_async, results collected with get(), then close() and join().
local mp = require "lmp"

local function task(n)
  mp.sleep(1)
  return n
end

local function main(x)
  local a = mp.time()
  local pool = mp.Pool(x)
  local ress = {}
  for i = 0, 4 do ress[#ress + 1] = pool:apply_async(task, { i }) end
  local values = {}
  for _, res in ipairs(ress) do values[#values + 1] = res:get() end
  print("[" .. table.concat(values, ", ") .. "]")
  pool:close()
  pool:join()
  print(("Pool 池指定数量:%d, 用时%s"):format(x, mp.time() - a))
end

main(4)
main(5)
main(10)
