-- seed_lock.lua — the seeds' Lock example with lmp: ten processes print one at a time.
local mp = require "lmp"

local function f(l, i)
  l:acquire() -- only one process prints at a time
  local ok, err = pcall(print, "hello world", i)
  l:release()
  if not ok then error(err) end
end

local lock = mp.Lock()
local l = {}
for num = 0, 9 do -- ten processes
  local p = mp.Process { target = f, args = { lock, num } }
  l[#l + 1] = p
  p:start()
end
for _, p in ipairs(l) do p:join() end -- wait for the children

-- The same with lock:with, which releases on error too.
local ps = {}
for num = 0, 9 do
  ps[#ps + 1] = mp.Process(function(lk, i) lk:with(print, "hello again", i) end, { lock, num })
  ps[#ps]:start()
end
for _, p in ipairs(ps) do p:join() end
