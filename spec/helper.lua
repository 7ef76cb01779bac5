-- spec/helper.lua — what every spec asserts around its tests: no child process and no file
-- descriptor left behind, and a watchdog so a hang fails instead of blocking the suite.
local mp = require "lmp"
local th = require "lmp_testhelper"
local assert = require "luassert"

local H = {}

--- Pids of this process's children, zombies included.
function H.children()
  local pid = mp.getpid()
  local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid))
  local list = {}
  if f then
    for p in f:read("a"):gmatch("%d+") do list[#list + 1] = tonumber(p) end
    f:close()
  end
  return list
end

--- The open file descriptors of this process: {fd = target}. Garbage is collected first,
--- so objects that are no longer referenced (pools...) have released theirs.
function H.fds()
  collectgarbage()
  collectgarbage()
  local fds = {}
  local list = os.tmpname() -- a file, not a pipe: the listing holds no fd of ours
  os.execute(("ls -l /proc/%d/fd > %s 2>/dev/null"):format(mp.getpid(), list))
  local f = io.open(list)
  for line in f:lines() do
    local fd, target = line:match("(%d+) %-> (.*)$")
    if fd then fds[tonumber(fd)] = target end
  end
  f:close()
  os.remove(list)
  return fds
end

--- Number of open file descriptors of this process.
function H.fd_count()
  local n = 0
  for _ in pairs(H.fds()) do n = n + 1 end
  return n
end

-- What differs between two fd listings, for the failure message.
local function fd_diff(before, after)
  local out = {}
  for fd, t in pairs(after) do
    if before[fd] ~= t then out[#out + 1] = ("+%d %s"):format(fd, t) end
  end
  for fd, t in pairs(before) do
    if after[fd] ~= t then out[#out + 1] = ("-%d %s"):format(fd, t) end
  end
  table.sort(out)
  return table.concat(out, ", ")
end

--- Calls f(...), which must raise; returns the error.
function H.error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "an error was expected")
  return err
end

--- Kills this process with SIGALRM after seconds (0 cancels).
function H.watchdog(seconds) th.alarm(seconds) end

--- Waits (up to timeout seconds) until no child is left; returns the children still there.
function H.wait_no_children(timeout)
  local deadline = mp.monotonic() + (timeout or 5)
  local left = H.children()
  while #left > 0 and mp.monotonic() < deadline do
    mp.sleep(0.02)
    left = H.children()
  end
  return left
end

--- Standard hooks: `before_each(H.setup)` arms the watchdog and counts fds;
--- `after_each(H.teardown)` asserts that no child and no fd was left behind.
local fds
function H.setup()
  H.watchdog(H.timeout or 120)
  fds = H.fds()
end

function H.teardown()
  for _, p in ipairs(mp.active_children()) do p:kill(); p:join(5) end
  local left = H.wait_no_children(5)
  assert.are.same({}, left, "child processes left behind")
  local now = H.fds()
  local diff = fd_diff(fds, now)
  assert.are.equal("", diff, "file descriptors left open or closed: " .. diff)
  H.watchdog(0)
end

--- A temporary file name, removed at the end of the test run.
local temps = {}
function H.tmpname()
  local n = os.tmpname()
  temps[#temps + 1] = n
  return n
end

function H.slurp(name)
  local f = io.open(name, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function H.cleanup()
  for _, n in ipairs(temps) do os.remove(n) end
  temps = {}
end

--- Runs a Lua snippet with the lmp executable in a child bounded by `timeout -s KILL` (so a
--- hang fails the test instead of the suite); returns stdout, stderr, exit status (-signum when
--- a signal killed it, -9 when the bound did). opts: timeout (seconds, default 120), shell
--- (commands run before, in the same shell: `ulimit -n 40`...).
function H.run_lmp(code, args, opts)
  opts = opts or {}
  local src = H.tmpname()
  local f = assert(io.open(src, "w"))
  f:write(code)
  f:close()
  local out, err = H.tmpname(), H.tmpname()
  local cmd = ("%s exec timeout -s KILL %d %s %s %s >%s 2>%s"):format(
    opts.shell and (opts.shell .. ";") or "", opts.timeout or 120,
    os.getenv("LMP_EXE") or "build/lmp", src, args or "", out, err)
  local ok, how, code_ = os.execute(cmd)
  if how == "exit" and code_ > 128 then code_, how = code_ - 128, "signal" end
  return H.slurp(out), H.slurp(err), (how == "exit") and code_ or -code_
end

return H
