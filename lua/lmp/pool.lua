-- lmp.pool — mp.Pool: the facade over lmp.core's pool (runtime/lpool.c, pool.c, result.c).
-- Here: argument and option checks in the user's words, chunk sizes, the progress bar, and
-- imap's feeding of lazy inputs. Tasks, calls, results, callbacks, cancelling and stopping work
-- (Ctrl-C, a broken imap loop) are C's, in one place.
local core = require "lmp.core"
local errors = require "lmp.errors"

local M = {}

local Pool = {}
Pool.__index = Pool
Pool.__name = "lmp.Pool"

local AsyncResult = core.AsyncResult -- C methods (runtime/result.c)
local K_MAP, K_STARMAP = core.K_MAP, core.K_STARMAP
local NOARGS = { n = 0 }
local select, type, getmetatable, mtype = select, type, getmetatable, math.type

local function set(list)
  local s = {}
  for _, k in ipairs(list) do s[k] = true end
  return s
end

-- Checks ---------------------------------------------------------------------------------------

-- A method called with '.' instead of ':' gets a clear TypeError, not "attempt to index".
local function check_self(self, fname)
  if getmetatable(self) ~= Pool then
    errors.typeerror("Pool." .. fname, "self", "a Pool (call it as pool:" .. fname .. "(...))",
      self, 1)
  end
end

local function check_function(f, fname, what)
  if type(f) ~= "function" then errors.typeerror(fname, what or "f", "a function", f, 1) end
end

local function check_args(args, fname)
  if args == nil then return NOARGS end
  if type(args) ~= "table" then
    errors.typeerror(fname, "args", "a table (a sequence of arguments)", args, 1)
  end
  local _, plain = errors.sequence(args, fname, "args", nil, 1)
  return plain
end

-- A per-task timeout: nil or math.huge (none), else a positive number (like every timeout, a
-- non-number is a ValueError).
local function task_timeout(v, fname, what)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    errors.valueerror(fname, what .. " must be a positive number or nil, got " .. errors.describe(v), 1)
  end
  if v >= errors.TIMEOUT_HUGE then return nil end
  return v
end

local function check_callback(v, fname, what)
  if v ~= nil and type(v) ~= "function" then errors.typeerror(fname, what, "a function", v, 1) end
end

-- A non-number is a TypeError; a number that is not an integer >= 1, a ValueError.
local function positive_integer(v, fname, what, max)
  return errors.integer(v, fname, what, 1, max, 1)
end

-- mp.Pool ----------------------------------------------------------------------------------------

-- A pool on Redis (docs/cluster.md): its address and the cluster key. Workers there run their
-- own start-up, so the options about starting local workers do not apply.
local function backend_spec(opts, spec)
  if type(opts.backend) ~= "string" then
    errors.typeerror("Pool", "backend", "a redis:// or unix:// address", opts.backend, 1)
  end
  if not (opts.backend:match("^redis://") or opts.backend:match("^unix://")) then
    errors.valueerror("Pool", "backend must be a redis:// or unix:// address, got " ..
      errors.describe(opts.backend), 1)
  end
  for _, k in ipairs { "initializer", "initargs", "maxtasksperchild" } do
    if opts[k] ~= nil then
      errors.valueerror("Pool", k .. " does not apply to a Redis backend (workers start with `lmp worker`)", 1)
    end
  end
  if opts.key ~= nil and type(opts.key) ~= "string" then
    errors.typeerror("Pool", "key", "a string", opts.key, 1)
  end
  if opts.key_file ~= nil and type(opts.key_file) ~= "string" then
    errors.typeerror("Pool", "key_file", "a string (a file name)", opts.key_file, 1)
  end
  local key, why = opts.key, nil
  if key == nil then key, why = require("lmp.cluster").read_key(opts.key_file) end
  if type(key) ~= "string" then errors.valueerror("Pool", why, 1) end
  if #key < 16 then errors.valueerror("Pool", "the cluster key must have at least 16 bytes", 1) end
  if opts.retry_window ~= nil then task_timeout(opts.retry_window, "Pool", "retry_window") end
  spec.backend, spec.key, spec.retry_window = opts.backend, key, opts.retry_window
