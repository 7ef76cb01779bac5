/*
** sync.c — Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier in shared
** memory, over the futexes and the owner-checked mutex of futex.c.
** Caveats: a dead lock owner is noticed by a waiter on its slice timeouts, so recovery takes a
** few milliseconds; semaphores have no owner, so a dead process's units are not returned.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "lmp_shm.h"

static int cas32(uint32_t *w, uint32_t expect, uint32_t desired) {
  return __atomic_compare_exchange_n(w, &expect, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

/* ---- the objects ---- */

enum { K_LOCK, K_RLOCK, K_SEM, K_BSEM, K_EVENT, K_COND, K_BARRIER };
static const char *const class_name[] = {"lmp.Lock",  "lmp.RLock",     "lmp.Semaphore",
                                         "lmp.BoundedSemaphore", "lmp.Event", "lmp.Condition",
                                         "lmp.Barrier"};

typedef struct syncobj {
  lmp_shm_obj o;
  int kind;
} syncobj;

typedef struct shm_lock {
  lmp_mutex m;
  uint32_t count; /* RLock recursion depth */
} shm_lock;

typedef struct shm_sem {
  uint32_t value, waiters, max;
} shm_sem;

typedef struct shm_event {
  uint32_t flag, waiters;
} shm_event;

typedef struct shm_cond {
  uint32_t seq;
  uint32_t pad;
  uint64_t counts; /* waiting << 32 | granted wake-ups */
} shm_cond;

typedef struct shm_barrier {
  lmp_mutex m;
  uint32_t parties, count, gen, broken, fail_gen, draining;
  double timeout; /* < 0: none */
} shm_barrier;

static const size_t shm_size[] = {sizeof(shm_lock), sizeof(shm_lock), sizeof(shm_sem),
                                  sizeof(shm_sem),  sizeof(shm_event), sizeof(shm_cond),
                                  sizeof(shm_barrier)};

static syncobj *check_kind(lua_State *L, int idx, int kind) {
  syncobj *s = luaL_checkudata(L, idx, class_name[kind]);
  if (s->o.arena == NULL) luaL_error(L, "%s is closed", class_name[kind]);
  return s;
}

#define tolock(L, i) ((shm_lock *)check_kind(L, i, K_LOCK)->o.p)

/* Lock or RLock at idx (either kind). */
static syncobj *check_anylock(lua_State *L, int idx) {
  syncobj *s = luaL_testudata(L, idx, "lmp.Lock");
  if (s == NULL) s = luaL_testudata(L, idx, "lmp.RLock");
  if (s == NULL) luaL_typeerror(L, idx, "lmp.Lock or lmp.RLock");
  if (s->o.arena == NULL) luaL_error(L, "lock is closed");
  return s;
}

int lmp__is_lock(lua_State *L, int idx) {
  return luaL_testudata(L, idx, "lmp.Lock") != NULL || luaL_testudata(L, idx, "lmp.RLock") != NULL;
}

/* Pushes a fresh userdata of kind (with 1 user value), unattached. */
static syncobj *push_ud(lua_State *L, int kind) {
  syncobj *s = lua_newuserdatauv(L, sizeof *s, 1);
  s->o.arena = NULL;
  s->kind = kind;
  luaL_setmetatable(L, class_name[kind]);
  return s;
}

/* Creates a new object of kind on the stack, zeroed. */
static syncobj *new_obj(lua_State *L, int kind) {
  syncobj *s = push_ud(L, kind);
  if (lmp_shm_alloc(shm_size[kind], &s->o) != 0)
    luaL_error(L, "cannot allocate shared memory: %s", strerror(errno));
  return s;
}

static int obj_gc(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  lmp_shm_release(&s->o);
  return 0;
}

/* Optional timeout at idx (nil: forever). */
static double opt_wait(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = luaL_checknumber(L, idx);
  return t < 0 ? 0 : t;
}

static int push_acquired(lua_State *L, int r) {
  lua_pushboolean(L, r != LMP_LOCK_TIMEOUT);
  if (r == LMP_LOCK_ABANDONED) {
    lua_pushliteral(L, "abandoned");
    return 2;
  }
  return 1;
}

/* Acquires a Lock or RLock object (recursion for RLock); returns an LMP_LOCK_* code. */
static int lock_acquire(lua_State *L, syncobj *s, double timeout) {
  shm_lock *k = s->o.p;
  if (s->kind == K_RLOCK && lmp_mutex_owner(&k->m) == lmp_tid()) {
    k->count++;
    return LMP_LOCK_OK;
  }
  int r = lmp_mutex_lock(L, &k->m, timeout);
  if (r != LMP_LOCK_TIMEOUT) k->count = 1;
  return r;
}

