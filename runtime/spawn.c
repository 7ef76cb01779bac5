/*
** spawn.c — the "spawn" start method: the child is forked and at once execs a fresh lmp
** program in worker mode (`lmp --lmp-worker <memfd> <parent pid>`), which reads its payload,
** package paths and codec key from the memfd. For hosts with threads, where fork alone is
** unsafe. The spawned program starts its own children with "spawn" too.
** Caveat: between fork and exec only raw system calls run (a multithreaded host must not
** allocate there).
*/
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bytes.h"
#include "lmp.h"
#include "child.h"
#include "children.h"
#include "codec.h"
#include "spawn.h"

static int spawn_method; /* set_start_method("spawn"), or a spawned program */
static int self_serves;  /* lmp_worker_main ran: this very binary can serve as the worker */

int lmp_start_method_spawn(void) { return spawn_method; }

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

/* ---- the payload memfd: the codec key (LMP_CODEC_KEY_BYTES), then parts [len u32 LE | bytes] ---- */

static int put_part(int fd, const void *s, size_t n) {
  char len[4];
  lmp_put_le32(len, (uint32_t)n);
  return (write(fd, len, 4) == 4 && write(fd, s, n) == (ssize_t)n) ? 0 : -1;
}

int lmp__spawn_payload(const char *payload, size_t n, const char *mode, const char *path,
                       const char *cpath) {
  int fd = memfd_create("lmp-spawn", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (write(fd, lmp__codec_key(), LMP_CODEC_KEY_BYTES) != LMP_CODEC_KEY_BYTES || put_part(fd, path ? path : "", path ? strlen(path) : 0) ||
      put_part(fd, cpath ? cpath : "", cpath ? strlen(cpath) : 0) ||
      put_part(fd, mode, strlen(mode)) || put_part(fd, payload, n)) {
    close(fd);
    return -1;
  }
  return fd;
}

static int get_part(const char **p, const char *end, const char **s, size_t *n) {
  if (end - *p < 4) return -1;
  size_t len = lmp_get_le32(*p);
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

/* ---- between fork and exec ---- */

/* Lets the new program keep this process's descriptors, as a forked child would: handles
** (Pipe ends, shared-memory arenas) in the payload refer to them by number. lmp's own are
** closed first. Raw system calls only. */
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

_Noreturn void lmp__spawn_exec(int memfd, int keep_fd) {
  lmp__child_signals();
  keep_descriptors_across_exec();
  fcntl(memfd, F_SETFD, 0);
  if (keep_fd >= 0) fcntl(keep_fd, F_SETFD, 0);
  char fdarg[16], ppidarg[16];
  snprintf(fdarg, sizeof fdarg, "%d", memfd);
  snprintf(ppidarg, sizeof ppidarg, "%d", (int)lmp__parent_pid());
  const char *exe = worker_executable();
  char *argv[] = {(char *)"lmp", (char *)"--lmp-worker", fdarg, ppidarg, NULL};
  execv(exe, argv);
  fprintf(stderr, "lmp: cannot run the worker executable %s: %s\n", exe, strerror(errno));
  _exit(127);
}

/* ---- the spawned program ---- */

int lmp__spawn_serve(int argc, char **argv) {
  self_serves = 1;
  if (argc < 4 || strcmp(argv[1], "--lmp-worker") != 0) return 0;
  int fd = atoi(argv[2]);
  lmp__set_parent_pid((pid_t)atoi(argv[3]));
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < LMP_CODEC_KEY_BYTES) _exit(70);
  char *buf = malloc((size_t)st.st_size);
  if (buf == NULL || pread(fd, buf, (size_t)st.st_size, 0) != st.st_size) _exit(70);
  close(fd);
  const char *p = buf + LMP_CODEC_KEY_BYTES, *end = buf + st.st_size, *path, *cpath, *mode, *payload;
  size_t np, nc, nm, n;
  if (get_part(&p, end, &path, &np) || get_part(&p, end, &cpath, &nc) ||
      get_part(&p, end, &mode, &nm) || get_part(&p, end, &payload, &n))
    _exit(70);
  lmp__codec_set_key((const unsigned char *)buf);
  spawn_method = 1; /* a spawned program starts its own children the same way */
  lmp__child_main(payload, n, dup_part(mode, nm), dup_part(path, np), dup_part(cpath, nc));
}

/* ---- Lua functions ---- */

static const char *const method_names[] = {"fork", "spawn", NULL};

/* set_start_method("fork" | "spawn") */
static int l_set_start_method(lua_State *L) {
  const char *name = lmp_checklstring(L, 1, NULL);
  lmp_checknargs(L, 1);
  for (int i = 0; method_names[i] != NULL; i++)
    if (strcmp(name, method_names[i]) == 0) {
      spawn_method = i;
      return 0;
    }
  return lmp_argerror(L, 1, "ValueError", "\"fork\" or \"spawn\" expected, got %s",
                      lmp_pushdescribe(L, 1));
}

/* get_start_method() -> "fork" | "spawn" */
static int l_get_start_method(lua_State *L) {
  lmp_checknargs(L, 0);
  lua_pushstring(L, method_names[spawn_method]);
  return 1;
}

void lmp__open_spawn(lua_State *L) {
  lua_pushcfunction(L, l_set_start_method);
  lua_setfield(L, -2, "set_start_method");
  lua_pushcfunction(L, l_get_start_method);
  lua_setfield(L, -2, "get_start_method");
}
