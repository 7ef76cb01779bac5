-- seed_process_pid.lua — a Process has no pid before start() (nil, Python's None) and
-- has one after.
local mp = require "lmp"

local function get_html(n)
  mp.sleep(n)
  print("sub_progress success")
  return n
end

local progress = mp.Process{ target = get_html, args = { 2 } }
print(progress.pid) -- not started yet: nil
progress:start()
print(progress.pid)
progress:join()
print("main progress end")