static void lock_release(lua_State *L, syncobj *s) {
  shm_lock *k = s->o.p;
  if (s->kind == K_RLOCK) {
    if (lmp_mutex_owner(&k->m) != lmp_tid())
      lmp_raise(L, "ValueError", "cannot release un-acquired lock");
    if (--k->count > 0) return;
  }
  if (lmp_mutex_unlock(&k->m) != 0)
    lmp_raise(L, "ValueError", "semaphore or lock released too many times");
}

/* The hot path of the Lock/RLock methods: their upvalues 1 and 2 are the two metatables, so
** the type check is one metatable comparison. */
static syncobj *fast_lock(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  if (s != NULL && lua_getmetatable(L, 1)) {
    int ok = lua_rawequal(L, -1, lua_upvalueindex(1)) || lua_rawequal(L, -1, lua_upvalueindex(2));
    lua_pop(L, 1);
    if (ok && s->o.arena != NULL) return s;
  }
  return check_anylock(L, 1);
}

static int l_lock_acquire(lua_State *L) {
  syncobj *s = fast_lock(L);
  return push_acquired(L, lock_acquire(L, s, lmp_opt_timeout(L, 2)));
}

static int l_lock_release(lua_State *L) {
  lock_release(L, fast_lock(L));
  return 0;
}

static int l_lock_locked(lua_State *L) {
  syncobj *s = check_anylock(L, 1);
  lua_pushboolean(L, lmp_mutex_owner(&((shm_lock *)s->o.p)->m) != 0);
  return 1;
}

/* with(self, fn, ...): self:acquire(); fn(...) protected; self:release(); results or error. */
int lmp__with(lua_State *L) {
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_getfield(L, 1, "acquire");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  int status = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0);
  lua_getfield(L, 1, "release");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L) - 1;
}

static int new_lock(lua_State *L) {
  new_obj(L, K_LOCK);
  return 1;
}

void lmp__new_rlock(lua_State *L) { new_obj(L, K_RLOCK); }

static int new_rlock(lua_State *L) {
  lmp__new_rlock(L);
  return 1;
}

/* ---- semaphores ---- */

static syncobj *check_sem(lua_State *L, int idx) {
  syncobj *s = luaL_testudata(L, idx, "lmp.Semaphore");
  if (s == NULL) s = luaL_testudata(L, idx, "lmp.BoundedSemaphore");
  if (s == NULL) luaL_typeerror(L, idx, "lmp.Semaphore");
  if (s->o.arena == NULL) luaL_error(L, "semaphore is closed");
  return s;
}

static int sem_new(lua_State *L, int kind) {
  lua_Integer n = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, n >= 0 && n <= INT_MAX, 1, "initial value must be >= 0");
  shm_sem *m = new_obj(L, kind)->o.p;
  m->value = m->max = (uint32_t)n;
  return 1;
}

static int new_sem(lua_State *L) { return sem_new(L, K_SEM); }
static int new_bsem(lua_State *L) { return sem_new(L, K_BSEM); }