end

local POOL_OPTIONS = set { "processes", "initializer", "initargs", "maxtasksperchild",
  "task_timeout", "retries", "backend", "key", "key_file", "retry_window" }

--- mp.Pool([n]) or mp.Pool{processes=, initializer=, initargs=, maxtasksperchild=,
--- task_timeout=, retries=}
function M.Pool(opts, ...)
  errors.check_nargs(select("#", ...) + 1, 1, "Pool")
  if opts == nil or type(opts) == "number" then opts = { processes = opts } end
  if type(opts) ~= "table" then
    errors.typeerror("Pool", "the argument", "a number of processes or an options table", opts)
  end
  errors.check_options(opts, "Pool", POOL_OPTIONS)
  local n = opts.processes
  if n == nil then n = core.cpu_count() end
  n = positive_integer(n, "Pool", "processes", 4096)
  check_callback(opts.initializer, "Pool", "initializer")
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    errors.typeerror("Pool", "initargs", "a table", opts.initargs)
  end
  local maxtasks = opts.maxtasksperchild
  if maxtasks ~= nil then maxtasks = positive_integer(maxtasks, "Pool", "maxtasksperchild") end
  local timeout = task_timeout(opts.task_timeout, "Pool", "task_timeout")
  local retries = errors.integer(opts.retries or 0, "Pool", "retries", 0, 1000000)
  local init = core.encode({ initializer = opts.initializer, initargs = opts.initargs or NOARGS },
    "initializer")
  local spec = { processes = n, init = init, maxtasks = maxtasks or 0, task_timeout = timeout,
                 retries = retries }
  if opts.backend ~= nil then backend_spec(opts, spec) end
  local c = core.pool_new(spec)
  return setmetatable({ _core = c, processes = n, backend = opts.backend }, Pool)
end

-- The state as C keeps it: "RUN", "CLOSE" or "TERMINATE".
function Pool:_state() return (self._core:state()) end

local function check_running(self, fname)
  local state = self._core:state()
  if state ~= "RUN" then
    errors.raise("ValueError", ("Pool not running (%s after %s)"):format(fname,
      state == "CLOSE" and "close()" or "terminate()"))
  end
end

-- apply ------------------------------------------------------------------------------------------

local CALL_OPTIONS = set { "callback", "error_callback", "timeout" }

-- (callback [, error_callback]) or ({callback=, error_callback=, timeout=})
local function call_opts(a, b, fname)
  if type(a) == "table" and getmetatable(a) == nil then
    if b ~= nil then errors.valueerror(fname, "an options table takes no error_callback after it", 2) end
    errors.check_options(a, fname, CALL_OPTIONS, 2)
    return a.callback, a.error_callback, task_timeout(a.timeout, fname, "timeout")
  end
  return a, b, nil
end

--- The hot path of the pool: checks cost nothing when the arguments are right.
function Pool:apply_async(f, args, a, b, ...)
  if getmetatable(self) ~= Pool then check_self(self, "apply_async") end
  if select("#", ...) > 0 then errors.check_nargs(4 + select("#", ...), 4, "apply_async") end
  if type(f) ~= "function" then check_function(f, "apply_async") end
  if args == nil then args = NOARGS
  elseif type(args) ~= "table" or rawget(args, "n") ~= nil or getmetatable(args) ~= nil then
    args = check_args(args, "apply_async")
  end
  local callback, error_callback, timeout
  if a ~= nil or b ~= nil then
    callback, error_callback, timeout = call_opts(a, b, "apply_async")
    check_callback(callback, "apply_async", "callback")
    check_callback(error_callback, "apply_async", "error_callback")
  end
  return self._core:apply(f, args, callback, error_callback, timeout)
