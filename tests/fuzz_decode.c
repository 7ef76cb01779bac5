/*
** fuzz_decode.c — libFuzzer target for the decoder: any byte string must decode to a value or
** raise a SerializationError, never crash, hang or allocate without bound.
** The state has no os/debug libraries and empty package paths, so decoded module references
** and metamethods cannot reach the process or the file system.
*/
#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lmp.h"
#include "lmp_int.h"

static lua_State *L;

static int decode_cb(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  static const int fds[2] = {0, 1};
  lmp_decode(L, p, n, fds, 2);
  return 1;
}

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "lmp.core", luaopen_lmp_core, 0);
  lua_pop(L, 1);
  luaL_dostring(L,
                "package.path, package.cpath = '', ''\n"
                "os, debug, package.loaded.os, package.loaded.debug = nil, nil, nil, nil\n"
                "package.searchers = {package.searchers[1]}\n"
                "require('lmp.core').register_handle('toy', function(p, ...)\n"
                "  return {p, ...} end)\n");
  lua_settop(L, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) setup();
  lua_pushcfunction(L, decode_cb);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pcall(L, 2, 1, 0);
  lua_settop(L, 0);
  return 0;
}
