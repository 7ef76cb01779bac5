-- Regenerates the seed messages of tests/fuzz_decode.c:
--   lua5.4 tests/fuzz_seeds/gen_seeds.lua tests/fuzz_seeds   (with build/lua on LUA_CPATH)
local core = require "lmp.core"
local dir = arg[1]
local toy = {__lmp_encode = function(o) return "toy", o.p, 0, 1 end}
local shared = {1, 2}
local t = {1, 2}; t.self = t
local mt = {__index = {}}
local seeds = {
  scalars = {nil, true, false, 0, -1, 3.5, 0/0, -0.0, 1/0, math.mininteger, math.maxinteger, "s\0x"},
  nested = {a = {b = {c = {d = {e = "deep"}}}}, list = {1, 2, 3, {4, 5}}},
  shared = {x = shared, y = shared, [shared] = shared},
  cycle = t,
  metatables = {setmetatable({}, mt), setmetatable({1}, mt)},
  modrefs = {print, string.format, io.stdout, _G, math, string},
  handle = {setmetatable({p = "payload"}, toy), setmetatable({p = ""}, toy)},
  sparse = {[1] = 1, [100] = 100, [2.5] = "f", [true] = false, ["a b"] = {}},
  string = string.rep("abc\0", 64),
}
for name, v in pairs(seeds) do
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(core.encode(v))
  f:close()
end
