/*
** codec_fn.c — the encoder's function records: bytecode (cached per closure with the names of
** the globals it reads), upvalues (shared ones joined by reference) and captured globals.
** Caveat: functions read their globals through GETTABUP on an `_ENV` upvalue; a function that
** reaches globals another way (a local `_ENV`) has none captured.
*/
#include <string.h>

#include "codec_enc.h"

/* ---- dumping ---- */

typedef struct dumpstate {
  int init;
  luaL_Buffer b;
} dumpstate;

/* lua_dump writer into a luaL_Buffer started lazily above the dumped function. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  dumpstate *d = ud;
  if (!d->init) {
    d->init = 1;
    luaL_buffinit(L, &d->b);
  }
  luaL_addlstring(&d->b, p, n);
  return 0;
}

/* ---- the closure cache ---- */

/* Pushes the weak-keyed closure cache, creating it on first use. */
static void push_fcache(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CODEC_FCACHE) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, CODEC_FCACHE);
}

/* Pushes the cache entry {bytecode, global names...} of the Lua function at idx. */
static void push_fentry(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->fcache)) {
    push_fcache(L);
    lua_replace(L, e->fcache);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->fcache) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 4, 0);
  int entry = lua_gettop(L);
  lua_pushvalue(L, idx);
  dumpstate d = {0};
  lua_dump(L, dump_writer, &d, 0);
  if (!d.init) lua_pushliteral(L, "");
  else luaL_pushresult(&d.b);
  lua_remove(L, -2);
  size_t n;
  const char *chunk = lua_tolstring(L, -1, &n);
  lua_rawseti(L, entry, 1); /* the entry keeps the string alive */
  lmp__dump_globals(L, entry, chunk, n);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, entry);
  lua_rawset(L, e->fcache);
}

/* ---- upvalues and globals ---- */

/* Writes the upvalue records of the Lua function at idx (its record at offset fid). An
** `_ENV` upvalue that holds a table (the globals, or a custom environment such as a test runner's) becomes the
** message environment; the first such table is left on the stack and its index returned
** (0 when there is none), so the globals can be read from it. */
static int put_upvalues(enc *e, int idx, lua_Integer fid) {
  lua_State *L = e->L;
  int n = 0, env = 0;
  while (lua_getupvalue(L, idx, n + 1) != NULL) {
    lua_pop(L, 1);
    n++;
  }
  put_varint(e, (uint64_t)n);
  for (int i = 1; i <= n; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (strcmp(name, "_ENV") == 0 && lua_istable(L, -1)) {
      put_byte(e, UV_ENV);
      if (env == 0) env = lua_gettop(L);
      else lua_pop(L, 1);
      continue;
    }
    lua_pushlightuserdata(L, lua_upvalueid(L, idx, i));
    if (lua_rawget(L, e->upv) != LUA_TNIL) {
      lua_Integer v = lua_tointeger(L, -1);
      lmp__enc_ref(e, v >> 8, 0); /* the decoder keeps that function */
      put_byte(e, UV_SHARED);
      put_varint(e, (uint64_t)(v >> 8));
      put_byte(e, (int)(v & 0xff));
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, lua_upvalueid(L, idx, i));
    lua_pushinteger(L, fid * 256 + i);
    lua_rawset(L, e->upv);
    put_byte(e, UV_VALUE);
    push_frame(e, F_UPVAL, 0, 0, name);
    lmp__enc_value(e, lua_gettop(L));
    pop_frame(e);
    lua_pop(L, 1);
  }
  return env;
}

/* env[key] with metamethods, run under lua_pcall. */
static int env_get(lua_State *L) {
  lua_gettable(L, 1);
  return 1;
}

/* Pushes env[name] (name on top, consumed): raw for the globals table, else with metamethods
** (an environment that falls back to _G); an error there reads as nil, but Ctrl-C goes on. */
static void get_global(enc *e, int env) {
  lua_State *L = e->L;
  if (lua_rawequal(L, env, e->G)) {
    lua_rawget(L, env);
    return;
  }
  lua_pushcfunction(L, env_get);
  lua_pushvalue(L, env);
  lua_rotate(L, -3, 2);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    if (lmp_iserror_type(L, -1, "InterruptedError")) lua_error(L);
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* Writes the captured globals named in the entry at `entry` that this message lacks so far,
** reading them from the environment table at env. */
static void put_globals(enc *e, int entry, int env) {
  lua_State *L = e->L;
  for (lua_Integer i = 2; lua_rawgeti(L, entry, i) == LUA_TSTRING; i++) {
    int name = lua_gettop(L);
    lua_pushvalue(L, name);
    if (lua_rawget(L, e->caps) != LUA_TNIL) {
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, name);
    lua_pushboolean(L, 1);
    lua_rawset(L, e->caps);
    lua_pushvalue(L, name);
    get_global(e, env);
    if (!lua_isnil(L, -1)) {
      size_t n;
      const char *s = lua_tolstring(L, name, &n);
      put_byte(e, 1);
      put_str(e, s, n);
      push_frame(e, F_GLOBAL, 0, 0, s);
      lmp__enc_value(e, lua_gettop(L));
      pop_frame(e);
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  put_byte(e, 0);
}

/* Writes the record of the Lua function at idx: bytecode with debug info, upvalues, captured
** globals. The message it is in will carry a MAC. */
void lmp__enc_function(enc *e, int idx, lua_Integer fid) {
  lua_State *L = e->L;
  enter(e);
  if (lua_isnil(L, e->upv)) {
    lua_newtable(L);
    lua_replace(L, e->upv);
    lua_newtable(L);
    lua_replace(L, e->caps);
  }
  e->has_func = 1;
  put_byte(e, T_FUNC);
  push_fentry(e, idx);
  int entry = lua_gettop(L);
  size_t n;
  lua_rawgeti(L, entry, 1);
  const char *chunk = lua_tolstring(L, -1, &n);
  put_str(e, chunk, n);
  lua_pop(L, 1);
  int env = put_upvalues(e, idx, fid);
  if (env) put_globals(e, entry, env);
  else put_byte(e, 0);
  lua_settop(L, entry - 1);
  e->depth--;
}
