/*
** process.c — forking children that each run a fresh Lua state, and the table of children.
** The child closes what lmp owns in the parent, resets signals, ignores SIGINT (the parent
** decides what Ctrl-C means), dies with its parent (PR_SET_PDEATHSIG), builds a new
** lua_State and runs `lmp.process`'s bootstrap on the payload; it leaves with _exit.
** Caveats: only children started here are ever reaped (waitpid on their pids, never -1), so
** io.popen and os.execute keep working. The child never touches the parent's Lua state.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#include "lmp.h"
#include "lmp_int.h"
#include "loop.h"
#include "codec.h"

/* ---- the children table (per process; a forked child starts with an empty one) ---- */

typedef struct child {
  pid_t pid;
  int status;      /* waitpid status, valid when reaped */
  int reaped;
  int daemon;
  lmp_child_exit_fn on_exit;
  void *ud;
  int forget;      /* drop the entry once reaped (a watched child: its owner has been told) */
} child;

static child *children;
static int n_children, cap_children;

static child *find_child(pid_t pid) {
  for (int i = 0; i < n_children; i++)
    if (children[i].pid == pid) return &children[i];
  return NULL;
}

static int add_child(pid_t pid, int daemon) {
  if (n_children == cap_children) {
    int cap = cap_children ? cap_children * 2 : 16;
    child *p = realloc(children, (size_t)cap * sizeof *p);
    if (p == NULL) return -1;
    children = p;
    cap_children = cap;
  }
  children[n_children++] = (child){.pid = pid, .daemon = daemon};
  return 0;
}

static void forget_child(pid_t pid) {
  for (int i = 0; i < n_children; i++)
    if (children[i].pid == pid) {
      children[i] = children[--n_children];
      return;
    }
}

/* Reaps c if it has exited; returns 1 when it is (now or already) reaped. */
static int reap_one(child *c) {
  if (c->reaped) return 1;
  int st;
  pid_t r;
  do r = waitpid(c->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return 0;
  c->status = (r == c->pid) ? st : 0; /* ECHILD: someone else reaped it; call it success */
  c->reaped = 1;
  return 1;
}

/* Reaps what has exited, then tells the watchers. The table is settled before any
** callback runs, since a callback may start a replacement child. */
void lmp_children_reap(void) {
  struct note { lmp_child_exit_fn fn; void *ud; pid_t pid; int code; } notes[64];
  int more = 1;
  while (more) {
    int nn = 0, j = 0;
    more = 0;
    for (int i = 0; i < n_children; i++) {
      child *c = &children[i];
      reap_one(c);
      if (c->reaped && c->forget) {
        if (c->on_exit != NULL) {
          if (nn == 64) { /* tell these first, come back for the rest */
            more = 1;
            children[j++] = *c;
            continue;
          }
          notes[nn++] = (struct note){c->on_exit, c->ud, c->pid, lmp_exitcode(c->status)};
        }
        continue;
      }
      children[j++] = *c;
    }
    n_children = j;
    for (int i = 0; i < nn; i++) notes[i].fn(notes[i].ud, notes[i].pid, notes[i].code);
  }
}

int lmp_exitcode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 0;
}

int lmp_child_watch(pid_t pid, lmp_child_exit_fn fn, void *ud) {
  child *c = find_child(pid);
  if (c == NULL) return -1;
  c->on_exit = fn;
  c->ud = ud;
  c->forget = 1;
  return 0;
}

void lmp_children_at_exit(void) {
  for (int i = 0; i < n_children; i++) {
    child *c = &children[i];
    c->on_exit = NULL;
    if (!c->reaped && c->daemon) kill(c->pid, SIGTERM);
  }
  for (int i = 0; i < n_children; i++) {
    child *c = &children[i];
    if (c->reaped) continue;
    int st;
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR) {}
    c->reaped = 1;
  }
  n_children = 0;
}

static void at_exit(void) { lmp_children_at_exit(); }

/* ---- host hooks ---- */

typedef struct hook {
  lmp_fork_hook prepare, parent, child;
  lmp_state_init init;
  void *ud;
} hook;

static hook fork_hooks[16], state_hooks[16];
static int n_fork_hooks, n_state_hooks;

