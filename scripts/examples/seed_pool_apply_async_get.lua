-- seed_pool_apply_async_get.lua — a result outlives its pool: submit, close(), join(), and
-- only then get() the value.
local mp = require "lmp"

local function get_html(n)
  mp.sleep(n)
  print("sub_progress success")
  return n
end

local pool = mp.Pool(mp.cpu_count())
local result = pool:apply_async(get_html, { 3 })
-- wait until every task is done
pool:close()
pool:join()
-- the task's return value
print(result:get())
