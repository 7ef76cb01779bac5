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
local stderr = io.stderr  -- kept: a target may replace io.stderr before its error is reported

local INTERNAL = { _started = true, _closed = true, _exitcode = true, _target = true,
                   _args = true }
local TARGET_OPTIONS = { target = true, args = true, name = true, daemon = true }

-- Raises a TypeError unless p is a Process (p.start() instead of p:start()).
local function check(p, fname)
  if getmetatable(p) ~= Process then
    errors.typeerror("Process:" .. fname, "self", "an lmp.Process (call it as p:" .. fname .. "())",
      p, 1)
  end
end

local function check_open(p, fname)
  check(p, fname)
  if rawget(p, "_closed") then errors.valueerror("Process:" .. fname, "process object is closed", 1) end
end

-- The exit code, taking it from the children table once the child has exited (the table then
-- forgets the child: the code lives here); nil while it runs.
local function exitcode(p)
  local code = rawget(p, "_exitcode")
  if code ~= nil or not rawget(p, "_started") then return code end
  code = core.status(rawget(p, "pid"))
  if code ~= nil then
    rawset(p, "_exitcode", code)
    live[p] = nil
  end
  return code
end

-- Takes the exit codes of the children that have ended (as CPython does on every start), so
-- that unjoined children do not pile up in the children table.
local function sweep()
  for p in pairs(live) do exitcode(p) end
end

Process.__methods = Process -- what REPL completion offers (it never calls __index)

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

local function pack_args(args)
  if args == nil then return { n = 0 } end
  if type(args) ~= "table" then errors.typeerror("Process", "args", "a table", args, 1) end
  local n = errors.sequence(args, "Process", "args", nil, 1)
  local t = { n = n }
  for i = 1, n do t[i] = args[i] end
  return t
end

-- The table form: {target=f, args=, name=, daemon=} (no other key), or {run=f, <user fields>}.
local function from_table(spec, p)
  if spec.target ~= nil then
    if type(spec.target) ~= "function" then
      errors.typeerror("Process", "target", "a function", spec.target, 1)
    end
    errors.check_options(spec, "Process", TARGET_OPTIONS, 1)
    p._target, p._args = spec.target, pack_args(spec.args)
    p.name, p.daemon = spec.name, spec.daemon
    return
  end
  if spec.run == nil then
    errors.check_options(spec, "Process", TARGET_OPTIONS, 1) -- a misspelt key is named first
    errors.valueerror("Process", "a target or a run function is required", 1)
  end
  if type(spec.run) ~= "function" then errors.typeerror("Process", "run", "a function", spec.run, 1) end
  for k, v in pairs(spec) do p[k] = v end
end

--- mp.Process{target=f, args={...}, name=, daemon=} | mp.Process(f [, args]) |
--- mp.Process{run=function(self) ... end, <user fields>}
function M.Process(...)
  local spec, args = ...
  local p = {}
  if type(spec) == "function" then
    errors.check_nargs(select("#", ...), 2, "Process")
    p._target, p._args = spec, pack_args(args)
  elseif type(spec) == "table" then
    errors.check_nargs(select("#", ...), 1, "Process")
    from_table(spec, p)
  else
    errors.typeerror("Process", "argument #1", "a function or a table", spec)
  end
  if p.name ~= nil and type(p.name) ~= "string" then
    errors.typeerror("Process", "name", "a string", p.name)
  end
  if p.daemon ~= nil and type(p.daemon) ~= "boolean" then
    errors.typeerror("Process", "daemon", "a boolean", p.daemon)
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

-- The payload of the child: the job, encoded; a SerializationError names the path from the
-- user's point of view (args[2].conf.cb, target.upvalue(x)...).
local function encode_job(p)
  local job = { name = p.name, daemon = p.daemon, parent = identity.name }
  if rawget(p, "_target") then
    job.fn, job.args = p._target, p._args
  else
    job.fn, job.self = p.run, self_fields(p)
  end
  local ok, payload = pcall(core.encode, job, "process")
  if not ok then
    if errors.iserror(payload, "SerializationError") then
      payload.message = tostring(payload.message):gsub("^process%.", "", 1)
      payload.message = payload.message:gsub("^fn%.", p._target and "target." or "run.", 1)
    end
    error(payload, 3)
  end
  return payload
