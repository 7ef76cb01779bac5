-- lmp.manager_proxy — a process's side of the Manager: its connections (one per manager,
-- opened on first use), the proxy base (calls, reference counting, the codec handle) and the
-- container proxies (dict, list, Namespace, Value, Array, custom types); lmp.manager_proxy_sync
-- adds the queue and lock proxies. Caveat: method names shadow keys (`d.keys` is the method;
-- read a key named like a method with `d:get("keys")`).
local core = require "lmp.core"
local errors = require "lmp.errors"

local M = {}

-- The state of a proxy lives under this private key in the proxy table itself, so `p[K]` is
-- one raw lookup and every other key reaches __index.
local K = setmetatable({}, { __name = "lmp.ProxyState" })
M.K = K

local conns, keys = {}, {}   -- address -> connection, address -> authkey (this process)
M.classes = {}               -- kind -> proxy metatable
M.server = nil               -- in a server process: its decoder of handles (manager_server)
M.owners = {}                -- address -> the manager object started here (set by lmp.manager)
M.monotonic = core.monotonic

--- The connection of this process to the manager at address (opened on first use, with
--- key or the key this process already knows for it); returns it and the server's address.
function M.connection(address, key)
  local c = conns[address]
  if c and c:alive() and (key == nil or key == keys[address]) then return c, address end
  key = key or keys[address]
  if not key then errors.raise("ProcessError", "no authentication key known for the manager at " .. address) end
  local canonical
  c, canonical = core.mgr_connect(address, key)
  if conns[canonical] and conns[canonical]:alive() then -- reached under another name
    c:close()
    c = conns[canonical]
  end
  conns[canonical], keys[canonical] = c, key
  conns[address], keys[address] = c, key
  return c, canonical
end

--- The open connection to address, if any.
function M.existing(address)
  local c = conns[address]
  if c and c:alive() then return c end
end

--- Closes the connection to address (after a shutdown): its proxies raise ProcessError
--- saying why.
function M.forget(address, why)
  local c = conns[address]
  if c then c:close(why) end
end

-- Calls -------------------------------------------------------------------------------------

local function broken(s) error(s.err, 3) end

--- A call the server answers at once.
local function call(p, method, ...)
  local s = p[K]
  local c = s.c
  if not c then broken(s) end
  return c:call(0, s.id, method, ...)
end
M.call = call

--- A call that may wait for another process (parked by the server). After Ctrl-C, a call that
--- completed anyway is undone with undo(p, packed results) before InterruptedError is raised.
local function bcall(p, method, undo, ...)
  local s = p[K]
  local c = s.c
  if not c then broken(s) end
  local ok, a, b = pcall(c.call, c, 1, s.id, method, ...)
  if ok then return a, b end
  if type(a) == "table" and a.late ~= nil then
    local late = a.late
    a.late = nil
    if undo then pcall(undo, p, late) end
  end
  error(a, 0)
end
M.bcall = bcall

-- Handles -------------------------------------------------------------------------------------
-- A proxy travels as the handle "lmp.Proxy" with payload: mode, kind, id, address [, token,
-- key]. Mode "r": a reference sent to its own server; "o": from the server, which has counted
-- the reference for the receiving connection; "h": anywhere else, kept alive by a hold that
-- the sender took on its own connection, adopted by whoever decodes it.

local function pack(mode, kind, id, addr, token, key)
  if mode == "h" then return ("<c1s1I4s2s1s2"):pack(mode, kind, id, addr, token, key) end
  return ("<c1s1I4s2"):pack(mode, kind, id, addr)
end
M.pack = pack

local function malformed() errors.raise("SerializationError", "malformed manager proxy handle") end

local function unpack_payload(payload)
  local ok, mode, kind, id, addr, pos = pcall(string.unpack, "<c1s1I4s2", payload)
  if not ok then malformed() end
  local token, key
  if mode == "h" then
    ok, token, key = pcall(string.unpack, "<s1s2", payload, pos)
    if not ok then malformed() end
  elseif mode ~= "r" and mode ~= "o" then
    malformed()
  end
  return mode, kind, id, addr, token, key
