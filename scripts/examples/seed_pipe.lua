-- seed_pipe.lua — the seeds' Pipe examples with lmp: a child sends an object to the parent,
-- then a producer process talks to a consumer process over the two ends of one Pipe.
local mp = require "lmp"

-- 1. Exchanging an object through a pipe.
local function customers(c)
  c:send("l am a snake")
  c:close()
end

local producer_end, customer_end = mp.Pipe()
local process = mp.Process { target = customers, args = { customer_end } }
process:start()
print(producer_end:recv())
process:join()

-- 2. Two processes, one at each end (a pipe connects exactly two parties).
local function producer(pipe) pipe:send("a") end
local function consumer(pipe) print(pipe:recv()) end

local receive_pipe, send_pipe = mp.Pipe()
local my_producer = mp.Process { target = producer, args = { send_pipe } }
local my_consumer = mp.Process { target = consumer, args = { receive_pipe } }
my_producer:start(); my_consumer:start()
my_producer:join(); my_consumer:join()
