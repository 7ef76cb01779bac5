-- seed_pool_long_time_task.lua — five tasks of random length on a pool of 4: tasks 0-3 start
-- at once, task 4 waits for the first worker that becomes free.
local mp = require "lmp"

local function long_time_task(name)
  print(("Run task %s (%s)..."):format(name, mp.getpid()))
  local start = mp.time()
  mp.sleep(math.random() * 3)
  local finish = mp.time()
  print(("Task %s runs %0.2f seconds."):format(name, finish - start))
end

print(("Parent process %s."):format(mp.getpid()))
local p = mp.Pool(4)
for i = 0, 4 do p:apply_async(long_time_task, { i }) end
print("Waiting for all subprocesses done...")
p:close()
p:join()
print("All subprocesses done.")
