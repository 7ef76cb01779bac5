-- lmp.repl — the interactive prompt of the lmp executable: line editing, history and Tab
-- completion (libedit, through lmp.core.console), `mp` preloaded, expression values printed
-- (tables pretty-printed, cycles shown) and kept in `_`, `%time` in front of a statement,
-- callbacks delivered while the prompt waits (their output above it), and Ctrl-C interrupting
-- the running statement or dropping what is being typed, never the REPL.
local core = require "lmp.core"
local mp = require "lmp"
local completion = require "lmp.completion"
local history = require "lmp.history"

local console = core.console

local M = {}

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

local function quote(s) return (("%q"):format(s):gsub("\\\n", "\\n")) end

--- Renders v as Lua-like text; a table met again inside itself prints as <cycle ...>.
function M.pretty(v, opts)
  opts = opts or {}
  local max_depth, max_items = opts.depth or 6, opts.items or 200
  local seen, out = {}, {}
  local function emit(s) out[#out + 1] = s end
  local function scalar(x)
    local t = type(x)
    if t == "string" then return quote(x) end
    if t == "number" then
      if math.type(x) == "float" and x == math.floor(x) and x > -1e15 and x < 1e15 then
        return ("%.1f"):format(x)
      end
      return tostring(x)
    end
    if t == "table" and getmetatable(x) and rawget(getmetatable(x), "__tostring") then
      local ok, s = pcall(tostring, x)
      if ok then return s end
    end
    return tostring(x)
  end
  local function walk(x, depth, indent)
    if type(x) ~= "table" or (getmetatable(x) and rawget(getmetatable(x), "__tostring")) then
      emit(scalar(x))
      return
    end
    if seen[x] then
      emit("<cycle: " .. tostring(x) .. ">")
      return
    end
    if depth > max_depth then
      emit("{...}")
      return
    end
    seen[x] = true
    local keys, n = {}, #x
    for k in pairs(x) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b)
      local ta, tb = type(a), type(b)
      if ta ~= tb then return ta < tb end
      if ta == "number" or ta == "string" then return a < b end
      return tostring(a) < tostring(b)
    end)
    if n == 0 and #keys == 0 then
      emit("{}")
      seen[x] = nil
      return
    end
    local inner = indent .. "  "
    emit("{")
    local count = 0
    local function item(k, val, positional)
      count = count + 1
      if count > max_items then return false end
      emit(count > 1 and ",\n" .. inner or "\n" .. inner)
      if not positional then
        if is_identifier(k) then
          emit(k)
        else
          emit("[")
          walk(k, depth + 1, inner)
          emit("]")
        end
        emit(" = ")
      end
      walk(val, depth + 1, inner)
      return true
    end
    local complete = true
    for i = 1, n do
      if not item(i, x[i], true) then complete = false break end
    end
    if complete then
      for _, k in ipairs(keys) do
        if not item(k, x[k], false) then complete = false break end
      end
    end
    if not complete then emit(",\n" .. inner .. "...") end
    emit("\n" .. indent .. "}")
    seen[x] = nil
  end
  walk(v, 1, "")
  return table.concat(out)
end

