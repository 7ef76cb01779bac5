-- errors_spec.lua — every public constructor and method of mp called wrongly: a wrong type is a
-- TypeError, a wrong value a ValueError, an unknown option key or an extra argument a ValueError
-- naming it; an object used after close a ValueError; a malformed message or handle given to
-- mp.decode a SerializationError. Always an mp.Error, never a plain string.
-- The pool's cases are in their own block ("pool"): they are assertions like the others.
local mp = require "lmp"
local H = require "helper"
local S = require "shm_helper"

local function f() end

-- Asserts that fn(...) raises an mp.Error of type want whose message matches each pattern.
local function expect(want, patterns, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "no error was raised")
  assert(mp.iserror(err), ("a plain %s was raised, not an mp.Error: %s"):format(type(err), tostring(err)))
  assert(err.type == want, ("%s expected, got %s"):format(want, tostring(err)))
  assert(type(err.message) == "string" and #err.message > 0, "an empty message")
  for _, p in ipairs(patterns) do
    assert(err.message:find(p, 1, true), ("the message does not name %q: %s"):format(p, err.message))
  end
end

-- Each case: { description, error type, { words the message names }, function }.
local function run_cases(cases)
  for _, c in ipairs(cases) do
    it(c[1] .. " -> " .. c[2], function() expect(c[2], c[3], c[4]) end)
  end
end

local function closed_queue()
  local q = mp.Queue()
  q:close()
  return q
end

local function closed_pipe()
  local a, b = mp.Pipe()
  a:close(); b:close()
  return a
end

describe("argument errors", function()
  before_each(S.setup)
  after_each(S.teardown)
  teardown(H.cleanup)

  describe("Process", function()
    run_cases {
      { "mp.Process(42)", "TypeError", { "Process" }, function() mp.Process(42) end },
      { "mp.Process{target = 5}", "TypeError", { "target" }, function() mp.Process { target = 5 } end },
      { "mp.Process{target = f, tagret = 1}", "ValueError", { "tagret" },
        function() mp.Process { target = f, tagret = 1 } end },
      { "mp.Process{target = f, args = 5}", "TypeError", { "args" }, function() mp.Process { target = f, args = 5 } end },
      { "mp.Process(f, 5)", "TypeError", { "args" }, function() mp.Process(f, 5) end },
      { "mp.Process(f, {}, 3)", "ValueError", { "Process" }, function() mp.Process(f, {}, 3) end },
      { "mp.Process{target = f}, 2", "ValueError", { "Process" }, function() mp.Process({ target = f }, {}) end },
      { "mp.Process{target = f, name = 5}", "TypeError", { "name" }, function() mp.Process { target = f, name = 5 } end },
      { "mp.Process{target = f, daemon = 'yes'}", "TypeError", { "daemon" },
        function() mp.Process { target = f, daemon = "yes" } end },
      { "mp.Process{}", "ValueError", { "target" }, function() mp.Process {} end },
      { "mp.Process{run = 5}", "TypeError", { "run" }, function() mp.Process { run = 5 } end },
      { "p.start() without self", "TypeError", { "start" }, function() mp.Process(f).start() end },
      { "p:start(1)", "ValueError", { "start" }, function() mp.Process(f):start(1) end },
      { "p:join() before start", "ValueError", { "join" }, function() mp.Process(f):join() end },
      { "p:join('x')", "ValueError", { "timeout" }, function() mp.Process(f):join("x") end },
      { "p:join(0/0)", "ValueError", { "timeout" }, function() mp.Process(f):join(0 / 0) end },
      { "p:join(1, 2)", "ValueError", { "join" }, function() mp.Process(f):join(1, 2) end },
      { "p.is_alive(5)", "TypeError", { "is_alive" }, function() mp.Process(f).is_alive(5) end },
      { "p:terminate() after close", "ValueError", { "closed" },
        function() local p = mp.Process(f); p:close(); p:terminate() end },
    }
  end)

  describe("module functions", function()
    run_cases {
      { "mp.sleep('x')", "TypeError", { "sleep" }, function() mp.sleep("x") end },
      { "mp.sleep(0/0)", "ValueError", { "sleep" }, function() mp.sleep(0 / 0) end },
      { "mp.wait(5)", "TypeError", { "objects" }, function() mp.wait(5) end },
      { "mp.wait({5})", "TypeError", { "objects[1]" }, function() mp.wait({ 5 }) end },
      { "mp.wait({}, 'x')", "ValueError", { "timeout" }, function() mp.wait({}, "x") end },
      { "mp.wait({}, 0/0)", "ValueError", { "timeout" }, function() mp.wait({}, 0 / 0) end },
      { "mp.wait({}, 0, 1)", "ValueError", { "wait" }, function() mp.wait({}, 0, 1) end },
      { "mp.poll('x')", "ValueError", { "timeout" }, function() mp.poll("x") end },
      { "mp.poll(0/0)", "ValueError", { "timeout" }, function() mp.poll(0 / 0) end },
      { "mp.set_start_method(5)", "TypeError", { "set_start_method" }, function() mp.set_start_method(5) end },
      { "mp.set_start_method('forkserver')", "ValueError", { "forkserver" },
        function() mp.set_start_method("forkserver") end },
      { "mp.decode(5)", "TypeError", { "decode" }, function() mp.decode(5) end },
      { "mp.decode('garbage')", "SerializationError", {}, function() mp.decode("garbage") end },
      { "mp.encode(a coroutine)", "SerializationError", { "thread" },
        function() mp.encode({ co = coroutine.create(f) }) end },
    }

    it("mp.decode of a handle with any byte changed raises an mp.Error, never a plain string", function()
      local objects = { mp.Lock(), mp.RLock(), mp.Semaphore(2), mp.Event(), mp.Condition(),
        mp.Barrier(2, function() end), mp.Value("i", 1), mp.Array("d", 3), mp.Queue(),
        mp.JoinableQueue(), mp.SimpleQueue(), mp.RawValue("b", 1) }
      local a, b = mp.Pipe()
      objects[#objects + 1] = a
      local plain = {}
      for _, o in ipairs(objects) do
        local msg = mp.encode(o)
        for i = 1, #msg do
          for _, x in ipairs { 0x01, 0x80, 0xff } do
            local bad = msg:sub(1, i - 1) .. string.char(msg:byte(i) ~ x) .. msg:sub(i + 1)
            local ok, err = pcall(mp.decode, bad)
            if not ok and not mp.iserror(err) then plain[#plain + 1] = tostring(err) end
          end
        end
        for n = 0, #msg - 1 do -- every truncation
          local ok, err = pcall(mp.decode, msg:sub(1, n))
          if not ok and not mp.iserror(err, "SerializationError") then plain[#plain + 1] = tostring(err) end
        end
      end
      a:close(); b:close()
      assert.are.same({}, plain)
    end)
  end)

  describe("Queue", function()
    run_cases {
      { "mp.Queue('x')", "TypeError", { "Queue" }, function() mp.Queue("x") end },
      { "mp.Queue(1.5)", "ValueError", { "Queue" }, function() mp.Queue(1.5) end },
      { "mp.Queue(2^40)", "ValueError", { "maxsize" }, function() mp.Queue(1 << 40) end },
      { "mp.Queue(1, 2)", "ValueError", { "Queue" }, function() mp.Queue(1, 2) end },
      { "mp.SimpleQueue(1)", "ValueError", { "SimpleQueue" }, function() mp.SimpleQueue(1) end },
      { "mp.JoinableQueue('x')", "TypeError", { "JoinableQueue" }, function() mp.JoinableQueue("x") end },
      { "q:put()", "TypeError", { "put" }, function() mp.Queue():put() end },
      { "q:put(1, 'yes')", "TypeError", { "boolean" }, function() mp.Queue():put(1, "yes") end },
      { "q:put(1, true, 'x')", "ValueError", { "timeout" }, function() mp.Queue():put(1, true, "x") end },
      { "q:put(1, true, 1, 2)", "ValueError", { "put" }, function() mp.Queue():put(1, true, 1, 2) end },
      { "q:get(5)", "TypeError", { "boolean" }, function() mp.Queue():get(5) end },
      { "q:get(true, 0/0)", "ValueError", { "timeout" }, function() mp.Queue():get(true, 0 / 0) end },
      { "q:get(true, 1, 2)", "ValueError", { "get" }, function() mp.Queue():get(true, 1, 2) end },
      { "q.get() without self", "TypeError", { "get" }, function() mp.Queue().get() end },
      { "q.get(a Lock)", "TypeError", { "lmp.Lock" }, function() mp.Queue().get(mp.Lock()) end },
      { "q:get_nowait(1)", "ValueError", { "get_nowait" }, function() mp.Queue():get_nowait(1) end },
      { "q:put_nowait()", "TypeError", { "put_nowait" }, function() mp.Queue():put_nowait() end },
      { "q:qsize(1)", "ValueError", { "qsize" }, function() mp.Queue():qsize(1) end },
      { "q:put(1) after close", "ValueError", { "closed" }, function() closed_queue():put(1) end },
      { "q:get() after close", "ValueError", { "closed" }, function() closed_queue():get() end },
      { "q:put(a coroutine)", "SerializationError", { "thread" },
        function() mp.Queue():put(coroutine.create(f)) end },
      { "jq:join('x')", "ValueError", { "timeout" }, function() mp.JoinableQueue():join("x") end },
      { "jq:join(1, 2)", "ValueError", { "join" }, function() mp.JoinableQueue():join(1, 2) end },
      { "jq:task_done(1)", "ValueError", { "task_done" }, function() mp.JoinableQueue():task_done(1) end },
      { "jq:task_done() too often", "ValueError", { "task_done" }, function() mp.JoinableQueue():task_done() end },
      { "JoinableQueue.join(a Queue)", "TypeError", { "lmp.JoinableQueue" },
        function() mp.JoinableQueue().join(mp.Queue()) end },
    }
  end)

  describe("Pipe", function()
    local function pipe_call(fn)
      return function()
        local a, b = mp.Pipe()
        local ok, err = pcall(fn, a, b)
        a:close(); b:close()
        if not ok then error(err, 0) end
      end
    end
    run_cases {
      { "mp.Pipe(5)", "TypeError", { "Pipe" }, function() mp.Pipe(5) end },
      { "mp.Pipe(true, 1)", "ValueError", { "Pipe" }, function() mp.Pipe(true, 1) end },
      { "a:send()", "TypeError", { "send" }, pipe_call(function(a) a:send() end) },
      { "a:send(1, 2)", "ValueError", { "send" }, pipe_call(function(a) a:send(1, 2) end) },
      { "a:send(a coroutine)", "SerializationError", { "thread" },
        pipe_call(function(a) a:send(coroutine.create(f)) end) },
      { "a:send_bytes(5)", "TypeError", { "send_bytes" }, pipe_call(function(a) a:send_bytes(5) end) },
      { "a:send_bytes('abc', 9)", "ValueError", { "offset" }, pipe_call(function(a) a:send_bytes("abc", 9) end) },
      { "a:send_bytes('abc', -1)", "ValueError", { "offset" }, pipe_call(function(a) a:send_bytes("abc", -1) end) },
      { "a:send_bytes('abc', 1, 5)", "ValueError", { "size" }, pipe_call(function(a) a:send_bytes("abc", 1, 5) end) },
      { "a:send_bytes('abc', 'x')", "TypeError", { "send_bytes" }, pipe_call(function(a) a:send_bytes("abc", "x") end) },
      { "a:recv_bytes(-1)", "ValueError", { "maxlength" }, pipe_call(function(a) a:recv_bytes(-1) end) },
      { "a:recv_bytes('x')", "TypeError", { "recv_bytes" }, pipe_call(function(a) a:recv_bytes("x") end) },
      { "a:recv(1)", "ValueError", { "recv" }, pipe_call(function(a) a:recv(1) end) },
      { "a:poll('x')", "ValueError", { "timeout" }, pipe_call(function(a) a:poll("x") end) },
      { "a:poll(0/0)", "ValueError", { "timeout" }, pipe_call(function(a) a:poll(0 / 0) end) },
      { "a:poll(1, 2)", "ValueError", { "poll" }, pipe_call(function(a) a:poll(1, 2) end) },
      { "a.recv() without self", "TypeError", { "recv" }, pipe_call(function(a) a.recv() end) },
      { "a:fileno(1)", "ValueError", { "fileno" }, pipe_call(function(a) a:fileno(1) end) },
      { "a:recv() after close", "ValueError", { "closed" }, function() closed_pipe():recv() end },
      { "a:send(1) after close", "ValueError", { "closed" }, function() closed_pipe():send(1) end },
      { "a:poll() after close", "ValueError", { "closed" }, function() closed_pipe():poll() end },
    }
  end)

  describe("locks and semaphores", function()
    run_cases {
      { "mp.Lock(1)", "ValueError", { "Lock" }, function() mp.Lock(1) end },
      { "mp.RLock(1)", "ValueError", { "RLock" }, function() mp.RLock(1) end },
      { "l:acquire('yes')", "TypeError", { "boolean" }, function() mp.Lock():acquire("yes") end },
      { "l:acquire(true, 'x')", "ValueError", { "timeout" }, function() mp.Lock():acquire(true, "x") end },
      { "l:acquire(true, 0/0)", "ValueError", { "timeout" }, function() mp.Lock():acquire(true, 0 / 0) end },
      { "l:acquire(true, 1, 2)", "ValueError", { "acquire" }, function() mp.Lock():acquire(true, 1, 2) end },
      { "l:release() unlocked", "ValueError", { "released" }, function() mp.Lock():release() end },
      { "l:release(1)", "ValueError", { "release" },
        function() local l = mp.Lock(); l:acquire(); l:release(1) end },
      { "l:with(42)", "TypeError", { "with" }, function() mp.Lock():with(42) end },
      { "l.acquire() without self", "TypeError", { "acquire" }, function() mp.Lock().acquire() end },
      { "Lock.acquire(an Event)", "TypeError", { "lmp.Lock" }, function() mp.Lock().acquire(mp.Event()) end },
      { "l:locked(1)", "ValueError", { "locked" }, function() mp.Lock():locked(1) end },
      { "r:release() by a non-owner", "ValueError", { "un-acquired" }, function() mp.RLock():release() end },
      { "r:acquire(0)", "TypeError", { "boolean" }, function() mp.RLock():acquire(0) end },
      { "a closed lock", "ValueError", { "lock is closed" },
        function() local l = mp.Lock(); getmetatable(l).__close(l); l:acquire() end },
      { "mp.Semaphore('x')", "TypeError", { "Semaphore" }, function() mp.Semaphore("x") end },
      { "mp.Semaphore(-1)", "ValueError", { "Semaphore" }, function() mp.Semaphore(-1) end },
      { "mp.Semaphore(1.5)", "ValueError", { "Semaphore" }, function() mp.Semaphore(1.5) end },
      { "mp.Semaphore(1, 2)", "ValueError", { "Semaphore" }, function() mp.Semaphore(1, 2) end },
      { "mp.BoundedSemaphore(-1)", "ValueError", { "BoundedSemaphore" }, function() mp.BoundedSemaphore(-1) end },
      { "s:release(0)", "ValueError", { "release" }, function() mp.Semaphore():release(0) end },
      { "s:release('x')", "TypeError", { "release" }, function() mp.Semaphore():release("x") end },
      { "s:acquire(true, 'x')", "ValueError", { "timeout" }, function() mp.Semaphore():acquire(true, "x") end },
      { "s:acquire('x')", "TypeError", { "boolean" }, function() mp.Semaphore():acquire("x") end },
      { "s:get_value(1)", "ValueError", { "get_value" }, function() mp.Semaphore():get_value(1) end },
      { "bounded s:release() too often", "ValueError", { "released too many times" },
        function() mp.BoundedSemaphore(1):release() end },
      { "s:with(5)", "TypeError", { "with" }, function() mp.Semaphore():with(5) end },
    }
  end)

  describe("Event, Condition, Barrier", function()
    run_cases {
      { "mp.Event(1)", "ValueError", { "Event" }, function() mp.Event(1) end },
      { "e:wait('x')", "ValueError", { "timeout" }, function() mp.Event():wait("x") end },
      { "e:wait(0/0)", "ValueError", { "timeout" }, function() mp.Event():wait(0 / 0) end },
      { "e:wait(1, 2)", "ValueError", { "wait" }, function() mp.Event():wait(1, 2) end },
      { "e:set(1)", "ValueError", { "set" }, function() mp.Event():set(1) end },
      { "e.is_set(5)", "TypeError", { "is_set" }, function() mp.Event().is_set(5) end },
      { "mp.Condition(5)", "TypeError", { "Condition" }, function() mp.Condition(5) end },
      { "mp.Condition(an Event)", "TypeError", { "lmp.Lock" }, function() mp.Condition(mp.Event()) end },
      { "mp.Condition(nil, 2)", "ValueError", { "Condition" }, function() mp.Condition(nil, 2) end },
      { "c:wait() without the lock", "ValueError", { "un-acquired" }, function() mp.Condition():wait(0) end },
      { "c:wait('x')", "ValueError", { "timeout" }, function() mp.Condition():wait("x") end },
      { "c:wait_for(5)", "TypeError", { "wait_for" }, function() mp.Condition():wait_for(5) end },
      { "c:wait_for(f, 'x')", "ValueError", { "timeout" }, function() mp.Condition():wait_for(f, "x") end },
      { "c:notify('x')", "TypeError", { "notify" }, function() mp.Condition():notify("x") end },
      { "c:notify(-1)", "ValueError", { "notify" }, function() mp.Condition():notify(-1) end },
      { "c:notify() without the lock", "ValueError", { "un-acquired" }, function() mp.Condition():notify() end },
      { "c:notify_all(1)", "ValueError", { "notify_all" }, function() mp.Condition():notify_all(1) end },
      { "c:acquire('x')", "TypeError", { "boolean" }, function() mp.Condition():acquire("x") end },
      { "mp.Barrier('x')", "TypeError", { "Barrier" }, function() mp.Barrier("x") end },
      { "mp.Barrier(0)", "ValueError", { "parties" }, function() mp.Barrier(0) end },
      { "mp.Barrier(2, 5)", "TypeError", { "Barrier" }, function() mp.Barrier(2, 5) end },
      { "mp.Barrier(2, nil, 'x')", "ValueError", { "timeout" }, function() mp.Barrier(2, nil, "x") end },
      { "mp.Barrier(2, nil, 1, 4)", "ValueError", { "Barrier" }, function() mp.Barrier(2, nil, 1, 4) end },
      { "b:wait('x')", "ValueError", { "timeout" }, function() mp.Barrier(2):wait("x") end },
      { "b:reset(1)", "ValueError", { "reset" }, function() mp.Barrier(2):reset(1) end },
      { "b:abort(1)", "ValueError", { "abort" }, function() mp.Barrier(2):abort(1) end },
      { "b:wait() when broken", "BrokenBarrierError", { "broken" },
        function() local b = mp.Barrier(2); b:abort(); b:wait() end },
    }
  end)

  describe("Value and Array", function()
    run_cases {
      { "mp.Value('z', 1)", "ValueError", { "typecode" }, function() mp.Value("z", 1) end },
      { "mp.Value(5, 1)", "TypeError", { "Value" }, function() mp.Value(5, 1) end },
      { "mp.Value('i', 'x')", "TypeError", { "initial value" }, function() mp.Value("i", "x") end },
      { "mp.Value('i', 1.5)", "ValueError", { "initial value" }, function() mp.Value("i", 1.5) end },
      { "mp.Value('b', 300)", "ValueError", { "out of range" }, function() mp.Value("b", 300) end },
      { "mp.Value('i', 1, {lok = true})", "ValueError", { "lok" }, function() mp.Value("i", 1, { lok = true }) end },
      { "mp.Value('i', 1, {lock = 5})", "TypeError", { "lock" }, function() mp.Value("i", 1, { lock = 5 }) end },
      { "mp.Value('i', 1, 5)", "TypeError", { "Value" }, function() mp.Value("i", 1, 5) end },
      { "mp.Value('i', 1, {}, 4)", "ValueError", { "Value" }, function() mp.Value("i", 1, {}, 4) end },
      { "mp.RawValue('i', 1, {})", "ValueError", { "RawValue" }, function() mp.RawValue("i", 1, {}) end },
      { "v.value = 'x'", "TypeError", { "value" }, function() mp.Value("i", 0).value = "x" end },
      { "v.value = 2^40 ('i')", "ValueError", { "out of range" }, function() mp.Value("i", 0).value = 1 << 40 end },
      { "v.other = 1", "ValueError", { "other" }, function() mp.Value("i", 0).other = 1 end },
      { "v:get_lock() of a RawValue", "ValueError", { "lock" }, function() mp.RawValue("i", 0):get_lock() end },
      { "v:with(5)", "TypeError", { "with" }, function() mp.Value("i", 0):with(5) end },
      { "mp.Array('i', 'abc')", "TypeError", { "Array" }, function() mp.Array("i", "abc") end },
      { "mp.Array('i')", "TypeError", { "Array" }, function() mp.Array("i") end },
      { "mp.Array('i', -1)", "ValueError", { "size" }, function() mp.Array("i", -1) end },
      { "mp.Array('i', 1.5)", "ValueError", { "Array" }, function() mp.Array("i", 1.5) end },
      { "mp.Array('i', {1, 'x'})", "TypeError", { "element 2" }, function() mp.Array("i", { 1, "x" }) end },
      { "mp.Array('B', {256})", "ValueError", { "element 1" }, function() mp.Array("B", { 256 }) end },
      { "mp.Array('i', 3, {lokc = 1})", "ValueError", { "lokc" }, function() mp.Array("i", 3, { lokc = 1 }) end },
      { "mp.RawArray('i', 3, {})", "ValueError", { "RawArray" }, function() mp.RawArray("i", 3, {}) end },
      { "a[0]", "ValueError", { "index" }, function() return mp.Array("i", 3)[0] end },
      { "a[4] of 3", "ValueError", { "index" }, function() return mp.Array("i", 3)[4] end },
      { "a[1.5]", "ValueError", { "index" }, function() return mp.Array("i", 3)[1.5] end },
      { "a[1] = 'x'", "TypeError", { "element 1" }, function() mp.Array("i", 3)[1] = "x" end },
      { "a.x = 1", "ValueError", { "x" }, function() mp.Array("i", 3).x = 1 end },
      { "c.value = 5 ('c' array)", "TypeError", { "value" }, function() mp.Array("c", 3).value = 5 end },
      { "c.value too long", "ValueError", { "too long" }, function() mp.Array("c", 3).value = "abcd" end },
      { "a:get_lock(1)", "ValueError", { "get_lock" }, function() mp.Array("i", 3):get_lock(1) end },
      { "Array.totable(a Value)", "TypeError", { "lmp.Array" },
        function() local a = mp.Array("i", 1); a.totable(mp.Value("i", 1)) end },
    }
  end)

  describe("pool", function()
    local function with_pool(fn)
      return function()
        local pool <close> = mp.Pool(1)
        fn(pool)
      end
    end
    local function with_result(fn)
      return with_pool(function(pool)
        local r = pool:apply_async(function() mp.sleep(5) end)
        fn(r)
      end)
    end
    run_cases {
      { "mp.Pool('4')", "TypeError", { 'string "4"' }, function() mp.Pool("4") end },
      { "mp.Pool{processes = '4'}", "TypeError", { 'string "4"' }, function() mp.Pool { processes = "4" } end },
      { "mp.Pool(0)", "ValueError", { "processes" }, function() mp.Pool(0) end },
      { "mp.Pool(1.5)", "ValueError", { "processes" }, function() mp.Pool(1.5) end },
      { "mp.Pool{procs = 2}", "ValueError", { "procs" }, function() mp.Pool { procs = 2 } end },
      { "mp.Pool{initializer = 5}", "TypeError", { "initializer" }, function() mp.Pool { initializer = 5 } end },
      { "mp.Pool{initargs = 5}", "TypeError", { "initargs" }, function() mp.Pool { processes = 1, initargs = 5 } end },
      { "mp.Pool{maxtasksperchild = 0}", "ValueError", { "maxtasksperchild" },
        function() mp.Pool { processes = 1, maxtasksperchild = 0 } end },
      { "mp.Pool{task_timeout = 'x'}", "ValueError", { "task_timeout" },
        function() mp.Pool { processes = 1, task_timeout = "x" } end },
      { "mp.Pool{retries = -1}", "ValueError", { "retries" }, function() mp.Pool { processes = 1, retries = -1 } end },
      { "mp.Pool(1, 2)", "ValueError", { "Pool" }, function() mp.Pool(1, 2) end },
      { "pool:map(5, {})", "TypeError", { "map" }, with_pool(function(p) p:map(5, {}) end) },
      { "pool:map(f, 5)", "TypeError", { "map" }, with_pool(function(p) p:map(f, 5) end) },
      { "pool:map(f, {}, {chunk_size = 1})", "ValueError", { "chunk_size" },
        with_pool(function(p) p:map(f, {}, { chunk_size = 1 }) end) },
      { "pool:map(f, {}, 0)", "ValueError", { "chunksize" }, with_pool(function(p) p:map(f, {}, 0) end) },
      { "pool:map(f, {}, 'x')", "TypeError", { "map" }, with_pool(function(p) p:map(f, {}, "x") end) },
      { "pool:map(f, {1}, {timeout = 'x'})", "ValueError", { "timeout" },
        with_pool(function(p) p:map(f, { 1 }, { timeout = "x" }) end) },
      { "pool:map(f, {}, {}, 4)", "ValueError", { "map" }, with_pool(function(p) p:map(f, {}, {}, 4) end) },
      { "pool.map(f, t) with a dot", "TypeError", { "map" }, with_pool(function(p) p.map(f, { 1 }) end) },
      { "pool:starmap(f, {1})", "TypeError", { "starmap" }, with_pool(function(p) p:starmap(f, { 1 }) end) },
      { "pool:apply(5)", "TypeError", { "apply" }, with_pool(function(p) p:apply(5) end) },
      { "pool:apply(f, 5)", "TypeError", { "apply" }, with_pool(function(p) p:apply(f, 5) end) },
      { "pool:apply(f, {}, 3)", "ValueError", { "apply" }, with_pool(function(p) p:apply(f, {}, 3) end) },
      { "pool:apply_async(f, {}, {callbak = f})", "ValueError", { "callbak" },
        with_pool(function(p) p:apply_async(f, {}, { callbak = f }) end) },
      { "pool:apply_async(f, {}, 5)", "TypeError", { "callback" }, with_pool(function(p) p:apply_async(f, {}, 5) end) },
      { "pool:apply_async(f, {}, f, 5)", "TypeError", { "error_callback" },
        with_pool(function(p) p:apply_async(f, {}, f, 5) end) },
      { "pool:apply_async(f, {}, {timeout = 0/0})", "ValueError", { "timeout" },
        with_pool(function(p) p:apply_async(f, {}, { timeout = 0 / 0 }) end) },
      { "pool:map_async(f, {}, {chunk_size = 1})", "ValueError", { "chunk_size" },
        with_pool(function(p) p:map_async(f, {}, { chunk_size = 1 }) end) },
      { "pool:imap(f, 5)", "TypeError", { "imap" }, with_pool(function(p) p:imap(f, 5) end) },
      { "pool:imap_unordered(5, {})", "TypeError", { "imap_unordered" },
        with_pool(function(p) p:imap_unordered(5, {}) end) },
      { "pool:imap(f, {}, {chunk_size = 1})", "ValueError", { "chunk_size" },
        with_pool(function(p) p:imap(f, {}, { chunk_size = 1 }) end) },
      { "pool:join() while running", "ValueError", { "join" }, with_pool(function(p) p:join() end) },
      { "pool:join('x')", "ValueError", { "timeout" }, with_pool(function(p) p:close(); p:join("x") end) },
      { "pool:close(1)", "ValueError", { "close" }, with_pool(function(p) p:close(1) end) },
      { "pool:map after close", "ValueError", { "map" }, with_pool(function(p) p:close(); p:map(f, { 1 }) end) },
      { "res:get('x')", "ValueError", { "timeout" }, with_result(function(r) r:get("x") end) },
      { "res:get(0/0)", "ValueError", { "timeout" }, with_result(function(r) r:get(0 / 0) end) },
      { "res:get(1, 2)", "ValueError", { "get" }, with_result(function(r) r:get(1, 2) end) },
      { "res:wait('x')", "ValueError", { "timeout" }, with_result(function(r) r:wait("x") end) },
      { "res:successful() before it is ready", "ValueError", { "ready" },
        with_result(function(r) r:successful() end) },
      { "res.get() without self", "TypeError", { "get" }, with_result(function(r) r.get() end) },
    }
  end)
end)
