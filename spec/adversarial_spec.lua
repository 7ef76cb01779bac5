-- adversarial_spec.lua — what users hit when they push lmp past the happy path: closed standard
-- descriptors, a full disk under `lmp --map`, bad `args.n`, iterator and proxy inputs, misused
-- proxies and extra arguments. Each test is a broken promise of DESIGN.md or the docs.
-- Caveat: these tests fail until the runtime is fixed; anything that can hang runs in a child.
local mp = require "lmp"
local H = require "helper"

local EXE = os.getenv("LMP_EXE") or "build/lmp"
-- The process-wide shared-memory arena, made before the first test so that its descriptor is
-- not counted as left behind by the first test that creates a shared object.
local arena_holder = mp.Value("i", 0) -- luacheck: ignore
local SRC = os.getenv("LMP_SOURCE_DIR") or "."

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs a shell command line under a KILL bound; returns stdout, stderr and the exit status.
local function sh(cmd, seconds)
  local out, err = H.tmpname(), H.tmpname()
  local ok, how, code = os.execute(("timeout -s KILL %d sh -c %s >%s 2>%s")
    :format(seconds or 60, q(cmd), out, err))
  if how == "exit" and code > 128 then code = -(code - 128) end
  return H.slurp(out), H.slurp(err), code
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- The error a call raises, asserted to be an mp.Error (never a plain string).
local function lmp_error(f, ...)
  local err = H.error_of(f, ...)
  assert.is_true(mp.iserror(err), "a plain error instead of an mp.Error: " .. tostring(err))
  return err
end

describe("adversarial: the lmp executable", function()
  before_each(H.setup)
  after_each(function() H.teardown(); H.cleanup() end)

  it("does not abort at exit when started with stdin closed", function()
    local out, err, code = H.run_lmp("print(1)", "<&-", { timeout = 30 })
    assert.are.equal(0, code, err)
    assert.are.equal("1\n", out)
  end)

  it("does not abort at exit when a script with a pool runs with stdin closed", function()
    local code_ = [[
      local mp = require "lmp"
      local pool = mp.Pool(1)
      print(pool:apply(function() return 41 + 1 end, {}))
    ]]
    local out, err, code = H.run_lmp(code_, "<&-", { timeout = 30 })
    assert.are.equal(0, code, err)
    assert.are.equal("42\n", out)
    assert.is_nil(err:find("Assertion", 1, true), err)
  end)

  it("does not abort at exit when started with stdout closed", function()
    local _, err, code = sh(q(EXE) .. " -e 'io.stderr:write(\"ran\\n\")' >&-", 30)
    assert.are.equal(0, code, err)
    assert.are.equal("ran\n", err)
  end)

  it("lmp -v does not abort with stdin closed", function()
    local out, err, code = sh(q(EXE) .. " -v <&-", 30)
    assert.are.equal(0, code, err)
    assert.matches("^lmp %d", out)
  end)
end)

