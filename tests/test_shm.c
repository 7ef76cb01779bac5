/*
** test_shm.c — C unit tests of the shared-memory layer: the arena allocator, the futex mutex
** across fork()ed children, fds used by 10,000 objects, a SIGKILLed lock holder, and a queue
** writer SIGKILLed in the middle of a big put.
*/
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lualib.h>

#include "lmp.h"
#include "lmp_shm.h"

int luaopen_lmp_core(lua_State *L);

static int failures;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                     \
    }                                                                 \
  } while (0)

static int fd_count(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the DIR itself */
}

static void test_allocator(void) {
  lmp_shm_obj a, b, c;
  CHECK(lmp_shm_alloc(40, &a) == 0);
  CHECK(lmp_shm_alloc(40, &b) == 0);
  CHECK(a.p != b.p);
  CHECK(((uintptr_t)a.p & 15) == 0);
  memset(a.p, 0xab, 40);
  uint64_t off = b.off;
  lmp_shm_release(&b);
  CHECK(b.arena == NULL);
  lmp_shm_release(&b); /* idempotent */
  CHECK(lmp_shm_alloc(40, &c) == 0);
  CHECK(c.off == off); /* the freed block is reused */
  CHECK(((unsigned char *)c.p)[0] == 0); /* and zeroed */
  lmp_shm_obj big;
  int before = fd_count();
  CHECK(lmp_shm_alloc(3 << 20, &big) == 0); /* its own arena */
  CHECK(fd_count() == before + 1);
  lmp_shm_release(&big);
  CHECK(fd_count() == before); /* unmapped and closed with its last local handle */
  lmp_shm_release(&a);
  lmp_shm_release(&c);
}

static void test_many_objects(void) {
  enum { N = 10000 };
  static lmp_shm_obj objs[N];
  int before = fd_count();
  for (int i = 0; i < N; i++) CHECK(lmp_shm_alloc(48, &objs[i]) == 0);
  int after = fd_count();
  CHECK(after - before <= 2);
  for (int i = 0; i < N; i++) lmp_shm_release(&objs[i]);
}

static void test_mutex_fork(void) {
  enum { CHILDREN = 4, ITER = 100000 };
  lmp_shm_obj o;
  CHECK(lmp_shm_alloc(sizeof(lmp_mutex) + sizeof(long), &o) == 0);
  lmp_mutex *m = o.p;
  volatile long *counter = (long *)((char *)o.p + 8);
  pid_t pids[CHILDREN];
  for (int i = 0; i < CHILDREN; i++) {
    if ((pids[i] = fork()) == 0) {
      for (int k = 0; k < ITER; k++) {
        if (lmp_mutex_lock(NULL, m, -1) != LMP_LOCK_OK) _exit(2);
        long v = *counter;
        *counter = v + 1;
        lmp_mutex_unlock(m);
      }
      _exit(0);
    }
  }
  for (int i = 0; i < CHILDREN; i++) {
    int st;
    waitpid(pids[i], &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  CHECK(*counter == (long)CHILDREN * ITER);
  CHECK(lmp_mutex_lock(NULL, m, 0) == LMP_LOCK_OK);
  CHECK(lmp_mutex_lock(NULL, m, 0.01) == LMP_LOCK_TIMEOUT);
  CHECK(lmp_mutex_unlock(m) == 0);
  CHECK(lmp_mutex_unlock(m) == -1);
  lmp_shm_release(&o);
}

static void test_abandoned(void) {
  lmp_shm_obj o;
  CHECK(lmp_shm_alloc(sizeof(lmp_mutex), &o) == 0);
  lmp_mutex *m = o.p;
  int ready[2];
  CHECK(pipe(ready) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    lmp_mutex_lock(NULL, m, -1);
    if (write(ready[1], "x", 1) != 1) _exit(3);
    pause();
    _exit(0);
  }
  char c;
  CHECK(read(ready[0], &c, 1) == 1);
  CHECK(lmp_mutex_owner(m) == (uint32_t)pid);
  kill(pid, SIGKILL);
  /* not reaped yet: the holder is a zombie, which must count as dead */
  double t0 = lmp_monotonic();
  CHECK(lmp_mutex_lock(NULL, m, 5) == LMP_LOCK_ABANDONED);
  CHECK(lmp_monotonic() - t0 < 1);
  CHECK(lmp_mutex_owner(m) == lmp_tid());
  lmp_mutex_unlock(m);
  waitpid(pid, NULL, 0);
  close(ready[0]);
  close(ready[1]);
  lmp_shm_release(&o);
}

/* Runs Lua code with `q` (a Queue) global; returns its first result as a string (static). */
static const char *run(lua_State *L, const char *code) {
  static char out[256];
  if (luaL_dostring(L, code) != LUA_OK) {
    snprintf(out, sizeof out, "error: %s", luaL_tolstring(L, -1, NULL));
    lua_settop(L, 0);
    return out;
  }
  snprintf(out, sizeof out, "%s", lua_isnone(L, 1) ? "" : luaL_tolstring(L, 1, NULL));
  lua_settop(L, 0);
  return out;
}

static void test_queue_writer_killed(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "core", luaopen_lmp_core, 1);
  lua_pop(L, 1);
  CHECK(strcmp(run(L, "q = core.Queue(); q:_put_bytes('first'); return 'ok'"), "ok") == 0);
  pid_t pid = fork();
  if (pid == 0) {
    /* 3 MiB > the ring: streamed in chunks, blocks when the ring is full */
    run(L, "q:_put_bytes(string.rep('x', 3 << 20))");
    _exit(0);
  }
  usleep(300 * 1000);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  /* the next writer recovers the writer lock and closes the partial item */
  pid = fork();
  if (pid == 0) _exit(strcmp(run(L, "q:_put_bytes('second'); return 'ok'"), "ok") != 0);
  CHECK(strcmp(run(L, "return q:_get_bytes(5)"), "first") == 0);
  CHECK(strcmp(run(L, "return q:_get_bytes(5)"), "second") == 0);
  CHECK(strncmp(run(L, "return q:_get_bytes(0.05)"), "error: Empty", 12) == 0);
  int st;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);

  /* a writer killed with a partial item and no other writer: the reader closes it */
  pid = fork();
  if (pid == 0) {
    run(L, "q:_put_bytes(string.rep('y', 3 << 20))");
    _exit(0);
  }
  usleep(300 * 1000);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  CHECK(strcmp(run(L, "local ok, e = pcall(q._get_bytes, q, 1); return tostring(e)"),
               "Empty: queue is empty") == 0);
  CHECK(strcmp(run(L, "q:_put_bytes('third'); return q:_get_bytes(1)"), "third") == 0);
  lua_close(L);
}

int main(void) {
  test_allocator();
  test_many_objects();
  test_mutex_fork();
  test_abandoned();
  test_queue_writer_killed();
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures != 0;
}
