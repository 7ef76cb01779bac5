-- seed_pool_apply_async.lua — apply_async does not block: the parent is done submitting at
-- once, and the three 1 s tasks run side by side until close() and join().
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
for i = 0, 2 do pool:apply_async(doIt, { i }) end
print(("mainProcess done time:%s s"):format(mp.time() - start_time))
pool:close()
pool:join()
