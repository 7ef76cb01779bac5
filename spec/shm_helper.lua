-- spec/shm_helper.lua — setup/teardown for the shared-memory specs: the generic checks of
-- helper.lua (no child, no fd left behind) with garbage collected first, so queues' own
-- arenas (closed with their last handle) are counted consistently.
local mp = require "lmp"
local H = require "helper"

local S = {}

-- This file's directory: children started by run_bounded find the spec helpers there.
S.dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

-- The first small arena is created once per process and kept (objects are carved from it).
S.warm = mp.Lock()
-- and the first Process start sets up the event loop's descriptors once
do
  local p = mp.Process(function() end)
  p:start()
  p:join(10)
  mp.sleep(0.01)
  mp.Event():wait(0.01)
  collectgarbage(); collectgarbage()
end

local function listing()
  local t = {}
  local dir = "/proc/" .. mp.getpid() .. "/fd/"
  local p = io.popen("ls " .. dir)
  for name in p:lines() do
    local l = io.popen("readlink " .. dir .. name)
    t[name] = l:read("l")
    l:close()
  end
  p:close()
  return t
end
local before

function S.setup()
  collectgarbage(); collectgarbage()
  if os.getenv("SHM_DEBUG") then before = listing() end
  H.setup()
end

function S.teardown()
  collectgarbage(); collectgarbage()
  if os.getenv("SHM_DEBUG") then
    local now = listing()
    for k, v in pairs(now) do if before[k] ~= v then print("new fd", k, v) end end
    for k, v in pairs(before) do if now[k] ~= v then print("gone fd", k, v) end end
  end
  H.teardown()
end

--- Starts a Process running f(...) and returns it.
function S.spawn(f, ...)
  local p = mp.Process(f, table.pack(...))
  p:start()
  return p
end

--- Joins every process, asserting exit code 0.
function S.join_all(ps, timeout)
  for _, p in ipairs(ps) do
    local code = p:join(timeout or 20)
    assert(code == 0, ("process %s exited with %s"):format(p.pid, tostring(code)))
  end
end

--- Runs a Lua snippet with the lmp executable under `timeout -s KILL seconds`, so that a
--- regression that hangs fails (status 137) instead of hanging the suite. The snippet gets
--- `mp` and the spec directory on its package path. prefix (optional) is a command put before
--- timeout: `prlimit --nofile=64`, `setpriv ...`. Returns stdout, stderr, exit status.
function S.run_bounded(code, seconds, prefix)
  local src = H.tmpname()
  local f = assert(io.open(src, "w"))
  f:write(("package.path = %q .. package.path\n"):format(S.dir .. "?.lua;"),
    'local mp = require "lmp"\n', code)
  f:close()
  local out, err = H.tmpname(), H.tmpname()
  os.execute("chmod 644 " .. src) -- readable by another user (setpriv)
  local cmd = ("exec %s timeout -s KILL %d %s %s >%s 2>%s"):format(prefix or "", seconds or 30,
    os.getenv("LMP_EXE") or "build/lmp", src, out, err)
  local _, how, status = os.execute(cmd)
  return H.slurp(out), H.slurp(err), (how == "exit") and status or -status
end

--- Asserts that run_bounded's results mean success: exit status 0 and "ok" on stdout.
function S.assert_ok(out, err, status)
  assert(status == 0 and out:match("ok\n$"),
    ("the bounded child failed (status %s)\nstdout:\n%s\nstderr:\n%s"):format(status, out, err))
end

return S
