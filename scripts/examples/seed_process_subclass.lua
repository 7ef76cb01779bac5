-- seed_process_subclass.lua — the "subclass with run()" style: a Process built from a table
-- with a run method instead of a target. `self` in the child carries the table's fields:
-- `name` (the process name, as Python's Process.name) and any field of the user's own.
local mp = require "lmp"

local function Start(name)
  return mp.Process{
    name = name,
    run = function(self)
      print(("l am a %s"):format(self.name))
      mp.sleep(2)
      print("end")
    end,
  }
end

print("mainProcess")
local process1 = Start("snake")
local process2 = Start("tom")
process1:start()
process2:start()
process1:join()
process2:join()
