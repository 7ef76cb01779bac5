-- lmp/shared.lua — the shared-memory objects (Lock family, Event, Condition, Barrier, Value,
-- Array, Queue family, Pipe) built by lmp.core, plus mp.wait over Pipe ends, Queues and
-- Processes. init.lua copies every field of this table into mp.
local core = require "lmp.core"

local M = {}

for _, name in ipairs { "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition",
  "Barrier", "Value", "Array", "RawValue", "RawArray", "Queue", "SimpleQueue", "JoinableQueue",
  "Pipe" } do
  M[name] = core[name]
end

-- Readiness of one object for mp.wait: data to read (Pipe end, Queue) or exited (Process).
local function is_ready(o)
  local ok, ready = pcall(function() return o._ready end)
  if ok and type(ready) == "function" then return o:_ready() end
  local alive = type(o) == "table" and o.is_alive
  if type(alive) == "function" then return not o:is_alive() end
  error("mp.wait: cannot wait on a " .. (type(o) == "userdata" and
    (getmetatable(o) or {}).__name or type(o)), 3)
end

--- mp.wait(objects [, timeout]): the subset of objects (Pipe ends, Queues, Processes) that are
--- ready, waiting until at least one is or the timeout passes (then the result is empty).
function M.wait(objects, timeout)
  if type(objects) ~= "table" then
    error("bad argument #1 to 'wait' (table expected, got " .. type(objects) .. ")", 2)
  end
  if timeout ~= nil and type(timeout) ~= "number" then
    error("bad argument #2 to 'wait' (number expected, got " .. type(timeout) .. ")", 2)
  end
  local deadline = timeout and core.monotonic() + timeout
  local fds, only_fds = {}, true
  for _, o in ipairs(objects) do
    local ok, f = pcall(function() return o._fileno end)
    if ok and type(f) == "function" then fds[#fds + 1] = o:_fileno() else only_fds = false end
  end
  while true do
    local ready = {}
    for _, o in ipairs(objects) do
      if is_ready(o) then ready[#ready + 1] = o end
    end
    if #ready > 0 then return ready end
    local slice = only_fds and 0.1 or 0.005
    if deadline then
      local left = deadline - core.monotonic()
      if left <= 0 then return ready end
      if left < slice then slice = left end
    end
    core._wait_fds(fds, slice)
  end
end

return M
