/*
** result.c — calls: what gathers the results of one submission (apply_async, map, an imap) as
** the pool delivers them — decoding, settling, callbacks, progress — and the Lua faces of calls:
** AsyncResult (get, wait, ready, successful, cancel) and the imap call (add, take, wait, stop).
** Uservalues of a call: 1 the pool core, 2 the value (packed results or the error), 3 callback,
** 4 error_callback, 5 progress, 6 extra fields (callback_error, cancelled), 7 the results table
** (map) or the ring of waiting values (imap).
** Caveat: delivery runs in the loop's check phase (pool.c), protected; callbacks run there too.
*/
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "pool.h"

#define IMAP_MT "lmp.ImapCall"

static const char call_class, imap_class; /* their addresses key the metatables */

enum { RV_OWNER = 1, RV_VALUE, RV_CALLBACK, RV_ERRCALLBACK, RV_PROGRESS, RV_EXTRA, RV_RESULTS,
       NRV = RV_RESULTS };

/* ---- making and registering calls ---- */

lmp_call *lmp_call_push(lua_State *L, lmp_pool *p, int owner, int kind, int callback,
                        int error_callback, int progress) {
  owner = lua_absindex(L, owner);
  callback = lua_absindex(L, callback);
  error_callback = lua_absindex(L, error_callback);
  progress = lua_absindex(L, progress);
  lmp_call *c = lua_newuserdatauv(L, sizeof *c, NRV);
  memset(c, 0, sizeof *c);
  c->pool = p;
  c->kind = kind;
  c->ref = LUA_NOREF;
  lmp_setclass(L, kind == CALL_IMAP ? &imap_class : &call_class);
  lua_pushvalue(L, owner);
  lua_setiuservalue(L, -2, RV_OWNER);
  c->callbacks = !lua_isnoneornil(L, callback) || !lua_isnoneornil(L, error_callback);
  if (c->callbacks) {
    lua_pushvalue(L, callback);
    lua_setiuservalue(L, -2, RV_CALLBACK);
    lua_pushvalue(L, error_callback);
    lua_setiuservalue(L, -2, RV_ERRCALLBACK);
  }
  if (!lua_isnoneornil(L, progress)) {
    c->progress = 1;
    lua_pushvalue(L, progress);
    lua_setiuservalue(L, -2, RV_PROGRESS);
  }
  return c;
}

void lmp_call_register(lua_State *L, lmp_call *c, int idx) {
  if (c->ref != LUA_NOREF) return;
  idx = lua_absindex(L, idx);
  lmp_pool_push_calls(L, c->pool);
  lua_pushvalue(L, idx);
  c->ref = luaL_ref(L, -2);
  lua_pop(L, 1);
}

void lmp_call_unregister_if_done(lua_State *L, lmp_call *c) {
  if (c->ref == LUA_NOREF || c->ntasks > 0 || c->open) return;
  lmp_pool_push_calls(L, c->pool);
  luaL_unref(L, -1, c->ref);
  lua_pop(L, 1);
  c->ref = LUA_NOREF;
}

void lmp_call_push_ud(lua_State *L, lmp_call *c) {
  if (c->ref == LUA_NOREF) {
    lua_pushnil(L);
    return;
  }
  lmp_pool_push_calls(L, c->pool);
  lua_rawgeti(L, -1, c->ref);
  lua_remove(L, -2);
}

void lmp_call_new_results(lua_State *L, int idx, int narr) {
  idx = lua_absindex(L, idx);
  lua_createtable(L, narr, 1); /* the extra hash slot is for n: no rehash of the array part */
  lua_setiuservalue(L, idx, RV_RESULTS);
}

/* ---- settling ---- */

/* Keeps a callback's failure on the result (res.callback_error), the message on top (popped). */
static void keep_callback_error(lua_State *L, int ud) {
  if (lua_getiuservalue(L, ud, RV_EXTRA) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, ud, RV_EXTRA);
  }
  lua_insert(L, -2);
  lua_setfield(L, -2, "callback_error");
  lua_pop(L, 1);
}

/* Runs the callback in uservalue uv of the call at ud with the nargs values on top (popped). */
static void run_callback(lua_State *L, int ud, int uv, int nargs, const char *what) {
  if (lua_getiuservalue(L, ud, uv) != LUA_TFUNCTION) {
    lua_pop(L, 1 + nargs);
    return;
  }
  lua_insert(L, -1 - nargs);
  if (!lmp_callback(L, nargs, what)) keep_callback_error(L, ud);
}

