-- lmp.manager_types — the Manager's containers as they live in the server: dict (insertion
-- ordered), list (1-based, with an explicit length so it may hold nil), Namespace, Value and
-- Array (typed like mp.Value/mp.Array), and custom types. Every method is
-- fn(obj, ctx, ...) -> results; values are stored as decoded (proxies inside become Refs).
local errors = require "lmp.errors"

return function(S)
  local TYPES = S.TYPES

  local function keyerror(fname, k)
    errors.raise("KeyError", ("%s: no key %s"):format(fname, errors.describe(k)))
  end

  -- Ordered maps (dict, Namespace) ---------------------------------------------------------
  -- o.k: keys in insertion order (TOMB where deleted), o.pos: key -> index, o.v: key -> value.

  local TOMB = setmetatable({}, { __name = "lmp.deleted" })

  local function map_init(o)
    o.k, o.pos, o.v, o.n, o.top = {}, {}, {}, 0, 0
    return o
  end

  local function check_key(k, fname)
    if k == nil then errors.raise("ValueError", fname .. ": a key must not be nil") end
    if k ~= k then errors.raise("ValueError", fname .. ": a key must not be NaN") end
    return math.type(k) == "float" and math.tointeger(k) or k
  end

  local function compact(o)
    local nk, j = {}, 0
    for i = 1, o.top do
      local k = o.k[i]
      if k ~= TOMB then
        j = j + 1
        nk[j], o.pos[k] = k, j
      end
    end
    o.k, o.top = nk, j
  end

  local function map_del(o, k)
    local i = o.pos[k]
    if not i then return nil end
    local old = o.v[k]
    o.v[k], o.pos[k], o.k[i], o.n = nil, nil, TOMB, o.n - 1
    if i == o.top then
      while o.top > 0 and o.k[o.top] == TOMB do
        o.k[o.top], o.top = nil, o.top - 1
      end
    elseif o.top > 32 and o.n < o.top // 2 then
      compact(o)
    end
    return old
  end

  local function map_set(o, k, v)
    if v == nil then return map_del(o, k) end
    if o.v[k] == nil then
      o.top = o.top + 1
      o.k[o.top], o.pos[k], o.n = k, o.top, o.n + 1
    end
    o.v[k] = v
  end

  local function map_keys(o)
    local ks, j = {}, 0
    for i = 1, o.top do
      local k = o.k[i]
      if k ~= TOMB then j = j + 1; ks[j] = k end
    end
    return ks
  end

  -- A deterministic order for the keys of a plain table: the array part, then the others
  -- (numbers, then strings, then the rest).
  local RANK = { number = 1, string = 2 }
  local function table_keys(t)
    local ks, n = {}, #t
    for i = 1, n do ks[i] = i end
    local rest = {}
    for k in pairs(t) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then rest[#rest + 1] = k end
    end
    table.sort(rest, function(a, b)
      local ra, rb = RANK[type(a)] or 3, RANK[type(b)] or 3
      if ra ~= rb then return ra < rb end
      if ra < 3 then return a < b end
      return tostring(a) < tostring(b)
    end)
    table.move(rest, 1, #rest, n + 1, ks)
    return ks
  end

  -- Adds the pairs of src (a plain table, or a dict proxy) to the map o.
  local function map_update(o, src, fname)
    if src == nil then return end
    if S.is_ref(src, "dict") then
      local from = S.deref(src)
      for _, k in ipairs(map_keys(from)) do map_set(o, k, from.v[k]) end
    elseif type(src) == "table" and not S.is_ref(src) then
      for _, k in ipairs(table_keys(src)) do map_set(o, check_key(k, fname), src[k]) end
    else
      errors.typeerror(fname, "the initial contents", "a table or a dict proxy", src)
    end
  end

  local function snapshot(o)
    local ks = map_keys(o)
    local vs = {}
    for i = 1, #ks do vs[i] = o.v[ks[i]] end
    return ks, vs
  end

  -- dict ------------------------------------------------------------------------------------

  local dict = {}
  TYPES.dict = {
    new = function(_, t)
      local o = map_init({})
      map_update(o, t, "Manager:dict")
      return o
    end,
    methods = dict,
    index = function(o, k) if k ~= nil then return o.v[k] end end,
    newindex = function(o, k, v) map_set(o, check_key(k, "dict"), v) end,
  }

  function dict.getitem(o, _, k) if k ~= nil then return o.v[k] end end
  function dict.setitem(o, _, k, v) map_set(o, check_key(k, "dict"), v) end
  function dict.len(o) return o.n end
  function dict.get(o, _, k, default)
    local v = k ~= nil and o.v[k]
    if v == nil or k == nil then return default end
    return v
  end
  function dict.keys(o) return map_keys(o) end
  function dict.values(o)
    local ks = map_keys(o)
    for i = 1, #ks do ks[i] = o.v[ks[i]] end
    return ks
  end
  function dict.items(o)
    local ks = map_keys(o)
    for i = 1, #ks do ks[i] = { ks[i], o.v[ks[i]] } end
    return ks
  end
  function dict.update(o, _, t) map_update(o, t, "dict:update") end
  function dict.pop(o, _, k, ...)
    if k ~= nil and o.v[k] ~= nil then return map_del(o, k) end
    if select("#", ...) > 0 then return (...) end
    keyerror("dict:pop", k)
  end
  function dict.popitem(o)
    for i = o.top, 1, -1 do
      local k = o.k[i]
      if k ~= TOMB then return k, map_del(o, k) end
    end
    errors.raise("KeyError", "dict:popitem: the dictionary is empty")
  end
  function dict.setdefault(o, _, k, default)
    k = check_key(k, "dict:setdefault")
    local v = o.v[k]
    if v ~= nil then return v end
    map_set(o, k, default)
    return default
  end
  function dict.clear(o) map_init(o) end
  function dict.copy(o)
    local t = {}
    for i = 1, o.top do
      local k = o.k[i]
      if k ~= TOMB then t[k] = o.v[k] end
    end
    return t
  end
  dict._snapshot = snapshot

  -- Namespace ---------------------------------------------------------------------------------

  local ns = {}
  local function check_name(k, fname)
    if type(k) ~= "string" then errors.typeerror(fname, "an attribute name", "a string", k, 1) end
    return k
  end
  TYPES.Namespace = {
    new = function(_, t)
      local o = map_init({})
      if t ~= nil and (type(t) ~= "table" or S.is_ref(t)) then
        errors.typeerror("Manager:Namespace", "the initial attributes", "a table", t)
      end
      for _, k in ipairs(t and table_keys(t) or {}) do map_set(o, check_name(k, "Manager:Namespace"), t[k]) end
      return o
    end,
    methods = ns,
    index = function(o, k) return o.v[k] end,
    newindex = function(o, k, v) map_set(o, check_name(k, "Namespace"), v) end,
  }
  function ns.getattr(o, _, k) if k ~= nil then return o.v[k] end end
  function ns.setattr(o, _, k, v) map_set(o, check_name(k, "Namespace"), v) end
  ns._snapshot = snapshot

  -- list --------------------------------------------------------------------------------------

  local list = {}

  local function position(i, fname, lo, hi)
    local j = math.type(i) == "integer" and i or (type(i) == "number" and math.tointeger(i))
    if not j then
      if type(i) ~= "number" then errors.typeerror(fname, "the index", "an integer", i, 1) end
      errors.raise("ValueError", ("%s: index must be an integer, got %s"):format(fname, errors.describe(i)))
    end
    if j < lo or j > hi then
      errors.raise("ValueError", ("%s: index %d out of range (%d..%d)"):format(fname, j, lo, hi))
    end
    return j
  end

  local function items_of(t, fname)
    if S.is_ref(t, "list") then
      local o = S.deref(t)
      return o.a, o.n
    end
    if type(t) ~= "table" or S.is_ref(t) then
      errors.typeerror(fname, "the items", "a sequence or a list proxy", t, 1)
    end
    local n = math.type(t.n) == "integer" and t.n or #t
    return t, n
  end

  TYPES.list = {
    new = function(_, t)
      local o = { a = {}, n = 0 }
      if t ~= nil then list.extend(o, nil, t) end
      return o
    end,
    methods = list,
    index = function(o, k) return list.getitem(o, nil, k) end,
    newindex = function(o, k, v) list.setitem(o, nil, k, v) end,
  }

  function list.getitem(o, _, i)
    if math.type(i) ~= "integer" then i = type(i) == "number" and math.tointeger(i) end
    if i and i >= 1 and i <= o.n then return o.a[i] end
  end
  function list.setitem(o, _, i, v)
    i = position(i, "list", 1, o.n + 1)
    o.a[i] = v
    if i > o.n then o.n = i end
  end
  function list.len(o) return o.n end
  function list.append(o, _, v)
    o.n = o.n + 1
    o.a[o.n] = v
  end
  function list.extend(o, _, t)
    local src, n = items_of(t, "list:extend")
    local base = o.n
    for i = 1, n do o.a[base + i] = src[i] end
    o.n = base + n
  end
  function list.insert(o, _, i, v)
    i = position(i, "list:insert", 1, o.n + 1)
    table.move(o.a, i, o.n, i + 1)
    o.a[i], o.n = v, o.n + 1
  end
  function list.pop(o, _, i)
    if o.n == 0 then errors.raise("ValueError", "list:pop: the list is empty") end
    i = i == nil and o.n or position(i, "list:pop", 1, o.n)
    local v = o.a[i]
    table.move(o.a, i + 1, o.n, i)
    o.a[o.n], o.n = nil, o.n - 1
    return v
  end
  local function find(o, v, from, to)
    for i = from, to do
      if o.a[i] == v then return i end
    end
  end
  function list.remove(o, _, v)
    local i = find(o, v, 1, o.n)
    if not i then errors.raise("ValueError", ("list:remove: %s is not in the list"):format(errors.describe(v))) end
    list.pop(o, nil, i)
  end
  function list.index(o, _, v, from, to)
    from = from == nil and 1 or position(from, "list:index", 1, o.n + 1)
    to = to == nil and o.n or position(to, "list:index", 0, o.n)
    local i = find(o, v, from, to)
    if not i then errors.raise("ValueError", ("list:index: %s is not in the list"):format(errors.describe(v))) end
    return i
  end
  function list.count(o, _, v)
    local c = 0
    for i = 1, o.n do
      if o.a[i] == v then c = c + 1 end
    end
    return c
  end
  function list.copy(o) return table.move(o.a, 1, o.n, 1, { n = o.n }) end
  function list.reverse(o)
    local a, n = o.a, o.n
    for i = 1, n // 2 do a[i], a[n + 1 - i] = a[n + 1 - i], a[i] end
  end
  function list.clear(o) o.a, o.n = {}, 0 end

  --- Sorts in place, stably; cmp(a, b) (true when a goes first) runs here, in the server.
  function list.sort(o, _, cmp)
    if cmp ~= nil and type(cmp) ~= "function" then errors.typeerror("list:sort", "cmp", "a function", cmp) end
    local less = cmp or function(a, b) return a < b end
    local d = {}
    for i = 1, o.n do d[i] = { o.a[i], i } end
    local ok, err = pcall(table.sort, d, function(x, y)
      if less(x[1], y[1]) then return true end
      if less(y[1], x[1]) then return false end
      return x[2] < y[2]
    end)
    if not ok then
      if cmp then error(err, 0) end
      errors.raise("TypeError", "list:sort: " .. tostring(err):gsub("^.-:%d+: ", ""))
    end
    for i = 1, o.n do o.a[i] = d[i][1] end
  end

  -- Value and Array -----------------------------------------------------------------------

  local MAXI, MINI = math.maxinteger, math.mininteger
  local RANGES = { b = { -128, 127 }, B = { 0, 255 }, h = { -32768, 32767 }, H = { 0, 65535 },
                   i = { -2 ^ 31 // 1, 2 ^ 31 // 1 - 1 }, I = { 0, 2 ^ 32 // 1 - 1 },
                   l = { MINI, MAXI }, q = { MINI, MAXI }, L = { 0, MAXI }, Q = { 0, MAXI } }

  local function check_tc(tc, fname)
    if type(tc) ~= "string" or not (RANGES[tc] or tc == "f" or tc == "d" or tc == "c") then
      errors.raise("ValueError", ("%s: bad typecode %s (one of b B h H i I l L q Q f d c)"):format(
        fname, errors.describe(tc)))
    end
    return tc
  end

  -- The error of a value that cannot be stored, as mp.Value's: TypeError for a wrong type,
  -- ValueError for a wrong value of the right type.
  local function bad(etype, what, expected, tc, v)
    errors.raise(etype, ("%s: %s expected for typecode '%s', got %s"):format(what, expected, tc, errors.describe(v)))
  end

  --- The value v stored under typecode tc, or the error naming it (and the range).
  local function typed(tc, v, what)
    local r = RANGES[tc]
    if r then
      if type(v) ~= "number" then bad("TypeError", what, "integer", tc, v) end
      local i = math.type(v) == "integer" and v or math.tointeger(v)
      if not i then bad("ValueError", what, "integer", tc, v) end
      if i < r[1] or i > r[2] then
        errors.raise("ValueError", ("%s: %d out of range for typecode '%s' (%d..%d)"):format(what, i, tc, r[1], r[2]))
      end
      return i
    elseif tc == "c" then
      if type(v) == "string" and #v == 1 then return v end
      if math.type(v) == "integer" and v >= 0 and v <= 255 then return string.char(v) end
      bad((type(v) == "string" or type(v) == "number") and "ValueError" or "TypeError", what,
        "a one-byte string or 0..255", tc, v)
    end
    if type(v) ~= "number" then bad("TypeError", what, "number", tc, v) end
    if tc == "f" then return (string.unpack("<f", string.pack("<f", v))) end
    return v + 0.0
  end

  local function zero(tc) return tc == "c" and "\0" or (RANGES[tc] and 0 or 0.0) end

  local function lock_of(o)
    if not o.lock then o.lock = S.create("RLock", S.LOCAL) end
    return o.lock
  end

  local value = { get_lock = lock_of }
  TYPES.Value = {
    new = function(_, tc, v)
      check_tc(tc, "Manager:Value")
      return { tc = tc, v = v == nil and zero(tc) or typed(tc, v, "Manager:Value") }
    end,
    methods = value,
    index = function(o, k) if k == "value" then return o.v end end,
    newindex = function(o, k, v)
      if k ~= "value" then errors.raise("ValueError", "Value: only .value can be assigned") end
      o.v = typed(o.tc, v, "Value")
    end,
  }
  function value.get(o) return o.v end
  function value.set(o, _, v) o.v = typed(o.tc, v, "Value:set") end

  local array = { get_lock = lock_of }
  TYPES.Array = {
    new = function(_, tc, init)
      check_tc(tc, "Manager:Array")
      local o = { tc = tc, a = {}, n = 0 }
      if math.type(init) == "integer" and init >= 0 then
        for i = 1, init do o.a[i] = zero(tc) end
        o.n = init
      elseif tc == "c" and type(init) == "string" then
        for i = 1, #init do o.a[i] = init:sub(i, i) end
        o.n = #init
      elseif type(init) == "table" and not S.is_ref(init) then
        local n = math.type(init.n) == "integer" and init.n or #init
        for i = 1, n do o.a[i] = typed(tc, init[i], ("Manager:Array: item %d"):format(i)) end
        o.n = n
      else
        errors.typeerror("Manager:Array", "size_or_table", "a size, a sequence or (for 'c') a string", init)
      end
      return o
    end,
    methods = array,
    index = function(o, k) return array.getitem(o, nil, k) end,
    newindex = function(o, k, v) array.setitem(o, nil, k, v) end,
  }
  function array.getitem(o, _, i) return o.a[position(i, "Array", 1, o.n)] end
  function array.setitem(o, _, i, v)
    i = position(i, "Array", 1, o.n)
    o.a[i] = typed(o.tc, v, "Array")
  end
  function array.len(o) return o.n end
  function array.totable(o) return table.move(o.a, 1, o.n, 1, {}) end
  local function chars(o, what)
    if o.tc ~= "c" then errors.raise("ValueError", ("Array: .%s exists for typecode 'c' only"):format(what)) end
  end
  function array.getraw(o) chars(o, "raw"); return table.concat(o.a, "", 1, o.n) end
  function array.getvalue(o) chars(o, "value"); return (array.getraw(o):match("^[^%z]*")) end
  local function put_bytes(o, s, what, nul)
    chars(o, what)
    if type(s) ~= "string" then errors.typeerror("Array", "." .. what, "a string", s, 1) end
    if #s > o.n then errors.raise("ValueError", ("Array: a %d-byte string does not fit in %d bytes"):format(#s, o.n)) end
    for i = 1, #s do o.a[i] = s:sub(i, i) end
    if nul and #s < o.n then o.a[#s + 1] = "\0" end
  end
  function array.setraw(o, _, s) put_bytes(o, s, "raw", false) end
  function array.setvalue(o, _, s) put_bytes(o, s, "value", true) end

  -- Custom types ----------------------------------------------------------------------------

  local function callable(v)
    if type(v) == "function" then return true end
    local mt = getmetatable(v)
    return type(mt) == "table" and rawget(mt, "__call") ~= nil
  end

  -- The public methods of obj: callable string keys not starting with "_", its own and those
  -- of the __index tables of its metatables.
  local function public_methods(obj)
    local set, seen = {}, {}
    local t = obj
    while type(t) == "table" and not seen[t] do
      seen[t] = true
      for k, v in pairs(t) do
        if type(k) == "string" and k:sub(1, 1) ~= "_" and callable(v) then set[k] = true end
      end
      local mt = getmetatable(t)
      t = type(mt) == "table" and rawget(mt, "__index") or nil
    end
    return set
  end

  --- Adds custom type name: spec is a constructor, or {new = constructor, exposed = {...}}.
  function S.custom_type(name, spec)
    local new, exposed = spec, nil
    if type(spec) == "table" then new, exposed = spec.new, spec.exposed end
    local t = { custom = true }
    local set
    if exposed then
      set = {}
      for _, m in ipairs(exposed) do set[m] = true end
    end
    t.methods = setmetatable({
      _exposed = function()
        local list = {}
        for m in pairs(set or {}) do list[#list + 1] = m end
        table.sort(list)
        return list
      end,
    }, { __index = function(_, m)
      if not (set and set[m]) then return nil end
      return function(o, _, ...)
        local f = o.value[m]
        if not callable(f) then
          errors.raise("RemoteError", ("%s object has no method '%s'"):format(name, m))
        end
        return f(o.value, ...)
      end
    end })
    t.new = function(_, ...)
      local obj = new(...)
      if S.is_ref(obj) then return obj end -- an object of the server, shared (server_object)
      if type(obj) ~= "table" and type(obj) ~= "userdata" then
        errors.raise("TypeError", ("Manager:%s: the constructor returned %s, not an object"):format(name, errors.describe(obj)))
      end
      if not set then set = public_methods(obj) end
      return { value = obj, custom = true }
    end
    TYPES[name] = t
  end
end
