-- lmp.errors — the error objects every lmp call raises: tables with metatable mp.Error.
-- err.type names the kind (Python's exception class), err.message says what happened.
local core = require "lmp.core"

local Error = core.Error -- shared with C, which raises the same objects
Error.__name = "lmp.Error"
Error.__index = Error

local M = { Error = Error }

function Error.__tostring(e)
  local s = (e.type or "Error") .. ": " .. tostring(e.message)
  if e.traceback then s = s .. "\n" .. e.traceback end
  return s
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

return M
