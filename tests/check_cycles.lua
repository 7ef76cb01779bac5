-- check_cycles.lua — no call cycle among the runtime's files, but inside the codec: which file
-- calls which is read from the object files (nm: what each defines, what each needs), and any
-- strongly connected group of two files or more is reported. Run by ctest:
--   lua5.4 tests/check_cycles.lua build/CMakeFiles/lmpobj.dir/runtime/*.c.o
local ALLOWED = { codec = true, codec_dec = true, codec_enc = true, codec_fn = true, codec_tab = true }

local defs, needs, names = {}, {}, {}
for _, obj in ipairs(arg) do
  local name = obj:match("([^/]+)%.c%.o$")
  if name then
    names[#names + 1] = name
    defs[name], needs[name] = {}, {}
    local nm = assert(io.popen("nm " .. ("%q"):format(obj)))
    for line in nm:lines() do
      local kind, sym = line:match("^%x+ (%a) (%S+)$")
      if kind and kind:match("[TDBRC]") then defs[name][sym] = true end
      local u = line:match("^%s+U (%S+)$")
      if u then needs[name][#needs[name] + 1] = u end
    end
    assert(nm:close(), "nm failed on " .. obj)
  end
end
assert(#names > 10, "no object files given")

local owner = {}
for name, d in pairs(defs) do for sym in pairs(d) do owner[sym] = name end end
local edges = {}
for _, name in ipairs(names) do
  edges[name] = {}
  for _, sym in ipairs(needs[name]) do
    local o = owner[sym]
    if o and o ~= name then edges[name][o] = edges[name][o] or sym end
  end
end

-- Tarjan's strongly connected components
local index, low, onstack, stack, n, bad = {}, {}, {}, {}, 0, {}
local function visit(v)
  n = n + 1
  index[v], low[v] = n, n
  stack[#stack + 1], onstack[v] = v, true
  for w in pairs(edges[v]) do
    if not index[w] then
      visit(w)
      low[v] = math.min(low[v], low[w])
    elseif onstack[w] then
      low[v] = math.min(low[v], index[w])
    end
  end
  if low[v] == index[v] then
    local group = {}
    repeat
      local w = table.remove(stack)
      onstack[w] = nil
      group[#group + 1] = w
    until w == v
    if #group > 1 then bad[#bad + 1] = group end
  end
end
table.sort(names)
for _, v in ipairs(names) do if not index[v] then visit(v) end end

local failed = false
for _, group in ipairs(bad) do
  table.sort(group)
  local allowed = true
  for _, f in ipairs(group) do allowed = allowed and ALLOWED[f] end
  if not allowed then
    failed = true
    print("call cycle among: " .. table.concat(group, ", "))
    local set = {}
    for _, f in ipairs(group) do set[f] = true end
    for _, a in ipairs(group) do
      for b, sym in pairs(edges[a]) do
        if set[b] then print(("  %s -> %s (%s)"):format(a, b, sym)) end
      end
    end
  end
end
if failed then os.exit(1) end
print(("no call cycle among %d files (the codec's own files excepted)"):format(#names))