static int l_sem_acquire(lua_State *L) {
  shm_sem *m = check_sem(L, 1)->o.p;
  lmp_deadline d;
  lmp_deadline_init(&d, lmp_opt_timeout(L, 2));
  for (;;) {
    uint32_t v = __atomic_load_n(&m->value, __ATOMIC_SEQ_CST);
    if (v > 0) {
      if (cas32(&m->value, v, v - 1)) break;
      continue;
    }
    double s = lmp_deadline_slice(L, &d, 0.05);
    if (s < 0) {
      lua_pushboolean(L, 0);
      return 1;
    }
    __atomic_add_fetch(&m->waiters, 1, __ATOMIC_SEQ_CST);
    lmp_futex_wait(&m->value, 0, s);
    __atomic_sub_fetch(&m->waiters, 1, __ATOMIC_SEQ_CST);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_sem_release(lua_State *L) {
  syncobj *s = check_sem(L, 1);
  shm_sem *m = s->o.p;
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1, 2, "must be >= 1");
  for (;;) {
    uint32_t v = __atomic_load_n(&m->value, __ATOMIC_SEQ_CST);
    if (s->kind == K_BSEM && v + n > m->max)
      return lmp_raise(L, "ValueError", "semaphore or lock released too many times");
    if (__atomic_compare_exchange_n(&m->value, &v, v + (uint32_t)n, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      break;
  }
  if (__atomic_load_n(&m->waiters, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&m->value, (int)n);
  return 0;
}

static int l_sem_value(lua_State *L) {
  shm_sem *m = check_sem(L, 1)->o.p;
  lua_pushinteger(L, __atomic_load_n(&m->value, __ATOMIC_SEQ_CST));
  return 1;
}

/* ---- Event ---- */

static int new_event(lua_State *L) {
  new_obj(L, K_EVENT);
  return 1;
}

static int l_event_set(lua_State *L) {
  shm_event *e = check_kind(L, 1, K_EVENT)->o.p;
  __atomic_store_n(&e->flag, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&e->waiters, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&e->flag, INT_MAX);
  return 0;
}

static int l_event_clear(lua_State *L) {
  shm_event *e = check_kind(L, 1, K_EVENT)->o.p;
  __atomic_store_n(&e->flag, 0, __ATOMIC_SEQ_CST);
  return 0;
}

static int l_event_is_set(lua_State *L) {
  shm_event *e = check_kind(L, 1, K_EVENT)->o.p;
  lua_pushboolean(L, __atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) != 0);
  return 1;
}

static int l_event_wait(lua_State *L) {
  shm_event *e = check_kind(L, 1, K_EVENT)->o.p;
  lmp_deadline d;
  lmp_deadline_init(&d, opt_wait(L, 2));
  while (__atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) == 0) {
    double s = lmp_deadline_slice(L, &d, 0.05);
    if (s < 0) break;
    __atomic_add_fetch(&e->waiters, 1, __ATOMIC_SEQ_CST);
    lmp_futex_wait(&e->flag, 0, s);
    __atomic_sub_fetch(&e->waiters, 1, __ATOMIC_SEQ_CST);
  }
  lua_pushboolean(L, __atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) != 0);
  return 1;
}

/* ---- Condition: user value 1 is its Lock/RLock ---- */

static int new_cond(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lmp__new_rlock(L);
  } else {
    check_anylock(L, 1);
    lua_pushvalue(L, 1);
  }
  new_obj(L, K_COND); /* L: lock cond */
  lua_rotate(L, -2, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

/* Pushes the condition's lock and returns it. */
static syncobj *cond_lock(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  return check_anylock(L, -1);
}

static int l_cond_acquire(lua_State *L) {
  check_kind(L, 1, K_COND);
  syncobj *k = cond_lock(L, 1);
  return push_acquired(L, lock_acquire(L, k, lmp_opt_timeout(L, 2)));
}

static int l_cond_release(lua_State *L) {
  check_kind(L, 1, K_COND);
  lock_release(L, cond_lock(L, 1));
  return 0;
}

static uint64_t counts_add(uint64_t *c, int64_t dw, int64_t dg) {
  return __atomic_add_fetch(c, (uint64_t)(dw * ((int64_t)1 << 32) + dg), __ATOMIC_SEQ_CST);
}

/* Takes one granted wake-up if there is one (then this waiter is no longer counted). */
static int take_grant(shm_cond *c, int give_up) {
  uint64_t v = __atomic_load_n(&c->counts, __ATOMIC_SEQ_CST);
  for (;;) {
    uint64_t nv;
    if ((uint32_t)v > 0) nv = v - 1;
    else if (give_up) nv = v - ((uint64_t)1 << 32);
    else return 0;
    if (__atomic_compare_exchange_n(&c->counts, &v, nv, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return (uint32_t)v > 0;
  }
}

static int l_cond_wait(lua_State *L) {
  shm_cond *c = check_kind(L, 1, K_COND)->o.p;
  double timeout = opt_wait(L, 2);
  syncobj *ks = cond_lock(L, 1);
  shm_lock *k = ks->o.p;
  if (lmp_mutex_owner(&k->m) != lmp_tid())
    return lmp_raise(L, "ValueError", "cannot wait on un-acquired lock");
  uint32_t depth = k->count;
  counts_add(&c->counts, 1, 0);
  uint32_t seq = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
  k->count = 0;
  lmp_mutex_unlock(&k->m);
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  int woken = 0, failed = 0;
  for (;;) {
    if (take_grant(c, 0)) {
      woken = 1;
      break;
    }
    double s = lmp_deadline_slice(NULL, &d, 0.05);
    if (s < 0 || (failed = lmp_safe_tick(L, &s)) != 0) {
      /* timeout, or the loop raised (its error is on the stack): stop waiting, but a wake-up
      ** granted meanwhile is taken, not lost */
      woken = take_grant(c, 1);
      break;
    }
    lmp_futex_wait(&c->seq, seq, s);
    seq = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
  }
  /* like Python, the lock is held again when wait returns or raises */
  lmp_mutex_lock(NULL, &k->m, -1);
  k->count = depth;
  if (failed) return lua_error(L);
  lua_pushboolean(L, woken);
  return 1;
}

/* wait_for(pred [, timeout]): waits until pred() is true (checked with the lock held, before
** the first wait and after every wake-up) or the timeout passes; returns pred()'s last value. */
static int l_cond_wait_for(lua_State *L) {
  check_kind(L, 1, K_COND);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lmp_deadline d;
  lmp_deadline_init(&d, opt_wait(L, 3));
  lua_settop(L, 2);
  for (;;) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1)) return 1;
    double left = d.forever ? -1 : d.end - lmp_monotonic();
    if (!d.forever && left <= 0) return 1;
    lua_pop(L, 1);
    lua_pushcfunction(L, l_cond_wait);
    lua_pushvalue(L, 1);
    if (d.forever) lua_pushnil(L);
    else lua_pushnumber(L, left);
    lua_call(L, 2, 0);
  }
}

static void cond_notify(lua_State *L, lua_Integer n) {
  shm_cond *c = check_kind(L, 1, K_COND)->o.p;
  syncobj *ks = cond_lock(L, 1);
  if (lmp_mutex_owner(&((shm_lock *)ks->o.p)->m) != lmp_tid())
    lmp_raise(L, "ValueError", "cannot notify on un-acquired lock");
  uint64_t v = __atomic_load_n(&c->counts, __ATOMIC_SEQ_CST), nv;
  uint32_t k;
  do {
    uint32_t waiting = (uint32_t)(v >> 32), granted = (uint32_t)v;
    uint32_t avail = waiting > granted ? waiting - granted : 0;
    k = n < (lua_Integer)avail ? (uint32_t)n : avail;
    nv = v + k;
  } while (!__atomic_compare_exchange_n(&c->counts, &v, nv, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST));
  if (k > 0) {
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_SEQ_CST);
    lmp_futex_wake(&c->seq, INT_MAX);
  }
}

