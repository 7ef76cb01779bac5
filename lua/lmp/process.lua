-- lmp.process — mp.Process and the process-identity functions, over lmp.core's fork/join.
-- A child runs the target in a fresh Lua state; the target and its arguments travel by the
-- codec, so closures, upvalues and globals they read go with them.
local core = require "lmp.core"
local errors = require "lmp.errors"

local M = {}

local Process = {}
Process.__name = "lmp.Process"

-- Identity of this process: the main process, or a child started by lmp.
local identity = { name = "MainProcess", daemon = false }
local parent_identity = nil
local counter = 0         -- children started by this process, for their names
local live = {}           -- started, not yet seen exited: Process -> true

local INTERNAL = { _started = true, _closed = true, _exitcode = true, _target = true,
                   _args = true }

local function check_open(p, what)
  if rawget(p, "_closed") then errors.raise("ValueError", "process object is closed (" .. what .. ")") end
end

-- The exit code, reaping the child when it has exited; nil while it runs.
local function exitcode(p)
  local code = rawget(p, "_exitcode")
  if code ~= nil or not rawget(p, "_started") then return code end
  code = core.status(p.pid)
  if code ~= nil then
    rawset(p, "_exitcode", code)
    live[p] = nil
  end
  return code
end

function Process.__index(p, k)
  if k == "exitcode" then return exitcode(p) end
  if k == "ident" then return rawget(p, "pid") end
  return Process[k]
end

function Process.__tostring(p)
  local state = not rawget(p, "_started") and "initial"
    or (exitcode(p) == nil and "started" or ("stopped exitcode=" .. tostring(exitcode(p))))
  return ("<Process name=%q pid=%s %s%s>"):format(p.name, tostring(p.pid), state,
    p.daemon and " daemon" or "")
end

local function pack_args(args, fname)
  if args == nil then return { n = 0 } end
  if type(args) ~= "table" then
    errors.argerror(fname, 2, "args must be a table, got " .. type(args))
  end
  local n = args.n
  if math.type(n) ~= "integer" then n = #args end
  local t = { n = n }
  for i = 1, n do t[i] = args[i] end
  return t
end

--- mp.Process{target=f, args={...}, name=, daemon=} | mp.Process(f [, args]) |
--- mp.Process{run=function(self) ... end, <user fields>}
function M.Process(spec, args)
  local p = {}
  if type(spec) == "function" then
    p._target, p._args = spec, pack_args(args, "Process")
  elseif type(spec) == "table" then
    for k, v in pairs(spec) do
      if k ~= "target" and k ~= "args" then p[k] = v end
    end
    if spec.target ~= nil and type(spec.target) ~= "function" then
      errors.argerror("Process", 1, "target must be a function, got " .. type(spec.target))
    end
    if spec.target == nil and type(spec.run) ~= "function" then
      errors.argerror("Process", 1, "a target or a run function is required")
    end
    p._target, p._args = spec.target, pack_args(spec.args, "Process")
  else
    errors.argerror("Process", 1, "a function or a table expected, got " .. type(spec))
  end
  if p.name ~= nil and type(p.name) ~= "string" then
    errors.argerror("Process", 1, "name must be a string")
  end
  if p.name == nil then
    counter = counter + 1
    p.name = (identity.name == "MainProcess" and "Process-" or identity.name .. ":") .. counter
  end
  p.daemon = not not p.daemon
  return setmetatable(p, Process)
end

-- The user fields a run(self) method sees in the child.
local function self_fields(p)
  local t = {}
  for k, v in pairs(p) do
    if not INTERNAL[k] then t[k] = v end
  end
  return t
end

function Process:start()
  check_open(self, "start")
  if rawget(self, "_started") then errors.raise("ValueError", "cannot start a process twice") end
  if identity.daemon then
    errors.raise("ValueError", "daemonic processes are not allowed to have children")
  end
  local job = { name = self.name, daemon = self.daemon, parent = identity.name }
  if self._target then
    job.fn, job.args = self._target, self._args
  else
    job.fn, job.self = self.run, self_fields(self)
  end
  local ok, payload = pcall(core.encode, job, "process")
  if not ok then -- name the path from the user's point of view: args[2].conf.cb
    if errors.iserror(payload, "SerializationError") then
      payload.message = tostring(payload.message):gsub("^process%.", "", 1)
      payload.message = payload.message:gsub("^fn%.", self._target and "target." or "run.", 1)
    end
    error(payload, 2)
  end
  local pid, err = core.fork(payload, "process", self.daemon)
  if not pid then errors.raise("ProcessError", err) end
  rawset(self, "pid", pid)
  rawset(self, "_started", true)
  live[self] = true
  return self
