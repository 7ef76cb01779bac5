-- seed_manager_pool_producer_consumer.lua — the seeds' producer and consumer in Pool(2), over a
-- bounded Manager().Queue(10) as the seed has it, then over a plain mp.Queue(10): the seed warns
-- that Python's multiprocessing.Queue cannot be used with a pool; lmp's Queue can.
local mp = require "lmp"

local function producer(queue)
  queue:put("a")
  mp.sleep(0.5)
end

local function consumer(queue)
  mp.sleep(0.5)
  print(queue:get())
end

local function run(queue)
  local pool = mp.Pool(2)
  pool:apply_async(producer, { queue })
  pool:apply_async(consumer, { queue })
  pool:close()
  pool:join()
end

local manager = mp.Manager()
print("Manager():Queue(10) in Pool(2):")
run(manager:Queue(10))
manager:shutdown()

print("mp.Queue(10) in Pool(2):")
run(mp.Queue(10))