/* Settles the call at ud with the value on top (popped): the packed results (apply), the
** results table (map), or the error object. Runs the matching callback. */
static void settle(lua_State *L, lmp_call *c, int ud, int ok) {
  if (c->state != CALL_PENDING) {
    lua_pop(L, 1);
    return;
  }
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, ud, RV_VALUE);
  c->state = ok ? CALL_OK : CALL_FAILED;
  if (!c->callbacks) {
    lua_pop(L, 1);
  } else if (!ok) {
    run_callback(L, ud, RV_ERRCALLBACK, 1, "error_callback");
  } else if (c->kind == CALL_APPLY) {
    int t = lua_gettop(L);
    lua_Integer n = (lua_getfield(L, t, "n") == LUA_TNUMBER) ? lua_tointeger(L, -1) : luaL_len(L, t);
    lua_pop(L, 1);
    luaL_checkstack(L, (int)n + 4, "too many results");
    for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, t, i);
    lua_remove(L, t);
    run_callback(L, ud, RV_CALLBACK, (int)n, "callback");
  } else {
    run_callback(L, ud, RV_CALLBACK, 1, "callback");
  }
}

/* Reports progress(done, total) of the call at ud, protected (an error is reported). */
static void report_progress(lua_State *L, lmp_call *c, int ud) {
  if (!c->progress) return;
  lua_pushinteger(L, c->done);
  if (c->total >= 0) lua_pushinteger(L, c->total);
  else lua_pushnil(L);
  run_callback(L, ud, RV_PROGRESS, 2, "progress function");
}

/* A map call whose tasks have all been delivered: its results table is the value. */
static void map_complete(lua_State *L, lmp_call *c, int ud) {
  if (c->state != CALL_PENDING || c->ntasks > 0 || c->open) return;
  lua_getiuservalue(L, ud, RV_RESULTS);
  lua_pushinteger(L, c->total);
  lua_setfield(L, -2, "n");
  settle(L, c, ud, 1);
}

void lmp_call_close(lua_State *L, lmp_call *c, int idx) {
  c->open = 0;
  if (c->kind == CALL_MAP) map_complete(L, c, lua_absindex(L, idx));
  lmp_call_unregister_if_done(L, c);
}

/* ---- failures ---- */

/* Pushes the error object for task t's outcome (not a success). */
static void push_failure(lua_State *L, ptask *t) {
  lmp_call *c = t->call;
  outcome *o = &t->out;
  int maplike = c->kind != CALL_APPLY;
  lua_Integer index = maplike ? (lua_Integer)(t->start + o->index) : 0;
  if (o->status == RES_ERROR || o->status == RES_UNENCODABLE) {
    lmp_decode(L, o->msg, o->n, NULL, 0);
    int info = lua_gettop(L);
    if (o->status == RES_ERROR) {
      const char *m = lua_istable(L, info) ? (lua_getfield(L, info, "message"), lua_tostring(L, -1))
                                           : lua_tostring(L, info);
      lmp_error_push(L, "RemoteError", m ? m : "(no message)");
      if (lua_istable(L, info)) {
        lua_getfield(L, info, "value");
        lua_setfield(L, -2, "value");
        lua_getfield(L, info, "traceback");
        lua_setfield(L, -2, "traceback");
      }
    } else {
      lua_pushfstring(L, "the task's result cannot be sent: %s",
                      lua_tostring(L, info) ? lua_tostring(L, info) : "?");
      lmp_error_push(L, "SerializationError", lua_tostring(L, -1));
    }
    lua_replace(L, info);
    lua_settop(L, info);
  } else {
    int reason = -1 - o->status;
    lmp_error_push(L, reason == LOST_TIMEOUT ? "TimeoutError"
                      : reason == LOST_BACKEND ? "ProcessError" : "WorkerLostError",
                   o->why ? o->why : "the task's worker was lost");
    if (reason != LOST_TIMEOUT && o->pid > 0) {
      lua_pushinteger(L, o->code);
      lua_setfield(L, -2, "exitcode");
    }
  }
  if (o->pid > 0) {
    lua_pushinteger(L, o->pid);
    lua_setfield(L, -2, "pid");
  }
  if (maplike) {
    lua_pushinteger(L, index);
    lua_setfield(L, -2, "index");
  }
}

/* An imap keeps the error of the earliest position (an ordered one raises it there). */
static void imap_keep_error(lua_State *L, lmp_call *c, int ud, int64_t at) {
  if (c->err_at != 0 && c->err_at <= at) {
    lua_pop(L, 1);
    return;
  }
  c->err_at = at;
  lua_setiuservalue(L, ud, RV_VALUE);
}