end

function Pool:apply(f, args, ...)
  check_self(self, "apply")
  errors.check_nargs(2 + select("#", ...), 2, "apply")
  check_running(self, "apply")
  check_function(f, "apply")
  args = check_args(args, "apply")
  local res = self._core:apply(f, args)
  return res:_get(nil, 2)
end

-- map --------------------------------------------------------------------------------------------

local MAP_OPTIONS = set { "chunksize", "progress", "timeout" }
local MAP_ASYNC_OPTIONS = set { "chunksize", "progress", "timeout", "callback", "error_callback" }

local function map_opts(opts, fname, allowed)
  if opts == nil then return {} end
  if type(opts) == "number" then opts = { chunksize = opts } end
  if type(opts) ~= "table" then
    errors.typeerror(fname, "opts", "a chunksize or an options table", opts, 1)
  end
  errors.check_options(opts, fname, allowed or MAP_OPTIONS, 1)
  if opts.chunksize ~= nil then
    local copy = {} -- the caller's table stays as it was
    for k, v in pairs(opts) do copy[k] = v end
    opts = copy
    opts.chunksize = positive_integer(opts.chunksize, fname, "chunksize", math.maxinteger >> 33)
  end
  if opts.progress ~= nil and opts.progress ~= true and opts.progress ~= false
    and type(opts.progress) ~= "function" then
    errors.typeerror(fname, "progress", "true or a function", opts.progress, 1)
  end
  return opts
end

-- The length of a map's input, and the input as a plain table (see errors.sequence).
local function seq_len(seq, fname)
  if type(seq) ~= "table" then errors.typeerror(fname, "seq", "a sequence (table)", seq, 1) end
  return errors.sequence(seq, fname, "seq", math.maxinteger >> 33, 1)
end

-- A progress reporter: the user's function, or a bar on stderr when it is a terminal.
local function progress_fn(progress)
  if type(progress) == "function" then return progress end
  if progress ~= true or not core.isatty(2) then return nil end
  local t0, last = core.monotonic(), 0
  return function(done, total)
    local now = core.monotonic()
    if (total == nil or done < total) and now - last < 0.1 then return end
    last = now
    local rate = done / math.max(now - t0, 1e-9)
    if total == nil then
      io.stderr:write(("\r%d done %.1f/s "):format(done, rate))
    else
      local frac = total > 0 and done / total or 1
      local width = 30
      local fill = math.floor(frac * width + 0.5)
      local eta = rate > 0 and (total - done) / rate or 0
      io.stderr:write(("\r[%s%s] %d/%d %.1f/s ETA %.0fs "):format(("#"):rep(fill),
        ("."):rep(width - fill), done, total, rate, eta))
      if done >= total then io.stderr:write("\n") end
    end
    io.stderr:flush()
  end
end

-- starmap's items must be tables of arguments: said in the caller, before anything runs.
-- Returns seq, or a copy of it where items with a metatable are plain (never the caller's
-- table changed).
local function check_star_items(seq, n, fname, mine)
  for i = 1, n do
    local item = seq[i]
    if type(item) ~= "table" then
      errors.typeerror(fname, ("seq[%d]"):format(i), "a table of arguments", item, 2)
    end
    if rawget(item, "n") ~= nil or getmetatable(item) ~= nil then
      local _, plain = errors.sequence(item, fname, ("seq[%d]"):format(i), nil, 2)
      if plain ~= item then
        if not mine then seq, mine = table.move(seq, 1, n, 1, { n = n }), true end
        seq[i] = plain
      end
    end
  end
  return seq
end

-- Submits a map-like call: an AsyncResult whose value is the results table.
local function submit_map(self, fname, kind, f, seq, opts, callback, error_callback)
  check_running(self, fname)
  check_function(f, fname)
  local n, plain = seq_len(seq, fname)
  if kind == K_STARMAP then plain = check_star_items(plain, n, fname, plain ~= seq) end
  seq = plain
  local chunksize = opts.chunksize or 0 -- 0: the default, guided (lpool.c, next_count)
  return self._core:map(kind, f, seq, n, chunksize, task_timeout(opts.timeout, fname, "timeout"),
    progress_fn(opts.progress), callback, error_callback)
