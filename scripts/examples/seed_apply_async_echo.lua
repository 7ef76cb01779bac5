-- seed_apply_async_echo.lua — fire-and-forget apply_async: nobody calls get(); close() and
-- join() wait until every submitted task has run.
local mp = require "lmp"

local function task(n)
  mp.sleep(1)
  os.execute("echo " .. n)
end

local function main(x)
  local a = mp.time()
  local pool = mp.Pool(x)
  for i = 0, 4 do pool:apply_async(task, { tostring(i) }) end
  pool:close()
  pool:join()
  print(("Pool 池指定数量:%d, 用时%s"):format(x, mp.time() - a))
end

main(4)
