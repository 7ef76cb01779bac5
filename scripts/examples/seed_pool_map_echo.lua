-- seed_pool_map_echo.lua — Pool.map when the results are not needed: each task sleeps 1 s
-- and runs the shell's echo. Four workers, five inputs: the fifth line comes a second later.
local mp = require "lmp"

local function task(n)
  mp.sleep(1)
  os.execute("echo " .. n)
end

local function main(x)
  local a = mp.time()
  local pool <close> = mp.Pool(x)
  pool:map(task, { "1", "2", "3", "4", "5" }) -- Python: pool.map(task, '12345')
  print(("Pool 池指定数量:%d, 用时%s"):format(x, mp.time() - a))
end

main(4)