static int l_cond_notify(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 2, 1);
  cond_notify(L, n < 0 ? 0 : n);
  return 0;
}

static int l_cond_notify_all(lua_State *L) {
  cond_notify(L, INT_MAX);
  return 0;
}

/* ---- Barrier: user value 1 is its action ---- */

static int new_barrier(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n < INT_MAX, 1, "parties must be >= 1");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  double t = opt_wait(L, 3);
  syncobj *s = new_obj(L, K_BARRIER);
  shm_barrier *b = s->o.p;
  b->parties = (uint32_t)n;
  b->timeout = t;
  b->fail_gen = UINT32_MAX;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static void barrier_break(shm_barrier *b) {
  b->broken = 1;
  b->fail_gen = b->gen;
  b->count = 0;
  __atomic_add_fetch(&b->gen, 1, __ATOMIC_SEQ_CST);
  lmp_futex_wake(&b->gen, INT_MAX);
}

static void barrier_lock(lua_State *L, shm_barrier *b) { lmp_mutex_lock(L, &b->m, -1); }

/* The last arrival runs the action, then releases everyone (or breaks the barrier). */
static int barrier_last(lua_State *L, shm_barrier *b, uint32_t idx) {
  b->draining = 1;
  lmp_mutex_unlock(&b->m);
  int status = LUA_OK;
  if (lua_getiuservalue(L, 1, 1) == LUA_TFUNCTION) status = lua_pcall(L, 0, 0, 0);
  barrier_lock(L, b);
  b->draining = 0;
  if (status != LUA_OK) {
    barrier_break(b);
    lmp_mutex_unlock(&b->m);
    return lua_error(L);
  }
  b->count = 0;
  __atomic_add_fetch(&b->gen, 1, __ATOMIC_SEQ_CST);
  lmp_futex_wake(&b->gen, INT_MAX);
  lmp_mutex_unlock(&b->m);
  lua_pushinteger(L, idx);
  return 1;
}

