-- lmp.manager — mp.Manager: a server process holding shared dicts, lists, queues, locks and
-- custom objects, reached through proxies from any process. mp.Manager(opts) starts one;
-- mp.Manager.connect(address, authkey) reaches a running one. The server is stopped by
-- m:shutdown(), a <close> variable, the manager's collection, or this process's exit.
-- Caveat: proxies made here keep the manager object alive, so `mp.Manager():dict()` works.
local core = require "lmp.core"
local errors = require "lmp.errors"
local P = require "lmp.manager_proxy_sync"

local M = {}

-- The built-in factories and the most arguments each takes.
local BUILTIN = { dict = 1, list = 1, Namespace = 1, Queue = 1, JoinableQueue = 1, Lock = 0,
                  RLock = 0, Semaphore = 1, BoundedSemaphore = 1, Event = 0, Condition = 1,
                  Barrier = 3, Value = 2, Array = 2 }
local OPTIONS = { address = true, authkey = true, types = true }
-- The fields of a manager object (a custom type of one of these names could not be called).
local FIELDS = { address = true, authkey = true, pid = true, exitcode = true, _owner = true,
                 _path = true, _dir = true, _types = true, _down = true }

--- The class of manager objects. It travels by reference (a field of this module), and a
--- manager object sent to another process is a client there, never the owner.
local Manager = { __name = "lmp.Manager" }
M.ManagerClass = Manager
Manager.__methods = Manager -- what REPL completion offers (it never calls __index)

local owners = setmetatable({}, { __mode = "v" }) -- address -> the manager started here
P.owners = owners

local function is_owner(m) return rawget(m, "_owner") == core.getpid() end

local function conn(m) return (P.connection(m.address, m.authkey)) end

-- A method called with '.' instead of ':' gets a TypeError, not "attempt to index"; one
-- given more than max arguments (nil: any number) a ValueError.
local function check_call(self, fname, max, n)
  if getmetatable(self) ~= Manager then
    errors.typeerror("Manager." .. fname, "self",
      "a manager (call it with a colon: m:" .. fname .. "(...))", self, 1)
  end
  if max and n > max then errors.check_nargs(n, max, "Manager:" .. fname, 1) end
end

local function create(m, kind, ...)
  local c = conn(m)
  local p = c:call(0, 0, "create", kind, ...)
  return p
end

for kind, max in pairs(BUILTIN) do
  Manager[kind] = function(self, ...)
    check_call(self, kind, max, select("#", ...))
    return create(self, kind, ...)
  end
end

-- A custom type's factory: its constructor is the user's function, which takes any number of
-- arguments (as a Lua function does).
function Manager.__index(m, k)
  local v = Manager[k]
  if v ~= nil then return v end
  local types = rawget(m, "_types")
  if types and types[k] then
    return function(self, ...)
      check_call(self, k)
      return create(self, k, ...)
    end
  end
end

function Manager.__tostring(m)
  return ("<lmp.Manager at %s, server pid %s%s>"):format(m.address, tostring(m.pid),
    rawget(m, "_down") and ", shut down" or "")
end

--- Stops the server (only in the process that started it): it answers what it was asked,
--- exits, and its socket and directory are removed. Proxies then raise ProcessError.
function Manager:shutdown(...)
  check_call(self, "shutdown", 0, select("#", ...))
  if not is_owner(self) then
    errors.raise("ValueError", "Manager:shutdown: only the process that started the manager can shut it down")
  end
  if rawget(self, "_down") then return end
  rawset(self, "_down", true)
  -- asked to stop (it answers what it was asked first); a server that does not (stuck in a
  -- custom method) is terminated, then killed: shutdown never hangs
  local c = P.existing(self.address)
  if c then c:send(0, "shutdown") end
  P.forget(self.address, "it was shut down")
  local code = core.join(self.pid, c and 3 or 0)
  for _, sig in ipairs { "SIGTERM", "SIGKILL" } do
    if code ~= nil then break end
    core.signal(self.pid, core.signals[sig])
    code = core.join(self.pid, 5)
  end
  pcall(core.forget, self.pid)
  core.mgr_unlink(rawget(self, "_path"), rawget(self, "_dir"))
  rawset(self, "exitcode", code)
end

function Manager:__close()
  if is_owner(self) then self:shutdown() end
end

-- A collected manager: the server is told to go (SIGTERM: it removes its socket) and left to
-- exit; a finalizer never waits.
function Manager:__gc()
  if not is_owner(self) or rawget(self, "_down") then return end
  rawset(self, "_down", true)
  pcall(core.signal, self.pid, core.signals.SIGTERM)
  pcall(core.mgr_forget, self.pid)
  core.mgr_unlink(rawget(self, "_path"), rawget(self, "_dir"))
  P.forget(self.address, "its manager was collected")
end

--- Server statistics (a debugging aid): {objects =, holds =, clients =, memory = KiB}, after
--- a full garbage collection in the server.
function Manager:_stats(...)
  check_call(self, "_stats", 0, select("#", ...))
  return conn(self):call(0, 0, "stats")