end

function Process:start(...)
  check_open(self, "start")
  errors.check_nargs(select("#", ...), 0, "Process:start")
  if rawget(self, "_started") then errors.valueerror("Process:start", "cannot start a process twice") end
  if identity.daemon then
    errors.valueerror("Process:start", "daemonic processes are not allowed to have children")
  end
  if type(self.name) ~= "string" then errors.typeerror("Process:start", "name", "a string", self.name) end
  sweep()
  local payload = encode_job(self)
  local pid, err = core.fork(payload, "process", self.daemon)
  if not pid then errors.raise("ProcessError", err) end
  rawset(self, "pid", pid)
  rawset(self, "_started", true)
  -- the child has its own copy: the parent keeps no reference to the target and its arguments
  rawset(self, "_target", nil)
  rawset(self, "_args", nil)
  live[self] = true
  return self
end

function Process:join(timeout, ...)
  check_open(self, "join")
  errors.check_nargs(select("#", ...) + 1, 1, "Process:join")
  timeout = errors.timeout(timeout, "Process:join", "timeout")
  if not rawget(self, "_started") then errors.valueerror("Process:join", "can only join a started process") end
  local code = exitcode(self)
  if code ~= nil then return code end
  code = core.join(rawget(self, "pid"), timeout)
  if code ~= nil then
    rawset(self, "_exitcode", code)
    live[self] = nil
  end
  return code
end

function Process:is_alive(...)
  check_open(self, "is_alive")
  errors.check_nargs(select("#", ...), 0, "Process:is_alive")
  return rawget(self, "_started") == true and exitcode(self) == nil
end

local function send_signal(p, sig, fname)
  check_open(p, fname)
  if rawget(p, "_started") and exitcode(p) == nil then core.signal(rawget(p, "pid"), sig) end
end

function Process:terminate(...)
  errors.check_nargs(select("#", ...), 0, "Process:terminate")
  send_signal(self, core.signals.SIGTERM, "terminate")
end
function Process:kill(...)
  errors.check_nargs(select("#", ...), 0, "Process:kill")
  send_signal(self, core.signals.SIGKILL, "kill")
end

function Process:close(...)
  check(self, "close")
  errors.check_nargs(select("#", ...), 0, "Process:close")
  if rawget(self, "_closed") then return end
  if rawget(self, "_started") and exitcode(self) == nil then
    errors.valueerror("Process:close",
      "cannot close a process while it is still running; join or terminate it first")
  end
  rawset(self, "_closed", true)
  live[self] = nil
end

Process.__close = function(p) if rawget(p, "_started") and not rawget(p, "_closed") then p:join() end end

--- The processes started here that are still running (finished ones are reaped).
function M.active_children(...)
  errors.check_nargs(select("#", ...), 0, "active_children")
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

function M.current_process(...)
  errors.check_nargs(select("#", ...), 0, "current_process")
  return { name = identity.name, pid = core.getpid(), ident = core.getpid(),
           daemon = identity.daemon, is_alive = info_is_alive }
end

function M.parent_process(...)
  errors.check_nargs(select("#", ...), 0, "parent_process")
  if not parent_identity then return nil end
  return { name = parent_identity.name, pid = parent_identity.pid, ident = parent_identity.pid,
           is_alive = info_is_alive }
end

M.ProcessClass = Process

-- Child side -------------------------------------------------------------------------------

-- Writes an uncaught error of the child to io.stderr, as the target left it (a file of its
-- own, like Python's sys.stderr), or to the stderr of the start when it is gone; never raises.
local function report(name, err)
  local msg
  if type(err) == "string" then
    msg = err
  else
    local ok, s = pcall(tostring, err)
    msg = ok and s or ("(error object is a " .. type(err) .. " value)")
  end
  local out = io.type(io.stderr) == "file" and io.stderr or stderr
  pcall(function()
    out:write(("Process %s:\n%s\n"):format(name, msg))
    out:flush()
  end)
end

local function traceback(err)
  if type(err) == "string" then return debug.traceback(err, 2) end
  local ok, s = pcall(tostring, err)
  return debug.traceback(ok and s or "(error object)", 2)
end

--- Called by the C child (mode "process") in the fresh state: runs the job, returns the
--- exit code. The C side flushes every stdio stream after it returns.
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
