-- spec/redis_helper.lua — a private redis-server for the cluster specs (a Unix socket in a
-- temporary directory, started by the spec and stopped after it) and `lmp worker` processes,
-- each in a process group of its own, like separate hosts. With no redis-server installed the
-- specs fail loudly: `make test` installs it.
local mp = require "lmp"
local H = require "helper"

local R = {}

local LMP = os.getenv("LMP_EXE") or "build/lmp"

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  return ok == true, code
end

local function slurp(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Starts redis-server; returns the server object {dir, sock, url, key, key_file}.
function R.start()
  assert(sh("command -v redis-server >/dev/null 2>&1"),
    "redis-server is not installed (make deps installs it): the cluster specs need a real Redis")
  local dir = os.tmpname()
  os.remove(dir)
  assert(sh("mkdir -p " .. dir))
  local s = { dir = dir, sock = dir .. "/redis.sock", workers = {} }
  s.url = "unix://" .. s.sock
  s.key = "spec-cluster-key-" .. mp.core.random_hex(8)
  s.key_file = dir .. "/key"
  local f = assert(io.open(s.key_file, "w"))
  f:write(s.key, "\n")
  f:close()
  assert(sh(("redis-server --port 0 --unixsocket %s --unixsocketperm 700 --save '' --appendonly no "
    .. "--daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log --dir %s"):format(s.sock, dir, dir, dir)),
    "redis-server did not start")
  local deadline = mp.monotonic() + 10
  while true do
    local ok = pcall(function()
      local c = mp.core.redis(s.url, 1)
      c:call("PING")
      c:close()
    end)
    if ok then break end
    assert(mp.monotonic() < deadline, "redis-server does not answer on " .. s.sock)
    mp.sleep(0.05)
  end
  s.pid = tonumber(slurp(dir .. "/redis.pid"))
  -- A sentinel: should this process die before R.stop (a crash, a kill), the server and the
  -- workers go with it instead of outliving the suite.
  assert(sh(("setsid sh -c 'while kill -0 %d 2>/dev/null && [ -d %s ]; do sleep 1; done; "
    .. "[ -d %s ] || exit 0; for f in %s/worker*.pid; do [ -s \"$f\" ] && kill -KILL -$(cat \"$f\"); done; "
    .. "kill -KILL %d; rm -rf %s' >/dev/null 2>&1 < /dev/null &"):format(mp.getpid(), dir, dir, dir,
    s.pid, dir)))
  return s
end

--- A connection to the server (for inspecting what is in Redis).
function R.conn(s) return mp.core.redis(s.url, 5) end

--- Starts an `lmp worker` in a process group of its own; returns {pid, log}.
function R.worker(s, args)
  local n = #s.workers + 1
  local w = { log = ("%s/worker%d.log"):format(s.dir, n), pidfile = ("%s/worker%d.pid"):format(s.dir, n) }
  local cmd = ("setsid sh -c 'echo $$ > %s; exec %s worker %s --key-file %s %s' > %s 2>&1 < /dev/null &")
    :format(w.pidfile, LMP, s.url, s.key_file, args or "-P 1", w.log)
  assert(sh(cmd))
  local deadline = mp.monotonic() + 10
  while not slurp(w.pidfile) or slurp(w.pidfile) == "" do
    assert(mp.monotonic() < deadline, "the worker did not start")
    mp.sleep(0.02)
  end
  w.pid = tonumber(slurp(w.pidfile))
  -- serving once it has said so in its log
  while not (slurp(w.log) or ""):match("serving") do
    assert(mp.monotonic() < deadline, "the worker does not serve: " .. (slurp(w.log) or ""))
    mp.sleep(0.02)
  end
  s.workers[n] = w
  return w
end

--- Sends sig to a worker's whole process group (its supervisor and its forked workers).
function R.signal(w, sig)
  sh(("kill -%s -%d 2>/dev/null"):format(sig, w.pid))
end

--- True while the worker's supervisor lives.
function R.alive(w)
  local st = slurp("/proc/" .. w.pid .. "/stat")
  return st ~= nil and not st:match("^%d+ %b() [ZX]")
end

function R.log(w) return slurp(w.log) or "" end

--- Stops every worker and the server, and removes the directory.
function R.stop(s)
  for _, w in ipairs(s.workers) do R.signal(w, "KILL") end
  if s.pid then sh("kill -KILL " .. s.pid .. " 2>/dev/null") end
  local deadline = mp.monotonic() + 5
  for _, w in ipairs(s.workers) do
    while R.alive(w) and mp.monotonic() < deadline do mp.sleep(0.02) end
  end
  -- under the sanitizers a worker's report goes to its log: it fails the spec here
  local reports = {}
  for _, w in ipairs(s.workers) do
    local log = slurp(w.log) or ""
    if log:match("ERROR: AddressSanitizer") or log:match("runtime error:") then
      reports[#reports + 1] = w.log .. ":\n" .. log
    end
  end
  sh("rm -rf " .. s.dir)
  assert(#reports == 0, "a worker's sanitizer report:\n" .. table.concat(reports, "\n"))
end

--- Runs code in a child lmp with the server's address and key in LMP_SPEC_REDIS / the env.
function R.run(s, code, timeout)
  local out, err, status = H.run_lmp(code, nil, {
    shell = ("export LMP_SPEC_REDIS=%q LMP_CLUSTER_KEY=%q"):format(s.url, s.key), timeout = timeout or 120 })
  return out, err, status
end

return R
