-- spec/ttydriver.lua — a real terminal for the specs: a program run in a tmux session of its own
-- (its own server, on a socket file that stop() removes), driven with send-keys and read back
-- with capture-pane.
local mp = require "lmp"

local Term = {}
Term.__index = Term

local count = 0

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function tmux(self, args)
  return os.execute(("tmux -S %s %s >/dev/null 2>&1"):format(q(self.socket), args))
end

--- 1 when tmux is installed.
function Term.available()
  return os.execute("command -v tmux >/dev/null 2>&1") == true
end

--- Starts cmd (a shell command line) in a new terminal of width x height.
function Term.start(cmd, opts)
  opts = opts or {}
  count = count + 1
  local dir = os.getenv("TMPDIR") or "/tmp"
  local self = setmetatable({ socket = ("%s/lmp-spec-%d-%d.tmux"):format(dir, mp.getpid(), count) }, Term)
  local ok = tmux(self, ("-f /dev/null new-session -d -x %d -y %d %s"):format(opts.width or 120,
    opts.height or 50, q(cmd)))
  assert(ok, "tmux could not start " .. cmd)
  tmux(self, "set-option -g history-limit 5000")
  return self
end

--- Sends tmux key names (Enter, Up, Tab, C-c, C-d...).
function Term:keys(...)
  local names = {}
  for i, k in ipairs({ ... }) do names[i] = q(k) end
  tmux(self, "send-keys " .. table.concat(names, " "))
end

--- Types text literally (no key names).
function Term:type(text) tmux(self, "send-keys -l " .. q(text)) end

--- Types a line and presses Enter.
function Term:line(text)
  self:type(text)
  self:keys("Enter")
end

--- What the terminal shows, scrollback included, without trailing blank lines.
function Term:screen()
  local f = io.popen(("tmux -S %s capture-pane -p -J -S -5000 2>/dev/null"):format(q(self.socket)))
  local s = f:read("a")
  f:close()
  return (s:gsub("[\n ]+$", ""))
end

--- The last line shown.
function Term:last_line()
  return self:screen():match("([^\n]*)$")
end

--- Waits until the screen matches pattern (a Lua pattern, or plain text with plain=true);
--- returns the screen, or fails the test with what was shown.
function Term:wait_for(pattern, timeout, plain)
  local deadline = mp.monotonic() + (timeout or 10)
  local s
  repeat
    s = self:screen()
    if s:find(pattern, 1, plain) then return s end
    mp.sleep(0.05)
  until mp.monotonic() > deadline
  error(("terminal never showed %q; it shows:\n%s"):format(pattern, s), 2)
end

--- The pid of the program in the terminal.
function Term:pid()
  local f = io.popen(("tmux -S %s list-panes -F '#{pane_pid}' 2>/dev/null"):format(q(self.socket)))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("%d+"))
end

--- Ends the terminal and everything in it, and removes its socket.
function Term:stop()
  tmux(self, "kill-server")
  os.remove(self.socket)
end

return Term