static int l_barrier_wait(lua_State *L) {
  shm_barrier *b = check_kind(L, 1, K_BARRIER)->o.p;
  double timeout = lua_isnoneornil(L, 2) ? b->timeout : opt_wait(L, 2);
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  barrier_lock(L, b);
  while (b->draining) { /* the previous round is still running its action */
    uint32_t g = b->gen;
    lmp_mutex_unlock(&b->m);
    lmp_futex_wait(&b->gen, g, 0.01);
    barrier_lock(L, b);
  }
  if (b->broken) {
    lmp_mutex_unlock(&b->m);
    return lmp_raise(L, "BrokenBarrierError", "barrier is broken");
  }
  uint32_t idx = b->count++, gen = b->gen;
  if (b->count == b->parties) return barrier_last(L, b, idx);
  lmp_mutex_unlock(&b->m);
  int failed = 0;
  for (;;) {
    uint32_t g = __atomic_load_n(&b->gen, __ATOMIC_SEQ_CST);
    if (g != gen) break;
    double s = lmp_deadline_slice(NULL, &d, 0.05);
    if (s < 0 || (failed = lmp_safe_tick(L, &s)) != 0) {
      /* timeout or a loop error: this party leaves, so the round is broken for everyone */
      barrier_lock(NULL, b);
      if (b->gen == gen) barrier_break(b);
      lmp_mutex_unlock(&b->m);
      if (failed) return lua_error(L);
      break;
    }
    lmp_futex_wait(&b->gen, gen, s);
  }
  barrier_lock(L, b);
  int broken = b->fail_gen == gen && (b->broken || b->gen != gen);
  lmp_mutex_unlock(&b->m);
  if (broken) return lmp_raise(L, "BrokenBarrierError", "barrier is broken");
  lua_pushinteger(L, idx);
  return 1;
}

static int l_barrier_reset(lua_State *L) {
  shm_barrier *b = check_kind(L, 1, K_BARRIER)->o.p;
  barrier_lock(L, b);
  if (b->count > 0) barrier_break(b);
  b->broken = 0;
  b->count = 0;
  lmp_mutex_unlock(&b->m);
  return 0;
}

static int l_barrier_abort(lua_State *L) {
  shm_barrier *b = check_kind(L, 1, K_BARRIER)->o.p;
  barrier_lock(L, b);
  barrier_break(b);
  lmp_mutex_unlock(&b->m);
  return 0;
}

/* Fields parties, n_waiting, broken; methods otherwise. */
static int barrier_index(lua_State *L) {
  shm_barrier *b = check_kind(L, 1, K_BARRIER)->o.p;
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "parties") == 0) lua_pushinteger(L, b->parties);
  else if (strcmp(k, "n_waiting") == 0) lua_pushinteger(L, b->draining ? 0 : b->count);
  else if (strcmp(k, "broken") == 0) lua_pushboolean(L, b->broken);
  else {
    lua_getfield(L, lua_upvalueindex(1), k);
  }
  return 1;
}

/* ---- handles ---- */

static int l_encode(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  if (s == NULL || s->o.arena == NULL) return luaL_error(L, "cannot send a closed object");
  lmp_shm_obj *objs[2] = {&s->o, NULL};
  if (s->kind == K_COND) {
    syncobj *k = cond_lock(L, 1);
    objs[1] = &k->o;
    char kind = (char)k->kind;
    return lmp_shm_push_handle(L, class_name[s->kind], objs, 2, &kind, 1);
  }
  if (s->kind == K_BARRIER && lua_getiuservalue(L, 1, 1) == LUA_TFUNCTION) {
    lmp_encode(L, -1); /* L: ... action message */
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
    return lmp_shm_push_handle(L, class_name[s->kind], objs, 1, m, len);
  }
  return lmp_shm_push_handle(L, class_name[s->kind], objs, 1, "", 0);
}

static int decode_kind(lua_State *L, int kind) {
  syncobj *s = push_ud(L, kind);
  lmp_shm_obj *objs[1] = {&s->o};
  size_t xl;
  const char *x = lmp_shm_read_handle(L, objs, 1, &xl);
  if (lmp_shm_capacity(&s->o) < shm_size[kind]) return luaL_error(L, "malformed handle");
  if (kind == K_BARRIER && xl > 0) {
    lmp_decode(L, x, xl, NULL, 0);
    lua_setiuservalue(L, -2, 1);
  }
  return 1;
}