describe("adversarial: lmp --map", function()
  before_each(H.setup)
  after_each(function() H.teardown(); H.cleanup() end)

  local function input(n)
    local t = {}
    for i = 1, n do t[i] = ('{"id":%d}'):format(i) end
    return write(H.tmpname(), table.concat(t, "\n") .. "\n")
  end

  it("does not exit 0 when its output cannot be written (disk full)", function()
    local script = write(H.tmpname() .. ".lua", "return function(r) return { id = r.id } end\n")
    local inp = input(2000)
    local _, err, code = sh(("%s --map %s %s -o /dev/full"):format(q(EXE), q(script), q(inp)))
    assert.are_not.equal(0, code, "a run whose results were lost reported success: " .. err)
    local _, err2, code2 = sh(("%s --map %s %s >/dev/full"):format(q(EXE), q(script), q(inp)))
    assert.are_not.equal(0, code2, "results written to a full stdout reported success: " .. err2)
  end)

  it("refuses -o FILE naming one of its inputs instead of truncating it", function()
    local script = write(H.tmpname() .. ".lua", "return function(r) return { id = r.id } end\n")
    local inp = input(3)
    local before = H.slurp(inp)
    local _, err, code = sh(("%s --map %s %s -o %s"):format(q(EXE), q(script), q(inp), q(inp)))
    assert.are.equal(before, H.slurp(inp), "the input was destroyed (exit status " .. code .. ")")
    assert.are.equal(2, code, err)
  end)

  it("with --retries 0, a record whose worker is killed gets the error line, inside a block too", function()
    local marker = H.tmpname()
    os.remove(marker)
    -- The victim record kills its own worker the first time it runs (a transient death, like
    -- the OOM killer or a kill -9 from outside); it would succeed if it ran again.
    local script = write(H.tmpname() .. ".lua", ([[
      return function(r)
        if r.victim and not io.open(%q) then
          io.open(%q, "w"):close()
          os.execute("kill -9 " .. require("lmp").getpid())
          require("lmp").sleep(5)
        end
        return { id = r.id }
      end
    ]]):format(marker, marker))
    local t = {}
    for i = 1, 2000 do t[i] = i == 1000 and '{"id":1000,"victim":true}' or ('{"id":%d}'):format(i) end
    local inp = write(H.tmpname(), table.concat(t, "\n") .. "\n")
    local out, err, code = sh(("%s --map %s %s -P 2"):format(q(EXE), q(script), q(inp)))
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(2000, #lines, err)
    assert.matches('"type":"WorkerLostError"', lines[1000])
    assert.are.equal(1, code)
  end)
end)

-- Stopping a call (cancel, a failing item, Ctrl-C) withdraws its queued tasks. The bound below is
-- not a speed target: withdrawing work must never take longer than doing it (the time to run the
-- whole call is measured in the same child), plus a generous margin for a loaded machine.
describe("adversarial: stopping a big call", function()
  before_each(H.setup)
  after_each(function() H.teardown(); H.cleanup() end)

  local prelude = [[
    local mp = require "lmp"
    local pool = mp.Pool(2)
    -- items heavy enough that the workers, not the parent's submitting, set the pace (under
    -- ASan too): the call's work must still be queued a quarter of the way in
    local N = 20000
    local t = {} for i = 1, N do t[i] = i end
    local function work(x) local y = 0 for i = 1, 20000 do y = y + i end return x end
    local t0 = mp.monotonic()
    pool:map(work, t, 1)
    local full = mp.monotonic() - t0
  ]]

  it("cancel() of a map_async of 20k one-item chunks takes less than running them all", function()
    local out, err, code = H.run_lmp(prelude .. [[
      local r = pool:map_async(work, t, 1)
      mp.sleep(full / 4) -- a quarter of the way in, however fast this machine runs the tasks
      local c0 = mp.monotonic()
      assert(r:cancel(), "nothing was withdrawn")
      print(("%.3f %.3f"):format(full, mp.monotonic() - c0))
      pool:terminate()
    ]], "", { timeout = 150 })
    assert.are.equal(0, code, err)
    local full, took = out:match("([%d.]+) ([%d.]+)")
    assert.is_true(tonumber(took) < tonumber(full) + 2,
      ("cancel took %s s; running every task took %s s"):format(took, full))
  end)

  it("a map of 20k one-item chunks that fails a quarter of the way in raises before the rest would have run", function()
    -- Items fail once a quarter of the full run's time has passed, when every chunk has been queued.
    local out, err, code = H.run_lmp(prelude .. [[
      local deadline = mp.time() + full / 4
      local f0 = mp.monotonic()
      local ok, e = pcall(pool.map, pool, function(x)
        if mp.time() > deadline then error("late item") end
        return work(x)
      end, t, 1)
      assert(not ok and e.type == "RemoteError", tostring(e))
      print(("%.3f %.3f"):format(full, mp.monotonic() - f0))
      pool:terminate()
    ]], "", { timeout = 150 })
    assert.are.equal(0, code, err)
    local full, took = out:match("([%d.]+) ([%d.]+)")
    assert.is_true(tonumber(took) < tonumber(full) + 2,
      ("the error came after %s s; running every task took %s s"):format(took, full))
  end)

  it("Ctrl-C (a real SIGINT) during a map of 20k one-item chunks raises before the rest would have run", function()
    local out, err, code = H.run_lmp(prelude .. [[
      local sent = mp.Value("d", 0)
      local sender = mp.Process(function(ppid, sent, delay)
        mp.sleep(delay) -- a quarter of the way in, however fast this machine runs the tasks
        sent.value = mp.monotonic() -- CLOCK_MONOTONIC: one clock for every process
        os.execute("kill -INT " .. ppid)
      end, { mp.getpid(), sent, full / 4 })
      sender:start()
      local ok, e = pcall(pool.map, pool, work, t, 1)
      local back = mp.monotonic()
      assert(not ok and e.type == "InterruptedError", tostring(e))
      sender:join()
      print(("%.3f %.3f"):format(full, back - sent.value))
      pool:terminate()
    ]], "", { timeout = 150 })
    assert.are.equal(0, code, err)
    local full, took = out:match("([%d.]+) ([%d.]+)")
    assert.is_true(tonumber(took) < tonumber(full) + 2,
      ("InterruptedError came %s s after Ctrl-C; running every task took %s s"):format(took, full))
  end)
end)

