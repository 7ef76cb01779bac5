-- seed_manager_dict.lua — the seeds' Manager dict: two processes each add a key to a dict that
-- lives in a manager's server process, and the parent prints it.
local mp = require "lmp"

local function add_data(p_dict, key, value)
  p_dict[key] = value
end

-- The manager supports many types (dict, list, Namespace, Queue, Lock...): see docs/api/manager.md.
local progress_dict = mp.Manager():dict()

local first_progress = mp.Process { target = add_data, args = { progress_dict, "a", 22 } }
local second_progress = mp.Process { target = add_data, args = { progress_dict, "b", 23 } }

first_progress:start()
second_progress:start()
first_progress:join()
second_progress:join()

print(progress_dict) -- {a = 22, b = 23}: keys in the order the processes added them