end

function Pool:map(f, seq, opts, ...)
  check_self(self, "map")
  errors.check_nargs(3 + select("#", ...), 3, "map")
  local res = submit_map(self, "map", K_MAP, f, seq, map_opts(opts, "map"))
  local results = res:_get(nil, 2)
  return results
end

function Pool:starmap(f, seq, opts, ...)
  check_self(self, "starmap")
  errors.check_nargs(3 + select("#", ...), 3, "starmap")
  local res = submit_map(self, "starmap", K_STARMAP, f, seq, map_opts(opts, "starmap"))
  local results = res:_get(nil, 2)
  return results
end

-- (f, seq [, chunksize | opts] [, callback [, error_callback]]) or (f, seq, callback [, ecb])
local function map_async(self, fname, kind, f, seq, a, b, c, ...)
  check_self(self, fname)
  errors.check_nargs(5 + select("#", ...), 5, fname, 1)
  local opts, callback, error_callback
  if type(a) == "function" or (a == nil and b ~= nil) then
    opts, callback, error_callback = {}, a, b
    if c ~= nil then errors.valueerror(fname, "too many arguments after the callbacks", 1) end
  else
    opts = map_opts(a, fname, MAP_ASYNC_OPTIONS)
    callback, error_callback = opts.callback or b, opts.error_callback or c
  end
  check_callback(callback, fname, "callback")
  check_callback(error_callback, fname, "error_callback")
  return submit_map(self, fname, kind, f, seq, opts, callback, error_callback)
end

function Pool:map_async(f, seq, a, b, c, ...)
  return map_async(self, "map_async", K_MAP, f, seq, a, b, c, ...)
end

function Pool:starmap_async(f, seq, a, b, c, ...)
  return map_async(self, "starmap_async", K_STARMAP, f, seq, a, b, c, ...)
end

-- imap / imap_unordered --------------------------------------------------------------------------

-- An input reader over a table or an iterator: read(k) -> count, items, first (the items are
-- items[first..first+count-1]), and the total (nil for an iterator) and whether items are the
-- input's own positions. A table is read in place (a copy when it has a metatable). An iterator
-- is called as a generic for calls it, iter(state, control), each first value an item.
local function reader(seq, fname, state, control)
  if type(seq) == "table" then
    local n, plain = seq_len(seq, fname)
    local pos = 0
    return function(k)
      if pos >= n then return 0 end
      local count = math.min(k, n - pos)
      local first = pos + 1
      pos = pos + count
      return count, plain, first
    end, n, true
  elseif type(seq) == "function" then
    -- an error of the iterator ends the input; it is raised when the loop gets there: after
    -- the items of the chunks before, the chunk it broke being dropped, as CPython does
    local finished = false
    return function(k)
      if finished then return 0 end
      local chunk, n = {}, 0
      for _ = 1, k do
        local ok, v = pcall(seq, state, control)
        if not ok then
          finished = true
          return 0, nil, 1, v
        end
        if v == nil then finished = true break end
        control = v
        n = n + 1
        chunk[n] = v
      end
      return n, chunk, 1
    end, nil, false
  end
  errors.typeerror(fname, "seq", "a sequence (table) or an iterator function", seq, 1)
end

-- Rewrites the codec's path for an item of a chunk read from an iterator (seq[3].x) to its
-- position in the input.
local function item_path_error(err, offset)
  if errors.iserror(err, "SerializationError") and offset > 0 then
    local k, rest = tostring(err.message):match("^seq%[(%d+)%](.*)$")
    if k then err.message = ("seq[%d]%s"):format(offset + tonumber(k), rest) end
  end
  return err