static int dec_lock(lua_State *L) { return decode_kind(L, K_LOCK); }
static int dec_rlock(lua_State *L) { return decode_kind(L, K_RLOCK); }
static int dec_sem(lua_State *L) { return decode_kind(L, K_SEM); }
static int dec_bsem(lua_State *L) { return decode_kind(L, K_BSEM); }
static int dec_event(lua_State *L) { return decode_kind(L, K_EVENT); }
static int dec_barrier(lua_State *L) { return decode_kind(L, K_BARRIER); }

static int dec_cond(lua_State *L) {
  size_t len;
  const char *p = luaL_checklstring(L, 1, &len);
  if (len != 1 + 2 * LMP_REF_SIZE + 1) return luaL_error(L, "malformed Condition handle");
  int lk = p[len - 1] == K_RLOCK ? K_RLOCK : K_LOCK;
  syncobj *c = push_ud(L, K_COND);
  syncobj *k = push_ud(L, lk);
  lmp_shm_obj *objs[2] = {&c->o, &k->o};
  lmp_shm_read_handle(L, objs, 2, &len);
  if (lmp_shm_capacity(&c->o) < sizeof(shm_cond) || lmp_shm_capacity(&k->o) < sizeof(shm_lock))
    return luaL_error(L, "malformed Condition handle");
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static const luaL_Reg meta[] = {{"__gc", obj_gc}, {"__close", obj_gc},
                                {"__lmp_encode", l_encode}, {NULL, NULL}};

void lmp__open_sync(lua_State *L) {
  int core = lua_gettop(L);
  static const luaL_Reg lock_m[] = {{"acquire", l_lock_acquire}, {"release", l_lock_release},
                                    {"locked", l_lock_locked},   {"with", lmp__with},
                                    {NULL, NULL}};
  static const luaL_Reg sem_m[] = {{"acquire", l_sem_acquire},   {"release", l_sem_release},
                                   {"get_value", l_sem_value},   {"with", lmp__with},
                                   {NULL, NULL}};
  static const luaL_Reg event_m[] = {{"set", l_event_set},       {"clear", l_event_clear},
                                     {"is_set", l_event_is_set}, {"wait", l_event_wait},
                                     {NULL, NULL}};
  static const luaL_Reg cond_m[] = {
      {"acquire", l_cond_acquire}, {"release", l_cond_release}, {"wait", l_cond_wait},
      {"wait_for", l_cond_wait_for}, {"notify", l_cond_notify},
      {"notify_all", l_cond_notify_all}, {"with", lmp__with},
      {NULL, NULL}};
  for (int k = 0; k < 2; k++) {
    luaL_newmetatable(L, class_name[k]);
    luaL_setfuncs(L, meta, 0);
  }
  for (int k = 0; k < 2; k++) { /* L: lock_mt rlock_mt */
    lua_newtable(L);
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -3);
    luaL_setfuncs(L, lock_m, 2);
    lua_setfield(L, -3 + k, "__index");
  }
  lua_pop(L, 2);
  lmp_shm_newclass(L, "lmp.Semaphore", sem_m, meta);
  lmp_shm_newclass(L, "lmp.BoundedSemaphore", sem_m, meta);
  lmp_shm_newclass(L, "lmp.Event", event_m, meta);
  lmp_shm_newclass(L, "lmp.Condition", cond_m, meta);
  static const luaL_Reg barrier_m[] = {{"wait", l_barrier_wait}, {"reset", l_barrier_reset},
                                       {"abort", l_barrier_abort}, {NULL, NULL}};
  luaL_newmetatable(L, "lmp.Barrier");
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, barrier_m);
  lua_pushcclosure(L, barrier_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg ctors[] = {
      {"Lock", new_lock},   {"RLock", new_rlock},      {"Semaphore", new_sem},
      {"BoundedSemaphore", new_bsem}, {"Event", new_event}, {"Condition", new_cond},
      {"Barrier", new_barrier}, {NULL, NULL}};
  luaL_setfuncs(L, ctors, 0);
  static const struct { const char *n; lua_CFunction f; } decs[] = {
      {"lmp.Lock", dec_lock}, {"lmp.RLock", dec_rlock}, {"lmp.Semaphore", dec_sem},
      {"lmp.BoundedSemaphore", dec_bsem}, {"lmp.Event", dec_event},
      {"lmp.Condition", dec_cond}, {"lmp.Barrier", dec_barrier}};
  for (size_t i = 0; i < sizeof decs / sizeof decs[0]; i++)
    lmp_shm_register(L, core, decs[i].n, decs[i].f);
}
