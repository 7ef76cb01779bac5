-- seed_process_square_cube.lua — two processes with two different targets, started
-- together and joined.
local mp = require "lmp"

local function print_cube(num)
  print(("Cube: %d"):format(num * num * num))
end

local function print_square(num)
  print(("Square: %d"):format(num * num))
end

-- creating processes
local p1 = mp.Process(print_square, { 10 })
local p2 = mp.Process(print_cube, { 10 })
-- starting process 1 & 2
p1:start()
p2:start()
-- wait until process 1 & 2 are finished
p1:join()
p2:join()
-- both processes finished
print("Done!")
