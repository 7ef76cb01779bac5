#include <assert.h>
#include <lauxlib.h>
#include <lualib.h>
#include "lmp.h"
int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "lmp", luaopen_lmp, 0);
  assert(lua_istable(L, -1));
  lua_close(L);
  return 0;
}
