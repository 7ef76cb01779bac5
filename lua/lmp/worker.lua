-- lmp.worker — a pool worker's start: identity, the pool's initializer, then the C serving
-- loop (lmp.core.worker_serve) until the parent says quit or goes away.
local core = require "lmp.core"
local errors = require "lmp.errors"
local process = require "lmp.process"

local M = {}

--- Called by the C child (mode "worker") in its fresh state; returns the exit code.
function M._bootstrap(payload)
  local name, init = core.worker_info(payload)
  process._set_identity(name, true, "MainProcess")
  init = core.decode(init)
  if init.initializer then
    local args = init.initargs or { n = 0 }
    local ok, err = xpcall(init.initializer, errors.traceback, table.unpack(args, 1, args.n or #args))
    if not ok then
      io.stderr:write(("Process %s: the pool initializer failed:\n%s\n"):format(name, err))
      io.stderr:flush()
      return 1
    end
  end
  core.worker_serve(payload)
  io.stdout:flush()
  return 0
end

return M
