-- codec_spec.lua — mp.encode/mp.decode from Lua: round trips, identity, functions, errors,
-- the format's back references, and the MAC of function-carrying messages.
local mp = require "lmp"
local core = require "lmp.core"
local H = require "helper"

local function rt(v) return mp.decode(mp.encode(v)) end

local function serialization_error(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  assert.are.equal("table", type(err))
  assert.are.equal("SerializationError", err.type)
  return err
end

-- Runs a Lua file's text with the lmp executable, bounded in time; returns stdout (binary),
-- stderr and the exit status.
local function run_bounded(code, seconds)
  local src, out, err = H.tmpname(), H.tmpname(), H.tmpname()
  local f = assert(io.open(src, "wb"))
  f:write(code)
  f:close()
  local ok, how, status = os.execute(("timeout -s KILL %d %s %s >%s 2>%s"):format(
    seconds or 120, os.getenv("LMP_EXE") or "build/lmp", src, out, err))
  return H.slurp(out), H.slurp(err), (how == "exit") and status or -status
end

-- Deep comparison that follows identity: every table or function of a maps to one of b, and
-- back; functions are compared by what they return for the given probe.
local function same_shape(a, b, seen)
  seen = seen or {}
  if type(a) ~= type(b) then return false, "types " .. type(a) .. " / " .. type(b) end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false, "number subtypes differ" end
    if a ~= a then return b ~= b, "NaN" end
    if a == 0 and b == 0 then return 1 / a == 1 / b, "signed zero" end
    return a == b, tostring(a) .. " / " .. tostring(b)
  end
  if type(a) ~= "table" then return a == b, tostring(a) .. " / " .. tostring(b) end
  if seen[a] ~= nil then return seen[a] == b, "identity" end
  seen[a] = b
  local n = 0
  for k, v in pairs(a) do
    n = n + 1
    local kb = k
    if type(k) == "table" then
      kb = nil
      for k2 in pairs(b) do if seen[k] == k2 then kb = k2 end end
      if kb == nil then
        for k2 in pairs(b) do
          if type(k2) == "table" and same_shape(k, k2, seen) then kb = k2 end
        end
      end
      if kb == nil then return false, "table key" end
    end
    local ok, why = same_shape(v, rawget(b, kb), seen)
    if not ok then return false, tostring(k) .. ": " .. tostring(why) end
  end
  for _ in pairs(b) do n = n - 1 end
  if n ~= 0 then return false, "key counts differ" end
  local ma, mb = getmetatable(a), getmetatable(b)
  if (ma == nil) ~= (mb == nil) then return false, "metatables" end
  if ma then return same_shape(ma, mb, seen) end
  return true
end

-- A random value from a seeded generator: nested tables of every shape (arrays with holes,
-- numbers in bulk, mixed arrays, big hash parts, shared subtables, cycles, metatables) and
-- scalars of every kind, strings repeated so the back references are exercised.
local function random_value(seed)
  local x = seed
  local function rnd(n) x = (x * 1103515245 + 12345) % 2147483648; return x % n end
  local words = {}
  for i = 1, 30 do words[i] = ("w"):rep(rnd(45)) .. i end
  local pool, mts = {}, { {}, { __index = {} } }
  local scalars = { 0, -1, 1.5, -0.0, 1 / 0, -1 / 0, 0 / 0, math.mininteger, math.maxinteger,
                    2 ^ 53, true, false, "", "\0\255" }
  local budget = 3000 -- values in all: the shapes stay small enough to check quickly
  local function value(depth)
    local r = rnd(20)
    budget = budget - 1
    if depth > 6 or r < 8 or budget < 0 then
      if r < 3 then return scalars[rnd(#scalars) + 1] end
      if r < 6 then return words[rnd(#words) + 1] end
      return rnd(2) == 0 and rnd(1000000) - 500000 or rnd(100000) / 7
    end
    if r < 10 and #pool > 0 then return pool[rnd(#pool) + 1] end
    local t = {}
    pool[#pool + 1] = t
    local shape = rnd(6)
    local n = rnd(shape == 5 and 300 or 40)
    for i = 1, n do
      if shape == 0 then t[i] = i * (rnd(2) == 0 and 1 or 0.5)
      elseif shape == 1 then t[i] = rnd(3) ~= 0 and rnd(100) or nil
      elseif shape == 2 then t[words[rnd(#words) + 1]] = value(depth + 1)
      elseif shape == 3 then t[i] = value(depth + 1)
      elseif shape == 4 then t[rnd(1000) + 0.5] = value(depth + 1)
      else t["k" .. i] = i end
    end
    if rnd(4) == 0 then t.self = t end
    if rnd(6) == 0 then setmetatable(t, mts[rnd(#mts) + 1]) end
    if rnd(5) == 0 then t[pool[rnd(#pool) + 1]] = rnd(9) end
    return t
  end
  local root = {}
  for i = 1, 1 + rnd(8) do root[i] = value(0) end
  return root
end

describe("codec", function()
  before_each(H.setup)
  after_each(H.teardown)

  it("keeps scalars and number subtypes", function()
    assert.are.equal("integer", math.type(rt(3)))
    assert.are.equal("float", math.type(rt(3.0)))
    local nan = rt(0/0)
    assert.is_true(nan ~= nan)
    assert.are.equal(math.huge, rt(math.huge))
    assert.are.equal(-math.huge, rt(-math.huge))
    assert.are.equal(-math.huge, 1 / rt(-0.0))
    assert.are.equal(math.mininteger, rt(math.mininteger))
    assert.are.equal(math.maxinteger, rt(math.maxinteger))
    assert.are.equal("a\0b\255", rt("a\0b\255"))
    assert.is_nil(rt(nil))
    assert.is_false(rt(false))
  end)

  it("keeps table shapes, shared references, cycles and metatables", function()
    local shared = {}
    local mt = {__index = function(_, k) return k .. "!" end}
    local t = {1, 2, nil, 4, x = shared, y = shared, [2.5] = "f", [true] = "b", ["a b"] = 1,
               m1 = setmetatable({}, mt), m2 = setmetatable({}, mt)}
    t.self = t
    t[shared] = "key"
    local r = rt(t)
    assert.are.equal(4, r[4])
    assert.are.equal(r.x, r.y)
    assert.are.equal(r, r.self)
    assert.are.equal("key", r[r.x])
    assert.are.equal("f", r[2.5])
    assert.are.equal("b", r[true])
    assert.are.equal(getmetatable(r.m1), getmetatable(r.m2))
    assert.are.equal("hi!", r.m1.hi)
  end)

  it("sends closures with their upvalues and captured globals", function()
    local n = 0
    local function counter() n = n + 1; return n end
    local c = rt(counter)
    assert.are.equal(1, c())
    assert.are.equal(2, c())
    assert.are.equal(0, n)

    local s = 0
    local pair = rt({function() s = s + 1 end, function() return s end})
    pair[1](); pair[1]()
    assert.are.equal(2, pair[2]())

    local function fact(k) if k <= 1 then return 1 end return k * fact(k - 1) end
    assert.are.equal(120, rt(fact)(5))

    _G.spec_helper = function(x) return x * 3 end
    local f = rt(function(x) return spec_helper(x) + #string.format("%d", math.floor(x)) end)
    _G.spec_helper = nil
    assert.are.equal(32, f(10))
  end)

  it("sends library values by reference", function()
    local cjson = require "cjson"
    local r = rt({print, string.format, io.stdout, _G, cjson, cjson.decode})
    assert.are.equal(print, r[1])
    assert.are.equal(string.format, r[2])
    assert.are.equal(io.stdout, r[3])
    assert.are.equal(_G, r[4])
    assert.are.equal(cjson, r[5])
    assert.are.equal(cjson.decode, r[6])
    assert.are.equal("[1]", rt(function() return cjson.encode({1}) end)())
  end)

  it("names the path of what cannot be sent", function()
    local co = coroutine.create(print)
    local err = serialization_error(mp.core.encode, {1, {conf = {cb = co}}}, "args") -- the root named
    assert.are.equal("args[2].conf.cb: cannot send a thread", err.message)
    err = serialization_error(mp.encode, {a = {co = co}})
    assert.are.equal("value.a.co: cannot send a thread", err.message)
    err = serialization_error(mp.encode, {f = coroutine.wrap(print)})
    assert.truthy(err.message:find("value.f: cannot send a C function", 1, true))
    err = serialization_error(mp.encode, function() return co end)
    assert.truthy(err.message:find("upvalue(co)", 1, true))
  end)

  it("bounds nesting depth", function()
    local t = {}
    local cur = t
    for _ = 1, 200 do cur.n = {}; cur = cur.n end
    local err = serialization_error(mp.encode, t)
    assert.truthy(err.message:find("nesting deeper than 200", 1, true))
  end)

  it("rejects malformed messages", function()
    local m = mp.encode({1, 2, {x = "y"}})
    for i = 0, #m - 1 do serialization_error(mp.decode, m:sub(1, i)) end
    serialization_error(mp.decode, m .. "x")
    serialization_error(mp.decode, "not a message")
  end)

  it("round-trips random values of every shape, identity included", function()
    for seed = 1, 60 do
      local v = random_value(seed)
      local ok, why = same_shape(v, rt(v))
      assert(ok, ("seed %d: %s"):format(seed, tostring(why)))
    end
  end)

  it("sends repeated short strings once and refers back to them", function()
    local t = {}
    for i = 1, 1000 do t[i] = { name = "same", id = i, tag = "another one" } end
    local m = mp.encode(t)
    assert.is_true(#m < 1000 * 16, "message of " .. #m .. " bytes")
    local r = mp.decode(m)
    for i = 1, 1000 do
      assert.are.equal("same", r[i].name)
      assert.are.equal("another one", r[i].tag)
      assert.are.equal(i, r[i].id)
    end
    local distinct = {}
    for i = 1, 20000 do distinct[i] = "s" .. i end -- more strings than the memo holds
    assert.are.same(distinct, rt(distinct))
    local long = ("L"):rep(41) -- strings over 40 bytes are sent in full each time
    assert.are.same({ long, long, long }, rt({ long, long, long }))
  end)

  it("keeps big hash parts, sparse arrays and mixed arrays", function()
    local big = {}
    for i = 1, 5000 do big["key" .. i] = i; big[i * 2] = -i end
    assert.are.same(big, rt(big))
    local holes = { 1, 2, nil, 4, nil, nil, 7 }
    holes[20] = 20
    assert.are.same(holes, rt(holes))
    local mixed = {}
    for i = 1, 100 do mixed[i] = i end
    mixed[50] = 50.5
    local r = rt(mixed)
    assert.are.equal("float", math.type(r[50]))
    assert.are.equal("integer", math.type(r[51]))
    mixed[50] = "x"
    assert.are.same(mixed, rt(mixed))
    local floats = {}
    for i = 1, 100 do floats[i] = i + 0.25 end
    floats[100] = 100 -- an integer at the end of floats
    r = rt(floats)
    assert.are.equal("integer", math.type(r[100]))
    assert.are.equal(99.25, r[99])
  end)

  -- The decoder stores strings, numbers and tables straight into the tables it fills; a
  -- collection that runs in the middle must still see every one of them. In a fresh process
  -- with a small heap, the collector's steps reach the table being filled while it is filled.
  it("keeps every decoded value through collections that run while its table is filled", function()
    for _, mode in ipairs { "incremental", "generational" } do
      local out, err, status = run_bounded(([[
        local mp = require "lmp"
        collectgarbage("%s")
        local n = 20000
        local data = {}
        for i = 1, n do
          data[i] = { id = i, name = "user" .. i, tags = { "t" .. i, "u" .. i, "w" .. i %% 3 },
                      sub = { k = "v" .. i, kind = "k" .. i %% 5 } }
        end
        local m = mp.encode(data)
        data = nil
        local r = mp.decode(m)
        for _ = 1, 3 do -- collections that free whatever they did not see
          local junk = {}
          for i = 1, 1e5 do junk[i] = { i } end
          junk = nil
          collectgarbage()
        end
        for i = 1, n do
          local x = r[i]
          assert(x.id == i and x.name == "user" .. i and x.tags[1] == "t" .. i and
                 x.tags[2] == "u" .. i and x.tags[3] == "w" .. i %% 3 and x.sub.k == "v" .. i and
                 x.sub.kind == "k" .. i %% 5, "record " .. i)
        end
        print("ok")
      ]]):format(mode), 120)
      assert.are.equal(0, status, mode .. ": " .. err)
      assert.are.equal("ok\n", out)
    end
  end)

  -- Tables of one shape write the same back references for their keys (and for the strings at
  -- the same array slots); tables that differ from the last one at a node or slot must not.
  it("writes each table's own keys and strings when consecutive tables differ in shape", function()
    local items = {}
    for i = 1, 3000 do
      local k = i % 6
      if k == 0 then items[i] = { a = i, b = -i }
      elseif k == 1 then items[i] = { b = i, c = -i }
      elseif k == 2 then items[i] = { ["k" .. i % 5] = i, a = "s" .. i % 4 }
      elseif k == 3 then items[i] = { "x", "y", "x" .. i % 3 }
      elseif k == 4 then items[i] = { "y", "x", { "x", "y" } }
      else items[i] = { [("v"):rep(i % 7 + 1)] = { id = i } } end
    end
    local r = rt(items)
    assert.are.same(items, r)
    local m = mp.encode(items)
    assert.is_true(#m < 3000 * 16, "keys went as back references: " .. #m .. " bytes")
  end)

  it("fills hash parts as Lua does: colliding keys, repeated keys, metamethods", function()
    local keys = {}
    for i = 1, 300 do keys[#keys + 1] = ("k%d"):format(i) end
    local t = {}
    for i, k in ipairs(keys) do t[k] = i end
    local r = rt(t)
    local count = 0
    for k, v in pairs(r) do
      count = count + 1
      assert.are.equal(t[k], v)
    end
    assert.are.equal(300, count)
    for i, k in ipairs(keys) do assert.are.equal(i, r[k]) end
    r.k1, r.k150 = nil, nil -- and it goes on working as a table
    r.new = true
    assert.is_nil(r.k1)
    assert.is_true(r.new)
    -- a metatable filled by the decoder answers for its metamethods
    local proto = setmetatable({}, { __index = function(_, k) return "via " .. k end,
                                     __len = function() return 42 end })
    local p = rt(proto)
    assert.are.equal("via x", p.x)
    assert.are.equal(42, #p)
    -- a message that names one key twice: the later value wins, as with rawset
    local m = mp.encode({ aa = 1, bb = 2 })
    local i1, i2 = m:find("aa", 1, true), m:find("bb", 1, true)
    assert.is_truthy(i1 and i2)
    local twice = m:sub(1, i2 - 1) .. "aa" .. m:sub(i2 + 2)
    local d = mp.decode(twice)
    local n = 0
    for _ in pairs(d) do n = n + 1 end
    assert.are.equal(1, n)
    assert.are.equal(i1 < i2 and 2 or 1, d.aa) -- the value of the pair that comes later
  end)

  it("stays usable after an error in the middle of a big message", function()
    local t = {}
    for i = 1, 200 do t[i] = { i, "s" .. i } end
    t[150][3] = coroutine.create(print)
    local err = serialization_error(mp.encode, t)
    assert.are.equal("value[150][3]: cannot send a thread", err.message)
    t[150][3] = nil
    assert.are.same(t, rt(t))
    -- a handle whose hook encodes a big value itself (a nested message)
    local mt = {}
    mt.__lmp_encode = function(o) return "spec.nested", mp.encode(o.inner) end
    core.register_handle("spec.nested", function(payload)
      return setmetatable({ inner = mp.decode(payload) }, mt)
    end)
    local outer = {}
    for i = 1, 100 do outer[i] = setmetatable({ inner = { i, tostring(i) } }, mt) end
    local r = rt(outer)
    assert.are.same({ 77, "77" }, r[77].inner)
  end)

  it("rejects messages of another format version", function()
    local m = mp.encode({ 1, 2 })
    assert.are.equal(2, m:byte(4))
    for _, v in ipairs({ 1, 3, 255 }) do
      local err = serialization_error(mp.decode, m:sub(1, 3) .. string.char(v) .. m:sub(5))
      assert.truthy(err.message:find("unsupported message version", 1, true), err.message)
    end
  end)

  it("authenticates function-carrying messages, and only those", function()
    local plain = mp.encode({ 1, "two", { 3 } })
    assert.are.equal(0, plain:byte(5) & 2) -- no MAC flag, no MAC
    local up = { 41 }
    local f = function() return up[1] + 1 end
    local m = mp.encode({ f = f, g = function() return f() end })
    assert.are.equal(2, m:byte(5) & 2)
    assert.are.equal(42, mp.decode(m).g())
    -- the same message with its MAC flag cleared is refused: it carries a function
    local stripped = m:sub(1, 4) .. string.char(m:byte(5) & ~2) .. m:sub(6, -17)
    local err = serialization_error(mp.decode, stripped)
    assert.truthy(err.message:find("without a MAC", 1, true), err.message)
  end)

  it("refuses every tampered function message with a SerializationError, never a crash", function()
    -- in a child, bounded: a crash or a hang there fails this test instead of the run
    local out, err, status = run_bounded([[
      local mp = require "lmp"
      local shared = 0
      local function inc() shared = shared + 1 end
      G_CAPTURED = { 1, 2, 3 }
      local m = mp.encode({ inc, function() inc(); return shared, #G_CAPTURED end, 7 })
      local refused, other = 0, 0
      for i = 1, #m do
        for _, x in ipairs({ 1, 0x40, 0xff }) do
          local t = m:sub(1, i - 1) .. string.char(m:byte(i) ~ x) .. m:sub(i + 1)
          local ok, e = pcall(mp.decode, t)
          if not ok and mp.iserror(e, "SerializationError") then refused = refused + 1
          elseif i ~= 5 then other = other + 1 end
        end
      end
      print(#m, refused, other)
    ]], 120)
    assert.are.equal(0, status, err)
    local n, refused, other = out:match("(%d+)%s+(%d+)%s+(%d+)")
    assert.truthy(n, out .. err)
    assert.are.equal("0", other, "tampered messages that decoded: " .. out)
    assert.is_true(tonumber(refused) >= 3 * (tonumber(n) - 1))
  end)

  it("refuses a function message made with another process's key", function()
    -- an unrelated lmp process (not a child of ours: its own key) encodes a function and data
    local out, err, status = run_bounded([[
      local mp = require "lmp"
      local fn, data = mp.encode(function() return 1 end), mp.encode({ "data", 2 })
      io.stdout:write(#fn, "\n", fn, data)
    ]], 60)
    assert.are.equal(0, status, err)
    local n, rest = out:match("^(%d+)\n(.*)$")
    assert.truthy(n, "no output: " .. tostring(err))
    local fn, data = rest:sub(1, tonumber(n)), rest:sub(tonumber(n) + 1)
    local e = serialization_error(mp.decode, fn)
    assert.truthy(e.message:find("authentication failed", 1, true), e.message)
    assert.are.same({ "data", 2 }, mp.decode(data)) -- data needs no key
    -- vouched for another way (a cluster's HMAC), it can be signed for this process
    assert.are.equal(1, mp.decode(core.codec_resign(fn))())
    assert.are.equal(data, core.codec_resign(data)) -- no MAC: nothing to sign
    assert.are.equal("junk", core.codec_resign("junk"))
  end)

  it("shares the key with forked children and with spawned ones", function()
    local m = mp.encode(function(x) return x * 2 end)
    for _, method in ipairs({ "fork", "spawn" }) do
      mp.set_start_method(method)
      local q = mp.Queue()
      local p = mp.Process(function(q, m) q:put(require("lmp").decode(m)(21)) end, { q, m })
      p:start()
      local ok, v = pcall(q.get, q, true, 30)
      p:join(30)
      mp.set_start_method("fork")
      assert.is_true(ok, tostring(v))
      assert.are.equal(42, v)
      assert.are.equal(0, p.exitcode)
    end
  end)

  it("carries handles through __lmp_encode and register_handle", function()
    local mt = {}
    mt.__lmp_encode = function(o) return "spec.toy", o.name, 11, 12 end
    core.register_handle("spec.toy", function(payload, a, b)
      return setmetatable({name = payload, fds = {a, b}}, mt)
    end)
    local h = setmetatable({name = "q"}, mt)
    local r = rt({h, h})
    assert.are.equal(r[1], r[2])
    assert.are.equal("q", r[1].name)
    assert.are.same({11, 12}, r[1].fds)
    local unknown = setmetatable({}, {__lmp_encode = function() return "spec.none", "" end})
    serialization_error(mp.decode, mp.encode(unknown))
  end)
end)
