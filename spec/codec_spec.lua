-- codec_spec.lua — mp.encode/mp.decode from Lua: round trips, identity, functions, errors.
local mp = require "lmp"
local core = require "lmp.core"

local function rt(v) return mp.decode(mp.encode(v)) end

local function serialization_error(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  assert.are.equal("table", type(err))
  assert.are.equal("SerializationError", err.type)
  return err
end

describe("codec", function()
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
    local err = serialization_error(mp.encode, {1, {conf = {cb = co}}}, "args")
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

  it("refuses functions from another secret", function()
    local m = mp.encode(function() return 1 end)
    local secret = core.codec_secret()
    core.set_codec_secret(("x"):rep(8) == secret and ("y"):rep(8) or ("x"):rep(8))
    local err = serialization_error(mp.decode, m)
    core.set_codec_secret(secret)
    assert.truthy(err.message:find("untrusted source", 1, true))
    assert.are.equal(1, mp.decode(m)())
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