void lmp_call_fail(lua_State *L, lmp_call *c, int64_t at) {
  int err = lua_gettop(L);
  lmp_call_push_ud(L, c);
  if (lua_isnil(L, -1)) {
    lua_settop(L, err - 1);
    return;
  }
  int ud = lua_gettop(L);
  lua_pushvalue(L, err);
  if (c->kind == CALL_IMAP) {
    imap_keep_error(L, c, ud, at);
  } else {
    if (c->kind == CALL_MAP) lmp_pool_stop_call(L, c->pool, c, STOP_DROP); /* the rest is moot */
    settle(L, c, ud, 0);
  }
  lua_settop(L, err - 1);
}

/* ---- delivering ---- */

/* Makes sure the ring of an imap has a slot for every item that may wait at once. */
static void imap_slots(lua_State *L, lmp_call *c, int ud, size_t need);

/* Puts the count values of a chunk's results message into slots first.. of the ring at -1. */
static void imap_store(lua_State *L, lmp_call *c, const ptask *t, uint64_t first) {
  int ring = lua_gettop(L);
  size_t at = (size_t)(first % c->slotcap);
  if (at + t->count <= c->slotcap) {
    lmp__decode_into(L, t->out.msg, t->out.n, ring, (lua_Integer)at + 1);
    return;
  }
  lmp_decode(L, t->out.msg, t->out.n, NULL, 0); /* wraps around: one by one */
  for (uint32_t i = 0; i < t->count; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    lua_rawseti(L, ring, (lua_Integer)((first + i) % c->slotcap) + 1);
  }
  lua_pop(L, 1);
}

static void deliver_imap(lua_State *L, lmp_call *c, int ud, ptask *t) {
  lua_getiuservalue(L, ud, RV_RESULTS);
  if (c->ordered) { /* by position */
    imap_store(L, c, t, (uint64_t)t->start);
    for (uint32_t i = 0; i < t->count; i++) c->got[(size_t)(t->start + i) % c->slotcap] = 1;
  } else {
    imap_slots(L, c, ud, (size_t)(c->arrived - c->taken) + t->count);
    lua_getiuservalue(L, ud, RV_RESULTS);
    imap_store(L, c, t, c->arrived);
    for (uint32_t i = 0; i < t->count; i++) c->pos[(c->arrived + i) % c->slotcap] = t->start + i;
    c->arrived += t->count;
  }
  c->done += t->count;
  report_progress(L, c, ud);
}

/* A raw call hands its callback the outcome as it came: callback(status, message, index), status
** RES_* or -1 - LOST_*, message the result's codec message or the loss's description. */
static void deliver_raw(lua_State *L, lmp_call *c, int ud, ptask *t) {
  outcome *o = &t->out;
  c->state = CALL_OK;
  lua_pushinteger(L, o->status);
  if (o->status >= 0) lua_pushlstring(L, o->msg, o->n);
  else lua_pushstring(L, o->why ? o->why : "the task's worker was lost");
  lua_pushinteger(L, (lua_Integer)o->index);
  run_callback(L, ud, RV_CALLBACK, 3, "callback");
}

int lmp_call_deliver(lua_State *L) {
  ptask *t = lua_touserdata(L, 1);
  lmp_call *c = t->call;
  c->changes++;
  lmp_call_push_ud(L, c);
  if (lua_isnil(L, -1)) return 0;
  int ud = lua_gettop(L);
  if (c->kind == CALL_RAW) {
    deliver_raw(L, c, ud, t);
    return 0;
  }
  if (t->out.status != RES_OK) {
    push_failure(L, t);
    if (c->kind == CALL_IMAP) imap_keep_error(L, c, ud, t->start + t->out.index);
    else {
      if (c->kind == CALL_MAP) lmp_pool_stop_call(L, c->pool, c, STOP_DROP);
      settle(L, c, ud, 0);
    }
    return 0;
  }
  switch (c->kind) {
    case CALL_APPLY:
      lmp_decode(L, t->out.msg, t->out.n, NULL, 0);
      settle(L, c, ud, 1);
      break;
    case CALL_MAP:
      if (c->state != CALL_PENDING) break;
      lua_getiuservalue(L, ud, RV_RESULTS);
      lmp__decode_into(L, t->out.msg, t->out.n, -1, (lua_Integer)t->start);
      lua_pop(L, 1);
      c->done += t->count;
      report_progress(L, c, ud);
      map_complete(L, c, ud);
      break;
    default: deliver_imap(L, c, ud, t); break;
  }
  return 0;
}

