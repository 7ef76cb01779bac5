-- lmp.manager_server — the Manager server process: the objects, who refers to them, and the
-- dispatcher the C loop (runtime/manager_server.c) hands every request to. Types live in
-- lmp.manager_types (containers) and lmp.manager_sync (queues, locks...).
-- Reference counting: an object lives while a connection counts a proxy of it, a hold (a
-- proxy in flight through another channel) keeps it, or a Ref to it is alive in this Lua heap
-- (a proxy stored inside another object; freed by the garbage collector). Caveat: cycles of
-- objects (a list holding itself) live until the manager shuts down.
local core = require "lmp.core"
local errors = require "lmp.errors"
local P = require "lmp.manager_proxy"

local S = {}

local OK, ERR, CANCELLED = 0, 1, 2
local F_PARK, F_ONEWAY, F_CANCEL = 1, 2, 4
local PARKED = setmetatable({}, { __name = "lmp.Parked" })
S.PARKED = PARKED
S.BLOCK_MSG = "a blocking lmp call cannot run inside a callback (the loop is busy); use a " ..
  "timeout of 0 or move the call out of the callback"

local decode, encode, mono = core.decode, core.encode, core.monotonic
local pack, unpack = table.pack, table.unpack

local srv, my_address, my_key
local objects, next_id = {}, 0
local clients = {}  -- cid -> {refs = {id = n}, holds = {token = true}, parked = {seq = w}, held = {obj = true}}
local holds = {}    -- token -> {id =, sender = cid | false, adopted = bool}
local early, n_early = {}, 0 -- token -> time: adopted before its hold arrived
local TYPES = {}    -- kind -> {new = fn(ctx, ...) -> object, methods = {name = fn(obj, ctx, ...)}}
S.TYPES, S.objects = TYPES, objects

-- Objects and references -----------------------------------------------------------------

local function free_unused(obj)
  if obj.refs <= 0 and objects[obj.id] == obj then objects[obj.id] = nil end
end

local function unref(obj, n)
  obj.refs = obj.refs - (n or 1)
  if obj.refs <= 0 then free_unused(obj) end
end

--- A Ref: a server-side reference to an object (what a proxy stored in a container becomes).
local Ref = { __name = "lmp.ManagerRef" }
S.Ref = Ref

local function new_ref(obj)
  obj.refs = obj.refs + 1
  return setmetatable({ id = obj.id, kind = obj.kind }, Ref)
end
S.new_ref = new_ref

function Ref.__gc(r)
  local obj = objects[r.id]
  if obj then unref(obj) end
end

function Ref.__eq(a, b) return a.id == b.id end
function Ref.__tostring(r) return ("<lmp.ManagerRef #%d %s>"):format(r.id, r.kind) end

--- The object a Ref refers to (raises when it was freed).
function S.deref(r)
  local obj = objects[r.id]
  if not obj then errors.raise("ValueError", ("the manager object #%d no longer exists"):format(r.id)) end
  return obj
end

function S.is_ref(v, kind)
  return getmetatable(v) == Ref and (kind == nil or v.kind == kind)
end

local reply_to, counted = nil, false -- the connection a reply is encoded for; refs counted for it

local function incref(cid, obj)
  local cl = clients[cid]
  if not cl then return end
  cl.refs[obj.id] = (cl.refs[obj.id] or 0) + 1
  obj.refs = obj.refs + 1
end

local function decref(cid, id)
  local cl = clients[cid]
  local n = cl and cl.refs[id]
  if not n then return end
  cl.refs[id] = n > 1 and n - 1 or nil
  local obj = objects[id]
  if obj then unref(obj) end
end