end

local function encode_proxy(p)
  local s = p[K]
  if core.mgr_encoding() == s.addr then return "lmp.Proxy", pack("r", s.kind, s.id, s.addr) end
  if not s.c then broken(s) end
  if not s.hold then -- once per proxy: later copies of it share the hold
    local token = core.mgr_random(16)
    if not s.c:send_sync(0, "hold", token, s.id) then
      errors.raise("ProcessError", "the manager at " .. s.addr .. " is gone (" .. s.c:why() .. ")")
    end
    s.hold = token
  end
  return "lmp.Proxy", pack("h", s.kind, s.id, s.addr, s.hold, keys[s.addr])
end

local function release(p)
  local s = rawget(p, K)
  if s and s.c then s.c:send(0, "drop", s.id, s.hold) end
end

local function same(a, b)
  local x, y = rawget(a, K), rawget(b, K)
  return x ~= nil and y ~= nil and x.id == y.id and x.addr == y.addr
end

--- A new proxy of class kind for object id on connection c (nil c: broken, err says why).
function M.new(kind, id, c, addr, err)
  local mt = M.classes[kind] or M.classes.custom
  return setmetatable({ [K] = { c = c, id = id, kind = kind, addr = addr, err = err,
                                owner = M.owners[addr] } }, mt)
end

--- The decoder of "lmp.Proxy" handles (runtime/manager_wire.c calls it).
function M._decode(payload)
  local mode, kind, id, addr, token, key = unpack_payload(payload)
  if M.server then return M.server.decode(mode, kind, id, addr, token, key, payload) end
  if mode == "o" then
    local c = conns[addr]
    if not c then errors.raise("SerializationError", "a manager reply from an unknown connection") end
    return M.new(kind, id, c, addr)
  elseif mode == "h" then
    local ok, c = pcall(M.connection, addr, key)
    if not ok then return M.new(kind, id, nil, addr, c) end
    c:send(0, "adopt", token, id)
    return M.new(kind, id, c, addr)
  end
  errors.raise("SerializationError", "a manager reference outside its server")
end

-- Printing ------------------------------------------------------------------------------------

local function key_repr(k, repr)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
  return "[" .. repr(k, 9) .. "]"
end

local function describe(p)
  local s = p[K]
  return ("<%s #%d at %s>"):format(getmetatable(p).__name, s.id, s.addr)
end

