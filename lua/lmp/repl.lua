-- lmp.repl — the interactive prompt of the lmp executable: `mp` is preloaded, expression
-- values are printed (tables pretty-printed, cycles shown), callbacks are delivered while
-- the prompt waits, and Ctrl-C interrupts the running statement, not the REPL.
local core = require "lmp.core"
local mp = require "lmp"

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

local function traceback(e)
  if type(e) ~= "string" then
    local ok, s = pcall(tostring, e)
    e = ok and s or "(error object)"
  end
  return debug.traceback(e, 2)
end

-- Compiles a statement or expression, reading continuation lines while it is incomplete.
local function compile(first)
  local src = first
  local fn = load("return " .. src, "=stdin")
  if fn then return fn, src end
  while true do
    local err
    fn, err = load(src, "=stdin")
    if fn then return fn, src end
    if not err:match("<eof>$") then return nil, err end
    local ok, more = pcall(core.readline, ">> ")
    if not ok or more == nil then return nil, nil end
    src = src .. "\n" .. more
  end
end

--- Runs the prompt until end of input.
function M.run()
  _G.mp = mp
  io.stdout:write(("lmp %s (%s) — mp is loaded; Ctrl-D exits\n"):format(mp.version, _VERSION))
  while true do
    local ok, line = pcall(core.readline, "> ")
    if not ok then
      io.stdout:write("\n") -- Ctrl-C at the prompt: a fresh line
    elseif line == nil then
      io.stdout:write("\n")
      return
    elseif line:match("%S") then
      local fn, err = compile(line)
      if fn then
        local res = table.pack(core.icall(fn, traceback))
        if res[1] then
          if res.n > 1 then
            local parts = {}
            for i = 2, res.n do parts[#parts + 1] = M.pretty(res[i]) end
            io.stdout:write(table.concat(parts, "\t"), "\n")
          end
        else
          io.stderr:write(tostring(res[2]), "\n")
        end
      elseif err then
        io.stderr:write(err, "\n")
      end
      io.stdout:flush()
    end
  end
end

return M
