-- lmp.completion — what Tab offers at the REPL: keywords and globals, fields after `.` and
-- methods after `:` (following __index tables, so `pool:` offers map, imap...), and module
-- names inside `require "`. Completion never calls user code: tables are read raw and an
-- __index that is a function is not followed; a class whose __index is a function (lmp's
-- Array, Manager, proxies, Process...) lists its methods in a `__methods` table instead.
local M = {}

local KEYWORDS = {
  "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
  "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
}

local MAX_CHAIN = 8 -- __index tables followed at most

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

-- The __index table of v's metatable, or, when __index is a function, the table of method
-- names the class declares in its metatable's __methods field; nil when neither is there.
local function index_table(v)
  local mt = getmetatable(v)
  if type(mt) ~= "table" then return nil end
  local idx = rawget(mt, "__index")
  if type(idx) == "table" then return idx end
  local methods = rawget(mt, "__methods")
  return type(methods) == "table" and methods or nil
end

--- v[name] as Lua would find it through raw fields and __index tables, without calling any
--- function; nil when not found that way.
function M.lookup(v, name)
  for _ = 1, MAX_CHAIN do
    if type(v) == "table" then
      local x = rawget(v, name)
      if x ~= nil then return x end
    end
    v = index_table(v)
    if v == nil then return nil end
  end
end

--- The fields of v: {name = value}, its own first, then those its __index tables add.
function M.fields(v)
  local out = {}
  for _ = 1, MAX_CHAIN do
    if type(v) == "table" then
      for k, x in next, v do
        if is_identifier(k) and out[k] == nil then out[k] = x end
      end
    end
    v = index_table(v)
    if v == nil then break end
  end
  return out
end

-- Adds to out the names starting with partial (names starting with "_" only when partial
-- does), each prefixed.
local function add_matching(out, names, partial, prefix)
  local private = partial:sub(1, 1) == "_"
  for _, k in ipairs(names) do
    if k:sub(1, #partial) == partial and (private or k:sub(1, 1) ~= "_") then
      out[#out + 1] = prefix .. k
    end
  end
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- Completes `path.partial` or `path:partial` (methods: functions only).
local function complete_member(path, sep, partial)
  local v = _G
  for name in path:gmatch("[^.]+") do
    if not is_identifier(name) then return {} end
    v = M.lookup(v, name)
    if v == nil then return {} end
  end
  local names = {}
  for k, x in pairs(M.fields(v)) do
    if sep == "." or type(x) == "function" then names[#names + 1] = k end
  end
  table.sort(names)
  local out = {}
  add_matching(out, names, partial, path .. sep)
  return out
end

local function complete_name(word)
  local names = {}
  for _, k in ipairs(KEYWORDS) do names[k] = true end
  for k in pairs(M.fields(_G)) do names[k] = true end
  local out = {}
  add_matching(out, sorted_keys(names), word, "")
  return out
end

-- Module names found through one package.path/cpath template ("dir/?.lua", "dir/?/init.lua")
-- under the package part of the word (`lmp.po`: directory lmp, names starting with po).
local function modules_of_template(found, template, word, listdir)
  local dir, rest = template:match("^(.-)/?%?(.*)$")
  if dir == nil or rest:find("?", 1, true) then return end
  if dir == "" then dir = "." end
  local pkg, partial = word:match("^(.*)%.([^.]*)$")
  if pkg then dir = dir .. "/" .. pkg:gsub("%.", "/") else partial = word end
  local prefix = pkg and pkg .. "." or ""
  for _, entry in ipairs(listdir(dir) or {}) do
    local name
    if rest:sub(1, 1) == "/" then -- dir/?/init.lua: a directory holding the file
      local f = io.open(dir .. "/" .. entry .. rest, "r")
      if f then f:close() name = entry end
    elseif #entry > #rest and entry:sub(-#rest) == rest then
      name = entry:sub(1, #entry - #rest)
    end
    if name and not name:find(".", 1, true) and name:sub(1, #partial) == partial then
      found[prefix .. name] = true
    end
  end
end

--- Module names starting with word: preloaded, loaded, and found on the package paths.
function M.modules(word, listdir)
  local found = {}
  for _, t in ipairs({ package.preload, package.loaded }) do
    for k in pairs(t) do
      if type(k) == "string" and k:sub(1, #word) == word then found[k] = true end
    end
  end
  if listdir then
    for _, paths in ipairs({ package.path, package.cpath }) do
      for template in paths:gmatch("[^;]+") do modules_of_template(found, template, word, listdir) end
    end
  end
  return sorted_keys(found)
end

--- The words that may replace `word` (the text before the cursor back to a space or an
--- operator), given the text before it on the line.
function M.complete(word, before, listdir)
  if before:match("require%s*%(?%s*[\"']$") then return M.modules(word, listdir) end
  if word == "" and before:match("^%s*$") then return { "  " } end -- Tab indents
  local path, sep, partial = word:match("^(.-)([.:])([%w_]*)$")
  if path and path ~= "" then return complete_member(path, sep, partial) end
  if word == "" or is_identifier(word) then return complete_name(word) end
  return {}
end

return M
