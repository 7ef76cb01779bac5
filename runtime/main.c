/* main.c — placeholder */
#include <stdio.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "lmp.h"
int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lmp_preload(L);
  int st = (argc > 1) ? luaL_dofile(L, argv[1]) : 0;
  if (st) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return st;
}
