/*
** result.c — AsyncResult, the handle on the outcome of a pool task (or of a map_async job).
** A C object so that the common case — a result without callbacks — is settled by the pool's
** C code as it arrives, and get() waits in the loop on a flag, with no Lua in between.
** Uservalues: 1 the pool core (kept alive while the result is), 2 the value (a packed table of
** results, or the error object), 3 callback, 4 error_callback, 5 the job (map_async), 6 a
** table of extra fields (callback_error, cancelled).
** Caveat: callbacks themselves run in lua/lmp/pool.lua, which settles the result first.
*/
#include <string.h>

#include "lmp_int.h"
#include "loop.h"
#include "result.h"

enum { UV_OWNER = 1, UV_VALUE, UV_CALLBACK, UV_ERRCALLBACK, UV_JOB, UV_EXTRA, NUV = UV_EXTRA };

static lmp_result *check(lua_State *L, int i) { return luaL_checkudata(L, i, RESULT_MT); }

lmp_result *lmp_result_push(lua_State *L, int owner, int callback, int error_callback, int job) {
  owner = lua_absindex(L, owner);
  callback = lua_absindex(L, callback);
  error_callback = lua_absindex(L, error_callback);
  job = lua_absindex(L, job);
  lmp_result *r = lua_newuserdatauv(L, sizeof *r, NUV);
  memset(r, 0, sizeof *r);
  luaL_setmetatable(L, RESULT_MT);
  lua_pushvalue(L, owner);
  lua_setiuservalue(L, -2, UV_OWNER);
  r->callbacks = !lua_isnil(L, callback) || !lua_isnil(L, error_callback);
  if (r->callbacks) {
    lua_pushvalue(L, callback);
    lua_setiuservalue(L, -2, UV_CALLBACK);
    lua_pushvalue(L, error_callback);
    lua_setiuservalue(L, -2, UV_ERRCALLBACK);
  }
  if (!lua_isnil(L, job)) {
    lua_pushvalue(L, job);
    lua_setiuservalue(L, -2, UV_JOB);
  }
  return r;
}

void lmp_result_settle(lua_State *L, int idx, int ok) {
  idx = lua_absindex(L, idx);
  lmp_result *r = lua_touserdata(L, idx);
  lua_setiuservalue(L, idx, UV_VALUE); /* the value on top */
  r->state = ok ? RESULT_OK : RESULT_FAILED;
}

/* ---- Lua methods ---- */

static int ready_fn(lua_State *L, void *ud) { return ((lmp_result *)ud)->state != RESULT_PENDING; }

/* Waits (in the loop) until r is settled or timeout passes; returns 1 when settled. */
static int wait_for(lua_State *L, lmp_result *r, int arg) {
  if (r->state != RESULT_PENDING) return 1;
  double timeout = -1;
  if (!lua_isnoneornil(L, arg)) {
    timeout = luaL_checknumber(L, arg);
    if (!(timeout >= 0))
      return lmp_raise(L, "ValueError", "bad argument #%d (timeout must be a non-negative number)",
                       arg - 1);
  }
  return lmp_loop_wait(L, ready_fn, r, timeout);
}

/* get([timeout]) -> the task's values; raises its error, or TimeoutError. */
static int r_get(lua_State *L) {
  lmp_result *r = check(L, 1);
  if (!wait_for(L, r, 2))
    return lmp_raise(L, "TimeoutError", "result not ready after %s s", lua_tostring(L, 2));
  lua_getiuservalue(L, 1, UV_VALUE);
  if (r->state == RESULT_FAILED) return lua_error(L);
  int t = lua_gettop(L);
  lua_Integer n = (lua_getfield(L, t, "n") == LUA_TNUMBER) ? lua_tointeger(L, -1) : luaL_len(L, t);
  lua_pop(L, 1);
  luaL_checkstack(L, (int)n, "too many results");
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  return (int)n;
}

/* wait([timeout]) -> true when settled. */
static int r_wait(lua_State *L) {
  lua_pushboolean(L, wait_for(L, check(L, 1), 2));
  return 1;
}

static int r_ready(lua_State *L) {
  lua_pushboolean(L, check(L, 1)->state != RESULT_PENDING);
  return 1;
}

static int r_successful(lua_State *L) {
  lmp_result *r = check(L, 1);
  if (r->state == RESULT_PENDING) return lmp_raise(L, "ValueError", "result is not ready");
  lua_pushboolean(L, r->state == RESULT_OK);
  return 1;
}

/* _settle(ok, value): settles a pending result (no callbacks run here); false if it was
** already settled. */
static int r_settle(lua_State *L) {
  lmp_result *r = check(L, 1);
  if (r->state != RESULT_PENDING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int ok = lua_toboolean(L, 2);
  lua_settop(L, 3);
  lmp_result_settle(L, 1, ok);
  lua_pushboolean(L, 1);
  return 1;
}

/* _parts() -> owner, id, job, callback, error_callback */
static int r_parts(lua_State *L) {
  lmp_result *r = check(L, 1);
  lua_getiuservalue(L, 1, UV_OWNER);
  lua_pushinteger(L, (lua_Integer)r->id);
  lua_getiuservalue(L, 1, UV_JOB);
  lua_getiuservalue(L, 1, UV_CALLBACK);
  lua_getiuservalue(L, 1, UV_ERRCALLBACK);
  return 5;
}

/* Fields: methods first, then the extra fields table. */
static int r_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  if (lua_getiuservalue(L, 1, UV_EXTRA) != LUA_TTABLE) return 0;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int r_newindex(lua_State *L) {
  if (lua_getiuservalue(L, 1, UV_EXTRA) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, UV_EXTRA);
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int r_tostring(lua_State *L) {
  lmp_result *r = check(L, 1);
  static const char *names[] = {"pending", "ok", "failed"};
  lua_pushfstring(L, "<AsyncResult %s>", names[r->state]);
  return 1;
}

static int r_new(lua_State *L) {
  lua_settop(L, 4);
  lmp_result_push(L, 1, 2, 3, 4);
  return 1;
}

void lmp__open_result(lua_State *L) {
  static const luaL_Reg methods[] = {{"get", r_get},           {"wait", r_wait},
                                     {"ready", r_ready},       {"successful", r_successful},
                                     {"_settle", r_settle},    {"_parts", r_parts},
                                     {NULL, NULL}};
  luaL_newmetatable(L, RESULT_MT);
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "AsyncResult"); /* core.AsyncResult: the methods, for Lua to extend */
  lua_pushcclosure(L, r_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, r_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, r_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, r_new);
  lua_setfield(L, -2, "result_new");
}