/* ---- waiting ---- */

static int settled_fn(lua_State *L, void *ud) { return ((lmp_call *)ud)->state != CALL_PENDING; }

/* Waits for c to settle (1) or the timeout to pass (0). Ctrl-C stops the call's work before the
** InterruptedError goes on. */
static int wait_settled(lua_State *L, lmp_call *c, double timeout) {
  int r = lmp_loop_wait_status(L, settled_fn, c, timeout);
  if (r == LMP_WAIT_INTERRUPTED) {
    lmp_pool_stop_call(L, c->pool, c, STOP_KILL);
    if (c->state == CALL_PENDING) {
      lmp_error_push(L, "InterruptedError", "interrupted by Ctrl-C (SIGINT); the call's work was stopped");
      lmp_call_push_ud(L, c);
      if (!lua_isnil(L, -1)) {
        lua_pushvalue(L, -2);
        lua_setiuservalue(L, -2, RV_VALUE);
      }
      lua_pop(L, 2);
      c->state = CALL_FAILED;
    }
  }
  return lmp_wait_result(L, r);
}

static lmp_call *check_result(lua_State *L, int idx) {
  return lmp_checkclass(L, idx, &call_class, CALL_MT);
}

/* Raises the error on top; the place of the caller at level (as luaL_where counts) goes in
** err.where the first time. */
static int raise_failure(lua_State *L, int level) {
  int err = lua_gettop(L);
  if (lmp_iserror_value(L, err) && lua_getfield(L, err, "where") == LUA_TNIL) {
    luaL_where(L, level);
    size_t n;
    const char *w = lua_tolstring(L, -1, &n);
    if (n > 2) { /* "file:line: " without the ": " */
      lua_pushlstring(L, w, n - 2);
      lua_setfield(L, err, "where");
    }
  }
  lua_settop(L, err);
  return lua_error(L);
}

/* Returns the values of a settled call, or raises its error (where: the level of the caller). */
static int push_outcome(lua_State *L, lmp_call *c, int ud, int level) {
  lua_getiuservalue(L, ud, RV_VALUE);
  if (c->state == CALL_FAILED) return raise_failure(L, level);
  if (c->kind != CALL_APPLY) return 1; /* the results table */
  int t = lua_gettop(L);
  lua_Integer n = (lua_getfield(L, t, "n") == LUA_TNUMBER) ? lua_tointeger(L, -1) : luaL_len(L, t);
  lua_pop(L, 1);
  luaL_checkstack(L, (int)n, "too many results");
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  return (int)n;
}

/* _stop(): stops the result's work now, killing the workers running its tasks (for `lmp worker`,
** which stops tasks that their pool cancelled). */
static int r_stop(lua_State *L) {
  lmp_call *c = check_result(L, 1);
  if (!c->stopped) lmp_pool_stop_call(L, c->pool, c, STOP_KILL);
  return 0;
}

/* get([timeout]) -> the task's values; raises its error, or TimeoutError. */
static int r_get(lua_State *L) {
  lmp_call *c = check_result(L, 1);
  double timeout = lmp_checktimeout(L, 2);
  lmp_checknargs(L, 2);
  if (!wait_settled(L, c, timeout))
    return lmp_raise(L, "TimeoutError", "the result is not ready within %f s", timeout);
  return push_outcome(L, c, 1, 1);
}

/* _get(timeout, level): get for the facade (map...), naming the caller at level. */
static int r_get_for(lua_State *L) {
  lmp_call *c = check_result(L, 1);
  double timeout = lmp_checktimeout(L, 2);
  int level = (int)luaL_optinteger(L, 3, 1);
  if (!wait_settled(L, c, timeout))
    return lmp_raise(L, "TimeoutError", "the result is not ready within %f s", timeout);
  return push_outcome(L, c, 1, level);
}

/* wait([timeout]) -> true when settled. */
static int r_wait(lua_State *L) {
  lmp_call *c = check_result(L, 1);
  double timeout = lmp_checktimeout(L, 2);
  lmp_checknargs(L, 2);
  lua_pushboolean(L, wait_settled(L, c, timeout));
  return 1;
}

static int r_ready(lua_State *L) {
  lmp_checknargs(L, 1);
  lua_pushboolean(L, check_result(L, 1)->state != CALL_PENDING);
  return 1;
}

