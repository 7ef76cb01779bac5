-- lmp.mapcli — `lmp --map SCRIPT [INPUT...]`: the function SCRIPT returns, run over every
-- JSON line of the inputs on a pool of workers; one JSON line out per line in, in input order
-- (or as they finish), an error object on the line of every record that fails, and the run
-- goes on. The parent only moves blocks of lines: workers decode, call and encode
-- (lmp.mapwork). Memory stays bounded: a window of blocks is in flight, whatever the input.
-- Caveats: a block whose worker dies or times out is run again one record at a time; the record
-- that was running (read from a board in shared memory) counts as run once, as a record alone
-- does, but the records before it run twice (their results died with the worker). Every write
-- of the output is checked: a failure stops the run (exit status 1), never a silent cut.
local mp = require "lmp"
local core = require "lmp.core"
local work = require "lmp.mapwork"
local args = require "lmp.mapargs"
local Bar = require "lmp.mapbar"

local M = {}

local TARGET = 0.02            -- seconds of work a block aims at (once the cost is known)
local MAX_LINES = 10000
local MAX_BYTES = 128 * 1024   -- input bytes in a block (a longer line goes alone)
local MAX_BYTES_FIXED = 4 * 1024 * 1024 -- with --chunksize

-- The tasks: small closures that call lmp.mapwork in the worker (sent by value once, then
-- cached by the pool).
local function run_task(block, first, slot) return require("lmp.mapwork").run(block, first, slot) end
local function probe_task() return require("lmp.mapwork").probe() end

local function say(fmt, ...)
  io.stderr:write("lmp --map: ", fmt:format(...), "\n")
  io.stderr:flush()
end

-- The output --------------------------------------------------------------------------------
-- Every write, flush and close of the results is checked: a full disk, a closed stdout or an
-- I/O error stops the run with a message naming the file, never a cut file and exit status 0.

local Output = {}
Output.__index = Output

-- The error raised inside the run when the output fails (execute reports out.failed).
local OUTPUT_FAILED = setmetatable({}, { __tostring = function() return "the output failed" end })

local function new_output(f, name) return setmetatable({ f = f, name = name }, Output) end

-- Raises OUTPUT_FAILED after keeping the first failure's message.
function Output:fail(err)
  self.failed = self.failed or ("cannot write %s: %s"):format(self.name, tostring(err))
  error(OUTPUT_FAILED, 0)
end

function Output:write(s)
  if self.failed then error(OUTPUT_FAILED, 0) end
  local ok, err = self.f:write(s)
  if not ok then self:fail(err) end
end

function Output:flush()
  if self.failed then error(OUTPUT_FAILED, 0) end
  local ok, err = self.f:flush()
  if not ok then self:fail(err) end
end

-- Flushes standard output, closes a file. Returns false (with out.failed set) on a failure.
function Output:close()
  local ok, err
  if self.f == io.stdout then ok, err = self.f:flush() else ok, err = self.f:close() end
  if not ok and not self.failed then self.failed = ("cannot write %s: %s"):format(self.name, tostring(err)) end
  return not self.failed
end

-- The run --------------------------------------------------------------------------------

local Run = {}
Run.__index = Run

-- How many lines the next block takes: fixed by --chunksize, else enough for about TARGET
-- seconds of work at the measured cost per record (one line until a cost is known).
function Run:block_lines()
  if self.o.chunksize then return self.o.chunksize end
  if not self.cost then return 1 end
  return math.max(1, math.min(MAX_LINES, math.floor(TARGET / self.cost)))
end

-- The timeout of a task: --timeout for one record; for a block, --timeout plus four times
-- what its records should take at the measured cost. A block past it is run again one record
-- at a time, each with --timeout, which finds the overdue record (a block of several slow
-- but legal records costs time that way, never a wrong error).
function Run:task_timeout(rec)
  local s = self.o.timeout
  if not s then return nil end
  if rec.n == 1 then return s end
  return s + 4 * rec.n * (self.cost or 0) + 0.5
end

-- A block of several records takes a slot of the board, where its worker posts the record it
-- is running (cleared here, before the task can start); a record alone needs none.
function Run:take_slot(rec)
  if rec.n == 1 or rec.slot or not self.board then return end
  local slot = table.remove(self.free_slots)
  if not slot then return end -- cannot happen (the window bounds the blocks in flight)
  self.board[2 * slot - 1], self.board[2 * slot] = 0, 0
  rec.slot = slot
