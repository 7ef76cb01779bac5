-- spec/shm_helper.lua — setup/teardown for the shared-memory specs: the generic checks of
-- helper.lua (no child, no fd left behind) with garbage collected first, so queues' own
-- arenas (closed with their last handle) are counted consistently.
local mp = require "lmp"
local H = require "helper"

local S = {}

-- The first small arena is created once per process and kept (objects are carved from it).
S.warm = mp.Lock()
-- and the first Process start sets up the event loop's descriptors once
do
  local p = mp.Process(function() end)
  p:start()
  p:join(10)
  mp.sleep(0.01)
  mp.Event():wait(0.01)
  collectgarbage(); collectgarbage()
end

local function listing()
  local t = {}
  local dir = "/proc/" .. mp.getpid() .. "/fd/"
  local p = io.popen("ls " .. dir)
  for name in p:lines() do
    local l = io.popen("readlink " .. dir .. name)
    t[name] = l:read("l")
    l:close()
  end
  p:close()
  return t
end
local before

function S.setup()
  collectgarbage(); collectgarbage()
  if os.getenv("SHM_DEBUG") then before = listing() end
  H.setup()
end

function S.teardown()
  collectgarbage(); collectgarbage()
  if os.getenv("SHM_DEBUG") then
    local now = listing()
    for k, v in pairs(now) do if before[k] ~= v then print("new fd", k, v) end end
    for k, v in pairs(before) do if now[k] ~= v then print("gone fd", k, v) end end
  end
  H.teardown()
end

--- Starts a Process running f(...) and returns it.
function S.spawn(f, ...)
  local p = mp.Process(f, table.pack(...))
  p:start()
  return p
end

--- Joins every process, asserting exit code 0.
function S.join_all(ps, timeout)
  for _, p in ipairs(ps) do
    local code = p:join(timeout or 20)
    assert(code == 0, ("process %s exited with %s"):format(p.pid, tostring(code)))
  end
end

return S
