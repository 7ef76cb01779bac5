/*
** process.c — starting children: lmp_fork_child (fork, or fork + exec with the spawn start
** method) and the Lua functions of lmp.core over the children table (fork, status, join,
** signal, forget, detach).
** Caveat: the parent flushes stdio and blocks every signal around fork, so no buffered
** output is written twice and no handler of ours runs in the child before it resets them.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lmp.h"
#include "child.h"
#include "children.h"
#include "loop.h"
#include "spawn.h"

static void at_exit(void) { lmp_children_at_exit(); }

/* Reads package.<field> of L (a string owned by L, valid in a forked child), or NULL. */
static const char *package_field(lua_State *L, const char *field) {
  lua_getglobal(L, "package");
  const char *s = lua_istable(L, -1) ? (lua_getfield(L, -1, field), lua_tostring(L, -1)) : NULL;
  return s; /* left on the stack on purpose: keeps the string alive until fork returns */
}

pid_t lmp_fork_with(const char *path, const char *cpath, const char *payload, size_t n,
                    const char *mode, int daemon, int keep_fd) {
  if (lmp__parent_pid() == 0) atexit(at_exit); /* the first fork of a process no lmp started */
  int spawn = lmp_start_method_spawn(), memfd = -1;
  if (spawn && (memfd = lmp__spawn_payload(payload, n, mode, path, cpath)) < 0) return -1;
  if (lmp__child_reserve(daemon) != 0) {
    if (memfd >= 0) close(memfd);
    errno = ENOMEM;
    return -1;
  }
  lmp__run_fork_hooks(0);
  fflush(NULL); /* no buffered output is written twice */
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old); /* no handler of ours runs in the child */
  lmp__set_parent_pid(getpid());
  pid_t pid = fork();
  if (pid == 0) {
    if (spawn) lmp__spawn_exec(memfd, keep_fd);
    lmp__child_main(payload, n, mode, path, cpath);
  }
  int err = errno;
  if (memfd >= 0) close(memfd);
  sigprocmask(SIG_SETMASK, &old, NULL);
  lmp__run_fork_hooks(1);
  lmp__child_commit(pid);
  if (pid < 0) {
    errno = err;
    return -1;
  }
  return pid;
}

pid_t lmp_fork_child(lua_State *L, const char *payload, size_t n, const char *mode,
                     int daemon, int keep_fd) {
  int top = lua_gettop(L);
  lmp_loop_get(L); /* SIGCHLD is watched before the first child can exit */
  const char *path = package_field(L, "path"); /* Lua strings, kept on the stack meanwhile */
  const char *cpath = package_field(L, "cpath");
  pid_t pid = lmp_fork_with(path, cpath, payload, n, mode, daemon, keep_fd);
  int err = errno;
  lua_settop(L, top);
  errno = err;
  return pid;
}

/* ---- Lua functions ---- */

/* fork(payload, mode, daemon) -> pid | nil, message */
static int l_fork(lua_State *L) {
  size_t n;
  const char *payload = lmp_checklstring(L, 1, &n);
  const char *mode = lmp_checklstring(L, 2, NULL);
  int daemon = lua_toboolean(L, 3);
  pid_t pid = lmp_fork_child(L, payload, n, mode, daemon, -1);
  if (pid < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot start a process: %s", strerror(errno));
    return 2;
  }
  lua_pushinteger(L, pid);
  return 1;
}

static pid_t check_pid(lua_State *L, int arg) {
  lua_Integer pid = lmp_checkinteger(L, arg);
  if (pid <= 0 || pid > INT32_MAX)
    lmp_argerror(L, arg, "ValueError", "not a process id: %I", (LUAI_UACINT)pid);
  return (pid_t)pid;
}

static int not_ours(lua_State *L, pid_t pid) {
  return lmp_raise(L, "ValueError", "process %d is not a child started by lmp (or its exit "
                   "code was already taken)", (int)pid);
}

/* status(pid) -> exitcode, or nothing while the child runs. Once the exit code is returned
** the child leaves the table: the caller keeps the code. */
static int l_status(lua_State *L) {
  pid_t pid = check_pid(L, 1);
  int code, r = lmp__child_take_status(pid, &code);
  if (r < 0) return not_ours(L, pid);
  if (r == 0) return 0;
  lua_pushinteger(L, code);
  return 1;
}

static int child_done(lua_State *L, void *ud) { return lmp__child_exited(*(pid_t *)ud); }

/* join(pid [, timeout]) -> exitcode, or nothing when the timeout passed first. Like status,
** a returned exit code is handed over. */
static int l_join(lua_State *L) {
  pid_t pid = check_pid(L, 1);
  double timeout = lmp_checktimeout(L, 2);
  int code;
  if (lmp__child_take_status(pid, &code) == 1) goto done;
  if (!lmp__child_exited(pid) && !lmp_loop_wait(L, child_done, &pid, timeout)) return 0;
  if (lmp__child_take_status(pid, &code) != 1) return not_ours(L, pid);
done:
  lua_pushinteger(L, code);
  return 1;
}

/* signal(pid, signum) -> true | false (already exited) */
static int l_signal(lua_State *L) {
  pid_t pid = check_pid(L, 1);
  int sig = (int)lmp_checkinteger(L, 2);
  int r = lmp__child_signal(pid, sig);
  if (r < 0) return not_ours(L, pid);
  lua_pushboolean(L, r);
  return 1;
}

/* detach(pid): nobody will ask for this child's exit (its Process object was collected):
** its entry goes as soon as it is reaped. At exit it is still waited for. */
static int l_detach(lua_State *L) {
  lmp_child_watch(check_pid(L, 1), NULL, NULL);
  return 0;
}

/* children_stats() -> entries in the children table */
static int l_children_stats(lua_State *L) {
  lua_pushinteger(L, lmp__children_count());
  return 1;
}

static int l_pid_alive(lua_State *L) {
  pid_t pid = check_pid(L, 1);
  lua_pushboolean(L, kill(pid, 0) == 0 || errno == EPERM);
  return 1;
}

void lmp__open_process(lua_State *L) {
  static const luaL_Reg fns[] = {{"fork", l_fork},     {"status", l_status},
                                 {"join", l_join},     {"signal", l_signal},
                                 {"detach", l_detach}, {"pid_alive", l_pid_alive},
                                 {"children_stats", l_children_stats},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lmp__open_spawn(L);
  static const struct { const char *name; int sig; } sigs[] = {
      {"SIGTERM", SIGTERM}, {"SIGKILL", SIGKILL}, {"SIGINT", SIGINT},
      {"SIGSEGV", SIGSEGV}, {"SIGHUP", SIGHUP},   {"SIGUSR1", SIGUSR1}};
  lua_createtable(L, 0, 6);
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    lua_pushinteger(L, sigs[i].sig);
    lua_setfield(L, -2, sigs[i].name);
  }
  lua_setfield(L, -2, "signals");
}
