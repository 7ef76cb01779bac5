-- Regenerates the seed inputs of tests/fuzz_decode.c (a mode byte, then a message):
--   build/lmp tests/fuzz_seeds/gen_seeds.lua tests/fuzz_seeds
-- Mode 0: decoded as received. Mode 1: signed by the harness first, so function records are
-- decoded (this script's own key is not the harness's). Each function seed also goes in as
-- mode 0, where the MAC must refuse it. Mode 2: decoded as a map's results are, into a table
-- at an offset (the range seeds, made the way a worker makes a chunk's results).
local core = require "lmp.core"
local dir = arg[1] or "tests/fuzz_seeds"

local toy = { __lmp_encode = function(o) return "toy", o.p, 0, 1 end }
local shared = { 1, 2 }
local cyc = { 1, 2 }
cyc.self = cyc
local mt = { __index = {} }
local records = {}
for i = 1, 40 do
  records[i] = { id = i, name = "user" .. i, score = i * 0.5, tags = { "a", "b" } }
end
local tree = {}
for i = 0, 30 do tree[i] = { v = i } end
for i = 0, 30 do tree[i].l, tree[i].r = tree[2 * i + 1], tree[2 * i + 2] end
local ints, floats, mixed = {}, {}, {}
for i = 1, 16 do ints[i], floats[i], mixed[i] = i, i + 0.5, i % 3 == 0 and "s" or i end
local big = {}
for i = 1, 150 do big["k" .. i] = i end

local data = {
  scalars = { nil, true, false, 0, -1, 3.5, 0 / 0, -0.0, 1 / 0, math.mininteger, math.maxinteger,
              "s\0x" },
  nested = { a = { b = { c = { d = { e = "deep" } } } }, list = { 1, 2, 3, { 4, 5 } } },
  shared = { x = shared, y = shared, [shared] = shared },
  cycle = cyc,
  metatables = { setmetatable({}, mt), setmetatable({ 1 }, mt),
                 setmetatable({ 1.5, 2.5, 3.5, 4.5 }, mt) },
  modrefs = { print, string.format, io.stdout, _G, math, string },
  handle = { setmetatable({ p = "payload" }, toy), setmetatable({ p = "" }, toy) },
  sparse = { [1] = 1, [100] = 100, [2.5] = "f", [true] = false, ["a b"] = {} },
  string = string.rep("abc\0", 64),
  records = records,
  tree = tree[0],
  numbers = { ints, floats, mixed },
  bighash = big,
}

-- functions: plain, nested closures, shared upvalues, captured globals, a custom _ENV
local counter = 0
local function inc() counter = counter + 1; return counter end
local function get() return counter end
SEED_CONF = { scale = 3, name = "conf" }
function SEED_HELPER(x) return x * SEED_CONF.scale end
local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
local sandbox = setmetatable({ answer = 41 }, { __index = _G })
local functions = {
  fn_plain = function(x) return x + 1 end,
  fn_nested = function(a) return function(b) return function() return a + b end end end,
  fn_shared = { inc, get, inc },
  fn_globals = function(x) return SEED_HELPER(x) .. SEED_CONF.name .. string.format("%d", x) end,
  fn_recursive = fact,
  fn_env = load("return answer + 1", "=sandbox", "t", sandbox),
  fn_in_data = { records[1], f = function() return records[2].name end, g = get },
}

local function write(name, mode, msg)
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(string.char(mode), msg)
  f:close()
end

for name, v in pairs(data) do write(name, 0, core.encode(v)) end
for name, v in pairs(functions) do
  local m = core.encode(v)
  write(name, 1, m)
  write(name .. "_unsigned", 0, m)
end
write("empty", 0, "")
-- a chunk's results: an array with n, as lmp__encode_range makes them (here through a table)
write("range_ints", 2, core.encode(setmetatable(ints, nil)))
write("range_mixed", 2, core.encode({ 1, "two", { 3 }, 4.5, n = 4 }))
write("range_fn", 3, core.encode({ function() return 1 end, 2, n = 2 }))
