-- lmp — a process-parallel runtime for Lua 5.4: the public facade (`local mp = require "lmp"`).
-- Mechanism lives in C (lmp.core); the Python-style classes are composed here and in the
-- lmp.* modules this file gathers.
local core = require "lmp.core"
local errors = require "lmp.errors"
local process = require "lmp.process"
local pool = require "lmp.pool"

local mp = {}

mp.version = core.version
mp.core = core

-- Errors -----------------------------------------------------------------------------------
mp.Error = errors.Error
mp.iserror = errors.iserror

-- Codec ------------------------------------------------------------------------------------
function mp.encode(v, ...)
  if select("#", ...) > 0 then errors.check_nargs(1 + select("#", ...), 1, "encode") end
  return core.encode(v)
end
function mp.decode(s, ...)
  if select("#", ...) > 0 then errors.check_nargs(1 + select("#", ...), 1, "decode") end
  if type(s) ~= "string" then errors.typeerror("decode", "the message", "a string", s) end
  return core.decode(s)
end

-- Processes --------------------------------------------------------------------------------
mp.Process = process.Process
mp.active_children = process.active_children
mp.current_process = process.current_process
mp.parent_process = process.parent_process
mp.cpu_count = core.cpu_count
mp.getpid = core.getpid
mp.getppid = core.getppid

-- Time -------------------------------------------------------------------------------------
mp.time = core.time
mp.monotonic = core.monotonic

--- Sleeps for seconds (fractional). In the parent the event loop runs meanwhile, so results,
--- callbacks and child exits are handled; Ctrl-C raises InterruptedError.
function mp.sleep(seconds, ...)
  errors.check_nargs(1 + select("#", ...), 1, "sleep")
  if type(seconds) ~= "number" then errors.typeerror("sleep", "seconds", "a number", seconds) end
  if seconds ~= seconds or seconds < 0 then
    errors.argerror("sleep", 1, "non-negative number expected, got " ..
      (seconds ~= seconds and "NaN" or tostring(seconds)))
  end
  core.sleep(seconds)
end

-- Pool ---------------------------------------------------------------------------------------
mp.Pool = pool.Pool
mp.constant = core.constant -- a table lmp may send once and reuse (docs/api/pool.md)
mp.AsyncResult = pool.AsyncResult
for k, v in pairs(require "lmp.shared") do mp[k] = v end
-- mp.Manager(...), mp.Manager.connect(...): lmp.manager is loaded on first use
mp.Manager = setmetatable({}, {
  __call = function(_, ...) return require("lmp.manager").Manager(...) end,
  __index = function(_, k) return require("lmp.manager").Manager[k] end,
})

-- The event loop, for hosts ------------------------------------------------------------------

--- Processes ready events and runs pending callbacks without blocking, or waits up to
--- timeout seconds for something to happen. Returns how many callbacks ran.
function mp.poll(timeout, ...)
  errors.check_nargs(1 + select("#", ...), 1, "poll")
  timeout = timeout == nil and 0 or errors.timeout(timeout, "poll")
  local before = core.callbacks_run()
  core.run_once(timeout)
  return core.callbacks_run() - before
end

-- Start methods ------------------------------------------------------------------------------
mp.set_start_method = core.set_start_method -- a spawned child reports "spawn" too
mp.get_start_method = core.get_start_method

return mp