end

-- The position in rec's block of the record its worker was running (nil: none), and when that
-- record began; the slot is given back.
function Run:give_slot(rec)
  local slot = rec.slot
  if not slot then return nil end
  rec.slot = nil
  self.free_slots[#self.free_slots + 1] = slot
  local k = math.tointeger(self.board[2 * slot - 1])
  if k and k >= 1 and k <= rec.n then return k, self.board[2 * slot] end
end

-- Submits a block or a record. A pool that refuses work (it broke: its workers die before
-- they are ready) ends the run, since nothing could finish.
function Run:submit(rec)
  self:take_slot(rec)
  local ok, res = pcall(self.pool.apply_async, self.pool, run_task, { rec.block, rec.first, rec.slot }, {
    callback = function(out, dt, errs) self:done(rec, out, dt, errs) end,
    error_callback = function(err) self:failed(rec, err) end,
    timeout = self:task_timeout(rec),
  })
  if ok then
    rec.res = res
  elseif not self.fatal then
    self.fatal, self.stopped = res, "fatal"
  end
end

-- A record or block is complete: it goes to its parent block, or out.
function Run:complete(rec)
  rec.done, rec.block, rec.res = true, nil, nil
  local p = rec.parent
  if p == nil then
    if not self.ordered then self.ready[#self.ready + 1] = rec end
    return
  end
  p.left = p.left - 1
  if p.left > 0 then return end
  local outs, errs = {}, nil
  for i, part in ipairs(p.parts) do
    outs[i] = part.out
    if part.errs then
      errs = errs or {}
      errs[#errs + 1] = i
    end
  end
  p.out, p.errs, p.parts = table.concat(outs), errs, nil
  self:complete(p)
end

function Run:done(rec, out, dt, errs)
  if self.closing then return end
  self:give_slot(rec)
  rec.out, rec.errs = out, errs
  local c = dt / rec.n
  self.cost = self.cost and (0.8 * self.cost + 0.2 * c) or c
  self:complete(rec)
end

-- A task failed as a whole (its worker died, it timed out...): a block is split into its
-- records (see split); a record alone is run again up to --retries times, then gets the
-- error on its line.
function Run:failed(rec, err)
  if self.closing then return end -- the pool is being terminated: nothing more goes out
  if rec.n > 1 then return self:split(rec, err) end
  local etype = mp.iserror(err) and err.type or "RemoteError"
  if (etype == "WorkerLostError" or etype == "TimeoutError") and rec.attempts < self.o.retries then
    rec.attempts = rec.attempts + 1
    return self:submit(rec)
  end
  local msg = mp.iserror(err) and tostring(err.message) or tostring(err)
  if etype == "TimeoutError" then
    msg = ("the record ran longer than %g s (--timeout); its worker was killed"):format(self.o.timeout)
  end
  rec.out, rec.errs = work.error_line(etype, msg, rec.first) .. "\n", { 1 }
  self:complete(rec)
end

-- Whether the record a block's worker was running when the block failed with err is the
-- culprit: always when the worker died; on a timeout only when that record itself had run
-- for --timeout (else the block as a whole was slow, and the record deserves its own run).
function Run:culprit(err, began)
  local etype = mp.iserror(err) and err.type
  if etype == "WorkerLostError" then return true end
  return etype == "TimeoutError" and mp.monotonic() - began >= self.o.timeout
end

-- A block failed as a whole: its records are run one at a time, so that only the culprit's
-- line gets the error. The record its worker was running has had its run, as a record alone
-- would (so it is run again only as --retries allows); the ones before it finished but their
-- results died with the worker, and the ones after it never ran: those are run again.
function Run:split(rec, err)
  local k, began = self:give_slot(rec)
  local parts, i = {}, 0
  for line in rec.block:gmatch("[^\n]*\n") do
    i = i + 1
    parts[i] = { first = rec.first + i - 1, n = 1, block = line, attempts = 0, parent = rec }
  end
  rec.parts, rec.left, rec.block, rec.res = parts, i, nil, nil
  for j, part in ipairs(parts) do
    if j == k and self:culprit(err, began) then self:failed(part, err) else self:submit(part) end
  end
end

-- Blocks submitted and not written yet (what the window bounds).
function Run:pending() return self.next_seq - self.written_seq - 1 end

-- Submits blocks while the window has room and input is there without waiting.
function Run:fill()
  while not self.eof and not self.stopped and self:pending() < self.window do
    local lines = self:block_lines()
    local block, n = self.reader:read(lines, self.o.chunksize and MAX_BYTES_FIXED or MAX_BYTES)
    if block == nil then self.eof = true break end
    if block == false then break end
    local rec = { seq = self.next_seq, first = self.lineno, n = n, block = block, attempts = 0 }
    self.recs[rec.seq] = rec
    self.next_seq = self.next_seq + 1
    self.lineno = self.lineno + n
    self:submit(rec)
  end
end

-- Writes a finished block; with --halt, only up to the line of the error that reaches it.
function Run:write(rec)
  local nerr = rec.errs and #rec.errs or 0
  local halt = self.o.halt
  if halt and self.errors + nerr >= halt then
    local k = rec.errs[halt - self.errors] -- the line of the halting error
    local pos = 0
    for _ = 1, k do pos = rec.out:find("\n", pos + 1, true) end
    self.out:write(rec.out:sub(1, pos))
    self.errors, self.lines_out = halt, self.lines_out + k
    self.stopped = "halt"
  else
    self.out:write(rec.out)
    self.errors, self.lines_out = self.errors + nerr, self.lines_out + rec.n
  end
  self.recs[rec.seq] = nil
  self.written_seq = self.written_seq + 1
  self.unflushed = true
end

function Run:flush()
  if self.ordered then
    local rec = self.recs[self.written_seq + 1]
    while rec and rec.done and not self.stopped do
      self:write(rec)
      rec = self.recs[self.written_seq + 1]
    end
  else
    local ready = self.ready
    self.ready = {}
    for _, rec in ipairs(ready) do
      if self.stopped then break end
      self:write(rec)
    end
  end
end

-- Waits for input or a result (bounded, so the bar moves and nothing waits forever). What
-- was written goes out first: a reader of a slow stream sees each result as it comes.
function Run:wait()
  if self.unflushed then
    self.out:flush()
    self.unflushed = false
  end
  local t = self.bar and 0.2 or 1
  if not self.eof and self:pending() < self.window then
    self.reader:wait(t)
  else
    core.wait_event(t)
  end
end

function Run:loop()
  while true do
    self:fill()
    self:flush()
    if self.bar then self.bar:update(self.lines_out) end
    if self.fatal then error(self.fatal, 0) end
    if self.stopped or (self.eof and self:pending() == 0) then return end
    self:wait()
  end
end

-- Setting up ------------------------------------------------------------------------------

-- Skips the input lines whose results the output file already holds (--resume).
local function skip_lines(reader, n)
  local left = n
  while left > 0 do
    local block, got = reader:read(math.min(left, 100000), 1 << 22, true)
    if not block then return n - left end
    left = left - got
  end
  return n
end

-- Opens the output (for --resume: keeps its whole lines, counts them and their errors; a
-- last line cut short, by a crash or a full disk, is dropped and its record run again).
local function open_output(o)
  if not o.output then
    io.stdout:setvbuf("full", 1 << 16)
    return new_output(io.stdout, "the standard output"), 0, 0
  end
  local lines, errors = 0, 0
  if o.resume then
    local f = io.open(o.output, "rb")
    if f then
      f:close()
      local whole
      lines, errors, whole = core.scan_results(o.output)
      if not lines then return nil, ("cannot read %s: %s"):format(o.output, errors) end
      local ok, err = core.truncate(o.output, whole)
      if not ok then return nil, ("cannot truncate %s: %s"):format(o.output, err) end
    end
  end
  local f, err = io.open(o.output, o.resume and "ab" or "wb")
  if not f then return nil, err end
  f:setvbuf("full", 1 << 16)
  return new_output(f, o.output), lines, errors
end

-- Why the output would destroy an input (the same file: its identity, not its name, so links
-- and other spellings count), or nil. Standard output counts only when it is a regular file.
local function output_is_input(o)
  local out_id = core.file_id(o.output or 1)
  if not out_id then return nil end
  for _, path in ipairs(o.inputs) do
    if core.file_id(path == "-" and 0 or path) == out_id then
      local input = path == "-" and "the standard input" or path
      if o.output then
        return ("-o %s is also an input (%s): it would be overwritten while it is read")
          :format(o.output, input)
      end
      return ("the standard output is also an input (%s): it would be overwritten while it is read")
        :format(input)
    end
  end
end

-- Checks what can be checked before any worker starts; returns an error message or nil.
local function check_files(o)
  local chunk, err = loadfile(o.script, "t")
  if not chunk then return err end
  for _, path in ipairs(o.inputs) do
    if path ~= "-" then
      local f, ferr = io.open(path, "rb")
      if not f then return ferr end
      f:close()
    end
  end
  return output_is_input(o)
end

-- The window of blocks in flight (what bounds memory), from the number of workers.
local function window_of(o) return math.max(8, 4 * (o.processes or mp.cpu_count())) end

-- Starts the pool; board is where workers post the record they run (see Run:split).
local function start_pool(o, board)
  local pool = mp.Pool { processes = o.processes, initializer = work.init, initargs = { o.script, board } }
  local why = pool:apply(probe_task)
  if why then
    pool:terminate()
    return nil, why
  end
  return pool
end

local function new_run(o, pool, board, reader, out, done_lines, done_errors)
  local window = window_of(o)
  local free_slots = {}
  for i = window, 1, -1 do free_slots[#free_slots + 1] = i end
  local self = setmetatable({
    o = o, pool = pool, reader = reader, out = out, ordered = not o.unordered,
    window = window, recs = {}, ready = {}, next_seq = 1, written_seq = 0,
    lineno = done_lines + 1, lines_out = 0, errors = done_errors, eof = false,
    board = board, free_slots = free_slots,
  }, Run)
  if core.isatty(2) and (o.output or not core.isatty(1)) then self.bar = Bar.new(reader) end
  return self
end

-- After the run: says why it stopped early; returns the exit status.
local function conclude(o, run, ok, err, out, done_lines)
  if out.failed then
    say("%s%s", out.failed, o.output and "; once it can be written, run it again with --resume to finish" or "")
    return 1
  end
  if not ok then
    if mp.iserror(err, "InterruptedError") then
      say("interrupted after %d lines%s", done_lines + run.lines_out,
        o.output and "; run it again with --resume to finish" or "")
    else
      say("%s", tostring(err))
    end
    return 1
  end
  if run.stopped == "halt" then say("stopped after %d errors (--halt)", o.halt) end
  return (run.errors > 0 or run.stopped) and 1 or 0
end

-- Runs everything after the arguments are checked; returns the exit status.
local function execute(o)
  local bad = check_files(o)
  if bad then
    say("%s", bad)
    return 2
  end
  local out, done_lines, done_errors = open_output(o)
  if not out then
    say("%s", done_lines)
    return 2
  end
  local reader <close> = core.lines_open(o.inputs)
  if done_lines > 0 and skip_lines(reader, done_lines) < done_lines then
    say("%s holds more lines (%d) than the input has: is it the same input?", o.output, done_lines)
    out:close()
    return 2
  end
  -- Without shared memory for the board (a file-size limit below the arena's size), the record
  -- a dead block's worker was running cannot be told: every record of the block runs again.
  local has_board, board = pcall(mp.RawArray, "d", 2 * window_of(o))
  if not has_board then board = nil end
  local pool, why = start_pool(o, board)
  if not pool then
    say("the script cannot start in a worker:\n%s", why)
    out:close()
    return 2
  end
  local run = new_run(o, pool, board, reader, out, done_lines, done_errors)
  local ok, err = pcall(run.loop, run)
  if not ok and not out.failed then
    run.stopped = "interrupted"
    pcall(run.flush, run) -- what is complete and in order still goes out
  end
  if run.bar then run.bar:finish(run.lines_out) end
  run.closing = true
  pool:terminate()
  out:close()
  return conclude(o, run, ok, err, out, done_lines)
end

--- The `lmp --map` command: args are the arguments after --map. Returns the exit status.
function M.main(argv)
  local o, err = args.parse(argv)
  if o == "help" then
    io.stdout:write(args.USAGE)
    return 0
  end
  if not o then
    io.stderr:write("lmp --map: ", err, "\n", args.USAGE_SHORT)
    return 2
  end
  return execute(o)
end

return M
