-- lmp.pool — mp.Pool: map, starmap, imap, imap_unordered, apply, apply_async, map_async,
-- starmap_async, AsyncResult, and the policy around lmp.core's pool (runtime/pool.c):
-- chunking, result assembly, callbacks, errors, progress.
-- Every result reaches this file through one handler the C pool calls from the event loop;
-- the handler never blocks, and user callbacks run inside it (so a result's callback has run
-- by the time get() or wait() returns for it).
local core = require "lmp.core"
local errors = require "lmp.errors"

local M = {}

local Pool = {}
Pool.__index = Pool
Pool.__name = "lmp.Pool"

local AsyncResult = core.AsyncResult -- the C methods, extended below

local K_APPLY, K_MAP, K_STARMAP = core.K_APPLY, core.K_MAP, core.K_STARMAP
local unpack = table.unpack

M.callbacks_run = 0 -- how many user callbacks ran (mp.poll's count)

-- Waiting ------------------------------------------------------------------------------------

--- Runs the loop until pred() holds or timeout seconds pass; returns pred().
local function wait_until(pred, timeout)
  if pred() then return true end
  local deadline = timeout and core.monotonic() + timeout
  while true do
    local remaining = nil
    if deadline then
      remaining = deadline - core.monotonic()
      if remaining <= 0 then return pred() end
    end
    core.wait_event(remaining)
    if pred() then return true end
  end
end

local function check_timeout(timeout, fname, n)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    errors.argerror(fname, n, "timeout must be a non-negative number or nil")
  end
end

-- Callbacks ----------------------------------------------------------------------------------

local function report_callback_error(which, err)
  local msg = type(err) == "string" and err or tostring(err)
  io.stderr:write(("lmp: error in %s (reported, the pool goes on):\n%s\n"):format(which, msg))
  io.stderr:flush()
end

local function traceback(e)
  return debug.traceback(type(e) == "string" and e or tostring(e), 2)
end

--- Runs a user callback protected; an error is reported on stderr and kept on the result.
local function run_callback(res, which, fn, ...)
  M.callbacks_run = M.callbacks_run + 1
  local ok, err = xpcall(fn, traceback, ...)
  if not ok then
    res.callback_error = err
    report_callback_error(which, err)
  end
end

-- AsyncResult --------------------------------------------------------------------------------
-- A C object (runtime/result.c): get, wait, ready, successful are C methods; a result with
-- no callbacks that succeeds is settled by the C pool directly. What needs Lua is here.

--- Settles a result and runs its callback: ok with a packed table of values, or failed with
--- an error object.
local function settle(res, ok, value)
  if not res:_settle(ok, value) then return end
  local _, _, _, callback, error_callback = res:_parts()
  if ok and callback then
    run_callback(res, "callback", callback, unpack(value, 1, value.n))
  elseif not ok and error_callback then
    run_callback(res, "error_callback", error_callback, value)
  end
end

--- Cancels tasks that have not started; true when the result will never run.
function AsyncResult:cancel()
  if self:ready() then return false end
  local core_pool, id, job = self:_parts()
  if job then
    for cid in pairs(job.ids) do -- all or nothing: a started chunk keeps the job going
      if not core_pool:queued(cid) then return false end
    end
    job:cancel()
  elseif not core_pool:cancel(id) then
    return false
  end
  self:_settle(false, errors.new("ValueError", "the task was cancelled"))
  self.cancelled = true
  return true
end

-- Turning what the C pool delivers into results --------------------------------------------

local function remote_error(value, pid, index)
  local fields = { value = value.value, traceback = value.traceback, pid = pid, index = index }
  return errors.new("RemoteError", tostring(value.message), fields)
end

local function failure(status, value, pid, index)
  if status == "error" then return remote_error(value, pid, index) end
  if status == "unencodable" then
    return errors.new("SerializationError", "the task's result cannot be sent: " .. tostring(value),
      { pid = pid, index = index })
  end
  if status == "timeout" then
    return errors.new("TimeoutError", value.message, { pid = value.pid, index = index })
  end
  return errors.new("WorkerLostError", value.message,
    { pid = value.pid, exitcode = value.exitcode, index = index })
end

-- A job: the results of one map/imap call, filled chunk by chunk.
local Job = {}
Job.__index = Job

local function new_job(pool, total, ordered)
  return setmetatable({ pool = pool, total = total, results = {}, done = 0, chunks = 0,
                        ids = {}, ordered = ordered, ready = {}, nready = 0, err = nil }, Job)
end

-- A failed chunk keeps the error of the earliest chunk (imap raises it at that position).
function Job:chunk_done(rec, ok, value, index, pid)
  self.ids[rec.id] = nil
  self.chunks = self.chunks - 1
  if not ok then
    if not self.err or rec.start < self.err_chunk then
      self.err = failure(value.status, value.value, pid, rec.start + index)
      self.err_chunk = rec.start
    end
  else
    local start = rec.start
    -- the C pool decodes a chunk's results straight into place (value == true)
    if value ~= true then table.move(value, 1, rec.count, start, self.results) end
    local filled = self.filled
    if filled then
      for k = start, start + rec.count - 1 do filled[k] = true end
    end
    if not self.ordered then
      -- ready[1..nready]: arrived indexes in arrival order (consumed ones become nil, so
      -- the count is kept apart: # is no help on a list with a hole at its start)
      local ready, nr = self.ready, self.nready
      for i = start, start + rec.count - 1 do
        nr = nr + 1
        ready[nr] = i
      end
      self.nready = nr
    end
    self.done = self.done + rec.count
    if self.progress then self.progress(self.done, self.total) end
  end
  if self.on_change then self.on_change(self) end
end

function Job:cancel()
  local core_pool = self.pool._core
  for id in pairs(self.ids) do
    core_pool:cancel(id)
    self.pool._pending[id] = nil
  end
  self.ids = {}
end

-- Pool ---------------------------------------------------------------------------------------

local function check_function(f, fname)
  if type(f) ~= "function" then
    errors.argerror(fname, 1, "function expected, got " .. type(f))
  end
end

local NOARGS = { n = 0 }

-- The arguments as sent: the table itself (the worker honours `n`, else uses #args).
local function pack_args(args, fname, n)
  if args == nil then return NOARGS end
  if type(args) ~= "table" then
    errors.argerror(fname, n, "args must be a table (a sequence), got " .. type(args))
  end
  return args
end

local function positive_int(v, what)
  if math.type(v) ~= "integer" or v < 1 then
    errors.argerror("Pool", 1, what .. " must be a positive integer, got " .. tostring(v))
  end
  return v
end

--- mp.Pool([n]) or mp.Pool{processes=, initializer=, initargs=, maxtasksperchild=,
--- task_timeout=, retries=}
function M.Pool(opts)
  if opts == nil or type(opts) == "number" then opts = { processes = opts } end
  if type(opts) ~= "table" then
    errors.argerror("Pool", 1, "a number of processes or an options table expected, got " .. type(opts))
  end
  local n = opts.processes or core.cpu_count()
  positive_int(n, "processes")
  if n > 4096 then errors.argerror("Pool", 1, "processes must be at most 4096, got " .. n) end
  if opts.initializer ~= nil and type(opts.initializer) ~= "function" then
    errors.argerror("Pool", 1, "initializer must be a function")
  end
  local maxtasks = opts.maxtasksperchild
  if maxtasks ~= nil then positive_int(maxtasks, "maxtasksperchild") end
  local task_timeout = opts.task_timeout
  if task_timeout ~= nil and (type(task_timeout) ~= "number" or task_timeout <= 0) then
    errors.argerror("Pool", 1, "task_timeout must be a positive number")
  end
  local retries = opts.retries or 0
  if math.type(retries) ~= "integer" or retries < 0 then
    errors.argerror("Pool", 1, "retries must be a non-negative integer")
  end
  local init = core.encode({ initializer = opts.initializer,
                             initargs = pack_args(opts.initargs, "Pool", 1) }, "initializer")
  local pending = {} -- task id -> AsyncResult or chunk record; shared with the C pool
  local function handler(id, status, value, index, pid, waiter)
    if type(waiter) == "table" then -- a chunk of a map-like job
      if status == "ok" then
        waiter.job:chunk_done(waiter, true, value, 0, pid)
      else
        waiter.job:chunk_done(waiter, false, { status = status, value = value }, index, pid)
      end
    elseif status == "ok" then
      settle(waiter, true, value)
    else
      settle(waiter, false, failure(status, value, pid, nil))
    end
  end
  local self = setmetatable({
    _pending = pending, _state = "RUN", processes = n, _timeout = task_timeout,
    _retries = retries,
  }, Pool)
  self._core = core.pool_new(handler, n, init, maxtasks or 0, pending)
  return self
end

function Pool:_check_running(fname)
  if self._state ~= "RUN" then
    errors.raise("ValueError", ("Pool not running (%s after %s)"):format(fname,
      self._state == "CLOSE" and "close()" or "terminate()"))
  end
end

-- Submits one task (rec waits for its result: rec.id is set); returns its id. With first
-- and count, the arguments are the slice args[first..first+count-1] of an input sequence (a
-- map chunk, encoded without a copy).
function Pool:_submit(kind, fn, args, rec, timeout, hold, first, count)
  return self._core:submit(kind, fn, args, timeout or self._timeout, self._retries, hold,
    first, count, rec)
end

local function call_opts(a, b)
  -- (callback [, error_callback]) or ({callback=, error_callback=, timeout=})
  if type(a) == "table" and b == nil then
    return a.callback, a.error_callback, a.timeout
  end
  return a, b, nil
end

-- The hot path of the pool: checks cost nothing when the arguments are right.
function Pool:apply_async(f, args, a, b)
  if self._state ~= "RUN" then self:_check_running("apply_async") end
  if type(f) ~= "function" then check_function(f, "apply_async") end
  local callback, error_callback, timeout
  if a ~= nil or b ~= nil then
    callback, error_callback, timeout = call_opts(a, b)
    if callback ~= nil and type(callback) ~= "function" then
      errors.argerror("apply_async", 3, "callback must be a function")
    end
    if error_callback ~= nil and type(error_callback) ~= "function" then
      errors.argerror("apply_async", 4, "error_callback must be a function")
    end
    check_timeout(timeout, "apply_async", 3)
  end
  if args == nil then args = NOARGS
  elseif type(args) ~= "table" then pack_args(args, "apply_async", 2) end
  return self._core:apply(f, args, timeout or self._timeout, self._retries, callback,
    error_callback)
end

function Pool:apply(f, args)
  return self:apply_async(f, args):get()
end

-- Parses map-like opts: a chunksize number or {chunksize=, progress=, timeout=}.
local function map_opts(fname, opts)
  if opts == nil then return {} end
  if type(opts) == "number" then opts = { chunksize = opts } end
  if type(opts) ~= "table" then
    errors.argerror(fname, 3, "a chunksize or an options table expected, got " .. type(opts))
  end
  if opts.chunksize ~= nil and (math.type(opts.chunksize) ~= "integer" or opts.chunksize < 1) then
    errors.argerror(fname, 3, "chunksize must be a positive integer")
  end
  check_timeout(opts.timeout, fname, 3)
  return opts
end

local function seq_len(seq, fname)
  if type(seq) ~= "table" then
    errors.argerror(fname, 2, "a sequence (table) expected, got " .. type(seq))
  end
  return math.type(seq.n) == "integer" and seq.n or #seq
end

-- A progress reporter: the user's function, or a bar on stderr when it is a terminal.
local function progress_fn(progress)
  if type(progress) == "function" then return progress end
  if progress ~= true or not core.isatty(2) then return nil end
  local t0 = core.monotonic()
  local last = 0
  return function(done, total)
    local now = core.monotonic()
    if done < total and now - last < 0.1 then return end
    last = now
    local frac = total > 0 and done / total or 1
    local rate = done / math.max(now - t0, 1e-9)
    local eta = rate > 0 and (total - done) / rate or 0
    local width = 30
    local fill = math.floor(frac * width + 0.5)
    io.stderr:write(("\r[%s%s] %d/%d %.1f/s ETA %.0fs "):format(("#"):rep(fill),
      ("."):rep(width - fill), done, total, rate, eta))
    if done >= total then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

local function default_chunksize(n, processes)
  local c, extra = n // (processes * 4), n % (processes * 4)
  if extra > 0 then c = c + 1 end
  return math.max(c, 1)
end

-- Rewrites the codec's path for an item of a chunk (chunk[3].x) into seq[index].x.
local function item_path_error(err, start)
  if errors.iserror(err, "SerializationError") then
    local k, rest = tostring(err.message):match("^chunk%[(%d+)%](.*)$")
    if k then err.message = ("seq[%d]%s"):format(start + tonumber(k) - 1, rest) end
  end
  return err
end

-- Submits every chunk of seq for a job (all encoded before any is queued).
function Pool:_submit_chunks(job, kind, f, seq, n, chunksize, timeout)
  local fref = self._core:fn(f)
  local ok, err = pcall(function()
    for start = 1, n, chunksize do
      local count = math.min(chunksize, n - start + 1)
      local rec = { job = job, start = start, count = count, into = job.results }
      self:_submit(kind, fref, seq, rec, timeout, true, start, count)
      job.ids[rec.id] = true
      job.chunks = job.chunks + 1
    end
  end)
  if not ok then
    self._core:release(false)
    for id in pairs(job.ids) do self._pending[id] = nil end
    error(err, 0)
  end
  self._core:release(true)
end

-- Runs a map-like job to the end (blocking); returns the results or raises the first error.
function Pool:_run_map(fname, kind, f, seq, opts)
  self:_check_running(fname)
  check_function(f, fname)
  local n = seq_len(seq, fname)
  opts = map_opts(fname, opts)
  local job = new_job(self, n, true)
  job.progress = progress_fn(opts.progress)
  if n == 0 then return { n = 0 } end
  self:_submit_chunks(job, kind, f, seq, n, opts.chunksize or default_chunksize(n, self.processes),
    opts.timeout)
  local ok, err = pcall(wait_until, function() return job.chunks == 0 or job.err ~= nil end)
  if not ok or job.err then
    job:cancel()
    error(ok and job.err or err, 3)
  end
  job.results.n = n
  return job.results
end

function Pool:map(f, seq, opts) return self:_run_map("map", K_MAP, f, seq, opts) end
function Pool:starmap(f, seq, opts) return self:_run_map("starmap", K_STARMAP, f, seq, opts) end

-- map_async / starmap_async: an AsyncResult whose value is the results table.
function Pool:_map_async(fname, kind, f, seq, a, b, c)
  self:_check_running(fname)
  check_function(f, fname)
  local n = seq_len(seq, fname)
  local opts, callback, error_callback = {}, nil, nil
  if type(a) == "table" then
    opts = map_opts(fname, a)
    callback, error_callback = opts.callback or b, opts.error_callback or c
  elseif type(a) == "number" then
    opts = map_opts(fname, a)
    callback, error_callback = b, c
  else
    callback, error_callback = a, b
  end
  if callback ~= nil and type(callback) ~= "function" then
    errors.argerror(fname, 3, "callback must be a function")
  end
  if error_callback ~= nil and type(error_callback) ~= "function" then
    errors.argerror(fname, 4, "error_callback must be a function")
  end
  local job = new_job(self, n, true)
  local res = core.result_new(self._core, callback, error_callback, job)
  job.progress = progress_fn(opts.progress)
  job.on_change = function(j)
    if j.err then
      j:cancel()
      settle(res, false, j.err)
    elseif j.chunks == 0 then
      j.results.n = n
      settle(res, true, { n = 1, j.results })
    end
  end
  if n == 0 then
    settle(res, true, { n = 1, { n = 0 } })
    return res
  end
  self:_submit_chunks(job, kind, f, seq, n, opts.chunksize or default_chunksize(n, self.processes),
    opts.timeout)
  return res
end

function Pool:map_async(f, seq, a, b, c) return self:_map_async("map_async", K_MAP, f, seq, a, b, c) end
function Pool:starmap_async(f, seq, a, b, c)
  return self:_map_async("starmap_async", K_STARMAP, f, seq, a, b, c)
end

-- imap / imap_unordered ----------------------------------------------------------------------

-- An input reader over a table or an iterator function: next() -> count, items (up to k).
local function reader(seq, fname)
  if type(seq) == "table" then
    local n, pos = seq_len(seq, fname), 0
    return function(k)
      if pos >= n then return 0 end
      local count = math.min(k, n - pos)
      local chunk = table.move(seq, pos + 1, pos + count, 1, {})
      chunk.n = count
      pos = pos + count
      return count, chunk
    end, n
  elseif type(seq) == "function" then
    local finished = false
    return function(k)
      if finished then return 0 end
      local chunk = {}
      for i = 1, k do
        local v = seq()
        if v == nil then finished = true break end
        chunk[i] = v
      end
      chunk.n = #chunk
      return chunk.n, chunk
    end, nil
  end
  errors.argerror(fname, 2, "a sequence (table) or an iterator function expected, got " .. type(seq))
end

function Pool:_imap(fname, f, seq, opts, ordered)
  self:_check_running(fname)
  check_function(f, fname)
  opts = map_opts(fname, opts)
  local read, total = reader(seq, fname)
  local chunksize = opts.chunksize or 1
  local job = new_job(self, total or 0, ordered)
  job.progress = progress_fn(opts.progress)
  local fref = self._core:fn(f)
  local limit = self.processes * 64          -- items submitted but not yet yielded
  local next_start, yielded_upto, outstanding = 1, 0, 0
  local exhausted = false
  local rpos = 1                             -- imap_unordered: next entry of job.ready

  local function feed()
    while not exhausted and outstanding < limit do
      local count, chunk = read(chunksize)
      if count == 0 then exhausted = true break end
      local rec = { job = job, start = next_start, count = count, into = job.results }
      local ok, err = pcall(self._submit, self, K_MAP, fref, chunk, rec, opts.timeout)
      if not ok then error(item_path_error(err, next_start), 0) end
      job.ids[rec.id] = true
      job.chunks = job.chunks + 1
      next_start = next_start + count
      outstanding = outstanding + count
    end
  end

  local function raise_err()
    local e = job.err
    job:cancel()
    error(e, 0)
  end

  local function next_ordered()
    local i = yielded_upto + 1
    feed()
    while not job.filled[i] do
      if job.err and job.err_chunk <= i then raise_err() end
      if exhausted and i >= next_start then return nil end
      core.wait_event(nil)
      feed()
    end
    yielded_upto = i
    outstanding = outstanding - 1
    local v = job.results[i]
    job.results[i], job.filled[i] = nil, nil
    return i, v
  end

  local function next_unordered()
    feed()
    while rpos > job.nready do
      if job.err then raise_err() end
      if exhausted and outstanding == 0 then return nil end
      core.wait_event(nil)
      feed()
    end
    local i = job.ready[rpos]
    job.ready[rpos] = nil
    rpos = rpos + 1
    if rpos > job.nready then job.ready, job.nready, rpos = {}, 0, 1 end
    outstanding = outstanding - 1
    local v = job.results[i]
    job.results[i], job.filled[i] = nil, nil
    return i, v
  end

  job.filled = {}
  feed() -- work starts now, not at the first iteration
  local closer = setmetatable({}, { __close = function() job:cancel() end })
  return ordered and next_ordered or next_unordered, nil, nil, closer
end

function Pool:imap(f, seq, opts) return self:_imap("imap", f, seq, opts, true) end
function Pool:imap_unordered(f, seq, opts) return self:_imap("imap_unordered", f, seq, opts, false) end

-- Lifecycle ----------------------------------------------------------------------------------

function Pool:close()
  if self._state == "RUN" then
    self._state = "CLOSE"
    self._core:close()
  end
end

function Pool:terminate()
  if self._state ~= "TERMINATE" then
    self._state = "TERMINATE"
    self._core:terminate()
  end
end

function Pool:join(timeout)
  if self._state == "RUN" then
    errors.raise("ValueError", "join() needs close() or terminate() first")
  end
  check_timeout(timeout, "join", 1)
  return self._core:join(timeout)
end

--- Worker pids and queue sizes (for diagnostics and tests).
function Pool:stats() return self._core:stats() end

Pool.__close = function(self) self:terminate() end

function Pool.__tostring(self)
  return ("<Pool processes=%d state=%s>"):format(self.processes, self._state)
end

M.PoolClass = Pool
M.AsyncResult = AsyncResult

return M
