/*
** futex.c — the waiting machinery under the shared-memory objects: futex wait/wake on shared
** words, cached thread ids, owner-death checks, deadlines sliced around the parent's loop, and
** the owner-checked mutex every lock and queue is built on.
** Caveat: owners are thread ids; a dead owner is noticed only on a waiter's slice timeout.
*/
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lmp_shm.h"

/* The loop's tick (loop.c registers it when lmp.core opens): runs ready loop work, raises
** InterruptedError after Ctrl-C and ValueError inside a callback, returns the longest sleep. */
static lmp_tick_fn tick_hook;

void lmp_set_tick_hook(lmp_tick_fn fn) { tick_hook = fn; }

static double run_tick(lua_State *L) { return tick_hook ? tick_hook(L) : 0.05; }

/* ---- futexes, thread ids, deadlines ---- */

int lmp_futex_wait(uint32_t *w, uint32_t val, double secs) {
  struct timespec ts;
  if (!(secs > 0)) secs = 0; /* NaN too */
  if (secs > 3600) secs = 3600; /* callers wait in slices; never hand the kernel an overflow */
  ts.tv_sec = (time_t)secs;
  ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
  if (syscall(SYS_futex, w, FUTEX_WAIT, val, &ts, NULL, 0) == 0) return 0;
  return errno == EAGAIN ? 0 : errno;
}

void lmp_futex_wake(uint32_t *w, int n) { syscall(SYS_futex, w, FUTEX_WAKE, n, NULL, NULL, 0); }

static __thread uint32_t cached_tid __attribute__((tls_model("initial-exec")));

static void forget_tid(void) { cached_tid = 0; }

static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_tid); }

uint32_t lmp_tid(void) {
  if (cached_tid == 0) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_atfork); /* a forked child must not keep its parent's id */
    cached_tid = (uint32_t)syscall(SYS_gettid);
  }
  return cached_tid;
}

/* The last owner seen alive, and when (monotonic seconds): a try-lock in a loop must not read
** /proc on every call, and a death is still noticed within ALIVE_TTL. */
#define ALIVE_TTL 0.002
static __thread uint32_t alive_tid;
static __thread double alive_at;

int lmp_owner_dead(uint32_t tid) {
  if (tid == 0) return 0;
  if (kill((pid_t)tid, 0) != 0) return errno == ESRCH;
  double now = lmp_monotonic();
  if (tid == alive_tid && now - alive_at < ALIVE_TTL) return 0;
  /* a killed child stays a zombie until reaped: look at its state */
  char path[48], buf[256];
  snprintf(path, sizeof path, "/proc/%u/stat", tid);
  FILE *f = fopen(path, "re");
  if (f == NULL) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  int dead = p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
  if (!dead) alive_tid = tid, alive_at = now;
  return dead;
}

void lmp_deadline_init(lmp_deadline *d, double timeout) {
  d->forever = timeout < 0;
  d->end = d->forever ? 0 : lmp_monotonic() + timeout;
}

double lmp_deadline_slice(lua_State *L, lmp_deadline *d, double cap) {
  double rem = d->forever ? cap : d->end - lmp_monotonic();
  if (rem <= 0) return -1; /* over: no tick, so a wait that never sleeps never raises */
  double s = L ? run_tick(L) : cap;
  if (s > cap || s < 0) s = cap;
  if (rem < s) s = rem;
  return s;
}

static int tick(lua_State *L) {
  lua_pushnumber(L, run_tick(L));
  return 1;
}

int lmp_safe_tick(lua_State *L, double *slice) {
  lua_pushcfunction(L, tick);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) return -2;
  double t = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (t >= 0 && t < *slice) *slice = t;
  return 0;
}

/* ---- the owner-checked mutex ---- */

#define SPIN 1000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static int cas32(uint32_t *w, uint32_t expect, uint32_t desired) {
  return __atomic_compare_exchange_n(w, &expect, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

uint32_t lmp_mutex_owner(const lmp_mutex *m) { return __atomic_load_n(&m->word, __ATOMIC_RELAXED); }

/* Sleepers are counted apart from the owner word so that a release only makes a system call
** when someone sleeps (a "waiters" bit in the word would stay set after they left). */
int lmp_mutex_lock(lua_State *L, lmp_mutex *m, double timeout) {
  uint32_t me = lmp_tid(), v;
  if (cas32(&m->word, 0, me)) return LMP_LOCK_OK;
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  for (int i = 0; i < SPIN && timeout != 0; i++) {
    cpu_relax();
    if (__atomic_load_n(&m->word, __ATOMIC_RELAXED) == 0 && cas32(&m->word, 0, me))
      return LMP_LOCK_OK;
    if ((i & 255) == 255 && !d.forever && lmp_monotonic() >= d.end) break; /* a short wait */
  }
  int check = timeout == 0;
  double cap = 0.005;
  for (;;) {
    v = __atomic_load_n(&m->word, __ATOMIC_SEQ_CST);
    if (v == 0) {
      if (cas32(&m->word, 0, me)) return LMP_LOCK_OK;
      continue;
    }
    if (check) {
      check = 0;
      if (lmp_owner_dead(v)) {
        if (cas32(&m->word, v, me)) return LMP_LOCK_ABANDONED;
        continue;
      }
    }
    double s = lmp_deadline_slice(L, &d, cap);
    if (s < 0) return LMP_LOCK_TIMEOUT;
    __atomic_add_fetch(&m->sleepers, 1, __ATOMIC_SEQ_CST);
    int r = __atomic_load_n(&m->word, __ATOMIC_SEQ_CST) == v ? lmp_futex_wait(&m->word, v, s) : 0;
    __atomic_sub_fetch(&m->sleepers, 1, __ATOMIC_SEQ_CST);
    if (r == ETIMEDOUT) {
      check = 1;
      if (cap < 0.05) cap *= 2;
    }
  }
}

int lmp_mutex_unlock(lmp_mutex *m) {
  uint32_t v = __atomic_exchange_n(&m->word, 0, __ATOMIC_SEQ_CST);
  if (v == 0) return -1;
  if (__atomic_load_n(&m->sleepers, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&m->word, 1);
  return 0;
}

double lmp_opt_timeout(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  if (t != LUA_TNONE && t != LUA_TNIL && t != LUA_TBOOLEAN) lmp_typeerror(L, idx, "boolean");
  double timeout = lmp_checktimeout(L, idx + 1);
  return (t == LUA_TBOOLEAN && !lua_toboolean(L, idx)) ? 0 : timeout;
}
