-- lmp/shared.lua — the shared-memory objects (Lock family, Event, Condition, Barrier, Value,
-- Array, Queue family, Pipe) built by lmp.core, plus mp.wait over Pipe ends, Queues and
-- Processes. init.lua copies every field of this table into mp.
local core = require "lmp.core"
local errors = require "lmp.errors"

local M = {}

for _, name in ipairs { "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition",
  "Barrier", "Value", "Array", "RawValue", "RawArray", "Queue", "SimpleQueue", "JoinableQueue",
  "Pipe" } do
  M[name] = core[name]
end

local WAITABLE = { ["lmp.Connection"] = true, ["lmp.Queue"] = true, ["lmp.SimpleQueue"] = true,
                   ["lmp.JoinableQueue"] = true }

-- How mp.wait learns that o is ready: a function of o, and o's descriptor when poll(2) can
-- wait for it. Raises a TypeError for anything else.
local function waiter(o, i)
  local mt = getmetatable(o)
  local name = type(mt) == "table" and rawget(mt, "__name")
  if WAITABLE[name] then
    return o._ready, name == "lmp.Connection" and not o:closed() and o:_fileno() or nil
  end
  if name == "lmp.Process" then
    if o.pid == nil then errors.valueerror("wait", ("objects[%d] is a process not started"):format(i), 2) end
    return function(p) return not p:is_alive() end, nil
  end
  if type(o) == "table" and type(o._ready) == "function" then
    return o._ready, type(o._fileno) == "function" and o:_fileno() or nil
  end
  errors.typeerror("wait", ("objects[%d]"):format(i), "a Pipe end, a Queue or a Process", o, 2)
end

--- mp.wait(objects [, timeout]): the subset of objects (Pipe ends, Queues, Processes) that are
--- ready, waiting until at least one is or the timeout passes (then the result is empty).
function M.wait(objects, timeout, ...)
  errors.check_nargs(select("#", ...) + 2, 2, "wait")
  if type(objects) ~= "table" then errors.typeerror("wait", "objects", "a table", objects) end
  timeout = errors.timeout(timeout, "wait", "timeout")
  local readies, fds, only_fds = {}, {}, true
  for i, o in ipairs(objects) do
    local fd
    readies[i], fd = waiter(o, i)
    if fd then fds[#fds + 1] = fd else only_fds = false end
  end
  local deadline = timeout and core.monotonic() + timeout
  while true do
    local ready = {}
    for i, o in ipairs(objects) do
      if readies[i](o) then ready[#ready + 1] = o end
    end
    if #ready > 0 or timeout == 0 then return ready end
    -- Pipe ends wake the poll; Queues and Processes are looked at again every 5 ms
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
