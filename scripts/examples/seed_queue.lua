-- seed_queue.lua — the seeds' Queue examples with lmp: two siblings exchange a pid, a child
-- puts a list for the parent, and a producer/consumer pair over Queue(10).
local mp = require "lmp"

-- 1. Siblings: t1 puts its pid, t2 gets it.
local function t1(q)
  q:put(mp.getpid())
  mp.sleep(0.5)
  print(("my id is %d"):format(mp.getpid()))
end

local function t2(q)
  local s = q:get()
  mp.sleep(0.5)
  print(("my id is %d,my sibings is:%d"):format(mp.getpid(), s))
end

local q = mp.Queue()
local p1 = mp.Process { target = t1, args = { q } }
local p2 = mp.Process { target = t2, args = { q } }
p1:start(); p2:start()
p1:join(); p2:join()
p1:close(); p2:close()

-- 2. A child puts a list; the parent prints it.
local function example2(q) q:put({ 38, "snake", "hello" }) end
local q2 = mp.Queue()
local p = mp.Process { target = example2, args = { q2 } }
p:start()
local t = q2:get()
print(("[%d, %q, %q]"):format(t[1], t[2], t[3])) -- prints [38, "snake", "hello"]
p:join()

-- 3. Producer / consumer over a bounded queue.
local function producer(queue)
  queue:put("a")
  mp.sleep(0.5)
end

local function consumer(queue)
  mp.sleep(0.5)
  print(queue:get())
end

local queue = mp.Queue(10)
local my_producer = mp.Process { target = producer, args = { queue } }
local my_consumer = mp.Process { target = consumer, args = { queue } }
my_producer:start(); my_consumer:start()
my_producer:join(); my_consumer:join()
