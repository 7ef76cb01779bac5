/*
** errors.c — lmp's error objects: tables {type=, message=} with the shared metatable lmp.Error
** (the same as the Lua side's mp.Error), made and raised from C.
*/
#include <stdarg.h>
#include <string.h>

#include "lmp_int.h"

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "type");
  lua_getfield(L, 1, "message");
  const char *type = lua_tostring(L, -2);
  const char *msg = lua_tostring(L, -1);
  lua_pushfstring(L, "%s: %s", type ? type : "Error", msg ? msg : "?");
  return 1;
}

void lmp__error_metatable(lua_State *L) {
  if (luaL_newmetatable(L, "lmp.Error")) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
}

void lmp_error_push(lua_State *L, const char *type, const char *msg) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  lmp__error_metatable(L);
  lua_setmetatable(L, -2);
}

int lmp_iserror_value(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, "lmp.Error");
  int is = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return is;
}

int lmp_iserror_type(lua_State *L, int idx, const char *type) {
  if (!lmp_iserror_value(L, idx)) return 0;
  lua_getfield(L, idx, "type");
  int is = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), type) == 0;
  lua_pop(L, 1);
  return is;
}

int lmp_raise(lua_State *L, const char *type, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lmp_error_push(L, type, msg);
  return lua_error(L);
}