int lmp_atfork(lmp_fork_hook prepare, lmp_fork_hook parent, lmp_fork_hook child, void *ud) {
  if (n_fork_hooks == 16) return -1;
  fork_hooks[n_fork_hooks++] = (hook){prepare, parent, child, NULL, ud};
  return 0;
}

int lmp_on_worker_state(lmp_state_init fn, void *ud) {
  if (n_state_hooks == 16) return -1;
  state_hooks[n_state_hooks++] = (hook){NULL, NULL, NULL, fn, ud};
  return 0;
}

/* ---- the child side ---- */

static pid_t parent_pid;
static int is_child;

/* A new child's signals and parent death: default dispositions but SIGINT (the parent decides
** what Ctrl-C means) and SIGPIPE ignored, nothing blocked, killed when the parent dies. Exec
** keeps all of it, so the spawn method relies on it too. */
static void child_signals(void) {
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

/* Puts a freshly forked child in order: signals, parent death, fds, tables. */
static void child_reset(void) {
  child_signals();
  lmp_fd_close_owned_in_child();
  n_children = 0; /* the parent's children are not ours */
  is_child = 1;
  for (int i = 0; i < n_fork_hooks; i++)
    if (fork_hooks[i].child) fork_hooks[i].child(fork_hooks[i].ud);
}

/* os.exit in a child: flush stdio and leave with _exit (never the parent's atexit work). */
static int child_os_exit(lua_State *L) {
  int code;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
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

/* Runs `require("lmp.process")._bootstrap(payload)` and returns its exit code. */
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

/* Never returns: serves the payload in a fresh state and exits. */
static void child_main(const char *payload, size_t n, const char *mode, const char *path,
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
    code = (int)luaL_optinteger(L, -1, 0);
  else
    fprintf(stderr, "lmp: child bootstrap failed: %s\n", lua_tostring(L, -1));
  fflush(NULL);
  lmp_children_at_exit(); /* like the parent: our own non-daemon children are waited for */
  _exit(code);
}

/* ---- the "spawn" start method: fork, then exec a fresh lmp process ---- */

static int spawn_method; /* set_start_method("spawn") */
static int self_serves;  /* lmp_worker_main ran: this very binary can serve as the worker */

/* The program a spawned child runs: this binary when it serves (lmp, or a host whose main
** calls lmp_worker_main), else $LMP_EXECUTABLE, else the lmp that was built or installed. */
static const char *worker_executable(void) {
  if (self_serves) return "/proc/self/exe";
  const char *e = getenv("LMP_EXECUTABLE");
  if (e != NULL && *e) return e;
#ifdef LMP_BUILD_EXE
  if (access(LMP_BUILD_EXE, X_OK) == 0) return LMP_BUILD_EXE;
#endif
#ifdef LMP_INSTALLED_EXE
  return LMP_INSTALLED_EXE;
#else
  return "lmp";
#endif
}

static int put_part(int fd, const void *s, size_t n) {
  char len[4];
  for (int i = 0; i < 4; i++) len[i] = (char)(n >> (8 * i));
  return (write(fd, len, 4) == 4 && write(fd, s, n) == (ssize_t)n) ? 0 : -1;
}

/* Writes what a spawned child needs into a memfd: the codec key, the package paths, the
** mode and the payload. Returns the fd (close-on-exec until the child clears it), or -1. */
static int spawn_payload(const char *payload, size_t n, const char *mode, const char *path,
                         const char *cpath) {
  int fd = memfd_create("lmp-spawn", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (write(fd, lmp__codec_key(), LMP_CODEC_KEY_BYTES) != LMP_CODEC_KEY_BYTES ||
      put_part(fd, path ? path : "", path ? strlen(path) : 0) ||
      put_part(fd, cpath ? cpath : "", cpath ? strlen(cpath) : 0) ||
      put_part(fd, mode, strlen(mode)) || put_part(fd, payload, n)) {
    close(fd);
    return -1;
  }
  return fd;
}

/* In the forked child: signals and parent death (exec keeps them), the two descriptors the
** new program needs, exec. */
/* Lets the new program keep this process's descriptors, as a forked child would: handles
** (Pipe ends, shared-memory arenas) in the payload refer to them by number. lmp's own are
** closed first. Raw system calls only: this runs between fork and exec, where a
** multithreaded host must not allocate. */
static void keep_descriptors_across_exec(void) {
  lmp_fd_close_owned_in_child();
  int dir = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  char buf[4096];
  long n;
  while ((n = syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0) {
    for (long off = 0; off < n;) {
      struct linux_dirent64 {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[];
      } *d = (void *)(buf + off);
      int fd = 0, digits = 0;
      for (const char *c = d->name; *c >= '0' && *c <= '9'; c++, digits++) fd = fd * 10 + (*c - '0');
      if (digits > 0 && fd > 2 && fd != dir) fcntl(fd, F_SETFD, 0);
      off += d->reclen;
    }
  }
  close(dir);
}

static void spawn_exec(int memfd, int keep_fd) {
  child_signals();
  keep_descriptors_across_exec();
  fcntl(memfd, F_SETFD, 0);
  if (keep_fd >= 0) fcntl(keep_fd, F_SETFD, 0);
  char fdarg[16], ppidarg[16];
  snprintf(fdarg, sizeof fdarg, "%d", memfd);
  snprintf(ppidarg, sizeof ppidarg, "%d", (int)parent_pid);
  const char *exe = worker_executable();
  char *argv[] = {(char *)"lmp", (char *)"--lmp-worker", fdarg, ppidarg, NULL};
  execv(exe, argv);
  fprintf(stderr, "lmp: cannot run the worker executable %s: %s\n", exe, strerror(errno));
  _exit(127);
}

static int get_part(const char **p, const char *end, const char **s, size_t *n) {
  if (end - *p < 4) return -1;
  size_t len = 0;
  for (int i = 0; i < 4; i++) len |= (size_t)(unsigned char)(*p)[i] << (8 * i);
  *p += 4;
  if ((size_t)(end - *p) < len) return -1;
  *s = *p;
  *n = len;
  *p += len;
  return 0;
}

/* Copies a part into a fresh NUL-terminated string (NULL when empty). */
static char *dup_part(const char *s, size_t n) {
  if (n == 0) return NULL;
  char *d = malloc(n + 1);
  if (d == NULL) _exit(70);
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

int lmp_worker_main(int argc, char **argv) {
  self_serves = 1;
  if (argc < 4 || strcmp(argv[1], "--lmp-worker") != 0) return 0;
  int fd = atoi(argv[2]);
  parent_pid = (pid_t)atoi(argv[3]);
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < LMP_CODEC_KEY_BYTES) _exit(70);
  char *buf = malloc((size_t)st.st_size);
  if (buf == NULL || pread(fd, buf, (size_t)st.st_size, 0) != st.st_size) _exit(70);
  close(fd);
  const char *p = buf + LMP_CODEC_KEY_BYTES, *end = buf + st.st_size;
  const char *path, *cpath, *mode, *payload;
  size_t np, nc, nm, n;
  if (get_part(&p, end, &path, &np) || get_part(&p, end, &cpath, &nc) ||
      get_part(&p, end, &mode, &nm) || get_part(&p, end, &payload, &n))
    _exit(70);
  lmp__codec_set_key((const unsigned char *)buf);
  child_main(payload, n, dup_part(mode, nm), dup_part(path, np), dup_part(cpath, nc));
  return 70; /* not reached */
}

int lmp_start_method_spawn(void) { return spawn_method; }

/* set_start_method("fork" | "spawn") */
static int l_set_start_method(lua_State *L) {
  static const char *const names[] = {"fork", "spawn", NULL};
  spawn_method = luaL_checkoption(L, 1, NULL, names);
  return 0;
}

/* Reads package.<field> of L (a string owned by L, valid in a forked child), or NULL. */
static const char *package_field(lua_State *L, const char *field) {
  lua_getglobal(L, "package");
  const char *s = lua_istable(L, -1) ? (lua_getfield(L, -1, field), lua_tostring(L, -1)) : NULL;
  return s; /* left on the stack on purpose: keeps the string alive until fork returns */
}

pid_t lmp_fork_child(lua_State *L, const char *payload, size_t n, const char *mode,
                     int daemon, int keep_fd) {
  int top = lua_gettop(L);
  lmp_loop_get(L); /* SIGCHLD is watched before the first child can exit */
  const char *path = package_field(L, "path");
  const char *cpath = package_field(L, "cpath");
  if (!is_child && parent_pid == 0) atexit(at_exit);
  int memfd = -1;
  if (spawn_method && (memfd = spawn_payload(payload, n, mode, path, cpath)) < 0) {
    lua_settop(L, top);
    return -1;
  }
  if (add_child(0, daemon) != 0) {
    lua_settop(L, top);
    errno = ENOMEM;
    return -1;
  }
  for (int i = 0; i < n_fork_hooks; i++)
    if (fork_hooks[i].prepare) fork_hooks[i].prepare(fork_hooks[i].ud);
  fflush(NULL); /* no buffered output is written twice */
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old); /* no handler of ours runs in the child */
  parent_pid = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    if (spawn_method) spawn_exec(memfd, keep_fd);
    child_main(payload, n, mode, path, cpath);
  }
  int err = errno;
  if (memfd >= 0) close(memfd);
  sigprocmask(SIG_SETMASK, &old, NULL);
  for (int i = 0; i < n_fork_hooks; i++)
    if (fork_hooks[i].parent) fork_hooks[i].parent(fork_hooks[i].ud);
  lua_settop(L, top);
  if (pid < 0) {
    n_children--;
    errno = err;
    return -1;
  }
  children[n_children - 1].pid = pid;
  return pid;
}

/* ---- Lua functions ---- */

/* fork(payload, mode, daemon) -> pid | nil, message */
static int l_fork(lua_State *L) {
  size_t n;
  const char *payload = luaL_checklstring(L, 1, &n);
  const char *mode = luaL_checkstring(L, 2);
  int daemon = lua_toboolean(L, 3);
  pid_t pid = lmp_fork_child(L, payload, n, mode, daemon, -1);
  if (pid < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot fork: %s", strerror(errno));
    return 2;
  }
  lua_pushinteger(L, pid);
  return 1;
}

static child *check_child(lua_State *L, int arg) {
  child *c = find_child((pid_t)luaL_checkinteger(L, arg));
  if (c == NULL) luaL_argerror(L, arg, "not a child started by lmp");
  return c;
}

/* status(pid) -> exitcode, or nil while the child runs */
static int l_status(lua_State *L) {
  child *c = check_child(L, 1);
  if (!reap_one(c)) return 0;
  lua_pushinteger(L, lmp_exitcode(c->status));
  return 1;
}

static int child_done(lua_State *L, void *ud) {
  child *c = find_child(*(pid_t *)ud);
  return c == NULL || reap_one(c);
}

/* join(pid [, timeout]) -> exitcode, or nil when the timeout passed first */
static int l_join(lua_State *L) {
  pid_t pid = check_child(L, 1)->pid;
  double timeout = luaL_optnumber(L, 2, -1);
  if (lua_isnoneornil(L, 2)) timeout = -1;
  else if (timeout < 0) timeout = 0;
  if (!lmp_loop_wait(L, child_done, &pid, timeout)) return 0;
  child *c = find_child(pid);
  if (c == NULL) return 0;
  lua_pushinteger(L, lmp_exitcode(c->status));
  return 1;
}

/* signal(pid, signum) -> true | false (already exited) */
static int l_signal(lua_State *L) {
  child *c = check_child(L, 1);
  int sig = (int)luaL_checkinteger(L, 2);
  if (reap_one(c)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, kill(c->pid, sig) == 0);
  return 1;
}

/* forget(pid): drops a reaped child from the table. */
static int l_forget(lua_State *L) {
  child *c = check_child(L, 1);
  if (!reap_one(c)) return luaL_error(L, "child %d is still running", (int)c->pid);
  forget_child(c->pid);
  return 0;
}

static int l_pid_alive(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  lua_pushboolean(L, pid > 0 && (kill(pid, 0) == 0 || errno == EPERM));
  return 1;
}

void lmp__open_process(lua_State *L) {
  static const luaL_Reg fns[] = {{"fork", l_fork},         {"status", l_status},
                                 {"join", l_join},         {"signal", l_signal},
                                 {"forget", l_forget},
                                 {"pid_alive", l_pid_alive},
                                 {"set_start_method", l_set_start_method}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
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
