/*
** child.c — what a new child does before and after it runs Lua: signals and parent death,
** closing what lmp owns in the parent, the host's hooks, a fresh Lua state (standard
** libraries, lmp preloaded, the parent's package paths), the bootstrap, and _exit.
** Caveat: the child never touches the parent's Lua state, loop or atexit handlers.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <lualib.h>

#include "lmp.h"
#include "child.h"
#include "children.h"

/* ---- host hooks ---- */

typedef struct hook {
  lmp_fork_hook prepare, parent, child;
  lmp_state_init init;
  void *ud;
} hook;

#define MAX_HOOKS 16
static hook fork_hooks[MAX_HOOKS], state_hooks[MAX_HOOKS];
static int n_fork_hooks, n_state_hooks;

int lmp_atfork(lmp_fork_hook prepare, lmp_fork_hook parent, lmp_fork_hook child, void *ud) {
  if (n_fork_hooks == MAX_HOOKS) return -1;
  fork_hooks[n_fork_hooks++] = (hook){prepare, parent, child, NULL, ud};
  return 0;
}

int lmp_on_worker_state(lmp_state_init fn, void *ud) {
  if (n_state_hooks == MAX_HOOKS) return -1;
  state_hooks[n_state_hooks++] = (hook){NULL, NULL, NULL, fn, ud};
  return 0;
}

void lmp__run_fork_hooks(int phase) {
  for (int i = 0; i < n_fork_hooks; i++) {
    lmp_fork_hook f = phase == 0 ? fork_hooks[i].prepare
                      : phase == 1 ? fork_hooks[i].parent : fork_hooks[i].child;
    if (f) f(fork_hooks[i].ud);
  }
}

/* ---- the new process ---- */

static pid_t parent_pid;

pid_t lmp__parent_pid(void) { return parent_pid; }
void lmp__set_parent_pid(pid_t pid) { parent_pid = pid; }

void lmp__child_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    sa.sa_handler = (s == SIGINT || s == SIGPIPE) ? SIG_IGN : SIG_DFL;
    sigaction(s, &sa, NULL);
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent_pid) _exit(1); /* the parent died before prctl took effect */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Puts a freshly forked child in order: signals, parent death, fds, tables, host hooks. */
static void child_reset(void) {
  lmp__child_signals();
  lmp_fd_close_owned_in_child();
  lmp__children_clear(); /* the parent's children are not ours */
  lmp__run_fork_hooks(2);
}

/* Sets package.<field> to s when s is not NULL. */
static void set_package_field(lua_State *L, const char *field, const char *s) {
  if (s == NULL) return;
  lua_getglobal(L, "package");
  lua_pushstring(L, s);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

/* What a fresh state gets after the standard libraries: lmp's preloads (lmp_preload), set by
** the module's entry points (core.c) — a hook, so this file needs nothing above it. */
static void (*state_setup)(lua_State *L);

void lmp__set_state_setup(void (*setup)(lua_State *L)) { state_setup = setup; }

static int init_worker_state(lua_State *L) {
  const char *path = lua_touserdata(L, 1);
  const char *cpath = lua_touserdata(L, 2);
  luaL_openlibs(L);
  set_package_field(L, "path", path);
  set_package_field(L, "cpath", cpath);
  if (state_setup != NULL) state_setup(L);
  return 0;
}

lua_State *lmp_new_worker_state(const char *path, const char *cpath) {
  lua_State *L = lmp__state_new(1);
  if (L == NULL) return NULL;
  lua_pushcfunction(L, init_worker_state);
  lua_pushlightuserdata(L, (void *)path);
  lua_pushlightuserdata(L, (void *)cpath);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lmp__state_close(L);
    return NULL;
  }
  return L;
}

/* os.exit in a child: flush stdio and leave with _exit (never the parent's atexit work). */
static int child_os_exit(lua_State *L) {
  int code;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)lmp_optinteger(L, 1, EXIT_SUCCESS);
  fflush(NULL);
  _exit(code);
  return 0;
}

static int msghandler(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING && !luaL_callmeta(L, 1, "__tostring"))
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, lua_tostring(L, -1), 1);
  return 1;
}

/* Runs `require("lmp.process")._bootstrap(payload, mode)` and returns its exit code. */
static int child_pmain(lua_State *L) {
  lua_getglobal(L, "os");
  lua_pushcfunction(L, child_os_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  for (int i = 0; i < n_state_hooks; i++) state_hooks[i].init(L, state_hooks[i].ud);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lmp.process");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "_bootstrap");
  lua_pushvalue(L, 1); /* payload */
  lua_pushvalue(L, 2); /* mode */
  lua_call(L, 2, 1);
  return 1;
}

_Noreturn void lmp__child_main(const char *payload, size_t n, const char *mode, const char *path,
                               const char *cpath) {
  child_reset();
  lua_State *L = lmp_new_worker_state(path, cpath);
  if (L == NULL) {
    fputs("lmp: cannot create a Lua state in the child\n", stderr);
    _exit(70);
  }
  int code = 1;
  lua_pushcfunction(L, msghandler);
  lua_pushcfunction(L, child_pmain);
  lua_pushlstring(L, payload, n);
  lua_pushstring(L, mode);
  if (lua_pcall(L, 2, 1, 1) == LUA_OK)
    code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  else
    fprintf(stderr, "lmp: child bootstrap failed: %s\n", lua_tostring(L, -1));
  fflush(NULL);
  lmp_children_at_exit(); /* like the parent: our own non-daemon children are waited for */
  _exit(code);
}
