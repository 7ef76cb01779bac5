-- spec/examples_spec.lua — every script in scripts/examples/ runs to the end with the lmp
-- executable (exit status 0, no process left behind), and the ones with a known output say
-- what they should. The examples run a few at a time (most of them sleep), the demo alone.
local EXE = os.getenv("LMP_EXE") or "build/lmp"
local DIR = "scripts/examples"
local PARALLEL = 4

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function list_examples()
  local names = {}
  local p = io.popen("ls " .. DIR .. "/*.lua 2>/dev/null")
  for line in p:lines() do names[#names + 1] = line:match("([^/]+)%.lua$") end
  p:close()
  table.sort(names)
  return names
end

-- Runs the named examples (PARALLEL at a time); returns name -> {out=, err=, rc=}.
local function run_all(names, tmp, parallel)
  if #names == 0 then return {} end
  local script = ([[cd %s && printf '%%s\n' %s | xargs -P %d -I{} sh -c ]] ..
    [['timeout 120 %s %s/{}.lua </dev/null >%s/{}.out 2>%s/{}.err; echo $? >%s/{}.rc']])
    :format(sh_quote(os.getenv("LMP_SOURCE_DIR") or "."), table.concat(names, " "), parallel,
      sh_quote(EXE), DIR, tmp, tmp, tmp)
  os.execute(script)
  local runs = {}
  for _, name in ipairs(names) do
    runs[name] = { out = read(tmp .. "/" .. name .. ".out") or "",
                   err = read(tmp .. "/" .. name .. ".err") or "",
                   rc = tonumber(read(tmp .. "/" .. name .. ".rc") or "") }
  end
  return runs
end

-- What some examples must print (Lua patterns, each matched somewhere in stdout).
local expected = {
  demo = { "counting the primes below %d+", "serial: +216816 primes", "Pool%(%d+%) map: +216816 primes",
           "speed%-up: +[%d.]+x", "callbacks ran for 4 results", "input #2 finished", "\ndone\n" },
  seed_pool_map_timing = { "Pool 池指定数量:4, 用时[12]%.%d", "Pool 池指定数量:5, 用时1%.%d",
                           "Pool 池指定数量:10, 用时1%.%d" },
  seed_apply_async_timing = { "%[0, 1, 2, 3, 4%]\nPool 池指定数量:4", "Pool 池指定数量:5, 用时1%.",
                              "Pool 池指定数量:10, 用时1%." },
  seed_pool_map_echo = { "1\n", "2\n", "3\n", "4\n", "5\n", "Pool 池指定数量:4, 用时[12]%.%d" },
  seed_apply_async_echo = { "0\n", "1\n", "2\n", "3\n", "4\n", "Pool 池指定数量:4, 用时[12]%.%d" },
  seed_with_pool_map = { "^%[0, 1, 8, 27%]\n$" },
  seed_process_basic = { "^mainProcess\n", "l am a snake\n", "l am a tom\n", "end\nend\n$" },
  seed_process_subclass = { "^mainProcess\n", "l am a snake\n", "l am a tom\n", "end\nend\n$" },
  seed_pool_long_time_task = { "^Parent process %d+%.\n", "Waiting for all subprocesses done",
                               "Run task 0 %(%d+%)", "Run task 4 %(%d+%)",
                               "Task 4 runs %d%.%d%d seconds", "All subprocesses done%.\n$" },
  seed_process_pid = { "^nil\n%d+\nsub_progress success\nmain progress end\n$" },
  seed_pool_apply_async_get = { "^sub_progress success\n3\n$" },
  seed_process_square_cube = { "Square: 100\n", "Cube: 1000\n", "Done!\n$" },
  seed_pool_map_print = { "0\n", "1\n", "2\n", "3\n", "4\n" },
  seed_pool_apply = { "^mainProcess start\nChild start\nProcess num is : 0\nprocess  0 end\n" ..
                      "Process num is : 1\nprocess  1 end\nProcess num is : 2\nprocess  2 end\n" ..
                      "mainProcess done time:[23]%.%d+ s\n$" },
  seed_pool_apply_async = { "^mainProcess start\nChild start\n", "mainProcess done time:0%.%d+ s\n",
                            "Process num is : 0", "Process num is : 2", "process  2 end" },
  -- the Manager examples (a dict filled by two processes; Manager queues in a Pool; the last
  -- one also runs its producer and consumer over a plain mp.Queue in the Pool)
  seed_manager_dict = { "^{[ab] = 2[23], [ab] = 2[23]}\n$", "a = 22", "b = 23" },
  seed_manager_pool_queue = { "^%(%d+%) start\n", "writer启动%(%d+%),父进程为%(%d+%)\n",
                              "reader启动%(%d+%),父进程为%(%d+%)\n",
                              "reader从Queue获取到消息：i\nreader从Queue获取到消息：t\n" ..
                              "reader从Queue获取到消息：c\nreader从Queue获取到消息：a\n" ..
                              "reader从Queue获取到消息：s\nreader从Queue获取到消息：t\n%(%d+%) End\n$" },
  seed_manager_pool_producer_consumer = { "^Manager%(%):Queue%(10%) in Pool%(2%):\na\n" ..
                                          "mp%.Queue%(10%) in Pool%(2%):\na\n$" },
}

describe("examples", function()
  local names = list_examples()
  local tmp = os.tmpname()
  os.remove(tmp)
  os.execute("mkdir -p " .. sh_quote(tmp))

  local others = {}
  for _, name in ipairs(names) do
    if name ~= "demo" then others[#others + 1] = name end
  end
  -- the demo measures a speed-up: it runs alone, before the rest
  local runs = run_all({ "demo" }, tmp, 1)
  for k, v in pairs(run_all(others, tmp, PARALLEL)) do runs[k] = v end
  os.execute("rm -rf " .. sh_quote(tmp))

  it("include the demo and the seed ports", function()
    assert.is_true(#names >= 15)
    assert.is_not_nil(runs.demo)
  end)

  for _, name in ipairs(names) do
    it(name .. " exits with status 0", function()
      local r = runs[name]
      assert(r.rc == 0, ("%s exited with %s\nstdout:\n%s\nstderr:\n%s"):format(name,
        tostring(r.rc), r.out, r.err))
    end)
    if expected[name] then
      it(name .. " prints what it should", function()
        local out = runs[name].out
        for _, pat in ipairs(expected[name]) do
          assert(out:find(pat), ("%s: no match for %q in:\n%s"):format(name, pat, out))
        end
      end)
    end
  end

  it("leave no process behind", function()
    -- workers are forks of the example, so they carry its command line
    local p = io.popen("ps -eo args=")
    local left = {}
    for line in p:lines() do
      if line:find(EXE .. " " .. DIR .. "/", 1, true) then left[#left + 1] = line end
    end
    p:close()
    assert(#left == 0, "still running:\n" .. table.concat(left, "\n"))
  end)
end)
