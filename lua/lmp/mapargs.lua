-- lmp.mapargs — the command line of `lmp --map`: its usage text and the parsing of its
-- arguments into an options table (or a message saying what is wrong: exit status 2).
local M = {}

M.USAGE = [[
usage: lmp --map SCRIPT [INPUT...] [options]
Runs the function SCRIPT returns, f(record, lineno), over every JSON line of the INPUT files
(or standard input: none, or -) on a pool of worker processes, and writes one JSON line per
input line. A record that fails gets {"error":{"type":...,"message":...,"line":N}} on its
line and the run goes on. SCRIPT may instead return {map = f, init = g}: g runs once in
each worker.
  -o FILE          write the results to FILE instead of standard output
  -P N             worker processes (default: the number of CPUs)
  --unordered      write results as they finish instead of in input order
  --chunksize N    records per task (default: adapted to how long records take)
  --retries N      run a record whose worker died or that timed out again, up to N times
  --timeout S      a record running longer than S seconds fails with a TimeoutError
  --halt N         stop after N errors
  --resume         with -o: finish an interrupted run; FILE ends as a whole run writes it
  -h, --help       show this
Exit status: 0 when every record succeeded, 1 when some failed (or the run was stopped, or
the output could not be written), 2 for bad usage (an output that is one of the inputs among it) or
a SCRIPT that cannot start.
]]

M.USAGE_SHORT = "usage: lmp --map SCRIPT [INPUT...] [-o FILE] [-P N] [--unordered] [--chunksize N]\n"
  .. "         [--retries N] [--timeout S] [--halt N] [--resume]   (lmp --map --help)\n"

local function count(name, min)
  return function(v)
    local n = math.tointeger(tonumber(v))
    if v:match("^%d+$") and n and n >= min then return n end
    return nil, ("%s needs an integer >= %d, got %q"):format(name, min, v)
  end
end

local function seconds(name)
  return function(v)
    local s = tonumber(v)
    if s and s > 0 and s < math.huge then return s end
    return nil, ("%s needs a positive number of seconds, got %q"):format(name, v)
  end
end

local function path(v) return v end

-- The options that take a value: name -> field, converter.
local VALUED = {
  ["-o"] = { "output", path }, ["--output"] = { "output", path },
  ["-P"] = { "processes", count("-P", 1) }, ["--processes"] = { "processes", count("-P", 1) },
  ["--chunksize"] = { "chunksize", count("--chunksize", 1) },
  ["--retries"] = { "retries", count("--retries", 0) },
  ["--timeout"] = { "timeout", seconds("--timeout") },
  ["--halt"] = { "halt", count("--halt", 1) },
}

local FLAGS = { ["--unordered"] = "unordered", ["--resume"] = "resume" }

-- Splits `--name=value` and `-Pvalue` forms; returns name, inline value (or nil).
local function split(a)
  local name, value = a:match("^(%-%-[^=]+)=(.*)$")
  if name then return name, value end
  if a:match("^%-[oP].") then return a:sub(1, 2), a:sub(3) end
  return a, nil
end

--- Parses the arguments after --map. Returns the options, "help", or nil and a message.
function M.parse(argv)
  local o = { retries = 0, inputs = {} }
  local positional, i = {}, 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      table.move(argv, i + 1, #argv, #positional + 1, positional)
      break
    elseif a == "-h" or a == "--help" then
      return "help"
    elseif a == "-" or a:sub(1, 1) ~= "-" then
      positional[#positional + 1] = a
    else
      local name, value = split(a)
      local spec = VALUED[name]
      if spec then
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then return nil, name .. " needs a value" end
        end
        local v, err = spec[2](value)
        if v == nil then return nil, err end
        o[spec[1]] = v
      elseif FLAGS[name] and value == nil then
        o[FLAGS[name]] = true
      else
        return nil, "unknown option " .. a
      end
    end
    i = i + 1
  end
  o.script = positional[1]
  if not o.script then return nil, "no SCRIPT given" end
  table.move(positional, 2, #positional, 1, o.inputs)
  if #o.inputs == 0 then o.inputs[1] = "-" end
  if o.resume and not o.output then return nil, "--resume needs -o FILE (the results to finish)" end
  if o.resume and o.unordered then
    return nil, "--resume needs results in input order (it cannot go with --unordered)"
  end
  return o
end

return M
