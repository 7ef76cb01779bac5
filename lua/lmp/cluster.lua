-- lmp.cluster — pools beyond one machine: `lmp worker URL` serves the tasks of every pool on a
-- Redis from this machine (a local pool of forked workers fed from the tasks stream), and
-- `lmp status URL` shows what the cluster is doing. The parent's side is runtime/broker.c; the
-- key names and message fields here are the same as there (docs/cluster.md).
-- Delivery is at least once: a task is acknowledged only after its result is stored; tasks of a
-- worker that died or went silent are reclaimed by others; the parent keeps the first result.
local core = require "lmp.core"
local mp = require "lmp"

local M = {}

local TASKS, GROUP, DEAD, WORKERS = "lmp:tasks", "lmp:workers", "lmp:dead", "lmp:workerset"
local LOST = { died = -1, timeout = -2, stopped = -3, terminated = -4 } -- -1 - LOST_* (dispatch.h)
local FN_CACHE_MAX = 4096
local PREFETCH_S, PREFETCH_MAX = 0.05, 64 -- tasks held per process: 50 ms of work, at most 64
local RECLAIM_EXTRA = 2 -- deliveries beyond retries + 1 for a task reclaimed from a silent worker

local function key(kind, pool) return "lmp:" .. kind .. ":" .. pool end

local function log(fmt, ...)
  io.stderr:write(("lmp worker: " .. fmt .. "\n"):format(...))
  io.stderr:flush()
end

--- The cluster key: $LMP_CLUSTER_KEY, or the contents of key_file (trailing white space cut).
--- Returns the key, or nil and why not.
function M.read_key(key_file)
  local k
  if key_file then
    local f, err = io.open(key_file, "rb")
    if not f then return nil, "cannot read the key file: " .. tostring(err) end
    k = f:read("a"):gsub("%s+$", "")
    f:close()
  else
    k = os.getenv("LMP_CLUSTER_KEY")
    if k == nil or k == "" then
      return nil, "no cluster key: set LMP_CLUSTER_KEY or pass --key-file FILE"
    end
  end
  if #k < 16 then return nil, "the cluster key must have at least 16 bytes" end
  return k
end