-- The error with the traceback of the statement (the REPL's own frames left out).
local function traceback(e)
  if type(e) ~= "string" then
    local ok, s = pcall(tostring, e)
    e = ok and s or "(error object)"
  end
  local tb = debug.traceback(e, 2)
  local cut = tb:find("\n%s*%[C%]: in function 'lmp%.core%.icall'")
  return cut and tb:sub(1, cut - 1) or tb
end

-- Output while a line is typed -----------------------------------------------------------
-- Callbacks run while the prompt waits; what they print through print, io.write or the
-- standard files' write takes the prompt off the screen first, and the console draws it
-- again (with the half-typed line) once the loop turn is over.

local real_print, real_write = print, io.write
local file_methods = getmetatable(io.stdout).__index
local real_fwrite = file_methods.write

-- Whether the last of the values written ends a line (nil: nothing written).
local function ends_line(...)
  local n = select("#", ...)
  if n == 0 then return nil end
  local last = select(n, ...)
  return type(last) == "string" and last:sub(-1) == "\n"
end

local function around(write, tail, ...)
  console.before_output()
  local a, b, c = write(...)
  if tail ~= nil then console.after_output(tail) end
  return a, b, c
end

local function prompt_print(...) return around(real_print, true, ...) end
local function prompt_write(...) return around(real_write, ends_line(...), ...) end
local function prompt_fwrite(f, ...)
  if f ~= io.stdout and f ~= io.stderr then return real_fwrite(f, ...) end
  return around(real_fwrite, ends_line(...), f, ...)
end

local function hooks(on)
  if on then
    if print == real_print then print = prompt_print end
    if io.write == real_write then io.write = prompt_write end
    if file_methods.write == real_fwrite then file_methods.write = prompt_fwrite end
  else
    if print == prompt_print then print = real_print end
    if io.write == prompt_write then io.write = real_write end
    if file_methods.write == prompt_fwrite then file_methods.write = real_fwrite end
  end
end

--- Reads a line at the prompt (nil at end of input); raises InterruptedError on Ctrl-C.
local function read(prompt)
  hooks(true)
  local ok, line = pcall(console.readline, prompt)
  hooks(false)
  if not ok then error(line, 0) end
  return line
end

-- Statements -------------------------------------------------------------------------------

-- Compiles a statement or expression (text only, never a binary chunk), reading continuation
-- lines while it is incomplete. Returns the function (nil when it does not compile), the
-- whole text typed, and the compiler's message.
local function compile(first)
  local src = first
  local fn = load("return " .. src, "=stdin", "t")
  if fn then return fn, src end
  while true do
    local err
    fn, err = load(src, "=stdin", "t")
    if fn then return fn, src end
    if not err:match("<eof>$") then return nil, src, err end
    local more = read(">> ")
    if more == nil then return nil, src, err end
    src = src .. "\n" .. more
  end
end

local function format_duration(s)
  if s >= 1 then return ("%.3f s"):format(s) end
  if s >= 1e-3 then return ("%.3f ms"):format(s * 1e3) end
  return ("%.1f µs"):format(s * 1e6)
end

-- Runs a compiled chunk with Ctrl-C interrupting it; prints its values (and how long it took).
local function run_chunk(fn, timed)
  local t0 = core.monotonic()
  local res = table.pack(core.icall(fn, traceback))
  local dt = core.monotonic() - t0
  if res[1] then
    if res.n > 1 then
      local parts = {}
      for i = 2, res.n do parts[#parts + 1] = M.pretty(res[i]) end
      io.stdout:write(table.concat(parts, "\t"), "\n")
      if res[2] ~= nil then _G._ = res[2] end
    end
  else
    io.stdout:flush()
    -- after Ctrl-C the terminal has echoed ^C: the report starts on a line of its own
    if console.editing() and tostring(res[2]):match("^InterruptedError") then io.stderr:write("\n") end
    io.stderr:write(tostring(res[2]), "\n")
  end
  if timed then io.stdout:write("time: ", format_duration(dt), "\n") end
  io.stdout:flush()
end

local hist -- the history file, when the REPL edits lines

-- One statement: read, compile, remember, run. Returns "eof" at end of input.
local function step()
  local ok, line = pcall(read, "> ")
  if not ok then return end -- Ctrl-C at the prompt: the console drew a fresh line
  if line == nil then return "eof" end
  if not line:match("%S") then return end
  local timed = false
  local src = line
  if src:match("^%s*%%time%f[%s%z]") then
    timed = true
    src = src:gsub("^%s*%%time%s*", "")
  end
  local compiled, fn, text, err = pcall(compile, src)
  if not compiled then return end -- Ctrl-C at a continuation prompt: the chunk is dropped
  if hist and hist:add((timed and "%time " or "") .. text) then
    console.history_push((timed and "%time " or "") .. text)
  end
  if not fn then
    io.stderr:write(err, "\n")
    return
  end
  run_chunk(fn, timed)
end

local function history_file()
  local home = os.getenv("HOME")
  if home == nil or home == "" then return nil end
  return home .. "/.lmp_history"
end

-- Entries the history file keeps (LMP_HISTORY_SIZE overrides).
M.HISTORY_SIZE = math.tointeger(tonumber(os.getenv("LMP_HISTORY_SIZE") or "")) or 1000

--- Runs the prompt until end of input.
function M.run()
  _G.mp = mp
  io.stdout:write(("lmp %s (%s) — mp is loaded; %%time <statement> times it; Ctrl-D exits\n")
    :format(mp.version, console.lua_release))
  io.stdout:flush()
  if console.editing() then
    console.history_init(M.HISTORY_SIZE)
    local path = history_file()
    if path then hist = history.open(path, M.HISTORY_SIZE, console.history_push) end
    console.set_completer(function(word, before)
      return completion.complete(word, before, console.listdir)
    end)
  end
  while true do
    local ok, status = pcall(step)
    if ok and status == "eof" then break end
    if not ok then -- Ctrl-C between reads and runs: start again on a fresh line
      io.stdout:write("\n")
      io.stdout:flush()
    end
  end
  io.stdout:write("\n")
  io.stdout:flush()
end

return M
