-- lmp.history — the REPL's history file (~/.lmp_history): plain text, one entry a line (the
-- lines of a multi-line entry joined by a carriage return), at most `max` entries, never the
-- same entry twice in a row. Entries are appended as they come, so a killed session loses
-- nothing and concurrent sessions both keep theirs; the file is rewritten only to drop the
-- oldest entries. Caveats: an entry holding a carriage return of its own reads back split.
local M = {}

local History = {}
History.__index = History

local function decode(line) return (line:gsub("\r", "\n")) end
local function encode(entry) return (entry:gsub("\r?\n", "\r")) end

--- Opens the history at path (a missing file is an empty history). push(entry) is told of
--- every entry loaded, oldest first (libedit's list for Up and Down).
function M.open(path, max, push)
  local self = setmetatable({ path = path, max = max, entries = {} }, History)
  local f = io.open(path, "rb")
  if f then
    for line in f:lines() do
      local entry = decode(line)
      if entry:match("%S") and entry ~= self.entries[#self.entries] then
        self.entries[#self.entries + 1] = entry
      end
    end
    f:close()
  end
  local n = #self.entries
  if n > max then table.move(self.entries, n - max + 1, n, 1) end
  for i = n, max + 1, -1 do self.entries[i] = nil end
  if n > max then self:rewrite() end
  if push then
    for _, entry in ipairs(self.entries) do push(entry) end
  end
  return self
end

--- Writes the entries anew (through a temporary file, so the file is never half written).
function History:rewrite()
  local tmp = self.path .. ".tmp"
  local f = io.open(tmp, "wb")
  if not f then return end
  for _, entry in ipairs(self.entries) do f:write(encode(entry), "\n") end
  f:close()
  os.rename(tmp, self.path)
end

--- Adds an entry unless it repeats the newest one; returns true when it was added.
function History:add(entry)
  if not entry:match("%S") or entry == self.entries[#self.entries] then return false end
  local entries = self.entries
  entries[#entries + 1] = entry
  if #entries > self.max then
    table.remove(entries, 1)
    self:rewrite()
  else
    local f = io.open(self.path, "ab")
    if f then
      f:write(encode(entry), "\n")
      f:close()
    end
  end
  return true
end

return M
