-- lmp.mapbar — the progress bar of `lmp --map` on stderr: lines done, their rate and, when
-- every input is a regular file, the share of bytes read and an ETA from it (nothing is read
-- ahead to count lines). Redrawn at most five times a second, on one line.
local core = require "lmp.core"

local Bar = {}
Bar.__index = Bar

local WIDTH = 24

function Bar.new(reader)
  return setmetatable({ reader = reader, t0 = core.monotonic(), last = 0, shown = 0 }, Bar)
end

local function human(n)
  if n >= 1e6 then return ("%.2fM"):format(n / 1e6) end
  if n >= 1e4 then return ("%.1fk"):format(n / 1e3) end
  return tostring(math.floor(n))
end

local function clock(s)
  s = math.floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s // 3600, s // 60 % 60, s % 60) end
  return ("%d:%02d"):format(s // 60, s % 60)
end

-- The text of the bar for `done` lines written.
function Bar:text(done)
  local elapsed = math.max(core.monotonic() - self.t0, 1e-9)
  local rate = done / elapsed
  local bytes, total = self.reader:progress()
  local s = ("%s lines  %s/s  %s"):format(human(done), human(rate), clock(elapsed))
  if total and total > 0 then
    local frac = math.min(bytes / total, 1)
    local fill = math.floor(frac * WIDTH + 0.5)
    local eta = frac > 0 and elapsed * (1 - frac) / frac or 0
    s = ("[%s%s] %3d%%  %s  ETA %s"):format(("#"):rep(fill), ("."):rep(WIDTH - fill),
      math.floor(frac * 100), s, clock(eta))
  end
  return s
end

local function draw(self, s)
  local pad = math.max(0, self.shown - #s)
  io.stderr:write("\r", s, (" "):rep(pad))
  io.stderr:flush()
  self.shown = #s
end

--- Redraws the bar if it was drawn more than 0.2 s ago.
function Bar:update(done)
  local now = core.monotonic()
  if now - self.last < 0.2 then return end
  self.last = now
  draw(self, self:text(done))
end

--- Draws the final state and ends its line.
function Bar:finish(done)
  draw(self, self:text(done))
  io.stderr:write("\n")
  io.stderr:flush()
end

return Bar
