-- cli_spec.lua — the lmp executable: options like lua's, `arg`, exit statuses, the REPL read
-- plainly from a pipe (the terminal side is repl_spec.lua).
local H = require "helper"

local LMP = os.getenv("LMP_EXE") or "build/lmp"

-- Runs a shell command line; returns stdout, stderr, exit status.
local function sh(cmdline, stdin)
  local inp, out, err = H.tmpname(), H.tmpname(), H.tmpname()
  local f = assert(io.open(inp, "w"))
  f:write(stdin or "")
  f:close()
  local ok, how, code = os.execute(("%s <%s >%s 2>%s"):format(cmdline, inp, out, err))
  return H.slurp(out), H.slurp(err), how == "exit" and code or -code
end

local function script(code)
  local name = H.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(code)
  f:close()
  return name
end

describe("the lmp executable", function()
  before_each(H.setup)
  after_each(H.teardown)
  teardown(H.cleanup)

  it("-v prints the version", function()
    local out, _, code = sh(LMP .. " -v")
    assert.are.equal(0, code)
    assert.matches("^lmp %d+%.%d+%.%d+ %(Lua 5%.4", out)
  end)

  it("runs a script with arg set like lua, and ... holding the arguments", function()
    local s = script("print(arg[0], arg[1], arg[2], #arg, select('#', ...), ...)")
    local out, _, code = sh(("%s %s a b"):format(LMP, s))
    assert.are.equal(0, code)
    assert.are.equal(("%s\ta\tb\t2\t2\ta\tb\n"):format(s), out)
    local out2 = sh(("%s -- %s x"):format(LMP, s))
    assert.are.equal(("%s\tx\tnil\t1\t1\tx\n"):format(s), out2)
  end)

  it("-e runs a statement, -l requires a module into a global (also g=mod)", function()
    local out, _, code = sh(LMP .. [[ -l cjson -e "print(cjson.encode({1}))" -l J=cjson -e "print(J == cjson)"]])
    assert.are.equal(0, code)
    assert.are.equal("[1]\ntrue\n", out)
  end)

  it("exits non-zero with a traceback when the script fails", function()
    local s = script("local function f() error('bad thing') end\nf()\n")
    local out, err, code = sh(("%s %s"):format(LMP, s))
    assert.are.equal(1, code)
    assert.matches("bad thing", err)
    assert.matches("stack traceback", err)
  end)

  it("prints an lmp error object readably", function()
    local _, err, code = sh(LMP .. [[ -e "require('lmp').Pool(0)"]])
    assert.are.equal(1, code)
    assert.matches("ValueError: Pool: processes must be an integer from 1 to 4096", err)
  end)

  it("reads the script from stdin with - (and when stdin is not a terminal)", function()
    local out, _, code = sh(LMP .. " - x", "print('from stdin', ...)")
    assert.are.equal(0, code)
    assert.are.equal("from stdin\tx\n", out)
    local out2 = sh(LMP, "print(1 + 1)")
    assert.are.equal("2\n", out2)
  end)

  it("the REPL (-i) evaluates statements, prints values, shows cycles, has mp loaded", function()
    local input = table.concat({
      "x = 40",
      "x + 2",
      "t = {1, 'two', k = {v = true}}; t.self = t",
      "t",
      "for i = 1, 2 do",
      "  io.write(i, ';')",
      "end",
      "mp.cpu_count() >= 1",
      "error('oops')",
      "'still here'",
    }, "\n") .. "\n"
    local out, err, code = sh(LMP .. " -i", input)
    assert.are.equal(0, code)
    assert.matches("\n?> 42\n", out)
    assert.matches("self = <cycle: table: 0x%x+>", out)
    assert.matches('"two"', out)
    assert.matches("1;2;", out)
    assert.matches("> true\n", out)
    assert.matches("oops", err)
    assert.matches('"still here"', out)
  end)

  it("the REPL can send a function defined at the prompt to a pool", function()
    local input = table.concat({
      "local_pool = mp.Pool(2)",
      "function sq(x) return x * x end",
      "local_pool:map(sq, {1, 2, 3})[3]",
      "local_pool:terminate()",
    }, "\n") .. "\n"
    local out, err, code = sh(LMP .. " -i", input)
    assert.are.equal(0, code, err)
    assert.matches("> 9\n", out)
  end)

  it("-i prints one banner, and a REPL on a pipe writes no escape codes", function()
    local out, _, code = sh(LMP .. " -i", "1 + 1\n")
    assert.are.equal(0, code)
    local banners = 0
    for line in out:gmatch("[^\n]+") do
      if line:match("^lmp %d+%.%d+") then banners = banners + 1 end
    end
    assert.are.equal(1, banners, out)
    assert.matches("^lmp %d+%.%d+%.%d+ %(Lua 5%.4%.%d+%)", out)
    assert.is_nil(out:find("\27", 1, true), "escape codes in: " .. out)
    assert.matches("> 2\n", out)
  end)

  it("the REPL keeps the last value in _ and times a statement after %time", function()
    local out, err, code = sh(LMP .. " -i", "x = 21\nx * 2\n_ + 1\n%time _ * 2\n")
    assert.are.equal(0, code, err)
    assert.matches("> 42\n", out)
    assert.matches("> 43\n", out)
    assert.matches("> 86\ntime: [%d.]+ %S*s\n", out)
  end)

  it("the REPL loads what it reads as text only, never as a binary chunk", function()
    local chunk = string.dump(function() return "ran bytecode" end)
    local out, err, code = sh(LMP .. " -i", chunk:gsub("\n", " ") .. "\n'after'\n")
    assert.are.equal(0, code)
    assert.is_nil(out:find("ran bytecode", 1, true))
    assert.matches("binary chunk", err)
    assert.matches('"after"', out)
  end)

  -- A closed standard descriptor: lmp's own descriptors (libuv's loop, the shared-memory
  -- arena, pipes) must not land on fd 0-2, where libuv aborts when it closes them at exit.
  describe("with a standard descriptor closed", function()
    -- cmd runs in a group whose redirections come first, so that cmd's own `<&-` holds.
    local function closed(cmd, which)
      return sh(("{ timeout -s KILL 60 %s %s; }"):format(cmd, which))
    end
    local pool_code = "local mp = require 'lmp'; local p = mp.Pool(1); "
      .. "io.stderr:write(p:apply(function() return 41 + 1 end, {}), '\\n'); p:terminate()"

    it("exits 0 with stdin, stdout or stderr closed (-e, -v, a script with a pool)", function()
      for _, which in ipairs({ "<&-", ">&-", "2>&-" }) do
        local _, err, code = closed(LMP .. " -e 'local x = 1'", which)
        assert.are.equal(0, code, which .. ": " .. err)
        assert.is_nil(err:find("Assertion", 1, true), which .. ": " .. err)
        _, err, code = closed(LMP .. " -v", which)
        assert.are.equal(0, code, which .. " -v: " .. err)
      end
      local out, err, code = closed(LMP .. " " .. script(pool_code), "<&-")
      assert.are.equal(0, code, err)
      assert.are.equal("42\n", err)
      assert.are.equal("", out)
      local _, err2, code2 = closed(LMP .. " " .. script(pool_code), ">&-")
      assert.are.equal(0, code2, err2)
      assert.are.equal("42\n", err2)
    end)

    it("a closed stdout still fails to write, as a closed one does (it is not /dev/null)", function()
      local _, err, code = closed(LMP .. [[ -e "local ok, e = io.stdout:write('x'):flush()
        io.stderr:write(tostring(ok), ' ', tostring(e))"]], ">&-")
      assert.are.equal(0, code, err)
      assert.are.equal("nil Bad file descriptor", err)
      local _, err2 = closed(LMP .. [[ -e "io.stderr:write(tostring(io.read()))"]], "<&-")
      assert.are.equal("nil", err2)
    end)

    it("require 'lmp' from lua5.4 exits 0 with stdin closed", function()
      -- the sanitizer build's core.so needs the sanitizer's runtime in a stock lua5.4
      local pre = ""
      if os.getenv("LMP_SANITIZED") then
        local f = io.popen("clang -print-file-name=libclang_rt.asan-x86_64.so")
        local rt = f:read("l")
        f:close()
        pre = ("env LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0 "):format(rt)
      end
      local _, err, code = closed(pre .. "lua5.4 " .. script(pool_code), "<&-")
      assert.are.equal(0, code, err)
      assert.are.equal("42\n", err)
    end)
  end)
end)
