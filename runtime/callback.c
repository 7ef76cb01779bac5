/*
** callback.c — calling user code from lmp: the one message handler (an error with a traceback)
** and the one protected call for callbacks run by the loop, which reports what fails on stderr
** instead of losing it, and counts what ran (mp.poll's answer).
*/
#include <stdio.h>

#include "lmp_int.h"

static unsigned long callbacks_run;

int lmp_msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
    else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int lmp_pcall_traceback(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, lmp_msgh);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  return status;
}

/* Writes a callback's failure on stderr: reported, never lost, and the loop goes on. */
static void report(lua_State *L, const char *what) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "lmp: error in %s (reported, the pool goes on):\n%s\n", what, msg ? msg : "?");
  fflush(stderr);
}

int lmp_callback(lua_State *L, int nargs, const char *what) {
  callbacks_run++;
  if (lmp_pcall_traceback(L, nargs, 0) == LUA_OK) return 1;
  report(L, what);
  return 0;
}

unsigned long lmp_callbacks_run(void) { return callbacks_run; }
