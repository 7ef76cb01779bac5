-- lmp — process-parallel runtime for Lua 5.4: the public facade.
local core = require "lmp.core"
local mp = {}
mp.core = core
mp.version = core.version
mp.encode = core.encode
mp.decode = core.decode
return mp