-- A short text for v: proxies inside are described, not fetched (a dict may hold itself).
local function repr(v, depth)
  local t = type(v)
  if t == "string" then return (("%q"):format(v):gsub("\\\n", "\\n")) end
  if t == "table" and rawget(v, K) then return describe(v) end
  if t ~= "table" or getmetatable(v) ~= nil then return tostring(v) end
  depth = depth or 0
  if depth > 3 then return "{...}" end
  local ks = {}
  for k in pairs(v) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  local out = {}
  for _, k in ipairs(ks) do out[#out + 1] = key_repr(k, repr) .. " = " .. repr(v[k], depth + 1) end
  return "{" .. table.concat(out, ", ") .. "}"
end
M.repr = repr

-- Classes -------------------------------------------------------------------------------------

--- A method of a proxy class: fn(p, ...) takes at most max arguments after self (ANY: any
--- number) and at least min (default 0; for a value that may be nil, which must be given).
function M.method(max, fn, min) return { max, fn, min = min or 0 } end
M.ANY = math.huge

--- The method spec s of class mt as a function: a call with '.' (self not a proxy of this
--- class) is a TypeError, too many arguments a ValueError, too few a TypeError, each naming
--- cname:mname. Every proxy method, built-in or custom, goes through here.
function M.checked(mt, cname, mname, s)
  local max, fn, min = s[1], s[2], s.min
  local fname = cname .. ":" .. mname
  return function(p, ...)
    if getmetatable(p) ~= mt then
      errors.typeerror(cname .. "." .. mname, "self",
        ("a %s (call it with a colon: proxy:%s(...))"):format(mt.__name, mname), p)
    end
    local n = select("#", ...)
    if n > max then errors.check_nargs(n, max, fname) end
    if n < min then
      errors.raise("TypeError", ("%s: argument #%d expected (nil is a value too), got none"):format(fname, n + 1))
    end
    return fn(p, ...)
  end
end

--- Makes a proxy class: methods (name -> M.method spec), index(p, k) for other keys (nil:
--- none), newindex(p, k, v) (nil: assignment is an error), extra metamethods. Messages name
--- a method kind:name (`Queue:put`; custom types: `Proxy:name`).
function M.class(kind, name, methods, index, newindex, extra)
  local mt = { __name = name, __gc = release, __eq = same, __lmp_encode = encode_proxy,
               __tostring = describe }
  local cname = kind == "custom" and "Proxy" or kind
  local fns = {}
  for k, s in pairs(methods) do fns[k] = M.checked(mt, cname, k, s) end
  methods = fns
  if index then
    mt.__index = function(p, k)
      local m = methods[k]
      if m ~= nil then return m end
      return index(p, k)
    end
    mt.__methods = methods -- what REPL completion offers (it never calls __index)
  else
    mt.__index = methods
  end
  mt.__newindex = newindex or function(_, k)
    errors.raise("ValueError", ("%s: cannot assign field %s"):format(name, errors.describe(k)))
  end
  for k, v in pairs(extra or {}) do mt[k] = v end
  M.classes[kind] = mt
  return mt
end

local function snapshot_pairs(p)
  local ks, vs = call(p, "_snapshot")
  local i = 0
  return function()
    i = i + 1
    if ks[i] ~= nil then return ks[i], vs[i] end
  end, p, nil
end

-- Methods the server runs: name -> the most arguments it takes, or {max, min}.
local function methods_of(arity)
  local t = {}
  for name, n in pairs(arity) do
    local max, min = n, 0
    if type(n) == "table" then max, min = n[1], n[2] end
    t[name] = M.method(max, function(p, ...) return call(p, name, ...) end, min)
  end
  return t
end

-- dict: insertion-ordered keys, values by value, d[k] = nil deletes.
M.class("dict", "lmp.DictProxy",
  methods_of { get = 2, keys = 0, values = 0, items = 0, update = 1, pop = 2, popitem = 0,
               setdefault = 2, clear = 0, copy = 0 },
  function(p, k) return call(p, "getitem", k) end,
  function(p, k, v) call(p, "setitem", k, v) end,
  { __len = function(p) return call(p, "len") end, __pairs = snapshot_pairs,
    __tostring = function(p)
      local ks, vs = call(p, "_snapshot")
      local out = {}
      for i = 1, #ks do out[i] = key_repr(ks[i], repr) .. " = " .. repr(vs[i]) end
      return "{" .. table.concat(out, ", ") .. "}"
    end })

-- list: 1-based, l[#l + 1] = v appends, ipairs reads item by item (pairs: one snapshot).
M.class("list", "lmp.ListProxy",
  methods_of { append = { 1, 1 }, extend = 1, insert = { 2, 2 }, pop = 1, remove = { 1, 1 },
               index = { 3, 1 }, count = { 1, 1 }, copy = 0, sort = 1, reverse = 0, clear = 0 },
  function(p, k)
    if type(k) == "number" then return call(p, "getitem", k) end
  end,
  function(p, k, v) call(p, "setitem", k, v) end,
  { __len = function(p) return call(p, "len") end,
    __pairs = function(p)
      local t = call(p, "copy")
      local i = 0
      return function()
        i = i + 1
        if i <= t.n then return i, t[i] end
      end, p, nil
    end,
    __tostring = function(p)
      local t = call(p, "copy")
      local out = {}
      for i = 1, t.n do out[i] = repr(t[i]) end
      return "{" .. table.concat(out, ", ") .. "}"
    end })

-- Namespace: ns.x reads and writes the attribute (nil deletes).
M.class("Namespace", "lmp.NamespaceProxy", {},
  function(p, k) return call(p, "getattr", k) end,
  function(p, k, v) call(p, "setattr", k, v) end,
  { __pairs = snapshot_pairs,
    __tostring = function(p)
      local ks, vs = call(p, "_snapshot")
      local out = {}
      for i = 1, #ks do
        if ks[i]:sub(1, 1) ~= "_" then out[#out + 1] = ks[i] .. "=" .. repr(vs[i]) end
      end
      table.sort(out)
      return "Namespace(" .. table.concat(out, ", ") .. ")"
    end })

-- Value and Array: typed like mp.Value/mp.Array; the lock is a manager RLock made on demand.
local function lock_of(p)
  local s = p[K]
  if not s.lock then s.lock = call(p, "get_lock") end
  return s.lock
end

local function typed_methods(extra)
  local t = {
    get_lock = M.method(0, lock_of),
    acquire = M.method(2, function(p, ...) return lock_of(p):acquire(...) end),
    release = M.method(0, function(p) return lock_of(p):release() end),
    with = M.method(M.ANY, function(p, fn, ...)
      local lock = lock_of(p)
      lock:acquire()
      local r = table.pack(pcall(fn, p, ...))
      lock:release()
      if not r[1] then error(r[2], 0) end
      return table.unpack(r, 2, r.n)
    end),
  }
  for k, v in pairs(extra) do t[k] = v end
  return t
end

M.class("Value", "lmp.ValueProxy", typed_methods(methods_of { get = 0, set = 1 }),
  function(p, k) if k == "value" then return call(p, "get") end end,
  function(p, k, v)
    if k ~= "value" then errors.raise("ValueError", "ValueProxy: only .value can be assigned") end
    call(p, "set", v)
  end)

M.class("Array", "lmp.ArrayProxy", typed_methods(methods_of { totable = 0 }),
  function(p, k)
    if type(k) == "number" then return call(p, "getitem", k) end
    if k == "value" or k == "raw" then return call(p, "get" .. k) end
  end,
  function(p, k, v)
    if k == "value" or k == "raw" then return call(p, "set" .. k, v) end
    call(p, "setitem", k, v)
  end,
  { __len = function(p) return call(p, "len") end,
    __pairs = function(p)
      local t = call(p, "totable")
      local i = 0
      return function()
        i = i + 1
        if t[i] ~= nil then return i, t[i] end
      end, p, nil
    end })

-- Custom types: the methods the server exposes for the type (asked once per process and
-- type) run on the object in the server; p:_call(name, ...) calls one by name.
-- Their methods take any number of arguments: they are the user's Lua functions, which take
-- extra arguments as Lua does (`for v in it.next, it do` passes one).
local exposed = {}  -- address .. "\0" .. kind -> set of method names
local callers = {}  -- name -> function(self, ...)
local custom

local function caller(k)
  local f = callers[k]
  if not f then
    f = M.checked(custom, "Proxy", k, M.method(M.ANY, function(self, ...) return call(self, k, ...) end))
    callers[k] = f
  end
  return f
end

custom = M.class("custom", "lmp.Proxy", { _call = M.method(M.ANY, call, 1) }, function(p, k)
  if type(k) ~= "string" then return nil end
  local s = p[K]
  local key = s.addr .. "\0" .. s.kind
  local set = exposed[key]
  if not set then
    set = {}
    for _, name in ipairs(call(p, "_exposed")) do set[name] = true end
    exposed[key] = set
  end
  if set[k] then return caller(k) end
end)

return M
