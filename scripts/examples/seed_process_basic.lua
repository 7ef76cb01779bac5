-- seed_process_basic.lua — two processes running one target with different arguments.
-- The parent does not join them explicitly: at exit lmp waits for non-daemon children.
local mp = require "lmp"

local function example(name)
  print(("l am a %s"):format(name))
  mp.sleep(2)
  print("end")
end

print("mainProcess")
local process1 = mp.Process{ target = example, args = { "snake" } }
local process2 = mp.Process{ target = example, args = { "tom" } }
-- process1.daemon = true would make the child die with the parent instead
process1:start()
process2:start()
