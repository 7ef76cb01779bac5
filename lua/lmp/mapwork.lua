-- lmp.mapwork — the worker side of `lmp --map`: loads the user's script once per worker
-- (the pool's initializer), then runs blocks of JSON lines: each line decoded (lua-cjson),
-- passed to the script's function (protected, so one failing record fails only its line) and
-- encoded again (lmp.core.json_encode: sorted keys, so a run is byte-for-byte repeatable).
-- Caveats: the functions here travel to the workers by reference (this module is required
-- there), and errors of the script's start are kept and reported by probe() and run().
local core = require "lmp.core"

local M = {}

local encode, json_map, monotonic = core.json_encode, core.json_map, core.monotonic
local decode          -- cjson.decode, once loaded
local f               -- the script's function
local start_error     -- why the script could not start in this worker
local board           -- where the line being run is posted (an mp.RawArray "d"), or nil

local function message_of(e)
  if type(e) == "string" then return e end
  local ok, s = pcall(tostring, e)
  return ok and s or ("(error object is a " .. type(e) .. " value)")
end

--- The JSON line of an error object: {"error":{"type":...,"message":...,"line":N}}.
function M.error_line(etype, msg, line)
  local m = encode(msg) or '"(message cannot be encoded)"'
  return ('{"error":{"type":%s,"message":%s,"line":%d}}'):format(encode(etype), m, line)
end

local error_line = M.error_line

local function traceback(e) return debug.traceback(message_of(e), 2) end

-- Loads the script and finds its function (and runs its init). Returns nil or why not.
local function start(script)
  local ok_cjson, cjson = pcall(require, "cjson")
  if not ok_cjson then return "lua-cjson is not installed (require \"cjson\" failed)" end
  decode = cjson.decode
  local chunk, err = loadfile(script, "t")
  if not chunk then return err end
  local ok, r = xpcall(chunk, traceback)
  if not ok then return r end
  if type(r) == "table" then
    local init = r.init
    r = r.map
    if init ~= nil and type(init) ~= "function" then return script .. ": init must be a function" end
    if type(r) == "function" and init then
      local iok, ierr = xpcall(init, traceback)
      if not iok then return ierr end
    end
  end
  if type(r) ~= "function" then
    return ("%s must return a function f(record, lineno) or a table {map = f, init = g}, got %s")
      :format(script, type(r))
  end
  f = r
end

--- The pool's initializer: starts the script, keeping any error for probe() and run().
--- progress (optional) is the board on which run() posts the line it is running.
function M.init(script, progress)
  board = progress
  start_error = start(script)
end

--- nil when the script started in this worker, else why it did not.
function M.probe() return start_error end

--- Runs every line of block (lines ending in "\n"; the first is input line `first`).
--- Returns the output lines (one per input line, each ending in "\n"), the seconds it took,
--- and the positions (within the block) of the lines that are error objects (or nil).
--- With a slot, the position of the line being run and its start are posted on the board
--- (slot's two cells), so that the parent knows which record a dead worker held.
function M.run(block, first, slot)
  if start_error then error(start_error, 0) end
  local t0 = monotonic()
  local out, errs = json_map(block, first, f, decode, slot and board, slot)
  return out, monotonic() - t0, errs
end

return M
