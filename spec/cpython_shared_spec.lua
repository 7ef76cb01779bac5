-- cpython_shared_spec.lua — CPython's _test_multiprocessing.py (3.11) tests of Value and
-- Array, translated to lmp: same values, same error conditions mapped to lmp's error types,
-- each test named after its CPython test.
-- Translated: 7 — _TestValue (3), _TestArray (4).
-- Skipped: 18 —
--  - _TestHeap (test_heap, test_free_from_gc): CPython's private heap allocator; lmp's arenas
--    are covered by value_spec and c_test_shm.
--  - _TestSharedCTypes (test_sharedctypes, test_synchronize, test_copy): ctypes structures
--    and sharedctypes.copy; lmp has no ctypes.
--  - _TestSharedMemory (13 tests: basics, recreate, invalid creation, pickling, dead
--    objects, across processes, SharedMemoryServer, SharedMemoryManager, ShareableList x3,
--    cleanup after termination): multiprocessing.shared_memory has no lmp counterpart.
-- Deliberate differences, checked as lmp documents them (docs/api/shared_memory.md):
--  - Arrays are 1-based: CPython's arr[3] is a[4], its slices are loops over 1-based indexes.
--  - get_obj() does not exist (the Value or Array is the object itself).
--  - lock=False: get_lock() raises ValueError (CPython: the attribute is missing); a lock that
--    is not a Lock raises TypeError (CPython: AttributeError).
local mp = require "lmp"
local S = require "shm_helper"

local function raises(want, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "no error was raised")
  assert(mp.iserror(err, want), ("%s expected, got %s"):format(want, tostring(err)))
  return err
end

describe("CPython _TestValue", function()
  before_each(S.setup)
  after_each(S.teardown)

  local codes_values = {
    { "i", 4343, 24234 },
    { "d", 3.625, -4.25 },
    { "h", -232, 234 },
    { "q", 1 << 33, 1 << 34 },
    { "c", "x", "y" },
  }

  local function test_value(raw)
    local values = {}
    for i, cv in ipairs(codes_values) do
      values[i] = raw and mp.RawValue(cv[1], cv[2]) or mp.Value(cv[1], cv[2])
    end
    for i, cv in ipairs(codes_values) do assert.are.equal(cv[2], values[i].value) end
    local proc = mp.Process { daemon = true, args = { values, codes_values },
      target = function(values, codes_values)
        for i, cv in ipairs(codes_values) do values[i].value = cv[3] end
      end }
    proc:start()
    assert.are.equal(0, proc:join(10))
    for i, cv in ipairs(codes_values) do assert.are.equal(cv[3], values[i].value) end
  end

  it("test_value", function() test_value(false) end)

  it("test_rawvalue", function() test_value(true) end)

  it("test_getobj_getlock", function()
    local val1 = mp.Value("i", 5)
    assert.is_truthy(val1:get_lock())
    local val2 = mp.Value("i", 5, { lock = nil })
    assert.is_truthy(val2:get_lock())
    local lock = mp.Lock()
    local val3 = mp.Value("i", 5, { lock = lock })
    assert.are.equal(lock, val3:get_lock())
    local arr4 = mp.Value("i", 5, { lock = false })
    raises("ValueError", arr4.get_lock, arr4)
    raises("TypeError", mp.Value, "i", 5, { lock = "navalue" })
    local arr5 = mp.RawValue("i", 5)
    raises("ValueError", arr5.get_lock, arr5)
  end)
end)

describe("CPython _TestArray", function()
  before_each(S.setup)
  after_each(S.teardown)

  -- seq[i] += seq[i-1] for i = 1 .. len(seq)-1 (0-based): prefix sums
  local function f(seq)
    for i = 2, #seq do seq[i] = seq[i] + seq[i - 1] end
  end

  local function slice(a, from, to) -- a[from:to] of Python, for 0-based from and to
    local t = {}
    for i = from + 1, to do t[#t + 1] = a[i] end
    return t
  end

  local function test_array(raw)
    local seq = { 680, 626, 934, 821, 150, 233, 548, 982, 714, 831 }
    local arr = raw and mp.RawArray("i", seq) or mp.Array("i", seq)
    assert.are.equal(#seq, #arr)
    assert.are.equal(seq[4], arr[4]) -- arr[3] in Python
    assert.are.same(slice(seq, 2, 7), slice(arr, 2, 7))
    for i, v in ipairs { 1, 2, 3, 4 } do -- arr[4:8] = seq[4:8] = array('i', [1, 2, 3, 4])
      arr[4 + i] = v
      seq[4 + i] = v
    end
    assert.are.same(seq, arr:totable())
    f(seq)
    local p = mp.Process { daemon = true, target = f, args = { arr } }
    p:start()
    assert.are.equal(0, p:join(10))
    assert.are.same(seq, arr:totable())
  end

  it("test_array", function() test_array(false) end)

  it("test_array_from_size", function()
    local size = 10
    for _ = 1, 3 do -- zeroing (issue #11675): a new array never sees old contents
      local arr = mp.Array("i", size)
      assert.are.equal(size, #arr)
      local zeros = {}
      for i = 1, size do zeros[i] = 0 end
      assert.are.same(zeros, arr:totable())
      local r = {}
      for i = 1, 10 do arr[i] = i - 1; r[i] = i - 1 end
      assert.are.same(r, arr:totable())
      arr = nil
      collectgarbage()
    end
  end)

  it("test_rawarray", function() test_array(true) end)

  it("test_getobj_getlock_obj", function()
    local range = {}
    for i = 1, 10 do range[i] = i - 1 end
    local arr1 = mp.Array("i", range)
    assert.is_truthy(arr1:get_lock())
    local arr2 = mp.Array("i", range, { lock = nil })
    assert.is_truthy(arr2:get_lock())
    local lock = mp.Lock()
    local arr3 = mp.Array("i", range, { lock = lock })
    assert.are.equal(lock, arr3:get_lock())
    local arr4 = mp.Array("i", range, { lock = false })
    raises("ValueError", arr4.get_lock, arr4)
    raises("TypeError", mp.Array, "i", range, { lock = "notalock" })
    local arr5 = mp.RawArray("i", range)
    raises("ValueError", arr5.get_lock, arr5)
  end)
end)