-- Entry fields as a table: {"p", v1, "t", v2...} -> {p = v1, t = v2...}
local function fields(list)
  local f = {}
  for i = 1, (list.n or #list) - 1, 2 do f[list[i]] = list[i + 1] end
  return f
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l") or "host"
  if f then f:close() end
  return h
end

-- Command line ---------------------------------------------------------------------------------

local USAGE = [[
usage: lmp worker URL [-P N] [--key-file FILE] [--name NAME] [--heartbeat S] [--reclaim S]
       lmp status URL
  URL              redis://host[:port][/db] or unix:///path/to/redis.sock[?db=N]
  -P N             worker processes (default: the number of CPUs)
  --key-file FILE  the cluster key (default: $LMP_CLUSTER_KEY)
  --name NAME      this worker's name in the group (default: host:pid)
  --heartbeat S    seconds between heartbeats (default 1)
  --reclaim S      tasks of a worker silent this long are run elsewhere (default 5)
]]

local function parse(argv)
  local o = { heartbeat = 1, reclaim = 5 }
  local i = 1
  while argv[i] do
    local a = argv[i]
    local function value()
      i = i + 1
      if argv[i] == nil then return nil, a .. " needs a value" end
      return argv[i]
    end
    local v, err
    if a == "-P" then
      v, err = value()
      o.processes = math.tointeger(tonumber(v or ""))
      if not o.processes or o.processes < 1 then return nil, err or "-P needs a positive integer" end
    elseif a == "--key-file" then
      o.key_file, err = value()
    elseif a == "--name" then
      o.name, err = value()
    elseif a == "--heartbeat" or a == "--reclaim" then
      v, err = value()
      o[a:sub(3)] = tonumber(v or "")
      if not o[a:sub(3)] or o[a:sub(3)] <= 0 then return nil, err or a .. " needs a positive number" end
    elseif a == "-h" or a == "--help" then
      return nil, "help"
    elseif a:sub(1, 1) == "-" then
      return nil, "unknown option " .. a
    elseif o.url then
      return nil, "one URL only"
    else
      o.url = a
    end
    if err then return nil, err end
    i = i + 1
  end
  if not o.url then return nil, "a Redis URL is required" end
  return o
end

-- The worker -----------------------------------------------------------------------------------

local Worker = {}
Worker.__index = Worker

-- Acknowledged tasks leave the stream in one XACK and one XDEL per turn of the serving loop.
function Worker:ack(id)
  local acks = self.acks
  acks[#acks + 1] = id
  if self.nrunning == 0 or #acks >= 256 then self:flush_acks() end -- idle: no batch to wait for
end

function Worker:flush_acks()
  local acks = self.acks
  if #acks == 0 then return end
  self.acks = {}
  self.wr:send("XACK", TASKS, GROUP, table.unpack(acks))
  self.wr:send("XDEL", TASKS, table.unpack(acks))
end

-- A pool's results stream expires an hour after its pool stopped refreshing it (a parent that
-- died): set once a minute, not with every result.
function Worker:expire(rkey)
  local now = mp.monotonic()
  if (self.expiring[rkey] or 0) > now then return end
  self.expiring[rkey] = now + 60
  self.wr:send("EXPIRE", rkey, "3600", "NX")
end

-- Stores a task's result (the parent reads it) and then acknowledges the task: at least once.
function Worker:post(id, f, status, index, msg)
  local rkey = key("res", f.p)
  local mac = core.cluster_mac(self.key, "result", f.p, f.t, status, tostring(index), self.name, msg)
  self.wr:send("XADD", rkey, "*", "t", f.t, "s", status, "i", tostring(index), "w", self.name,
    "m", msg, "h", mac)
  self:expire(rkey)
  self:ack(id)
end

-- A task that fails its check is never run: it goes to the dead letters, and its pool hears
-- of it (unsigned: that notice can only fail a task, never deliver a value).
function Worker:refuse(id, f)
  self.wr:send("XADD", DEAD, "MAXLEN", "~", "10000", "*", "p", tostring(f.p), "t", tostring(f.t),
    "reason", "fails its HMAC check", "worker", self.name)
  if type(f.p) == "string" and type(f.t) == "string" and f.p:match("^%x+$") then
    self.wr:send("XADD", key("res", f.p), "*", "t", f.t, "s", "R", "i", "0", "w", self.name,
      "m", "refused by worker " .. self.name .. ": the task fails its HMAC check (is the "
        .. "worker's key the pool's?)", "h", "")
    self:expire(key("res", f.p))
  end
  self:ack(id)
end

-- Whether a pool still lives (its parent refreshes a key), and whether it has cancelled tasks
-- to look for: asked once a second per pool.
function Worker:alive(pool)
  local now = mp.monotonic()
  local c = self.pools[pool]
  if c and now - c.at < 1 then return c.ok, c.cancels end
  local ok = self.wr:call("EXISTS", key("pool", pool)) == 1
  local cancels = ok and self.wr:call("SCARD", key("cancel", pool)) or 0
  self.pools[pool] = { ok = ok, cancels = cancels, at = now }
  return ok, cancels
end

-- The task function of a pool, checked and signed for this process's workers (cached).
function Worker:fn(pool, fnid)
  local k = pool .. ":" .. fnid
  local fn = self.fns[k]
  if fn then return fn end
  local v = self.wr:call("HGET", key("fn", pool), fnid)
  if type(v) ~= "string" or #v < 32 then return nil, "its function is not in Redis" end
  local msg = v:sub(33)
  if not core.cluster_mac_ok(self.key, v:sub(1, 32), "fn", pool, fnid, msg) then
    return nil, "its function fails its HMAC check"
  end
  fn = core.codec_resign(msg)
  self.nfns = self.nfns + 1
  if self.nfns > FN_CACHE_MAX then self.fns, self.nfns = {}, 1 end
  self.fns[k] = fn
  return fn
end

-- What becomes of a task the local pool ran: its result, or (its worker died) another try.
-- Runs as a pool callback: a Redis that went away is kept for the serving loop to raise.
function Worker:finished(rec, status, msg, index)
  local ok, err = pcall(self.settle, self, rec, status, msg, index)
  if not ok and not self.broken then self.broken = err end
end

function Worker:settle(rec, status, msg, index)
  -- a task's time: since it was handed to the local pool, shared with the tasks it waited
  -- behind there (ahead of it, over the processes running them); averaged per function
  local took = (mp.monotonic() - rec.t0) / (rec.ahead // self.opts.processes + 1)
  local k, avgs = rec.stream, self.avgs
  if avgs[k] == nil then
    self.navgs = self.navgs + 1
    if self.navgs > FN_CACHE_MAX then avgs, self.navgs = {}, 1; self.avgs = avgs end
  end
  avgs[k] = avgs[k] and avgs[k] * 0.8 + took * 0.2 or took
  if status == LOST.died then -- counted by Redis's delivery counter: looked at in the main loop
    self.retry[#self.retry + 1] = rec
    return
  end
  self.running[rec.id] = nil
  self.nrunning = self.nrunning - 1
  self.done = self.done + 1
  if status >= 0 then
    self:post(rec.id, rec.f, tostring(status), index, msg)
  elseif status == LOST.timeout then
    self:post(rec.id, rec.f, "T", index, msg)
  elseif status == LOST.stopped then
    self:ack(rec.id) -- its pool cancelled it: nobody waits for it
  else
    self:post(rec.id, rec.f, "L", index, msg)
  end
end

-- Runs a checked task on the local pool.
function Worker:run(id, f)
  local fn, why = self:fn(f.p, f.f)
  if not fn then
    self:post(id, f, "L", 0, "the task cannot run on worker " .. self.name .. ": " .. why)
    return
  end
  local ms = tonumber(f.o) or 0
  local rec = { id = id, f = f, retries = tonumber(f.r) or 0, t0 = mp.monotonic(),
    ahead = self.nrunning, stream = f.p .. ":" .. f.f }
  self.stream = rec.stream
  rec.res = self.pool._core:apply_raw(tonumber(f.k) or 0, fn, core.codec_resign(f.a),
    ms > 0 and ms / 1000 or nil, function(status, msg, index) self:finished(rec, status, msg, index) end)
  self.running[id] = rec
  self.nrunning = self.nrunning + 1
end

-- Takes a batch of entries {id, fields}: checks each, drops those of dead or cancelling pools,
-- and runs the rest.
function Worker:take(entries)
  local byPool = {}
  for _, e in ipairs(entries) do
    local id, f = e[1], fields(e[2] or {})
    local ok = f.p and f.t and f.f and f.k and f.o and f.r and f.a and f.h and
      core.cluster_mac_ok(self.key, f.h, "task", f.p, f.t, f.f, f.k, f.o, f.r, f.a)
    if not ok then
      log("refused task %s: it fails its HMAC check (a wrong key, or tampering)", tostring(id))
      self:refuse(id, f)
    elseif not self:alive(f.p) then
      self:ack(id) -- its pool is gone: the task expires
    else
      local list = byPool[f.p] or {}
      byPool[f.p] = list
      list[#list + 1] = { id, f }
    end
  end
  for pool, list in pairs(byPool) do
    local cancelled = {}
    local _, cancels = self:alive(pool)
    if cancels > 0 then -- a task stopped between the worker's read and its parent's XDEL
      local ids = {}
      for i, e in ipairs(list) do ids[i] = e[2].t end
      cancelled = self.wr:call("SMISMEMBER", key("cancel", pool), table.unpack(ids))
    end
    for i, e in ipairs(list) do
      if cancelled[i] == 1 then self:ack(e[1]) else self:run(e[1], e[2]) end
    end
  end
end

-- The delivery counter of an entry (how many times it was handed to a consumer).
function Worker:deliveries(id)
  local p = self.wr:call("XPENDING", TASKS, GROUP, id, id, "1")
  return p[1] and tonumber(p[1][4]) or 0
end

-- A task handed out again: run while its deliveries allow (retries + 1, and extra more when it
-- was reclaimed from a silent worker: a host that died is seldom the task's fault), else
-- dead-lettered.
function Worker:retry_or_bury(id, f, retries, what, extra)
  local n = self:deliveries(id)
  if n > retries + 1 + (extra or 0) then
    self.wr:send("XADD", DEAD, "MAXLEN", "~", "10000", "*", "p", f.p, "t", f.t, "deliveries",
      tostring(n), "worker", self.name)
    self:post(id, f, "L", 0, ("%s; delivered %d times (retries %d): moved to %s"):format(what, n,
      retries, DEAD))
    return
  end
  self:run(id, f)
end

-- Tasks whose local worker died: claimed again (the delivery counter goes up) and decided.
function Worker:retries()
  local list = self.retry
  self.retry = {}
  for _, rec in ipairs(list) do
    self.running[rec.id] = nil
    self.nrunning = self.nrunning - 1
    self.wr:call("XCLAIM", TASKS, GROUP, self.name, "0", rec.id)
    self:retry_or_bury(rec.id, rec.f, rec.retries, "its worker died while running it")
  end
end

-- Tasks of consumers silent for longer than reclaim seconds (dead, or stopped) come here.
function Worker:reclaim()
  local r = self.wr:call("XAUTOCLAIM", TASKS, GROUP, self.name,
    tostring(math.floor(self.opts.reclaim * 1000)), "0-0", "COUNT", "64")
  for _, e in ipairs(r[2] or {}) do
    local id, f = e[1], fields(e[2] or {})
    if self.running[id] == nil then
      local ok = f.p and f.h and core.cluster_mac_ok(self.key, f.h, "task", f.p, f.t, f.f, f.k, f.o,
        f.r, f.a)
      if not ok then
        log("refused task %s: it fails its HMAC check (a wrong key, or tampering)", tostring(id))
        self:refuse(id, f)
      elseif not self:alive(f.p) then
        self:ack(id)
      else
        self:retry_or_bury(id, f, tonumber(f.r) or 0, "its worker went silent while running it",
          RECLAIM_EXTRA)
      end
    end
  end
  for _, id in ipairs(r[3] or {}) do self.wr:send("XACK", TASKS, GROUP, id) end -- deleted meanwhile
end

-- Says this worker lives; keeps its running tasks from looking idle; stops cancelled ones.
function Worker:heartbeat()
  local name = "lmp:worker:" .. self.name
  self.wr:send("HSET", name, "host", self.host, "pid", tostring(mp.getpid()), "procs",
    tostring(self.opts.processes), "running", tostring(self.nrunning), "done", tostring(self.done),
    "beat", ("%.3f"):format(mp.time()), "started", ("%.3f"):format(self.started))
  self.wr:send("EXPIRE", name, tostring(math.ceil(self.opts.heartbeat * 3)))
  self.wr:send("SADD", WORKERS, self.name)
  local ids, byPool = {}, {}
  for id, rec in pairs(self.running) do
    ids[#ids + 1] = id
    local list = byPool[rec.f.p] or {}
    byPool[rec.f.p] = list
    list[#list + 1] = rec
  end
  if #ids > 0 then self.wr:send("XCLAIM", TASKS, GROUP, self.name, "0", table.unpack(ids), "JUSTID") end
  for pool, list in pairs(byPool) do
    local tids = {}
    for i, rec in ipairs(list) do tids[i] = rec.f.t end
    local c = self.wr:call("SMISMEMBER", key("cancel", pool), table.unpack(tids))
    for i, rec in ipairs(list) do
      if c[i] == 1 and not rec.stopping then
        rec.stopping = true
        rec.res:_stop() -- its worker is killed; it comes back as stopped
      end
    end
  end
end

-- How many tasks to hold (running or waiting for a process): about PREFETCH_S seconds of work
-- per process, from the average time of the function whose task came last — many quick tasks
-- per read, and slow ones left in the stream for idle workers. A function not yet timed (a new
-- call) gets 2 per process, as the local pool deals out a stream it does not know.
function Worker:prefetch()
  local avg = self.stream and self.avgs[self.stream]
  local per = 2
  if avg then per = math.max(2, math.min(PREFETCH_MAX, math.floor(PREFETCH_S / math.max(avg, 1e-9)))) end
  return self.opts.processes * per
end

function Worker:serve()
  local hb_at, reclaim_at = 0, mp.monotonic() + self.opts.reclaim / 2
  while true do
    if core.sigterm_seen() and not self.draining then
      self.draining = true
      log("%s: SIGTERM: finishing %d running task(s), taking no new ones", self.name, self.nrunning)
    end
    if self.broken then error(self.broken, 0) end
    if self.draining and self.nrunning == 0 then break end
    local now = mp.monotonic()
    if now >= hb_at then
      self:heartbeat()
      hb_at = now + self.opts.heartbeat
    end
    if #self.retry > 0 then self:retries() end
    if not self.draining and now >= reclaim_at then
      self:reclaim()
      reclaim_at = now + self.opts.reclaim / 2
    end
    self:flush_acks()
    local room = self.draining and 0 or self:prefetch() - self.nrunning
    if room > 0 then
      local r = self.rd:call("XREADGROUP", "GROUP", GROUP, self.name, "COUNT", tostring(room),
        "BLOCK", self.nrunning > 0 and "5" or "200", "STREAMS", TASKS, ">")
      if type(r) == "table" and r[1] then self:take(r[1][2]) end
    else
      core.wait_event(0.05) -- results come in meanwhile
    end
  end
  self:flush_acks()
  self.wr:send("SREM", WORKERS, self.name)
  self.wr:call("DEL", "lmp:worker:" .. self.name)
end

--- `lmp worker URL [options]`: serves until SIGTERM (then drains) or the end of Redis.
function M.worker(argv)
  local opts, err = parse(argv)
  if not opts then
    io.stderr:write(err == "help" and USAGE or ("lmp worker: " .. err .. "\n" .. USAGE))
    return err == "help" and 0 or 2
  end
  local k, why = M.read_key(opts.key_file)
  if not k then
    io.stderr:write("lmp worker: " .. why .. "; refusing to start\n")
    return 2
  end
  opts.processes = opts.processes or mp.cpu_count()
  core.catch_sigterm()
  local ok, rd = pcall(core.redis, opts.url)
  if not ok then
    io.stderr:write("lmp worker: " .. tostring(rd.message or rd) .. "\n")
    return 1
  end
  local wr = core.redis(opts.url)
  pcall(wr.call, wr, "XGROUP", "CREATE", TASKS, GROUP, "$", "MKSTREAM") -- BUSYGROUP: it exists
  local self = setmetatable({ opts = opts, key = k, rd = rd, wr = wr, host = hostname(),
    name = opts.name or (hostname() .. ":" .. mp.getpid()),
    -- a SIGTERM to the process group (systemd's, a terminal's) is the supervisor's to act on:
    -- its workers finish what they run, and it ends them after
    pool = mp.Pool { processes = opts.processes,
      initializer = function() require("lmp.core").ignore_sigterm() end },
    running = {}, nrunning = 0, retry = {}, fns = {}, nfns = 0, pools = {}, done = 0, acks = {},
    avgs = {}, navgs = 0,
    expiring = {},
    started = mp.time() }, Worker)
  log("%s serving %s with %d process(es)", self.name, opts.url, opts.processes)
  local served, e = pcall(self.serve, self)
  self.pool:terminate()
  if not served then
    io.stderr:write(("lmp worker: %s: %s; exiting (its unacknowledged tasks are reclaimed by "
      .. "other workers)\n"):format(self.name, tostring(e)))
    return 1
  end
  return 0
end

-- Status -----------------------------------------------------------------------------------------

--- `lmp status URL`: workers and their heartbeats, tasks waiting and in flight, dead letters.
function M.status(argv)
  local url = argv[1]
  if not url or argv[2] then
    io.stderr:write("usage: lmp status URL\n")
    return 2
  end
  local ok, r = pcall(core.redis, url)
  if not ok then
    io.stderr:write("lmp status: " .. tostring(r.message or r) .. "\n")
    return 1
  end
  local now = mp.time()
  local names = r:call("SMEMBERS", WORKERS)
  local rows = {}
  for _, name in ipairs(names) do
    local h = fields(r:call("HGETALL", "lmp:worker:" .. name))
    if h.beat then
      rows[#rows + 1] = ("  %-32s pid %-7s procs %-3s running %-5s done %-8s beat %.1f s ago")
        :format(name, h.pid or "?", h.procs or "?", h.running or "?", h.done or "?", now - tonumber(h.beat))
    else
      r:call("SREM", WORKERS, name) -- its heartbeat expired: gone
    end
  end
  print(("workers: %d"):format(#rows))
  table.sort(rows)
  for _, row in ipairs(rows) do print(row) end
  local xlen = r:call("EXISTS", TASKS) == 1 and r:call("XLEN", TASKS) or 0
  local pending, consumers = 0, {}
  local okp, p = pcall(r.call, r, "XPENDING", TASKS, GROUP)
  if okp and type(p) == "table" then
    pending = tonumber(p[1]) or 0
    for _, c in ipairs(type(p[4]) == "table" and p[4] or {}) do
      consumers[#consumers + 1] = ("%s %s"):format(c[1], c[2])
    end
  end
  print(("tasks: %d in the stream, %d in flight (handed to a worker, not acknowledged)"):format(
    xlen, pending))
  for _, c in ipairs(consumers) do print("  in flight at " .. c) end
  print(("dead letters: %d"):format(r:call("EXISTS", DEAD) == 1 and r:call("XLEN", DEAD) or 0))
  local cursor, pools = "0", 0
  repeat
    local s = r:call("SCAN", cursor, "MATCH", "lmp:pool:*", "COUNT", "1000")
    cursor = s[1]
    pools = pools + #s[2]
  until cursor == "0"
  print(("pools alive: %d"):format(pools))
  r:close()
  return 0
end

M.usage = USAGE

return M
