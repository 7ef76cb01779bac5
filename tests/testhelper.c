/*
** testhelper.c — a test-only module (`require "lmp_testhelper"`) that injects real faults:
** a genuine segfault, an abort. Never installed.
*/
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <lua.h>
#include <lauxlib.h>

static int segfault(lua_State *L) {
  volatile int *p = NULL;
  *p = 42; /* a real SIGSEGV, not a simulated one */
  return 0;
}

static int do_abort(lua_State *L) {
  abort();
  return 0;
}

static int raise_signal(lua_State *L) {
  raise((int)luaL_checkinteger(L, 1));
  return 0;
}

/* alarm(seconds): a watchdog; a spec that hangs dies of SIGALRM instead of hanging. */
static int set_alarm(lua_State *L) {
  lua_pushinteger(L, alarm((unsigned)luaL_checkinteger(L, 1)));
  return 1;
}

/* A C function that lmp cannot send: no module exports it. */
static int anonymous(lua_State *L) { return 0; }

static int get_anonymous(lua_State *L) {
  lua_pushcfunction(L, anonymous);
  return 1;
}

int luaopen_lmp_testhelper(lua_State *L) {
  static const luaL_Reg fns[] = {{"segfault", segfault}, {"abort", do_abort},
                                 {"raise", raise_signal}, {"get_anonymous", get_anonymous},
                                 {"alarm", set_alarm},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
