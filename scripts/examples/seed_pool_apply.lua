-- seed_pool_apply.lua — apply blocks: three 1 s tasks on a pool of 3 run one after the
-- other, so the parent waits about 3 s.
local mp = require "lmp"

local function doIt(num)
  print(("Process num is : %s"):format(num))
  mp.sleep(1)
  print(("process  %s end"):format(num))
end

print("mainProcess start")
local start_time = mp.time()
local pool = mp.Pool(3)
print("Child start")
for i = 0, 2 do pool:apply(doIt, { i }) end
print(("mainProcess done time:%s s"):format(mp.time() - start_time))
pool:close()
pool:join()