end

-- Starting ------------------------------------------------------------------------------------

local function check_types(types)
  if types == nil then return {} end
  if type(types) ~= "table" then errors.typeerror("Manager", "types", "a table", types, 2) end
  local names = {}
  for name, spec in pairs(types) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      errors.valueerror("Manager", "type names must be identifiers, got " .. errors.describe(name), 2)
    end
    if Manager[name] ~= nil or FIELDS[name] then
      errors.valueerror("Manager", ("the type name '%s' is taken by the manager's own %s"):format(name,
        FIELDS[name] and "fields" or "methods"), 2)
    end
    local new = type(spec) == "table" and spec.new or spec
    if type(new) ~= "function" then
      errors.typeerror("Manager", "types." .. name, "a function or {new = function, exposed = {...}}", spec, 2)
    end
    if type(spec) == "table" and spec.exposed ~= nil and type(spec.exposed) ~= "table" then
      errors.typeerror("Manager", "types." .. name .. ".exposed", "a list of method names", spec.exposed, 2)
    end
    names[name] = true
  end
  return names
end

local counter = 0

-- An authkey is a non-empty string: another type is a TypeError, "" a ValueError.
local function check_authkey(key, fname, level)
  if type(key) ~= "string" then errors.typeerror(fname, "authkey", "a non-empty string", key, level) end
  if key == "" then errors.valueerror(fname, "authkey must not be empty", level) end
end

local function start(opts, ...)
  errors.check_nargs(select("#", ...) + 1, 1, "Manager", 1)
  if opts ~= nil and type(opts) ~= "table" then errors.typeerror("Manager", "opts", "a table or nil", opts, 1) end
  opts = opts or {}
  errors.check_options(opts, "Manager", OPTIONS, 1)
  if opts.address ~= nil and type(opts.address) ~= "string" then
    errors.typeerror("Manager", "address", "a string", opts.address, 1)
  end
  if opts.authkey ~= nil then check_authkey(opts.authkey, "Manager", 2) end
  local names = check_types(opts.types)
  local key = opts.authkey or core.mgr_random(32)
  local fd, address, path, dir = core.mgr_listen(opts.address)
  counter = counter + 1
  local me = require("lmp.process").current_process()
  local ok, payload = pcall(core.encode, {
    fd = fd, address = address, authkey = key, path = path, dir = dir, types = opts.types,
    fds = core.mgr_fd_list(), ppid = core.getpid(), parent = me.name,
    name = (me.name == "MainProcess" and "" or me.name .. ":") .. "Manager-" .. counter,
  }, "Manager")
  local pid = payload
  if ok then ok, pid = pcall(core.mgr_fork, payload, fd) end
  core.mgr_close_fd(fd)
  if not ok then -- pid holds the error (of the encoding or of the fork)
    core.mgr_unlink(path, dir)
    error(pid, 2)
  end
  local m = setmetatable({ address = address, authkey = key, pid = pid, _owner = core.getpid(),
                           _path = path, _dir = dir, _types = names }, Manager)
  owners[address] = m
  local okc, err = pcall(P.connection, address, key)
  if not okc then
    m:shutdown()
    error(err, 2)
  end
  return m
end

--- mp.Manager.connect(address, authkey): a manager object for the running manager at
--- address; its factories and proxies work as the owner's (it cannot shut the server down).
function M.connect(address, authkey, ...)
  errors.check_nargs(select("#", ...) + 2, 2, "Manager.connect", 1)
  if type(address) ~= "string" then errors.typeerror("Manager.connect", "address", "a string", address, 1) end
  check_authkey(authkey, "Manager.connect", 1)
  local c, canonical = P.connection(address, authkey)
  local info = c:call(0, 0, "hello")
  local names = {}
  for _, n in ipairs(info.types) do names[n] = true end
  return setmetatable({ address = canonical, authkey = authkey, pid = info.pid, _types = names }, Manager)
end

--- mp.Manager.server_object(kind, ...): in a server process (a custom type's constructor or
--- method, a Barrier action), makes an object of kind ("Queue", "dict"... or a custom type)
--- there and returns a reference to it: its methods run at once (they cannot wait), and a
--- constructor or method that returns it gives the client a proxy of it. A constructor that
--- keeps one in an upvalue shares one object among everyone who calls the factory.
function M.server_object(kind, ...)
  local S = package.loaded["lmp.manager_server"]
  if not (S and S.serving()) then
    errors.raise("ValueError", "Manager.server_object: only code running in a manager's server can make its objects")
  end
  return S.create(kind, S.LOCAL, ...)
end

M.Manager = setmetatable({ connect = M.connect, server_object = M.server_object }, {
  __call = function(_, ...) return start(...) end,
  __name = "lmp.ManagerFactory",
})

--- The server process's entry (mode "manager").
function M._bootstrap(payload)
  return require("lmp.manager_server").serve(payload)
end

return M