end

-- The values of a generic for after f: (f, seq [, opts]), or (f, iter, state, control
-- [, closing]) when iter is a function given with more than one value after it
-- (`pool:imap(f, io.lines(path))`, `pool:imap(f, pairs(t))`): then no options.
local function imap(self, fname, ordered, f, seq, opts, ...)
  check_self(self, fname)
  local state, control, closing
  if type(seq) == "function" and select("#", ...) > 0 then
    errors.check_nargs(3 + select("#", ...), 5, fname, 1)
    state, control, closing = opts, ...
    opts = nil
  else
    errors.check_nargs(3 + select("#", ...), 3, fname, 1)
  end
  opts = map_opts(opts, fname)
  check_running(self, fname)
  check_function(f, fname)
  local read, total, inplace = reader(seq, fname, state, control)
  local chunksize = opts.chunksize or 1
  local limit = math.max(self.processes * 64, chunksize * 2) -- items added, not yet taken
  local call = self._core:imap(K_MAP, f, ordered, total,
    task_timeout(opts.timeout, fname, "timeout"), progress_fn(opts.progress))
  local exhausted, read_error = false, nil

  -- the end of the input, or of the loop: the iterator's closing value is closed, as a for's
  local function close_input()
    local c = closing
    closing = nil
    local mt = c ~= nil and getmetatable(c)
    if mt and mt.__close then mt.__close(c, nil) end
  end

  local function feed()
    while not exhausted and call:outstanding() < limit do
      local count, items, first, err = read(chunksize)
      if count > 0 then
        local _, before = call:outstanding() -- the position offset of an iterator's chunk
        local ok, e = pcall(call.add, call, items, first, count)
        if not ok then
          call:stop()
          error(inplace and e or item_path_error(e, before), 0)
        end
      end
      if count == 0 or err ~= nil then
        exhausted, read_error = true, err
        call:finish()
        close_input()
        break
      end
    end
  end

  -- breaking out of the loop (or dropping the iterator) stops the rest of the call's work
  local closer = setmetatable({}, { __close = function() call:stop() close_input() end,
                                    __gc = function() call:stop() close_input() end })
  local function next_item()
    local _ = closer
    while true do
      local has, i, v = call:take(2)
      if has then
        feed()
        return i, v
      end
      if exhausted and call:outstanding() == 0 then
        if read_error ~= nil then
          local e = read_error
          read_error = nil
          error(e, 0)
        end
        return nil
      end
      feed()
      if not (exhausted and call:outstanding() == 0) then call:wait() end
    end
  end

  feed() -- work starts now, not at the first iteration
  return next_item, nil, nil, closer
end

function Pool:imap(f, seq, opts, ...) return imap(self, "imap", true, f, seq, opts, ...) end
function Pool:imap_unordered(f, seq, opts, ...)
  return imap(self, "imap_unordered", false, f, seq, opts, ...)
end

-- Lifecycle --------------------------------------------------------------------------------------

function Pool:close(...)
  check_self(self, "close")
  errors.check_nargs(select("#", ...), 0, "close")
  self._core:close()
end

function Pool:terminate(...)
  check_self(self, "terminate")
  errors.check_nargs(select("#", ...), 0, "terminate")
  self._core:terminate()
end

function Pool:join(timeout, ...)
  check_self(self, "join")
  errors.check_nargs(1 + select("#", ...), 1, "join")
  return self._core:join(errors.timeout(timeout, "join"))
end

--- Worker pids and queue sizes (for diagnostics and tests).
function Pool:stats(...)
  check_self(self, "stats")
  errors.check_nargs(select("#", ...), 0, "stats")
  return self._core:stats()
end

Pool.__close = function(self) self._core:terminate() end

function Pool.__tostring(self)
  return ("<Pool processes=%d state=%s>"):format(self.processes, self._core:state())
end

M.PoolClass = Pool
M.AsyncResult = AsyncResult

return M