end

function Process:join(timeout)
  check_open(self, "join")
  if not rawget(self, "_started") then errors.raise("ValueError", "can only join a started process") end
  if timeout ~= nil and type(timeout) ~= "number" then
    errors.argerror("join", 1, "timeout must be a number or nil")
  end
  local code = exitcode(self)
  if code ~= nil then return code end
  code = core.join(self.pid, timeout)
  if code ~= nil then
    rawset(self, "_exitcode", code)
    live[self] = nil
  end
  return code
end

function Process:is_alive()
  check_open(self, "is_alive")
  return rawget(self, "_started") == true and exitcode(self) == nil
end

local function send_signal(p, sig)
  check_open(p, "signal")
  if rawget(p, "_started") and exitcode(p) == nil then core.signal(p.pid, sig) end
end

function Process:terminate() send_signal(self, core.signals.SIGTERM) end
function Process:kill() send_signal(self, core.signals.SIGKILL) end

function Process:close()
  if rawget(self, "_closed") then return end
  if rawget(self, "_started") then
    if exitcode(self) == nil then
      errors.raise("ValueError", "cannot close a process while it is still running; join or terminate it first")
    end
    core.forget(self.pid)
  end
  rawset(self, "_closed", true)
  live[self] = nil
end

Process.__close = function(p) if rawget(p, "_started") and not rawget(p, "_closed") then p:join() end end

--- The processes started here that are still running (finished ones are reaped).
function M.active_children()
  local list = {}
  for p in pairs(live) do
    if exitcode(p) == nil then list[#list + 1] = p end
  end
  table.sort(list, function(a, b) return a.pid < b.pid end)
  return list
end

local function info_is_alive(self)
  if self.pid == core.getpid() then return true end
  return core.pid_alive(self.pid)
end

function M.current_process()
  return { name = identity.name, pid = core.getpid(), daemon = identity.daemon,
           is_alive = info_is_alive }
end

function M.parent_process()
  if not parent_identity then return nil end
  return { name = parent_identity.name, pid = parent_identity.pid, is_alive = info_is_alive }
end

M.ProcessClass = Process

-- Child side -------------------------------------------------------------------------------

local function report(name, err)
  local msg
  if type(err) == "string" then
    msg = err
  else
    local ok, s = pcall(tostring, err)
    msg = ok and s or ("(error object is a " .. type(err) .. " value)")
  end
  io.stderr:write(("Process %s:\n%s\n"):format(name, msg))
  io.stderr:flush()
end

local function traceback(err)
  if type(err) == "string" then return debug.traceback(err, 2) end
  if errors.iserror(err) then
    return debug.traceback(tostring(err), 2)
  end
  local ok, s = pcall(tostring, err)
  return debug.traceback(ok and s or "(error object)", 2)
end

--- Called by the C child (mode "process") in the fresh state: runs the job, returns the
--- exit code.
function M._bootstrap(payload, mode)
  if mode ~= "process" then
    local handler = require("lmp." .. mode)._bootstrap
    return handler(payload, mode)
  end
  local ok, job = pcall(core.decode, payload)
  if not ok then
    report("(unknown)", job)
    return 1
  end
  identity = { name = job.name, daemon = job.daemon }
  parent_identity = { name = job.parent, pid = core.getppid() }
  counter = 0
  local res
  if job.self then
    setmetatable(job.self, { __index = function(_, k)
      if k == "pid" then return core.getpid() end
    end })
    ok, res = xpcall(job.fn, traceback, job.self)
  else
    ok, res = xpcall(job.fn, traceback, table.unpack(job.args, 1, job.args.n))
  end
  io.stdout:flush()
  if not ok then
    report(job.name, res)
    return 1
  end
  return 0
end

--- For other child kinds (pool workers) to set this process's identity.
function M._set_identity(name, daemon, parent_name)
  identity = { name = name, daemon = daemon }
  parent_identity = { name = parent_name or "MainProcess", pid = core.getppid() }
  counter = 0
end

return M
