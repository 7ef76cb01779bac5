-- lmp.errors — the error objects every lmp call raises: tables with metatable mp.Error.
-- err.type names the kind (Python's exception class), err.message says what happened.
local core = require "lmp.core"

local Error = core.Error -- shared with C, which raises the same objects
Error.__name = "lmp.Error"
Error.__index = Error

local M = { Error = Error }

function Error.__tostring(e)
  local s = (e.type or "Error") .. ": " .. tostring(e.message)
  if e.index then s = s .. " (item " .. tostring(e.index) .. ")" end
  if e.where then s = s .. "\n  raised in the parent at " .. tostring(e.where) end
  if e.traceback then s = s .. "\nin the worker (pid " .. tostring(e.pid or "?") .. "): " .. e.traceback end
  return s
end

--- A message handler for xpcall: the error as a string (error objects through __tostring)
--- with a traceback. The one traceback helper of lmp's Lua code.
function M.traceback(e)
  if type(e) ~= "string" then
    local ok, s = pcall(tostring, e)
    e = ok and s or ("(error object is a " .. type(e) .. " value)")
  end
  return debug.traceback(e, 2)
end

--- Makes an error object; extra fields (value, traceback, pid, index...) are copied in.
function M.new(type, message, fields)
  local e = { type = type, message = message }
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  return setmetatable(e, Error)
end

--- Raises an error object at the caller of the function that called raise.
function M.raise(type, message, fields)
  error(M.new(type, message, fields), 3)
end

--- True when e is an lmp error (of the given type, when one is named).
function M.iserror(e, type)
  if getmetatable(e) ~= Error then return false end
  return type == nil or e.type == type
end

--- Raises a ValueError naming a bad argument (misuse of the API).
function M.argerror(fname, n, what)
  error(M.new("ValueError", ("bad argument #%d to '%s' (%s)"):format(n, fname, what)), 3)
end

--- A short description of v for messages: `string "4"`, `integer 3`, `nil`, `lmp.Queue`.
function M.describe(v)
  local t = type(v)
  if t == "string" then
    if #v > 40 then v = v:sub(1, 37) .. "..." end
    return ("string %q"):format(v):gsub("\\\n", "\\n")
  elseif t == "number" then
    if v ~= v then return "NaN" end
    return (math.type(v) == "integer" and "integer " or "number ") .. tostring(v)
  elseif t == "boolean" or t == "nil" then
    return t == "nil" and "nil" or "boolean " .. tostring(v)
  end
  local mt = getmetatable(v)
  local name = type(mt) == "table" and rawget(mt, "__name")
  return type(name) == "string" and name or t
end

--- Raises a TypeError "fname: what must be expected, got <description of v>" at the caller
--- of the function that called it (level: how many more levels up; default 0).
function M.typeerror(fname, what, expected, v, level)
  error(M.new("TypeError", ("%s: %s must be %s, got %s"):format(fname, what, expected,
    M.describe(v))), 3 + (level or 0))
end

--- Raises a ValueError "fname: message" at the caller of the function that called it.
function M.valueerror(fname, message, level)
  error(M.new("ValueError", fname .. ": " .. message), 3 + (level or 0))
end

--- The one timeout rule of every blocking call (DESIGN §4): nil, math.huge or any value of
--- 1e9 s or more = no limit (returns nil); 0 or negative = look once (returns 0); positive =
--- up to that long; NaN or a non-number raises ValueError naming the argument.
M.TIMEOUT_HUGE = 1e9
function M.timeout(v, fname, what, level)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v then
    error(M.new("ValueError", ("%s: %s must be a number or nil, got %s"):format(fname,
      what or "timeout", v ~= v and "NaN" or M.describe(v))), 3 + (level or 0))
  end
  if v >= M.TIMEOUT_HUGE then return nil end
  return v > 0 and v or 0
end

--- Raises a ValueError when the option table opts has a key not in allowed (a set); the
--- message names the key and lists the accepted ones.
function M.check_options(opts, fname, allowed, level)
  for k in pairs(opts) do
    if not allowed[k] then
      local names = {}
      for name in pairs(allowed) do names[#names + 1] = name end
      table.sort(names)
      error(M.new("ValueError", ("%s: unknown option %s (accepted: %s)"):format(fname,
        type(k) == "string" and ("'" .. k .. "'") or M.describe(k), table.concat(names, ", "))),
        3 + (level or 0))
    end
  end
  return opts
end

--- Raises a ValueError when a call got more than max arguments (n of them).
function M.check_nargs(n, max, fname, level)
  if n > max then
    error(M.new("ValueError", ("%s: takes at most %d argument%s, got %d"):format(fname, max,
      max == 1 and "" or "s", n)), 3 + (level or 0))
  end
end

--- v as an integer from min to max (max optional): a number with an integral value (2.0 is 2,
--- as Lua's own libraries take it); TypeError for a non-number, ValueError otherwise.
function M.integer(v, fname, what, min, max, level)
  local i = type(v) == "number" and math.tointeger(v)
  if i and i >= min and (max == nil or i <= max) then return i end
  local range = max and ("from %d to %d"):format(min, max) or (">= %d"):format(min)
  error(M.new(type(v) == "number" and "ValueError" or "TypeError", ("%s: %s must be an integer %s, got %s")
    :format(fname, what, range, M.describe(v))), 3 + (level or 0))
end

--- The most arguments a task or a process takes (the Lua stack of the worker must hold them).
M.MAX_ARGS = 250000

--- The length of a sequence t given to lmp (args, a map's seq): t.n when set — an integer from
--- 0 to max (default M.MAX_ARGS), else a ValueError naming what — or #t. A table with a
--- metatable (a Manager list proxy, a class instance) is read through it: the second result is
--- then a plain copy of its items 1..n, else t itself.
function M.sequence(t, fname, what, max, level)
  local n = rawget(t, "n")
  max = max or M.MAX_ARGS
  if n ~= nil then
    local i = type(n) == "number" and math.tointeger(n)
    if not i or i < 0 or i > max then
      error(M.new("ValueError", ("%s: %s.n must be an integer from 0 to %d, got %s"):format(fname,
        what, max, M.describe(n))), 3 + (level or 0))
    end
    n = i
  end
  if getmetatable(t) == nil then return n or #t, t end
  n = n or #t
  if math.type(n) ~= "integer" or n < 0 or n > max then
    error(M.new("ValueError", ("%s: the length of %s must be an integer from 0 to %d, got %s")
      :format(fname, what, max, M.describe(n))), 3 + (level or 0))
  end
  local copy = { n = n }
  for i = 1, n do copy[i] = t[i] end
  return n, copy
end

return M
