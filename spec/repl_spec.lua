-- repl_spec.lua — the REPL in a real terminal (tmux): a function defined at the prompt and
-- mapped, callbacks printed above a redrawn prompt, history that persists, Tab completion,
-- Ctrl-C at the prompt, at a continuation prompt and during a map, Ctrl-D leaving no child.
local H = require "helper"
local Term = require "ttydriver"
local mp = require "lmp"

local LMP = os.getenv("LMP_EXE") or "build/lmp"
-- The process-wide shared-memory arena, made before the first test so that its descriptor is
-- not counted as left behind by the first test that creates a shared object.
local arena_holder = mp.Value("i", 0) -- luacheck: ignore

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function pid_alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a")
  f:close()
  return not stat:match("^%d+ %b() Z") -- a zombie has exited
end

local function children_of(pid)
  local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid))
  local list = {}
  if f then
    for p in f:read("a"):gmatch("%d+") do list[#list + 1] = tonumber(p) end
    f:close()
  end
  return list
end

local function wait_gone(pids, timeout)
  local deadline = mp.monotonic() + timeout
  local alive
  repeat
    alive = {}
    for _, p in ipairs(pids) do
      if pid_alive(p) then alive[#alive + 1] = p end
    end
    if #alive == 0 then return alive end
    mp.sleep(0.05)
  until mp.monotonic() > deadline
  return alive
end

describe("the REPL in a terminal", function()
  local home, term
  before_each(function()
    H.setup()
    home = H.tmpname()
    os.remove(home)
    assert(os.execute("mkdir -p " .. q(home)))
  end)
  after_each(function()
    if term then term:stop() end
    term = nil
    os.execute("rm -rf " .. q(home))
    H.teardown()
  end)
  teardown(H.cleanup)

  -- Starts lmp's REPL in a fresh terminal with HOME set to the test's directory.
  local function start(env)
    term = Term.start(("env HOME=%s %s %s"):format(q(home), env or "", q(LMP)))
    term:wait_for("\n?>$")
    return term
  end

  it("runs a function defined at the prompt on a pool at once", function()
    start()
    term:line("pool = mp.Pool(2)")
    term:line("function sq(x) return x * x end")
    term:line("pool:map(sq, {1, 2, 3})")
    local s = term:wait_for("n = 3\n}")
    assert.matches("{\n  1,\n  4,\n  9,\n  n = 3\n}", s, 1, true)
    term:line("_[3] + 1") -- _ holds the last value
    term:wait_for("\n10\n>$")
    term:line("pool:terminate()")
  end)

  it("prints a callback's output above the prompt and draws the half-typed line again", function()
    start()
    term:line("pool = mp.Pool(1)")
    term:line("r = pool:apply_async(function() local t = os.time() + 1 "
      .. "while os.time() <= t do end return 42 end, {}, function(v) print('callback got', v) end)")
    term:wait_for("end%)\n>$")
    term:type("abc = 1")
    local s = term:wait_for("callback got\t?%s*42", 15)
    s = term:wait_for("callback got%s+42\n> abc = 1$")
    assert.matches("\n> abc = 1$", s)
    term:keys("Enter")
    term:line("abc + 1")
    term:wait_for("\n2\n>$")
    term:line("pool:terminate()")
  end)

  it("recalls the last line with Up, and keeps the history for the next session", function()
    start("LMP_HISTORY_SIZE=3")
    term:line("x = 12345")
    term:line("y = 2")
    term:line("y = 2") -- no duplicates in a row
    term:wait_for("\n>$")
    term:keys("Up")
    term:wait_for("\n> y = 2$")
    term:keys("C-u")
    term:keys("C-d")
    local deadline = mp.monotonic() + 5
    while term:pid() and mp.monotonic() < deadline do mp.sleep(0.05) end
    term:stop()
    local hist = H.slurp(home .. "/.lmp_history")
    assert.are.equal("x = 12345\ny = 2\n", hist)

    start("LMP_HISTORY_SIZE=3")
    term:keys("Up")
    term:wait_for("\n> y = 2$")
    term:keys("Up")
    term:wait_for("\n> x = 12345$")
    term:keys("Enter")
    term:line("x + 1")
    term:wait_for("\n12346\n>$")
    term:line("for i = 1, 2 do")
    term:line("end")
    term:line("z = 1")
    term:keys("C-d")
    deadline = mp.monotonic() + 5
    while term:pid() and mp.monotonic() < deadline do mp.sleep(0.05) end
    hist = H.slurp(home .. "/.lmp_history") -- bounded: 3 entries, a chunk of 2 lines is one
    assert.are.equal("x + 1\nfor i = 1, 2 do\rend\nz = 1\n", hist)
  end)

  it("completes mp.Po to mp.Pool, pool:im to pool:imap and module names in require", function()
    start()
    term:type("mp.Po")
    term:keys("Tab")
    term:wait_for("\n> mp%.Pool$")
    term:keys("C-u")
    term:line("pool = mp.Pool(1)")
    -- typed only once the prompt is back: keys typed while a statement runs are echoed by the
    -- terminal itself (cooked mode), as in any shell, and the line is drawn again after them
    term:wait_for("\n> pool = mp%.Pool%(1%) *\n>$")
    term:type("pool:im")
    term:keys("Tab")
    term:wait_for("\n> pool:imap$")
    term:keys("Tab") -- a second Tab lists what it could be
    term:wait_for("pool:imap_unordered", 5, true)
    term:keys("C-u")
    term:type('m = require "lmp.po')
    term:keys("Tab")
    term:wait_for('\n> m = require "lmp%.pool$')
    term:keys("C-u")
    term:type("string.rep(\"x\", 2):up")
    term:keys("Tab")
    term:wait_for("\n> string%.rep%(\"x\", 2%):up$") -- a call is not followed: nothing to add
    term:keys("C-u")
    term:line("s = 'abc'")
    term:wait_for("\n> s = 'abc' *\n>$")
    term:type("s:up")
    term:keys("Tab")
    term:wait_for("\n> s:upper$")
    term:keys("C-u")
    term:line("pool:terminate()")
  end)

  it("completes methods of lmp objects whose __index is a function: Array, Manager, dict proxy", function()
    start()
    term:line("arr = mp.Array('i', 3)")
    term:wait_for("\n> arr = mp%.Array%('i', 3%) *\n>$")
    term:type("arr:tot")
    term:keys("Tab")
    term:wait_for("\n> arr:totable$")
    term:keys("C-u")
    term:line("m = mp.Manager()")
    term:wait_for("\n> m = mp%.Manager%(%)\n>$") -- its server started: the prompt is back
    term:type("m:Na")
    term:keys("Tab")
    term:wait_for("\n> m:Namespace$")
    term:keys("C-u")
    term:line("d = m:dict()")
    term:wait_for("\n> d = m:dict%(%)\n>$")
    term:type("d:ke")
    term:keys("Tab")
    term:wait_for("\n> d:keys$")
    term:keys("C-u")
    term:line("m:shutdown()")
  end)

  it("Ctrl-C at a continuation prompt drops the chunk: a fresh prompt on a fresh line", function()
    start()
    term:line("for i = 1, 3 do")
    term:wait_for("\n>>$")
    term:type("print(i)")
    term:keys("C-c")
    term:wait_for(">> print%(i%)%^C\n>$")
    term:line("1 + 1")
    term:wait_for("\n2\n>$")
    term:type("half typed")
    term:keys("C-c")
    term:wait_for("> half typed%^C\n>$")
  end)

  it("Ctrl-C stops a long map and the pool is usable again within a second", function()
    start()
    term:line("pool = mp.Pool(2)")
    term:line("function slow(x) local t = os.time() + 30 while os.time() < t do end return x end")
    term:line("pool:map(slow, {1, 2, 3, 4})")
    mp.sleep(0.5)
    term:keys("C-c")
    term:wait_for("InterruptedError", 10, true)
    term:wait_for("\n>$")
    term:line("%time pool:map(function(x) return x + 1 end, {1})[1]")
    local s = term:wait_for("time: [%d.]+ %S*s\n>$", 40)
    local value, unit = s:match("\n2\ntime: ([%d.]+) (%S*s)\n>$")
    assert.is_truthy(value, s)
    local seconds = tonumber(value) / (unit == "s" and 1 or unit == "ms" and 1e3 or 1e6)
    assert.is_true(seconds < 1, ("the next map took %s %s"):format(value, unit))
    term:line("pool:terminate()")
  end)

  it("Ctrl-D exits like a script's end: no child is left", function()
    start()
    term:line("pool = mp.Pool(2)")
    term:line("p = mp.Process{target = function() mp.sleep(1000) end, daemon = true}; p:start()")
    term:line("#pool:stats().workers")
    term:wait_for("\n2\n>$")
    local pid = term:pid()
    local kids = children_of(pid)
    assert.is_true(#kids >= 3, "workers and the process: " .. #kids)
    term:keys("C-d")
    assert.are.same({}, wait_gone({ pid }, 10), "lmp did not exit")
    assert.are.same({}, wait_gone(kids, 10), "children left behind")
  end)

  it("Up then Enter on an empty history runs nothing (input is text, never a binary chunk)", function()
    start()
    term:keys("Up")
    term:keys("Enter")
    term:keys("Left", "Enter")
    term:line("'fine'")
    local s = term:wait_for('\n"fine"\n>$')
    assert.is_nil(s:find("binary", 1, true), s)
    assert.is_nil(s:find("syntax error", 1, true), s)
  end)
end)

describe("REPL completion (lmp.completion)", function()
  local completion = require "lmp.completion"
  local listdir = require("lmp.core").console.listdir
  before_each(H.setup)
  after_each(function()
    _G.obj, _G.Class, _G._secret, _G.mp = nil, nil, nil, nil
    H.teardown()
  end)

  local function complete(word, before) return completion.complete(word, before or "", listdir) end

  it("offers keywords and globals, names with _ only once _ is typed", function()
    _G._secret = 1
    assert.are.same({ "local" }, complete("loc"))
    assert.are.same({ "print" }, complete("prin"))
    assert.are.same({ "_secret" }, complete("_sec"))
    local all = complete("")
    for _, w in ipairs(all) do assert.are_not.equal("_secret", w) end
  end)

  it("follows __index tables for fields and methods, never a function __index", function()
    _G.Class = { __index = { greet = function() end, size = 3 } }
    setmetatable(_G.Class.__index, { __index = { inherited = function() end } })
    _G.obj = setmetatable({ own = true }, _G.Class)
    assert.are.same({ "obj:greet" }, complete("obj:gr"))
    assert.are.same({ "obj:greet", "obj:inherited" }, complete("obj:"))
    assert.are.same({ "obj.greet", "obj.inherited", "obj.own", "obj.size" }, complete("obj."))
    local calls = 0
    _G.obj = setmetatable({}, { __index = function() calls = calls + 1 end })
    assert.are.same({}, complete("obj.x"))
    assert.are.equal(0, calls)
    assert.are.same({}, complete("nosuch.thing."))
  end)

  it("completes mp's classes and a pool's methods", function()
    local pool <close> = mp.Pool(1)
    _G.obj, _G.mp = pool, mp
    assert.are.same({ "mp.Pool" }, complete("mp.Poo"))
    assert.are.same({ "obj:imap", "obj:imap_unordered" }, complete("obj:im"))
  end)

  it("completes the methods of lmp objects whose __index is a function, calling none", function()
    local pool <close> = mp.Pool(1)
    local m = mp.Manager()
    local ok, err = pcall(function()
      _G.obj = mp.Array("i", 3)
      assert.are.same({ "obj:totable" }, complete("obj:tot"))
      assert.are.same({ "obj:acquire", "obj:get_lock", "obj:release", "obj:totable", "obj:with" },
        complete("obj:"))
      _G.obj = mp.Value("d", 1)
      assert.are.same({ "obj:get_lock" }, complete("obj:get"))
      _G.obj = mp.Barrier(2)
      assert.are.same({ "obj:abort" }, complete("obj:ab"))
      _G.obj = pool:apply_async(function() return 1 end, {})
      assert.are.same({ "obj:successful" }, complete("obj:succ"))
      _G.obj:wait(30)
      _G.obj = mp.Process(function() end)
      assert.are.same({ "obj:start" }, complete("obj:st"))
      _G.obj = m
      assert.are.same({ "obj:Namespace" }, complete("obj:Na"))
      assert.are.same({ "obj:shutdown" }, complete("obj:shut"))
      _G.obj = m:dict()
      assert.are.same({ "obj:keys" }, complete("obj:ke"))
      _G.obj = m:list()
      assert.are.same({ "obj:append" }, complete("obj:app"))
      _G.obj = m:Value("i", 1)
      assert.are.same({ "obj:get", "obj:get_lock" }, complete("obj:get"))
    end)
    _G.obj = nil
    m:shutdown()
    assert(ok, err)
  end)

  it("follows a __methods table where __index is a function, and never calls the function", function()
    local calls = 0
    local Class = { __methods = { area = function() end, grow = function() end, size = 1 } }
    Class.__index = function(_, k)
      calls = calls + 1
      return Class.__methods[k]
    end
    _G.obj = setmetatable({ own = 2 }, Class)
    assert.are.same({ "obj:area", "obj:grow" }, complete("obj:"))
    assert.are.same({ "obj.area", "obj.grow", "obj.own", "obj.size" }, complete("obj."))
    assert.are.same({}, complete("obj:x"))
    assert.are.equal(0, calls)
  end)

  it("offers module names inside require, from package.path and the loaded ones", function()
    local mods = complete("lmp.po", 'local p = require "')
    assert.is_truthy(#mods >= 1)
    for _, m in ipairs(mods) do assert.matches("^lmp%.po", m) end
    local found = false
    for _, m in ipairs(mods) do found = found or m == "lmp.pool" end
    assert.is_true(found)
    local cjson_found = false -- a C module found on package.cpath
    for _, m in ipairs(complete("cjso", "require('")) do cjson_found = cjson_found or m == "cjson" end
    assert.is_true(cjson_found)
  end)

  it("indents with Tab on an empty line", function()
    assert.are.same({ "  " }, complete("", "   "))
  end)
end)
