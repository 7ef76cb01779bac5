/*
** args.c — argument checks for lmp's C functions that raise mp.Error objects (TypeError,
** ValueError) instead of plain strings, the one timeout rule of every blocking call, and the
** check of option tables and extra arguments. Messages read like Lua's own:
**     bad argument #2 to 'put' (number expected, got string "x")
*/
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "lmp_int.h"

/* Pushes a short description of the value at idx: `string "abc"`, `number 2.5`, `nil`,
** `lmp.Queue`... (long strings are cut). */
const char *lmp_pushdescribe(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (n > 40) return lua_pushfstring(L, "string \"%.37s...\"", s);
      return lua_pushfstring(L, "string \"%s\"", s);
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return lua_pushfstring(L, "integer %I", (LUAI_UACINT)lua_tointeger(L, idx));
      if (isnan(lua_tonumber(L, idx))) return lua_pushliteral(L, "NaN");
      return lua_pushfstring(L, "number %s", lua_tostring(L, idx) ? lua_tostring(L, idx) : "?");
    case LUA_TBOOLEAN: return lua_pushstring(L, lua_toboolean(L, idx) ? "boolean true" : "boolean false");
    case LUA_TNIL:
    case LUA_TNONE: return lua_pushliteral(L, "nil");
    default:
      if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING) {
        const char *s = lua_pushstring(L, lua_tostring(L, -1));
        lua_remove(L, -2);
        return s;
      }
      return lua_pushstring(L, luaL_typename(L, idx));
  }
}

int lmp_argerror(lua_State *L, int arg, const char *type, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *what = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_Debug ar;
  const char *name = "?";
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat != NULL && strcmp(ar.namewhat, "method") == 0) {
      arg--; /* self is not counted */
      if (arg == 0) return lmp_raise(L, type, "calling '%s' on bad self (%s)", ar.name, what);
    }
    if (ar.name != NULL) name = ar.name;
  }
  return lmp_raise(L, type, "bad argument #%d to '%s' (%s)", arg, name, what);
}

int lmp_typeerror(lua_State *L, int arg, const char *expected) {
  const char *got = lmp_pushdescribe(L, arg);
  return lmp_argerror(L, arg, "TypeError", "%s expected, got %s", expected, got);
}

lua_Integer lmp_checkinteger(lua_State *L, int arg) {
  int ok;
  lua_Integer v = lua_tointegerx(L, arg, &ok);
  if (!ok || lua_type(L, arg) != LUA_TNUMBER) {
    if (lua_type(L, arg) == LUA_TNUMBER)
      return lmp_argerror(L, arg, "ValueError", "integer expected, got %s", lmp_pushdescribe(L, arg));
    return lmp_typeerror(L, arg, "integer");
  }
  return v;
}

lua_Integer lmp_optinteger(lua_State *L, int arg, lua_Integer def) {
  return lua_isnoneornil(L, arg) ? def : lmp_checkinteger(L, arg);
}

lua_Number lmp_checknumber(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TNUMBER) return lmp_typeerror(L, arg, "number");
  return lua_tonumber(L, arg);
}

const char *lmp_checklstring(lua_State *L, int arg, size_t *len) {
  if (lua_type(L, arg) != LUA_TSTRING) return (lmp_typeerror(L, arg, "string"), NULL);
  return lua_tolstring(L, arg, len);
}

void lmp_checktype(lua_State *L, int arg, int t) {
  if (lua_type(L, arg) != t) lmp_typeerror(L, arg, lua_typename(L, t));
}

void *lmp_checkudata(lua_State *L, int arg, const char *tname) {
  void *p = luaL_testudata(L, arg, tname);
  if (p == NULL) lmp_typeerror(L, arg, tname);
  return p;
}

void lmp_class_register(lua_State *L, const void *key) {
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

void *lmp_toclass(lua_State *L, int arg, const void *key) {
  void *p = lua_touserdata(L, arg);
  if (p == NULL || !lua_getmetatable(L, arg)) return NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}

void *lmp_checkclass(lua_State *L, int arg, const void *key, const char *tname) {
  void *p = lmp_toclass(L, arg, key);
  if (p == NULL) lmp_typeerror(L, arg, tname);
  return p;
}

void lmp_setclass(lua_State *L, const void *key) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_setmetatable(L, -2);
}

double lmp_timeout_of(double t) {
  if (t >= LMP_TIMEOUT_HUGE) return LMP_FOREVER;
  return t > 0 ? t : 0;
}

double lmp_checktimeout(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return LMP_FOREVER;
  if (lua_type(L, arg) != LUA_TNUMBER)
    return lmp_argerror(L, arg, "ValueError", "timeout must be a number or nil, got %s",
                        lmp_pushdescribe(L, arg));
  double t = lua_tonumber(L, arg);
  if (isnan(t)) return lmp_argerror(L, arg, "ValueError", "timeout must not be NaN");
  return lmp_timeout_of(t);
}

/* Pushes "a, b, c" for an option list. */
static const char *push_names(lua_State *L, const char *const names[]) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 0; names[i] != NULL; i++) {
    if (i > 0) luaL_addstring(&b, ", ");
    luaL_addstring(&b, names[i]);
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

void lmp_checkoptions(lua_State *L, int arg, const char *const names[]) {
  arg = lua_absindex(L, arg);
  lua_pushnil(L);
  while (lua_next(L, arg) != 0) {
    lua_pop(L, 1);
    int known = 0;
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      for (int i = 0; names[i] != NULL && !known; i++) known = strcmp(k, names[i]) == 0;
    }
    if (!known) {
      const char *key = lmp_pushdescribe(L, -1);
      lmp_argerror(L, arg, "ValueError", "unknown option %s (accepted: %s)", key,
                   push_names(L, names));
    }
  }
}

void lmp_checknargs(lua_State *L, int max) {
  int n = lua_gettop(L);
  if (n <= max) return;
  lua_Debug ar;
  int self = lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.namewhat != NULL &&
             strcmp(ar.namewhat, "method") == 0; /* counted without self, as the caller sees it */
  lmp_argerror(L, max + 1, "ValueError", "no such argument (takes at most %d argument%s, got %d)",
               max - self, max - self == 1 ? "" : "s", n - self);
}