static int r_successful(lua_State *L) {
  lmp_call *c = check_result(L, 1);
  lmp_checknargs(L, 1);
  if (c->state == CALL_PENDING) return lmp_raise(L, "ValueError", "the result is not ready");
  lua_pushboolean(L, c->state == CALL_OK);
  return 1;
}

/* cancel() -> true when tasks that had not started were withdrawn: they never run, and the
** result fails with ValueError "cancelled" (running ones finish, their results dropped). */
static int r_cancel(lua_State *L) {
  lmp_call *c = check_result(L, 1);
  lmp_checknargs(L, 1);
  if (c->state != CALL_PENDING || lmp_pool_stop_call(L, c->pool, c, STOP_WITHDRAW) == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  c->callbacks = 0; /* a cancelled result runs no callback */
  lmp_error_push(L, "ValueError", "the task was cancelled");
  lua_setiuservalue(L, 1, RV_VALUE);
  c->state = CALL_FAILED;
  lua_pushboolean(L, 1);
  lua_setfield(L, 1, "cancelled");
  lua_pushboolean(L, 1);
  return 1;
}

/* Fields: methods first, then the extra fields table. */
static int r_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  if (lua_getiuservalue(L, 1, RV_EXTRA) != LUA_TTABLE) return 0;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int r_newindex(lua_State *L) {
  if (lua_getiuservalue(L, 1, RV_EXTRA) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, RV_EXTRA);
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int r_tostring(lua_State *L) {
  lmp_call *c = lua_touserdata(L, 1);
  static const char *names[] = {"pending", "ok", "failed"};
  lua_pushfstring(L, "<AsyncResult %s>", names[c->state]);
  return 1;
}

/* ---- imap calls ---- */

static void imap_slots(lua_State *L, lmp_call *c, int ud, size_t need) {
  if (need <= c->slotcap) return;
  size_t cap = c->slotcap ? c->slotcap : 64;
  while (cap < need) cap *= 2;
  int ordered = c->ordered;
  void *arr = ordered ? calloc(cap, 1) : calloc(cap, sizeof(int64_t));
  if (arr == NULL) luaL_error(L, "not enough memory");
  lua_createtable(L, (int)cap, 0);
  int fresh = lua_gettop(L);
  if (c->slotcap > 0) { /* re-home what waits */
    lua_getiuservalue(L, ud, RV_RESULTS);
    if (ordered) {
      for (int64_t p = c->ntaken + 1; p < c->next_start; p++) {
        size_t o = (size_t)p % c->slotcap, n = (size_t)p % cap;
        ((uint8_t *)arr)[n] = c->got[o];
        lua_rawgeti(L, -1, (lua_Integer)o + 1);
        lua_rawseti(L, fresh, (lua_Integer)n + 1);
      }
    } else {
      for (uint64_t k = c->taken; k < c->arrived; k++) {
        size_t o = (size_t)(k % c->slotcap), n = (size_t)(k % cap);
        ((int64_t *)arr)[n] = c->pos[o];
        lua_rawgeti(L, -1, (lua_Integer)o + 1);
        lua_rawseti(L, fresh, (lua_Integer)n + 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_setiuservalue(L, ud, RV_RESULTS);
  if (ordered) free(c->got), c->got = arr;
  else free(c->pos), c->pos = arr;
  c->slotcap = cap;
}

static lmp_call *check_imap(lua_State *L) { return lmp_checkclass(L, 1, &imap_class, IMAP_MT); }

/* add(items, first, count): submits items[first..first+count-1] as the next chunk. */
static int i_add(lua_State *L) {
  lmp_call *c = check_imap(L);
  lmp_checktype(L, 2, LUA_TTABLE);
  int64_t first = lmp_checkinteger(L, 3), count = lmp_checkinteger(L, 4);
  if (c->stopped || !c->open) return lmp_raise(L, "ValueError", "imap: the call was stopped");
  if (count <= 0) return 0;
  if (c->ordered) /* a slot for every position not yet taken */
    imap_slots(L, c, 1, (size_t)(c->next_start + count - 1 - c->ntaken));
  c->fn->refs++;
  ptask *t = lmp_pool_task(L, c->pool, c, c->kind_of_tasks, c->fn, 2, first, count, "seq");
  t->start = c->next_start;
  c->next_start += count;
  if (c->total >= 0 && c->next_start - 1 > c->total) c->total = c->next_start - 1;
  lmp_pool_submit(L, c->pool, t);
  return 0;
}

/* take() -> true, position, value | false: the next value that may be taken now. Raises the
** call's error when that is what comes next (the call's work is stopped first). */
static int i_take(lua_State *L) {
  lmp_call *c = check_imap(L);
  int level = (int)luaL_optinteger(L, 2, 1);
  lua_getiuservalue(L, 1, RV_RESULTS);
  int ring = lua_gettop(L);
  int64_t p;
  size_t slot;
  if (c->ordered) {
    p = c->ntaken + 1;
    slot = c->slotcap ? (size_t)p % c->slotcap : 0;
    if (c->slotcap == 0 || !c->got[slot]) {
      if (c->err_at == p) goto failed;
      lua_pushboolean(L, 0);
      return 1;
    }
    c->got[slot] = 0;
  } else {
    if (c->taken == c->arrived) {
      if (c->err_at != 0) goto failed;
      lua_pushboolean(L, 0);
      return 1;
    }
    slot = (size_t)(c->taken % c->slotcap);
    p = c->pos[slot];
    c->taken++;
  }
  c->ntaken++;
  lua_pushboolean(L, 1);
  lua_pushinteger(L, p);
  lua_rawgeti(L, ring, (lua_Integer)slot + 1);
  lua_pushnil(L);
  lua_rawseti(L, ring, (lua_Integer)slot + 1);
  return 3;
failed:
  lmp_pool_stop_call(L, c->pool, c, STOP_DROP);
  lua_getiuservalue(L, 1, RV_VALUE);
  return raise_failure(L, level);
}

static int changed_fn(lua_State *L, void *ud) {
  lmp_call *c = ud;
  return c->changes != c->seen || c->ntasks == 0;
}

/* wait(): waits until a result of the call arrives (or it has nothing in flight). Ctrl-C
** stops the call's work before the InterruptedError goes on. */
static int i_wait(lua_State *L) {
  lmp_call *c = check_imap(L);
  c->seen = c->changes;
  int r = lmp_loop_wait_status(L, changed_fn, c, LMP_FOREVER);
  if (r == LMP_WAIT_INTERRUPTED) lmp_pool_stop_call(L, c->pool, c, STOP_KILL);
  lmp_wait_result(L, r);
  return 0;
}

/* outstanding() -> items added and not yet taken, items added so far */
static int i_outstanding(lua_State *L) {
  lmp_call *c = check_imap(L);
  lua_pushinteger(L, c->next_start - 1 - c->ntaken);
  lua_pushinteger(L, c->next_start - 1);
  return 2;
}

/* finish(): no more items will be added. */
static int i_finish(lua_State *L) {
  lmp_call *c = check_imap(L);
  c->open = 0;
  if (c->total < 0) c->total = c->next_start - 1;
  lmp_call_unregister_if_done(L, c);
  return 0;
}

/* stop(): the rest of the call's work is stopped (queued dropped, running killed). */
static int i_stop(lua_State *L) {
  lmp_call *c = check_imap(L);
  if (!c->stopped) lmp_pool_stop_call(L, c->pool, c, STOP_KILL);
  return 0;
}

static int i_gc(lua_State *L) {
  lmp_call *c = lua_touserdata(L, 1);
  lmp_fnent_release(c->fn);
  c->fn = NULL;
  free(c->got);
  free(c->pos);
  c->got = NULL;
  c->pos = NULL;
  return 0;
}

/* ---- opening ---- */

void lmp__open_pool_calls(lua_State *L) {
  static const lmp_call_ops ops = {lmp_call_deliver, lmp_call_fail, lmp_call_unregister_if_done};
  lmp_pool_set_call_ops(&ops);
  static const luaL_Reg methods[] = {{"get", r_get},         {"wait", r_wait},
                                     {"ready", r_ready},     {"successful", r_successful},
                                     {"cancel", r_cancel},   {"_get", r_get_for},
                                     {"_stop", r_stop},
                                     {NULL, NULL}};
  luaL_newmetatable(L, CALL_MT);
  lmp_class_register(L, &call_class);
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "AsyncResult"); /* core.AsyncResult: the methods */
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__methods"); /* what REPL completion offers (it never calls __index) */
  lua_pushcclosure(L, r_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, r_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, r_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  static const luaL_Reg imethods[] = {{"add", i_add},         {"take", i_take},
                                      {"wait", i_wait},       {"outstanding", i_outstanding},
                                      {"finish", i_finish},   {"stop", i_stop},
                                      {NULL, NULL}};
  luaL_newmetatable(L, IMAP_MT);
  lmp_class_register(L, &imap_class);
  luaL_newlib(L, imethods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, i_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}
