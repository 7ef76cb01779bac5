-- value_spec.lua — Value, Array, RawValue, RawArray: typecodes, ranges, 1-based indexing, 'c'
-- strings, locks, changes made by child processes, and 10,000 objects on a handful of fds.
local mp = require "lmp"
local H = require "helper"
local S = require "shm_helper"

local function err_type(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  return mp.iserror(err) and err.type or tostring(err)
end

describe("shared memory", function()
  before_each(S.setup)
  after_each(S.teardown)
  teardown(H.cleanup)

  describe("Value", function()
    it("keeps every typecode's range and kind", function()
      local cases = {
        b = { -128, 127 }, B = { 0, 255 }, h = { -32768, 32767 }, H = { 0, 65535 },
        i = { -2147483648, 2147483647 }, I = { 0, 4294967295 },
        l = { math.mininteger, math.maxinteger }, q = { math.mininteger, math.maxinteger },
        L = { 0, math.maxinteger }, Q = { 0, math.maxinteger },
      }
      for tc, r in pairs(cases) do
        local v = mp.Value(tc, r[1])
        assert.are.equal(r[1], v.value)
        v.value = r[2]
        assert.are.equal(r[2], v.value)
        assert.is_true(math.type(v.value) == "integer")
        if r[2] < math.maxinteger then
          assert.are.equal("ValueError", err_type(function() v.value = r[2] + 1 end))
        end
        if r[1] > math.mininteger then
          assert.are.equal("ValueError", err_type(function() v.value = r[1] - 1 end))
        end
      end
      local d = mp.Value("d", 1.5)
      assert.are.equal(1.5, d.value)
      d.value = 3
      assert.are.equal(3.0, d.value)
      local f = mp.Value("f", 0.5)
      assert.are.equal(0.5, f.value)
      local c = mp.Value("c", "x")
      assert.are.equal("x", c.value)
    end)

    it("starts at zero without an initial value", function()
      assert.are.equal(0, mp.Value("i").value)
      assert.are.equal("integer", math.type(mp.Value("q").value))
      assert.are.equal(0.0, mp.Value("d").value)
      assert.are.equal("float", math.type(mp.Value("f").value))
      assert.are.equal("\0", mp.Value("c").value)
      assert.are.equal(0, mp.RawValue("B").value)
      assert.are.equal(0, mp.Value("i", nil, { lock = false }).value)
    end)

    it("rejects bad values and typecodes, naming the problem", function()
      local v = mp.Value("B", 1)
      local ok, err = pcall(function() v.value = 300 end)
      assert.is_false(ok)
      assert.matches("300 out of range", tostring(err))
      local i = mp.Value("i", 0)
      ok, err = pcall(function() i.value = 1.5 end)
      assert.matches("integer expected", tostring(err))
      ok, err = pcall(function() i.value = "7" end)
      assert.is_false(ok)
      ok, err = pcall(mp.Value, "z", 1)
      assert.is_false(ok)
      assert.matches("bad argument #1", tostring(err))
      assert.matches("typecode", tostring(err))
      assert.has_error(function() i.other = 1 end)
    end)

    it("has a lock by default, none with lock=false, or the one given", function()
      local v = mp.Value("i", 0)
      assert.is_truthy(v:get_lock())
      assert.are.equal(6, v:with(function(self, x) self.value = x; return x * 2 end, 3))
      local r = mp.Value("i", 0, { lock = false })
      assert.are.equal("ValueError", err_type(r.get_lock, r))
      local raw = mp.RawValue("i", 5)
      assert.are.equal(5, raw.value)
      assert.are.equal("ValueError", err_type(raw.get_lock, raw))
      local l = mp.Lock()
      local g = mp.Value("d", 0, { lock = l })
      assert.are.equal(l, g:get_lock())
      assert.has_error(function() mp.Value("i", 0, { lock = 42 }) end)
    end)

    it("is changed by a child process (the seed example)", function()
      local num = mp.Value("d", 0.0)
      local arr = mp.Array("i", { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 })
      local p = S.spawn(function(n, a)
        n.value = 3.1415927
        for i = 1, #a do a[i] = -a[i] end
      end, num, arr)
      S.join_all({ p })
      assert.are.equal(3.1415927, num.value)
      assert.are.same({ -1, -2, -3, -4, -5, -6, -7, -8, -9, -10 }, arr:totable())
    end)

    it("counts exactly with with() in 4 processes", function()
      local v = mp.Value("i", 0)
      local ps = {}
      for i = 1, 4 do
        ps[i] = S.spawn(function(v)
          for _ = 1, 5000 do v:with(function() v.value = v.value + 1 end) end
        end, v)
      end
      S.join_all(ps)
      assert.are.equal(20000, v.value)
    end)

    it("10,000 Values use a handful of fds", function()
      local before = H.fd_count()
      local vs = {}
      for i = 1, 10000 do vs[i] = mp.Value("i", i) end
      assert.is_true(H.fd_count() - before <= 3)
      assert.are.equal(10000, vs[10000].value)
      local p = S.spawn(function(vs) for i = 1, #vs do vs[i].value = -i end end, vs)
      S.join_all({ p })
      assert.are.equal(-1, vs[1].value)
      assert.are.equal(-10000, vs[10000].value)
      vs = nil
    end)
  end)

  describe("Array", function()
    it("is 1-based with length, totable and range checks", function()
      local a = mp.Array("i", 4)
      assert.are.equal(4, #a)
      assert.are.same({ 0, 0, 0, 0 }, a:totable())
      a[1] = 10; a[4] = 40
      assert.are.equal(10, a[1])
      assert.are.equal(40, a[4])
      assert.are.equal("ValueError", err_type(function() return a[0] end))
      assert.are.equal("ValueError", err_type(function() return a[5] end))
      assert.are.equal("ValueError", err_type(function() a[5] = 1 end))
      assert.are.equal("ValueError", err_type(function() a[1] = 2 ^ 40 end))
      local d = mp.Array("d", { 1.5, 2.5 })
      assert.are.same({ 1.5, 2.5 }, d:totable())
      assert.are.equal("ValueError", err_type(mp.Array, "B", { 1, 256 }))
      assert.is_truthy(a:get_lock())
      local r = mp.RawArray("h", 3)
      assert.are.equal(3, #r)
      assert.are.equal("ValueError", err_type(r.get_lock, r))
    end)

    it("works with ipairs and pairs", function()
      local a = mp.Array("d", { 1.5, 2.5, 3.5 })
      local seen = {}
      for i, v in ipairs(a) do seen[#seen + 1] = i .. "=" .. v end
      assert.are.equal("1=1.5 2=2.5 3=3.5", table.concat(seen, " "))
      seen = {}
      for i, v in pairs(a) do seen[#seen + 1] = i .. "=" .. v end
      assert.are.equal("1=1.5 2=2.5 3=3.5", table.concat(seen, " "))
      for _ in ipairs(mp.Array("i", 0)) do error("an empty array has no element") end
      for _ in pairs(mp.RawArray("i", 0)) do error("an empty array has no element") end
      local c = mp.Array("c", "ab")
      seen = {}
      for i, ch in ipairs(c) do seen[i] = ch end
      assert.are.same({ "a", "b" }, seen)
      -- reading past the end outside ipairs is still an error
      assert.are.equal("ValueError", err_type(function() return a[4] end))
    end)

    it("'c' arrays have .value and .raw", function()
      local c = mp.Array("c", 8)
      c.value = "hi"
      assert.are.equal("hi", c.value)
      assert.are.equal("hi" .. ("\0"):rep(6), c.raw)
      c.raw = "abcdefgh"
      assert.are.equal("abcdefgh", c.value)
      assert.are.equal("a", c[1])
      c[2] = "Z"
      assert.are.equal("aZcdefgh", c.raw)
      assert.are.equal("ValueError", err_type(function() c.value = "123456789" end))
      local s = mp.Array("c", "hello")
      assert.are.equal(5, #s)
      assert.are.equal("hello", s.value)
    end)
  end)
end)