-- A function record carries the process's secret as a plain token, not a MAC over the record:
-- any corruption of the bytecode after it reaches lua_load, whose binary loader trusts its input.
describe("adversarial: mp.decode of a corrupted function record", function()
  before_each(H.setup)
  after_each(function() H.teardown(); H.cleanup() end)

  it("never crashes the process, whichever byte is changed (each decoded function called)", function()
    local out, err, code = H.run_lmp([[
      local mp = require "lmp"
      local function f(x) return x + 1 end
      local base = mp.encode(f)
      for i = 1, #base do
        for _, v in ipairs({ 0, 64, 127, 255 }) do
          local ok, g = pcall(mp.decode, base:sub(1, i - 1) .. string.char(v) .. base:sub(i + 1))
          if ok and type(g) == "function" then
            debug.sethook(function() error("runaway") end, "", 1000000)
            pcall(g, 1)
            debug.sethook()
          end
        end
      end
      print("survived")
    ]], "", { timeout = 60 })
    assert.are.equal(0, code, "the process died (exit status " .. code .. "): " .. (err or ""))
    assert.are.equal("survived\n", out)
  end)

  it("does not allocate hundreds of megabytes for a 100-byte message", function()
    -- The bytecode's constant count is set to 2^24 (each a 16-byte slot that the loader fills).
    local out, err, code = H.run_lmp([[
      local mp = require "lmp"
      local function f(x) return x + 1 end
      local msg, d = mp.encode(f), string.dump(f)
      local at = assert(msg:find(d, 1, true), "the bytecode is not carried as string.dump makes it")
      assert(msg:byte(at - 1) == #d, "the record's length is the byte before the bytecode")
      local function size(s, i) -- Lua 5.4's dump varint: 7-bit groups, the last one marked
        local x = 0
        repeat local b = s:byte(i); x = (x << 7) | (b & 0x7f); i = i + 1 until b & 0x80 ~= 0
        return x, i
      end
      local i = 31 + 1 + 1 -- the header, the upvalue count; then the source name
      local n; n, i = size(d, i); if n > 0 then i = i + n - 1 end
      _, i = size(d, i); _, i = size(d, i) -- linedefined, lastlinedefined
      i = i + 3 -- numparams, is_vararg, maxstacksize
      n, i = size(d, i); i = i + 4 * n -- the code
      local _, kend = size(d, i)
      local bad = d:sub(1, i - 1) .. "\x08\x00\x00\x80" .. d:sub(kend)
      local forged = msg:sub(1, at - 2) .. string.char(#bad) .. bad .. msg:sub(at + #d)
      local ok, e = pcall(mp.decode, forged)
      assert(not ok and mp.iserror(e, "SerializationError"), tostring(e))
      local hwm = io.open("/proc/self/status"):read("a"):match("VmHWM:%s+(%d+)")
      print(#forged, hwm)
    ]], "", { timeout = 60 })
    assert.are.equal(0, code, err)
    local size, hwm = out:match("(%d+)%s+(%d+)")
    assert.is_not_nil(hwm, out .. err)
    assert.is_true(tonumber(hwm) < 100 * 1024,
      ("decoding a %s-byte message peaked at %s KB"):format(size, hwm))
  end)
end)

describe("adversarial: pool arguments", function()
  local pool
  before_each(function() H.setup(); pool = mp.Pool(1) end)
  after_each(function() pool:terminate(); pool:join(); pool = nil; H.teardown(); H.cleanup() end)

  local function nargs(...) return select("#", ...) end

  it("a huge args.n is a ValueError in the caller, not a segfault in the worker", function()
    local err = lmp_error(pool.apply, pool, nargs, { 1, 2, n = 2 ^ 31 })
    assert.are.equal("ValueError", err.type, tostring(err))
  end)

  it("a negative args.n is a ValueError in the caller, not a RemoteError from the worker", function()
    local err = lmp_error(pool.apply, pool, nargs, { 1, 2, n = -1 })
    assert.are.equal("ValueError", err.type, tostring(err))
  end)

  it("a non-integral args.n is a ValueError, never silently truncated", function()
    local ok, r = pcall(pool.apply, pool, nargs, { 1, 2, n = 2 ^ 40 })
    assert.is_false(ok, "2^40 arguments were silently turned into " .. tostring(r))
    assert.are.equal("ValueError", r.type, tostring(r))
  end)

  it("a starmap item with a huge n is a ValueError in the caller, not a segfault", function()
    local err = lmp_error(pool.starmap, pool, nargs, { { 1, 2, n = 2 ^ 31 } })
    assert.are.equal("ValueError", err.type, tostring(err))
  end)

  it("imap takes io.lines(path) as its iterator input, as the docs show", function()
    local path = write(H.tmpname(), "a\nbb\nccc\n")
    local got = {}
    local ok, err = pcall(function()
      for i, v in pool:imap(function(s) return #s end, io.lines(path)) do got[i] = v end
    end)
    assert.is_true(ok, tostring(err))
    assert.are.same({ 1, 2, 3 }, got)
  end)

  describe("a Manager list proxy as the input", function()
    local m, l
    before_each(function() m = mp.Manager(); l = m:list({ 10, 20, 30 }) end)
    after_each(function() m:shutdown(); m, l = nil, nil end)

    -- Either the items, or a TypeError: never a silent table of nils.
    local function items_or_typeerror(ok, r, got)
      if ok then
        assert.are.same({ 10, 20, 30 }, got, "a list proxy was read as nils")
      else
        assert.is_true(mp.iserror(r, "TypeError"), tostring(r))
      end
    end

    it("map gives its items or raises a TypeError", function()
      local ok, r = pcall(pool.map, pool, function(x) return x end, l)
      items_or_typeerror(ok, r, ok and { r[1], r[2], r[3] })
    end)

    it("imap gives its items or raises a TypeError", function()
      local got = {}
      local ok, r = pcall(function()
        for i, v in pool:imap(function(x) return x end, l) do got[i] = v end
      end)
      items_or_typeerror(ok, r, got)
    end)

    it("apply takes it as the arguments or raises a TypeError", function()
      local ok, a, b, c = pcall(pool.apply, pool, function(...) return ... end, l)
      items_or_typeerror(ok, a, { a, b, c })
    end)
  end)
end)

describe("adversarial: Manager misuse", function()
  local m
  before_each(function() H.setup(); m = mp.Manager() end)
  after_each(function() m:shutdown(); m = nil; H.teardown(); H.cleanup() end)

  it("a proxy method called with a dot raises a TypeError, not a plain string", function()
    local d, l, mq, lk = m:dict(), m:list(), m:Queue(), m:Lock()
    for name, call in pairs({
      ["d.keys()"] = function() return d.keys() end,
      ["l.append(1)"] = function() return l.append(1) end,
      ["q.get()"] = function() return mq.get() end,
      ["lock.acquire()"] = function() return lk.acquire() end,
      ["m.dict()"] = function() return m.dict() end,
    }) do
      local err = H.error_of(call)
      assert.is_true(mp.iserror(err, "TypeError"), name .. " raised " .. tostring(err))
    end
  end)

  it("a custom proxy's method called with a dot raises a TypeError", function()
    local mm = mp.Manager { types = { Counter = function() return { incr = function(self) return 1 end } end } }
    local c = mm:Counter()
    local err = H.error_of(function() return c.incr() end)
    mm:shutdown()
    assert.is_true(mp.iserror(err, "TypeError"), tostring(err))
  end)

  it("a Queue proxy's put() without a value is a TypeError, as mp.Queue's", function()
    local mq = m:Queue()
    local err = lmp_error(mq.put, mq)
    assert.are.equal("TypeError", err.type)
    assert.are.equal(0, mq:qsize(), "put() stored a nil")
  end)

  it("a non-number initial value of a manager Value is a TypeError, as mp.Value's", function()
    assert.are.equal("TypeError", lmp_error(mp.Value, "i", "x").type)
    assert.are.equal("TypeError", lmp_error(m.Value, m, "i", "x").type)
  end)

  it("a custom type named like a manager field (address, authkey, pid) is refused, as 'dict' is", function()
    for _, name in ipairs({ "address", "authkey", "pid" }) do
      local ok, mm = pcall(mp.Manager, { types = { [name] = function() return {} end } })
      if ok then mm:shutdown() end
      assert.is_false(ok, "types." .. name .. " was accepted, and m:" .. name .. "() cannot be called")
      assert.is_true(mp.iserror(mm, "ValueError"), tostring(mm))
    end
  end)

  it("an empty authkey is a ValueError (a string of the wrong value, not of the wrong type)", function()
    assert.are.equal("ValueError", lmp_error(mp.Manager, { authkey = "" }).type)
  end)

  it("the Containers example of docs/api/manager.md runs as shown", function()
    local doc = H.slurp(SRC .. "/docs/api/manager.md")
    local block = doc:match("## Containers.-```lua\n(.-)```")
    assert.is_not_nil(block, "the example was not found")
    local out, err, code = H.run_lmp('local mp = require "lmp"\nlocal m = mp.Manager()\n' .. block,
      "", { timeout = 30 })
    assert.are.equal(0, code, err)
    assert.are.equal("1\n", out) -- the doc says: print(#l) --> 1
  end)
end)

describe("adversarial: extra arguments", function()
  local pool, m
  before_each(function() H.setup(); pool = mp.Pool(1); m = mp.Manager() end)
  after_each(function()
    pool:terminate(); pool:join(); m:shutdown(); pool, m = nil, nil
    H.teardown(); H.cleanup()
  end)

  it("raise a ValueError in every public call (DESIGN: 'so do extra arguments')", function()
    local d = m:dict()
    local calls = {
      ["mp.sleep(0, 2)"] = function() return mp.sleep(0, 2) end,
      ["mp.encode(1, 2)"] = function() return mp.encode(1, 2) end,
      ["mp.decode(s, 2)"] = function() return mp.decode(mp.encode(1), 2) end,
      ["mp.cpu_count(1)"] = function() return mp.cpu_count(1) end,
      ["mp.getpid(1)"] = function() return mp.getpid(1) end,
      ["mp.time(1)"] = function() return mp.time(1) end,
      ["mp.current_process(1)"] = function() return mp.current_process(1) end,
      ["mp.active_children(1)"] = function() return mp.active_children(1) end,
      ["pool:stats(1)"] = function() return pool:stats(1) end,
      ["m:dict({}, 1)"] = function() return m:dict({}, 1) end,
      ["m:Queue(1, 2)"] = function() return m:Queue(1, 2) end,
      ["m:Lock(1)"] = function() return m:Lock(1) end,
      ["d:keys(1)"] = function() return d:keys(1) end,
    }
    local silent = {}
    for name, call in pairs(calls) do
      local ok, err = pcall(call)
      if ok or not mp.iserror(err, "ValueError") then silent[#silent + 1] = name end
    end
    table.sort(silent)
    assert.are.same({}, silent, "extra arguments accepted by: " .. table.concat(silent, ", "))
  end)

  it("a misspelt target key of Process is named in the error", function()
    local err = lmp_error(mp.Process, { tagret = function() end })
    assert.are.equal("ValueError", err.type)
    assert.matches("tagret", err.message) -- docs/api/process.md: "(`tagret`, `arg`) is a ValueError naming it"
  end)
end)
