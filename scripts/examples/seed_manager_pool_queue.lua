-- seed_manager_pool_queue.lua — the seeds' writer and reader tasks in a Pool sharing a Manager
-- Queue: the writer puts the letters of "itcast", the reader, a second later, gets them all.
local mp = require "lmp"

local function reader(q)
  print(("reader启动(%s),父进程为(%s)"):format(mp.getpid(), mp.getppid()))
  for _ = 1, q:qsize() do
    print("reader从Queue获取到消息：" .. q:get(true))
  end
end

local function writer(q)
  print(("writer启动(%s),父进程为(%s)"):format(mp.getpid(), mp.getppid()))
  for c in ("itcast"):gmatch(".") do q:put(c) end
end

print(("(%s) start"):format(mp.getpid()))
local q = mp.Manager():Queue() -- the Queue of a Manager (lmp's mp.Queue would work too)
local po = mp.Pool()
po:apply_async(writer, { q })

mp.sleep(1) -- let the writer fill the queue before the reader starts taking from it

po:apply_async(reader, { q })
po:close()
po:join()
print(("(%s) End"):format(mp.getpid()))
