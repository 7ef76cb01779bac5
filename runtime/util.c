/*
** util.c — small shared pieces: byte buffers, fd vectors, clocks, owned fds, and the module
** functions that need nothing else (cpu_count, getpid, time...).
*/
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

#include "lmp_int.h"

int lmp_buf_reserve(lmp_buf *b, size_t n) {
  if (b->cap - b->len >= n) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < n) {
    if (cap > ((size_t)-1) / 2) return -1;
    cap *= 2;
  }
  char *p = realloc(b->p, cap);
  if (p == NULL) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

int lmp_buf_add(lmp_buf *b, const void *s, size_t n) {
  if (n == 0) return 0;
  if (lmp_buf_reserve(b, n) != 0) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

void lmp_buf_free(lmp_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

int lmp_fdvec_push(lmp_fdvec *v, int fd) {
  if (v->n == v->cap) {
    int cap = v->cap ? v->cap * 2 : 4;
    int *p = realloc(v->fd, (size_t)cap * sizeof *p);
    if (p == NULL) return -1;
    v->fd = p;
    v->cap = cap;
  }
  v->fd[v->n++] = fd;
  return 0;
}

void lmp_fdvec_free(lmp_fdvec *v) {
  free(v->fd);
  v->fd = NULL;
  v->n = v->cap = 0;
}

/* ---- clocks ---- */

double lmp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double lmp_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- fds owned by lmp in this process: a child closes them after fork ---- */

static int *owned;
static int n_owned, cap_owned;

void lmp_fd_own(int fd) {
  if (n_owned == cap_owned) {
    int cap = cap_owned ? cap_owned * 2 : 16;
    int *p = realloc(owned, (size_t)cap * sizeof *p);
    if (p == NULL) return; /* the fd merely leaks into children */
    owned = p;
    cap_owned = cap;
  }
  owned[n_owned++] = fd;
}

void lmp_fd_disown(int fd) {
  for (int i = 0; i < n_owned; i++)
    if (owned[i] == fd) {
      owned[i] = owned[--n_owned];
      return;
    }
}

void lmp_fd_close_owned_in_child(void) {
  for (int i = 0; i < n_owned; i++) close(owned[i]);
  n_owned = 0;
}

/* ---- the standard descriptors ---- */

/* Opens /dev/null onto whichever of descriptors 0, 1 and 2 is closed, so that no descriptor
** lmp makes lands there: libuv aborts when it closes one of them (its loop's epoll fd taking
** fd 0 when stdin is closed), and a pipe on fd 1 would receive what print() writes. It is
** opened the wrong way round (stdin write-only, stdout and stderr read-only), so that using
** the descriptor still fails with EBADF as a closed one does: results written to a closed
** stdout are an error, never silently thrown away. */
void lmp__std_fds_open(void) {
  for (int fd = 0; fd <= STDERR_FILENO; fd++) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    int nfd;
    do nfd = open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY);
    while (nfd < 0 && errno == EINTR);
    if (nfd < 0) return; /* no /dev/null: nothing better to put there */
    if (nfd != fd) { /* cannot happen (the lowest free one is fd), but be sure */
      dup2(nfd, fd);
      close(nfd);
    }
  }
}

/* ---- module functions ---- */

static int l_cpu_count(lua_State *L) {
  lmp_checknargs(L, 0);
  cpu_set_t set;
  long n = -1;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static int l_getpid(lua_State *L) {
  lmp_checknargs(L, 0);
  lua_pushinteger(L, getpid());
  return 1;
}

static int l_getppid(lua_State *L) {
  lmp_checknargs(L, 0);
  lua_pushinteger(L, getppid());
  return 1;
}

static int l_time(lua_State *L) {
  lmp_checknargs(L, 0);
  lua_pushnumber(L, lmp_now());
  return 1;
}

static int l_monotonic(lua_State *L) {
  lmp_checknargs(L, 0);
  lua_pushnumber(L, lmp_monotonic());
  return 1;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_error(lua_State *L) {
  const char *type = luaL_checkstring(L, 1);
  const char *msg = luaL_optstring(L, 2, "");
  lmp_error_push(L, type, msg);
  return 1;
}

void lmp__open_util(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"cpu_count", l_cpu_count}, {"getpid", l_getpid},       {"getppid", l_getppid},
      {"time", l_time},           {"monotonic", l_monotonic},
      {"error", l_error},         {"isatty", l_isatty},       {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lmp__error_metatable(L);
  lua_setfield(L, -2, "Error");
}