-- In a reply, a Ref becomes a proxy owned by the receiving connection (counted now); anywhere
-- else (server code sending it through a Queue...) a proxy kept alive by a hold of the server.
function Ref.__lmp_encode(r)
  local obj = objects[r.id]
  if reply_to then
    if obj then
      incref(reply_to, obj)
      counted = counted or {}
      counted[#counted + 1] = r.id
    end
    return "lmp.Proxy", P.pack("o", r.kind, r.id, my_address)
  end
  local token = core.mgr_random(16)
  if obj then
    holds[token] = { id = r.id, sender = false, adopted = false }
    obj.refs = obj.refs + 1
  end
  return "lmp.Proxy", P.pack("h", r.kind, r.id, my_address, token, my_key)
end

-- A proxy of another manager stored here: kept as its handle, sent on as it came.
local Foreign = { __name = "lmp.ManagerForeignProxy" }
function Foreign.__lmp_encode(f) return "lmp.Proxy", f.payload end

local function drop_hold(token)
  local h = holds[token]
  if not h then return end
  holds[token] = nil
  local obj = objects[h.id]
  if obj then unref(obj) end
end

--- Decodes a proxy handle arriving here (P.server.decode).
function S.decode(mode, kind, id, addr, token, key, payload)
  if addr ~= my_address then return setmetatable({ payload = payload }, Foreign) end
  local obj = objects[id]
  if not obj then errors.raise("ValueError", ("the manager object #%d no longer exists"):format(id)) end
  local ref = new_ref(obj)
  if mode == "h" then -- the server itself adopts it: the Ref keeps the object now
    local h = holds[token]
    if h then
      h.adopted = true
      if not h.sender then drop_hold(token) end
    end
  end
  return ref
end

-- Encoding replies ---------------------------------------------------------------------------

local function encode_error(e)
  local t = { type = e.type or "RemoteError", message = e.message, value = e.value,
              traceback = e.traceback }
  local ok, s = pcall(encode, t, "error")
  if ok then return s end
  t.value = nil
  return encode(t)
end

--- Encodes results for connection cid: status and message. A result that cannot be sent
--- becomes its SerializationError (references counted meanwhile are given back).
local function encode_for(cid, t)
  reply_to, counted = cid, false
  local ok, s = pcall(encode, t, "result")
  reply_to = nil
  if ok then return OK, s end
  if counted then
    for _, id in ipairs(counted) do decref(cid, id) end
  end
  return ERR, encode_error(errors.iserror(s) and s or errors.new("SerializationError", tostring(s)))
end

local function error_reply(e) return ERR, encode_error(e) end

-- Turns what a method raised into the error the client gets: lmp errors as they are, anything
-- else (user code in custom types, actions, comparators) as RemoteError with its traceback.
local function msgh(e)
  if errors.iserror(e) then return e end
  local ok, msg = pcall(tostring, e)
  return errors.new("RemoteError", ok and msg or type(e), { value = e, traceback = debug.traceback(nil, 2) })
end
S.msgh = msgh

-- Parked requests ----------------------------------------------------------------------------
-- A waiter w is a table: {deadline = t | nil, timeout = fn(w), drop = fn(w, why)} made by a
-- type; park() files it under its connection, complete()/fail() answer it. drop(w, why) takes
-- it out of its object's waiting list ("cancel": Ctrl-C in the client, "gone": client died).

local timed, armed = {}, nil -- waiters with deadlines; the deadline the timer is set for

local function arm(deadline)
  if armed and armed <= deadline then return end
  armed = deadline
  srv:arm(deadline - mono())
end

--- Parks the current request with waiter w (raises ValueError when the client may not wait).
--- Gives a parked waiter a new deadline (or none).
function S.retime(w, deadline)
  w.deadline = deadline
  timed[w] = deadline and true or nil
  if deadline then arm(deadline) end
end

function S.park(ctx, w)
  if not ctx.park then errors.raise("ValueError", S.BLOCK_MSG) end
  w.cid, w.seq = ctx.cid, ctx.seq
  clients[w.cid].parked[w.seq] = w
  if w.deadline then
    timed[w] = true
    arm(w.deadline)
  end
  return PARKED
end

local function unpark(w)
  local cl = clients[w.cid]
  if cl then cl.parked[w.seq] = nil end
  timed[w] = nil
end

--- Answers a parked request with results; false when its client is gone.
function S.complete(w, ...)
  unpark(w)
  if not clients[w.cid] then return false end
  local st, msg = encode_for(w.cid, pack(...))
  return srv:reply(w.cid, w.seq, st, msg)
end

--- Answers a parked request with an error object.
function S.fail(w, e)
  unpark(w)
  if clients[w.cid] then srv:reply(w.cid, w.seq, ERR, encode_error(e)) end
end

--- The deadline of a wait of timeout seconds (nil: none).
function S.deadline(timeout) return timeout and mono() + timeout end

--- The connection a waiter or a request belongs to is alive.
function S.alive(cid) return cid == 0 or clients[cid] ~= nil end

--- Records that connection cid holds (or no longer holds) lock object obj.
function S.hold_lock(cid, obj, yes)
  local cl = clients[cid]
  if cl then cl.held[obj] = yes or nil end
end

function S.remove(list, x)
  for i = 1, #list do
    if list[i] == x then
      table.remove(list, i)
      return true
    end
  end
  return false
end

-- The dispatcher -----------------------------------------------------------------------------

local D = {}
S.D = D
local ctx = { cid = 0, seq = 0, park = false } -- the request being served (one at a time)
local OPS = {}

local function client(cid)
  local cl = clients[cid]
  if not cl then
    cl = { refs = {}, holds = {}, parked = {}, held = {} }
    clients[cid] = cl
  end
  return cl
end

local function finish(cid, oneway, ok, ...)
  if oneway then return end
  if not ok then return error_reply(...) end
  if ... == PARKED then return end
  return encode_for(cid, pack(...))
end

local function cancel(cl, cid, seq)
  local w = cl.parked[seq]
  if not w then return end -- answered already: the client reads that answer
  unpark(w)
  w:drop("cancel")
  srv:reply(cid, seq, CANCELLED, "")
end

--- request(cid, seq, flags, id, method, payload) -> status, message | nothing (parked or
--- one-way).
function D.request(cid, seq, flags, id, method, payload)
  local cl = clients[cid] or client(cid)
  if flags & F_CANCEL ~= 0 then return cancel(cl, cid, id) end
  local oneway = flags & F_ONEWAY ~= 0
  local ok, args = pcall(decode, payload)
  if not ok then
    if oneway then return end
    return error_reply(errors.iserror(args) and args or errors.new("SerializationError", tostring(args)))
  end
  local fn, obj
  if id == 0 then
    fn = OPS[method]
  else
    obj = objects[id]
    if not obj then
      return finish(cid, oneway, false,
        errors.new("ValueError", ("the manager object #%d no longer exists"):format(id)))
    end
    fn = obj.methods[method]
  end
  if not fn then
    local what = obj and (obj.kind .. " object") or "manager"
    return finish(cid, oneway, false, errors.new(obj and obj.custom and "RemoteError" or "ValueError",
      ("%s has no method '%s'"):format(what, method)))
  end
  ctx.cid, ctx.seq, ctx.park = cid, seq, flags & F_PARK ~= 0
  return finish(cid, oneway, xpcall(fn, msgh, obj, ctx, unpack(args, 1, args.n)))
end

--- closed(cid): the client is gone; nothing it held or waited for harms anyone.
function D.closed(cid)
  local cl = clients[cid]
  if not cl then return end
  clients[cid] = nil
  for _, w in pairs(cl.parked) do
    timed[w] = nil
    w:drop("gone")
  end
  for obj in pairs(cl.held) do
    if obj.abandon then obj:abandon(cid) end
  end
  for token in pairs(cl.holds) do
    local h = holds[token]
    if h and h.sender == cid then
      h.sender = false
      if h.adopted then drop_hold(token) end
    end
  end
  for id, n in pairs(cl.refs) do
    local obj = objects[id]
    if obj then unref(obj, n) end
  end
end

function D.timer()
  armed = nil
  local now, due, nxt = mono(), {}, nil
  for w in pairs(timed) do
    if w.deadline <= now + 2e-4 then due[#due + 1] = w
    elseif not nxt or w.deadline < nxt then nxt = w.deadline end
  end
  for _, w in ipairs(due) do
    if timed[w] then
      timed[w] = nil
      w:timeout() -- answers it, or moves it to another stage (S.retime for a new deadline)
    end
  end
  for w in pairs(timed) do
    if not nxt or w.deadline < nxt then nxt = w.deadline end
  end
  if nxt then arm(nxt) end
end

-- Manager-level operations (object id 0) -------------------------------------------------------

--- Creates an object of kind from the type's constructor; returns a Ref to it.
function S.create(kind, ...)
  local t = TYPES[kind]
  if not t then errors.raise("ValueError", ("Manager: no type '%s'"):format(tostring(kind))) end
  local obj = t.new(...)
  if getmetatable(obj) == Ref then return obj end -- a custom constructor sharing an object
  next_id = next_id + 1
  obj.id, obj.kind, obj.refs, obj.methods = next_id, kind, 0, t.methods
  objects[next_id] = obj
  return new_ref(obj)
end

function OPS.create(_, c, kind, ...)
  return S.create(kind, c, ...)
end

function OPS.hello()
  local names = {}
  for name, t in pairs(TYPES) do
    if t.custom then names[#names + 1] = name end
  end
  table.sort(names)
  return { pid = core.getpid(), address = my_address, types = names }
end

function OPS.stats()
  collectgarbage()
  collectgarbage()
  local n, h = 0, 0
  local list = {}
  for id, o in pairs(objects) do
    n = n + 1
    list[#list + 1] = ("%d:%s:%d"):format(id, o.kind, o.refs)
  end
  table.sort(list)
  for _ in pairs(holds) do h = h + 1 end
  return { objects = n, holds = h, clients = srv:conns(), memory = collectgarbage("count"),
           list = table.concat(list, " ") }
end

function OPS.shutdown()
  srv:stop()
end

function OPS.hold(_, c, token, id)
  local obj = objects[id]
  if not obj or holds[token] then return end
  local adopted = early[token] ~= nil
  if adopted then early[token], n_early = nil, n_early - 1 end
  holds[token] = { id = id, sender = c.cid, adopted = adopted }
  obj.refs = obj.refs + 1
  client(c.cid).holds[token] = true
end

-- An adopt that overtook its hold (they travel on different connections) is remembered so
-- that the hold, when it comes, is known to be adopted; stale entries are swept.
local function remember_early(token)
  if n_early > 10000 then
    local old = mono() - 600
    for t, when in pairs(early) do
      if when < old then early[t], n_early = nil, n_early - 1 end
    end
  end
  if not early[token] then n_early = n_early + 1 end
  early[token] = mono()
end

function OPS.adopt(_, c, token, id)
  local obj = objects[id]
  local h = holds[token]
  if obj then incref(c.cid, obj) end
  if h then
    h.adopted = true
    if not h.sender then drop_hold(token) end
  elseif obj then
    remember_early(token)
  end
end

function OPS.drop(_, c, id, token)
  decref(c.cid, id)
  local h = token and holds[token]
  if h and h.sender == c.cid then
    h.sender = false
    local cl = clients[c.cid]
    if cl then cl.holds[token] = nil end
    if h.adopted then drop_hold(token) end
  end
end

-- Ref methods (server code using the objects directly: custom types, Barrier actions) --------

local LOCAL = { cid = 0, seq = 0, park = false }
S.LOCAL = LOCAL

--- Calls method name of obj as server code: no waiting, results as they are (not copies).
function S.local_call(obj, name, ...)
  local fn = obj.methods[name]
  if not fn then errors.raise("ValueError", ("%s object has no method '%s'"):format(obj.kind, name)) end
  return fn(obj, LOCAL, ...)
end

-- r.name is a method when the type has it (not an internal "_name"); other keys go to the
-- type's index (items of containers, fields of Barrier and Value).
function Ref.__index(r, k)
  local obj = S.deref(r)
  if type(k) == "string" and k:sub(1, 1) ~= "_" and obj.methods[k] then
    return function(_, ...) return S.local_call(S.deref(r), k, ...) end
  end
  local index = TYPES[obj.kind].index
  if index then return index(obj, k) end
end

function Ref.__newindex(r, k, v)
  local obj = S.deref(r)
  local newindex = TYPES[obj.kind].newindex
  if not newindex then errors.raise("ValueError", "cannot assign fields of a manager " .. obj.kind) end
  newindex(obj, k, v)
end

function Ref.__len(r) return S.local_call(S.deref(r), "len") end

-- Serving ------------------------------------------------------------------------------------

require("lmp.manager_types")(S)
require("lmp.manager_sync")(S)

--- Registers the custom types given to mp.Manager{types = ...}.
local function add_custom_types(types)
  for name, spec in pairs(types or {}) do S.custom_type(name, spec) end
end

--- True in a server process while it serves.
function S.serving() return srv ~= nil end

--- The server's main (mode "manager"): returns the exit code.
function S.serve(payload)
  local job = decode(payload)
  core.mgr_close_inherited(job.fds, job.fd)
  require("lmp.process")._set_identity(job.name, true, job.parent)
  my_address, my_key = job.address, job.authkey
  srv = core.mgr_server(job.fd, job.authkey, job.address, job.path, job.dir, job.ppid)
  P.server = S
  add_custom_types(job.types)
  job = nil
  srv:run(D)
  return 0
end

return S
