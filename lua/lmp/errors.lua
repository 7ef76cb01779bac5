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

return M
