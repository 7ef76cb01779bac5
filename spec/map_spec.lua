-- map_spec.lua — `lmp --map SCRIPT [INPUT...]`: JSON lines through a pool, checked record by
-- record; error objects for malformed, raising, killed, crashing and timed-out records while
-- the run goes on; --halt, --retries, -o and --resume after a kill -9; stdin; exit statuses;
-- memory bounded under ulimit -v on a file far larger than the limit; the progress bar.
local H = require "helper"
local Term = require "ttydriver"
local mp = require "lmp"
local cjson = require "cjson"

local LMP = os.getenv("LMP_EXE") or "build/lmp"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function write_file(text)
  local name = H.tmpname()
  local f = assert(io.open(name, "wb"))
  f:write(text)
  f:close()
  return name
end

-- Writes n lines made by line(i) to a temporary file.
local function lines_file(n, line)
  local name = H.tmpname()
  local f = assert(io.open(name, "wb"))
  local buf = {}
  for i = 1, n do
    buf[#buf + 1] = line(i)
    if #buf == 1000 or i == n then
      f:write(table.concat(buf, "\n"), "\n")
      buf = {}
    end
  end
  f:close()
  return name
end

-- Runs `lmp --map <args>` (bounded by timeout -s KILL); returns stdout, stderr, exit status.
local function map(args, opts)
  opts = opts or {}
  local out, err = H.tmpname(), H.tmpname()
  local cmd = ("%stimeout -s KILL %d %s --map %s <%s >%s 2>%s"):format(opts.prefix or "",
    opts.timeout or 120, q(LMP), args, opts.stdin and q(opts.stdin) or "/dev/null", out, err)
  local _, how, code = os.execute(opts.shell and ("sh -c " .. q(cmd)) or cmd)
  return H.slurp(out), H.slurp(err), how == "exit" and code or -code
end

local function split_lines(s)
  local t = {}
  for line in s:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

local TRANSFORM = write_file([[
return function(r, lineno)
  r.sq = r.id * r.id
  r.line = lineno
  return r
end
]])

describe("lmp --map", function()
  before_each(H.setup)
  after_each(H.teardown)
  teardown(H.cleanup)

  it("maps 100k records, one line out per line in, in input order, checked one by one", function()
    local input = lines_file(100000, function(i)
      return ('{"id":%d,"name":"n%d","v":%s}'):format(i, i, i * 0.5)
    end)
    local out, err, code = map(TRANSFORM .. " " .. input .. " -P 2")
    assert.are.equal(0, code, err)
    local lines = split_lines(out)
    assert.are.equal(100000, #lines)
    for i = 1, 100000 do
      local r = cjson.decode(lines[i])
      if r.id ~= i or r.sq ~= i * i or r.line ~= i or r.name ~= "n" .. i or r.v ~= i * 0.5 then
        error(("line %d is wrong: %s"):format(i, lines[i]))
      end
    end
    assert.are.equal('{"id":1,"line":1,"name":"n1","sq":1,"v":0.5}', lines[1])
    assert.are.equal('{"id":100000,"line":100000,"name":"n100000","sq":10000000000,"v":50000}',
      lines[100000])
  end)

  it("--unordered writes every one of 100k records exactly once", function()
    local input = lines_file(100000, function(i) return ('{"id":%d}'):format(i) end)
    local out, err, code = map(TRANSFORM .. " " .. input .. " --unordered -P 2")
    assert.are.equal(0, code, err)
    local seen, n = {}, 0
    for line in out:gmatch("[^\n]+") do
      local r = cjson.decode(line)
      assert.is_nil(seen[r.id], "record twice: " .. line)
      assert.are.equal(r.id, r.line)
      assert.are.equal(r.id * r.id, r.sq)
      seen[r.id] = true
      n = n + 1
    end
    assert.are.equal(100000, n)
  end)

  it("gives malformed, raising, killed, crashing and timed-out records an error on their line", function()
    local script = write_file([[
local mp = require "lmp"
return function(r, lineno)
  if r.raise then error("boom on " .. lineno) end
  if r.kill then os.execute("kill -9 " .. mp.getpid()) end
  if r.segv then require("lmp_testhelper").segfault() end
  if r.spin then while true do end end
  return { id = r.id }
end
]])
    local special = {
      [10] = "not json", [20] = '{"raise":true}', [30] = '{"kill":true}', [40] = '{"spin":true}',
      [50] = '{"segv":true}', [60] = "", [70] = '{"id":70', [80] = '{"raise":true}',
    }
    local input = lines_file(3000, function(i) return special[i] or ('{"id":%d}'):format(i) end)
    local out, err, code = map(script .. " " .. input .. " -P 2 --timeout 2")
    assert.are.equal(1, code, err)
    local lines = split_lines(out)
    assert.are.equal(3000, #lines)
    local function err_of(i)
      local e = cjson.decode(lines[i]).error
      assert.is_table(e, "no error object on line " .. i .. ": " .. lines[i])
      assert.are.equal(i, e.line)
      return e
    end
    for _, i in ipairs({ 10, 60, 70 }) do assert.are.equal("JSONError", err_of(i).type) end
    assert.are.equal("RemoteError", err_of(20).type)
    assert.matches("boom on 20", err_of(20).message)
    assert.matches("boom on 80", err_of(80).message)
    assert.are.equal("WorkerLostError", err_of(30).type)
    assert.matches("signal 9", err_of(30).message)
    assert.are.equal("TimeoutError", err_of(40).type)
    assert.are.equal("WorkerLostError", err_of(50).type)
    assert.matches("SIGSEGV", err_of(50).message)
    for i = 1, 3000 do
      if not special[i] then assert.are.equal(('{"id":%d}'):format(i), lines[i]) end
    end
  end)

  it("--halt N stops after N errors, the lines before them written", function()
    local input = write_file('{"id":1}\n{"id":2}\nbad\n{"id":4}\nbad\n{"id":6}\nbad\n')
    local out, err, code = map(TRANSFORM .. " " .. input .. " --halt 2")
    assert.are.equal(1, code)
    local lines = split_lines(out)
    assert.are.equal(5, #lines, out)
    assert.matches('"line":5', lines[5])
    assert.matches("--halt", err)
    local all, _, code2 = map(TRANSFORM .. " " .. input .. " --halt 4")
    assert.are.equal(1, code2)
    assert.are.equal(7, #split_lines(all))
  end)

  it("--retries runs a record whose worker died again", function()
    local marker = H.tmpname()
    os.remove(marker)
    local script = write_file(([[
local mp = require "lmp"
return function(r)
  if r.flaky and not io.open(%q) then
    io.open(%q, "w"):close()
    os.execute("kill -9 " .. mp.getpid())
  end
  return { id = r.id }
end
]]):format(marker, marker))
    local input = write_file('{"id":1}\n{"id":2,"flaky":true}\n{"id":3}\n')
    local out, err, code = map(script .. " " .. input .. " --chunksize 1 --retries 1")
    assert.are.equal(0, code, err)
    assert.are.equal('{"id":1}\n{"id":2}\n{"id":3}\n', out)
    os.remove(marker)
    local out2, _, code2 = map(script .. " " .. input .. " --chunksize 1 --retries 0")
    assert.are.equal(1, code2)
    assert.matches('^{"id":1}\n{"error":{"type":"WorkerLostError".*"line":2}}\n{"id":3}\n$', out2)
  end)

  it("reads stdin, - and several files in order, line numbers running on", function()
    local a = write_file('{"id":1}\n{"id":2}')         -- no final newline
    local b = write_file('{"id":3}\n')
    local out, err, code = map(TRANSFORM .. " - " .. b, { stdin = a })
    assert.are.equal(0, code, err)
    assert.are.equal('{"id":1,"line":1,"sq":1}\n{"id":2,"line":2,"sq":4}\n{"id":3,"line":3,"sq":9}\n', out)
    local out2 = map(TRANSFORM, { stdin = b })
    assert.are.equal('{"id":3,"line":1,"sq":9}\n', out2)
  end)

  it("writes to -o FILE, and after a kill -9 --resume finishes it byte for byte", function()
    local script = write_file([[
return function(r)
  local s = 0
  for i = 1, 300 do s = s + i % 7 end
  return { id = r.id, s = s, tag = "x" .. r.id }
end
]])
    local input = lines_file(300000, function(i) return ('{"id":%d,"p":"%s"}'):format(i, ("y"):rep(20)) end)
    local clean, resumed = H.tmpname(), H.tmpname()
    local _, err, code = map(script .. " " .. input .. " -P 2 -o " .. clean)
    assert.are.equal(0, code, err)
    local pidfile = H.tmpname()
    os.execute(("sh -c %s"):format(q(("%s --map %s %s -P 2 -o %s </dev/null >/dev/null 2>&1 & echo $! >%s")
      :format(q(LMP), script, input, resumed, pidfile))))
    local pid = tonumber(H.slurp(pidfile))
    local deadline = mp.monotonic() + 60
    while #(H.slurp(resumed) or "") < 2e6 and mp.monotonic() < deadline do mp.sleep(0.02) end
    os.execute("kill -9 " .. pid)
    while io.open("/proc/" .. pid .. "/stat") and mp.monotonic() < deadline do mp.sleep(0.02) end
    local partial = H.slurp(resumed)
    local full = H.slurp(clean)
    assert.is_true(#partial > 0 and #partial < #full, ("killed at %d of %d bytes"):format(#partial, #full))
    assert.are.equal(full:sub(1, #partial), partial) -- a prefix, maybe cut inside a line
    local _, err2, code2 = map(script .. " " .. input .. " -P 2 --resume -o " .. resumed)
    assert.are.equal(0, code2, err2)
    assert.is_true(H.slurp(resumed) == full, "the resumed file differs from the clean run's")
    local _, _, code3 = map(script .. " " .. input .. " --resume -o " .. resumed) -- nothing left
    assert.are.equal(0, code3)
    assert.is_true(H.slurp(resumed) == full)
  end)

  it("a failed write of the output (full disk, file-size limit, closed stdout) is an error, never a success", function()
    local input = lines_file(3000, function(i) return ('{"id":%d}'):format(i) end)
    local _, err, code = map(TRANSFORM .. " " .. input .. " -P 2 -o /dev/full")
    assert.are.equal(1, code, err)
    assert.matches("cannot write /dev/full: No space left on device", err, 1, true)
    for _, redirect in ipairs({ ">/dev/full", ">&-" }) do
      local errf = H.tmpname()
      local _, how, c = os.execute(("{ timeout -s KILL 120 %s --map %s %s -P 2 </dev/null %s; } 2>%s")
        :format(q(LMP), TRANSFORM, input, redirect, errf))
      local e = H.slurp(errf)
      assert.are.equal("exit", how)
      assert.are.equal(1, c, redirect .. ": " .. e)
      assert.matches("cannot write the standard output: " .. (redirect == ">&-"
        and "Bad file descriptor" or "No space left on device"), e, 1, true)
    end
  end)

  it("a file cut by a file-size limit is reported, and --resume then finishes it byte for byte", function()
    local input = lines_file(600000, function(i) return ('{"id":%d}'):format(i) end)
    local clean, cut = H.tmpname(), H.tmpname()
    local _, err, code = map(TRANSFORM .. " " .. input .. " -P 2 -o " .. clean)
    assert.are.equal(0, code, err)
    -- 4096 blocks (2 or 4 MB, as the shell counts them) of a result file of about 19 MB;
    -- SIGXFSZ ignored, so that a write past the limit fails with EFBIG.
    local _, err2, code2 = map(TRANSFORM .. " " .. input .. " -P 2 -o " .. cut,
      { shell = true, prefix = "ulimit -f 4096; trap '' XFSZ; " })
    assert.are.equal(1, code2, err2)
    assert.matches("cannot write " .. cut .. ": File too large", err2, 1, true)
    assert.matches("--resume", err2, 1, true)
    local partial, full = H.slurp(cut), H.slurp(clean)
    assert.is_true(#partial > 0 and #partial < #full, ("cut at %d of %d bytes"):format(#partial, #full))
    assert.are.equal(full:sub(1, #partial), partial)
    local _, err3, code3 = map(TRANSFORM .. " " .. input .. " -P 2 --resume -o " .. cut)
    assert.are.equal(0, code3, err3)
    assert.is_true(H.slurp(cut) == full, "the resumed file differs from the clean run's")
  end)

  it("refuses (status 2) an output that is one of its inputs, whatever its name, leaving it whole", function()
    local input = lines_file(50, function(i) return ('{"id":%d}'):format(i) end)
    local before = H.slurp(input)
    local link = H.tmpname()
    os.remove(link)
    assert(os.execute(("ln %s %s"):format(q(input), q(link))))
    local dir, base = input:match("^(.*)/([^/]+)$")
    local cases = {
      { TRANSFORM .. " " .. input .. " -o " .. input },
      { TRANSFORM .. " " .. input .. " -o " .. link },                     -- a hard link
      { TRANSFORM .. " " .. input .. " -o " .. dir .. "/./" .. base },      -- another spelling
      { TRANSFORM .. " " .. input .. " --resume -o " .. link },
      { TRANSFORM .. " - -o " .. link, { stdin = input } },                -- stdin is the file
    }
    for _, case in ipairs(cases) do
      local out, err, code = map(case[1], case[2])
      assert.are.equal(2, code, case[1] .. ": " .. err)
      assert.matches("is also an input", err, 1, true)
      assert.are.equal("", out)
      assert.are.equal(before, H.slurp(input), "the input was changed by: " .. case[1])
    end
    -- standard output appending to the input (it would read its own results forever)
    local errf = H.tmpname()
    local _, _, code = os.execute(("{ timeout -s KILL 60 %s --map %s %s </dev/null >>%s; } 2>%s")
      :format(q(LMP), TRANSFORM, input, q(input), errf))
    assert.are.equal(2, code, H.slurp(errf))
    assert.matches("the standard output is also an input", H.slurp(errf), 1, true)
    assert.are.equal(before, H.slurp(input))
    os.remove(link)
    -- /dev/null as input and output is no clash (not a regular file)
    local _, err, code2 = map(TRANSFORM .. " /dev/null -o /dev/null")
    assert.are.equal(0, code2, err)
  end)

  it("with --retries 0 the record a dead block's worker was running is not run again; its neighbours are", function()
    local runs, marker = H.tmpname(), H.tmpname()
    os.remove(marker)
    local script = write_file(([[
local mp = require "lmp"
return function(r)
  local f = io.open(%q, "a") f:write(r.id, "\n") f:close()
  if r.victim and not io.open(%q) then
    io.open(%q, "w"):close()
    os.execute("kill -9 " .. mp.getpid())
    mp.sleep(5)
  end
  return { id = r.id }
end
]]):format(runs, marker, marker))
    local input = lines_file(500, function(i)
      return i == 125 and '{"id":125,"victim":true}' or ('{"id":%d}'):format(i)
    end)
    local function count_runs()
      local n = {}
      for id in H.slurp(runs):gmatch("%d+") do n[tonumber(id)] = (n[tonumber(id)] or 0) + 1 end
      return n
    end
    local out, err, code = map(script .. " " .. input .. " -P 2 --chunksize 50")
    assert.are.equal(1, code, err)
    local lines = split_lines(out)
    assert.are.equal(500, #lines)
    local e = cjson.decode(lines[125]).error
    assert.are.equal("WorkerLostError", e and e.type, lines[125])
    assert.are.equal(125, e.line)
    assert.matches("signal 9", e.message)
    for i = 1, 500 do
      if i ~= 125 then assert.are.equal(('{"id":%d}'):format(i), lines[i]) end
    end
    local n = count_runs()
    assert.are.equal(1, n[125], "the victim ran again with --retries 0")
    assert.are.equal(1, n[150], "a record after the victim in its block ran twice")
    assert.are.equal(2, n[101], "the records before the victim lost their results: they run again")
    -- --retries 1: the victim runs once more, alone, and succeeds
    os.remove(marker)
    os.remove(runs)
    local out2, err2, code2 = map(script .. " " .. input .. " -P 2 --chunksize 50 --retries 1")
    assert.are.equal(0, code2, err2)
    assert.are.equal('{"id":125}', split_lines(out2)[125])
    assert.are.equal(2, count_runs()[125])
  end)

  it("a block past its time: only a record that ran for --timeout gets the TimeoutError, run once", function()
    local runs = H.tmpname()
    os.remove(runs)
    local script = write_file(([[
local mp = require "lmp"
return function(r)
  local f = io.open(%q, "a") f:write(r.id, "\n") f:close()
  mp.sleep(r.slow or 0)
  return { id = r.id }
end
]]):format(runs))
    local function count_runs()
      local n = {}
      for id in H.slurp(runs):gmatch("%d+") do n[tonumber(id)] = (n[tonumber(id)] or 0) + 1 end
      return n
    end
    -- one overdue record in a block of 10
    local input = lines_file(10, function(i) return i == 7 and '{"id":7,"slow":30}' or ('{"id":%d}'):format(i) end)
    local out, err, code = map(script .. " " .. input .. " -P 2 --chunksize 10 --timeout 1")
    assert.are.equal(1, code, err)
    local lines = split_lines(out)
    assert.are.equal(10, #lines)
    assert.matches('^{"error":{"type":"TimeoutError".*"line":7}}$', lines[7])
    assert.are.equal(1, count_runs()[7], "the overdue record was run again with --retries 0")
    -- a block slow as a whole (20 x 0.1 s, past its 1.5 s), no record overdue: nothing fails
    os.remove(runs)
    local input2 = lines_file(20, function(i) return ('{"id":%d,"slow":0.1}'):format(i) end)
    local out2, err2, code2 = map(script .. " " .. input2 .. " -P 2 --chunksize 20 --timeout 1")
    assert.are.equal(0, code2, err2)
    assert.are.equal(20, #split_lines(out2))
    assert.is_nil(out2:find("error", 1, true), out2)
    local again = 0
    for _, k in pairs(count_runs()) do if k > 1 then again = again + 1 end end
    assert.is_true(again >= 1, "the block did not time out: the case was not tried")
  end)

  it("keeps memory bounded: a file far larger than ulimit -v goes through", function()
    local pad = ("x"):rep(1000)
    local input = lines_file(150000, function(i) return ('{"id":%d,"pad":"%s"}'):format(i, pad) end)
    local size = #pad * 150000
    local limit_kib = 60 * 1024 -- 60 MiB of address space; the input is 150 MB
    local script = write_file("return function(r) return { id = r.id, n = #r.pad } end\n")
    -- a sanitizer build reserves terabytes of address space for its shadow memory: there the
    -- file still goes through, but only an uninstrumented lmp can run under the limit
    local sanitized = os.getenv("LMP_SANITIZED") ~= nil
      or (H.slurp(LMP) or ""):find("AddressSanitizer", 1, true) ~= nil
    local limit = sanitized and "" or ("ulimit -v %d; "):format(limit_kib)
    local out, err, code = map(script .. " " .. input .. " -P 2", { prefix = limit, shell = true })
    assert.are.equal(0, code, err)
    local lines = split_lines(out)
    assert.are.equal(150000, #lines)
    assert.are.equal('{"id":150000,"n":1000}', lines[150000])
    assert.is_true(size > 2 * limit_kib * 1024)
    if sanitized then return end
    -- the limit is real: the whole file does not fit under it
    local _, _, whole = os.execute(("sh -c %s"):format(q(("ulimit -v %d; %s -e %s >/dev/null 2>&1")
      :format(limit_kib, q(LMP), q(("assert(io.open(%q)):read('a')"):format(input))))))
    assert.are_not.equal(0, whole)
  end)

  it("writes numbers, null and tables as documented, keys sorted, the same bytes every run", function()
    local input = write_file('{"z":1,"f":1.5,"n":null,"ea":[],"eo":{},"a":[1,2.25,[3]],"s":"\\u00e9\\n",'
      .. '"big":12345678901234567890,"neg":-0.0,"e":1e300,"t":true}\n')
    local ident = write_file("return function(r) return r end\n")
    local out, err, code = map(ident .. " " .. input)
    assert.are.equal(0, code, err)
    assert.are.equal('{"a":[1,2.25,[3]],"big":1.2345678901234567e+19,"e":1e+300,"ea":{},"eo":{},'
      .. '"f":1.5,"n":null,"neg":-0,"s":"\xc3\xa9\\n","t":true,"z":1}\n', out)
    local odd = write_file([[
return function(r)
  if r.k == 1 then return nil end
  if r.k == 2 then return setmetatable({}, { __json = "array" }) end
  if r.k == 3 then return function() end end
  if r.k == 4 then return "text" end
  return { [1] = "a", [3] = "c" }
end
]])
    local out2 = map(odd .. " -", { stdin = write_file('{"k":1}\n{"k":2}\n{"k":3}\n{"k":4}\n{"k":5}\n') })
    local lines = split_lines(out2)
    assert.are.equal("null", lines[1])
    assert.are.equal("[]", lines[2])
    assert.matches('^{"error":{"type":"SerializationError","message":".*function.*","line":3}}$', lines[3])
    assert.are.equal('"text"', lines[4])
    assert.are.equal('["a",null,"c"]', lines[5])
    local many = lines_file(2000, function(i)
      return ('{"k%d":%d,"alpha":1,"beta":2,"gamma":3,"delta":4,"eps":5}'):format(i, i)
    end)
    local first = map(ident .. " " .. many .. " -P 2")
    local second = map(ident .. " " .. many .. " -P 2")
    assert.is_true(first == second, "two runs wrote different bytes")
  end)

  it("runs {map = f, init = g} with g once in each worker", function()
    local script = write_file([[
local mp = require "lmp"
return {
  init = function() inits = (inits or 0) + 1 end,
  map = function(r) return { id = r.id, inits = inits, pid = mp.getpid() } end,
}
]])
    local input = lines_file(5000, function(i) return ('{"id":%d}'):format(i) end)
    local out, err, code = map(script .. " " .. input .. " -P 2")
    assert.are.equal(0, code, err)
    local pids, n = {}, 0
    for line in out:gmatch("[^\n]+") do
      local r = cjson.decode(line)
      assert.are.equal(1, r.inits)
      pids[r.pid] = true
      n = n + 1
    end
    assert.are.equal(5000, n)
    local workers = 0
    for _ in pairs(pids) do workers = workers + 1 end
    assert.is_true(workers >= 1 and workers <= 2, workers .. " workers")
  end)

  it("exits 2 for bad usage and for a script that cannot start", function()
    local input = write_file('{"id":1}\n')
    local cases = {
      "", "--bogus " .. TRANSFORM, TRANSFORM .. " -P 0", TRANSFORM .. " -P x",
      TRANSFORM .. " --timeout -1", TRANSFORM .. " --resume", TRANSFORM .. " --resume --unordered -o x",
      TRANSFORM .. " /nonexistent/input.jsonl", "/nonexistent/script.lua " .. input,
      write_file("return 42\n") .. " " .. input, write_file("return function(\n") .. " " .. input,
      write_file("error('no start')\n") .. " " .. input, TRANSFORM .. " -o",
    }
    for _, args in ipairs(cases) do
      local out, err, code = map(args)
      assert.are.equal(2, code, ("lmp --map %s: %s"):format(args, err))
      assert.are.equal("", out)
      assert.matches("lmp %-%-map", err)
    end
    local usage, _, code = map("--help")
    assert.are.equal(0, code)
    assert.matches("usage: lmp %-%-map SCRIPT", usage)
  end)

  it("draws a progress bar with a percentage and an ETA when stderr is a terminal", function()
    local script = write_file([[
return function(r) local t = os.clock() + 0.002 while os.clock() < t do end return r end
]])
    local input = lines_file(5000, function(i) return ('{"id":%d}'):format(i) end)
    local out = H.tmpname()
    local term = Term.start(("%s --map %s %s -P 2 -o %s; sleep 30"):format(q(LMP), script, input, out))
    local ok, s = pcall(term.wait_for, term, "%[[#.]+%]%s+%d+%%%s+%S+ lines%s+%S+/s.*ETA %d+:%d%d", 30)
    term:stop()
    assert.is_true(ok, s)
  end)
end)
