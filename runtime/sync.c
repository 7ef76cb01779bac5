/*
** sync.c — Lock, RLock, Semaphore, BoundedSemaphore and Event in shared memory, over the
** futexes and the owner-checked mutex of futex.c; and what every synchronization object
** shares (sync.h). Condition is in cond.c, Barrier in barrier.c.
** Caveats: a dead lock owner is noticed by a waiter on its slice timeouts, so recovery takes a
** few milliseconds; semaphores have no owner, so a dead process's units are not returned.
*/
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>

#include "sync.h"

const char *const lmp__sync_name[] = {"lmp.Lock",  "lmp.RLock", "lmp.Semaphore",
                                      "lmp.BoundedSemaphore", "lmp.Event", "lmp.Condition",
                                      "lmp.Barrier"};

/* What the closed-object error says, by kind. */
static const char *const closed_name[] = {"lock", "lock", "semaphore", "semaphore", "event",
                                          "condition", "barrier"};

static int cas32(uint32_t *w, uint32_t expect, uint32_t desired) {
  return __atomic_compare_exchange_n(w, &expect, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

/* ---- common ---- */

static syncobj *check_open(lua_State *L, syncobj *s) {
  if (s->o.arena == NULL) lmp_raise(L, "ValueError", "%s is closed", closed_name[s->kind]);
  return s;
}

syncobj *lmp__sync_check(lua_State *L, int idx, int kind) {
  return check_open(L, lmp_checkudata(L, idx, lmp__sync_name[kind]));
}

/* The object at idx of kind a or kind b. */
static syncobj *check_either(lua_State *L, int idx, int a, int b, const char *expected) {
  syncobj *s = luaL_testudata(L, idx, lmp__sync_name[a]);
  if (s == NULL) s = luaL_testudata(L, idx, lmp__sync_name[b]);
  if (s == NULL) lmp_typeerror(L, idx, expected);
  return check_open(L, s);
}

syncobj *lmp__check_anylock(lua_State *L, int idx) {
  return check_either(L, idx, K_LOCK, K_RLOCK, "lmp.Lock or lmp.RLock");
}

int lmp__is_lock(lua_State *L, int idx) {
  return luaL_testudata(L, idx, "lmp.Lock") != NULL || luaL_testudata(L, idx, "lmp.RLock") != NULL;
}

syncobj *lmp__sync_push(lua_State *L, int kind) {
  syncobj *s = lua_newuserdatauv(L, sizeof *s, 1);
  s->o.arena = NULL;
  s->kind = kind;
  luaL_setmetatable(L, lmp__sync_name[kind]);
  return s;
}

syncobj *lmp__sync_new(lua_State *L, int kind, size_t size) {
  syncobj *s = lmp__sync_push(L, kind);
  if (lmp_shm_alloc(size, &s->o) != 0)
    lmp_raise(L, "ProcessError", "cannot allocate shared memory for a %s: %s",
              lmp__sync_name[kind] + 4, strerror(errno));
  return s;
}

static int obj_gc(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  lmp_shm_release(&s->o);
  return 0;
}

void lmp__may_sleep(lua_State *L, double timeout) {
  if (timeout == 0) return;
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  lmp_deadline_slice(L, &d, 0.05);
}

int lmp__push_acquired(lua_State *L, int r) {
  lua_pushboolean(L, r != LMP_LOCK_TIMEOUT);
  if (r == LMP_LOCK_ABANDONED) {
    lua_pushliteral(L, "abandoned");
    return 2;
  }
  return 1;
}

int lmp__sync_encode(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  if (s == NULL || s->o.arena == NULL)
    return lmp_raise(L, "SerializationError", "cannot send a closed %s", closed_name[s ? s->kind : 0]);
  lmp_shm_obj *objs[1] = {&s->o};
  return lmp_shm_push_handle(L, lmp__sync_name[s->kind], objs, 1, "", 0);
}

void lmp__sync_class(lua_State *L, int kind, const luaL_Reg *methods, lua_CFunction encode,
                     lua_CFunction tostring) {
  const luaL_Reg meta[] = {{"__gc", obj_gc}, {"__close", obj_gc}, {"__lmp_encode", encode},
                           {"__tostring", tostring}, {NULL, NULL}};
  lmp_shm_newclass(L, lmp__sync_name[kind], methods, meta);
}

int lmp__sync_tostring(lua_State *L, const char *fmt, ...) {
  syncobj *s = lua_touserdata(L, 1);
  if (s->o.arena == NULL)
    return lua_pushfstring(L, "<%s at %p closed>", lmp__sync_name[s->kind], (void *)s), 1;
  va_list ap;
  va_start(ap, fmt);
  const char *state = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_pushfstring(L, "<%s at %p %s>", lmp__sync_name[s->kind], (void *)s, state);
  return 1;
}

/* Decodes a one-object handle of kind (payload at 1, fd at 2). */
static int decode_kind(lua_State *L, int kind, size_t size) {
  syncobj *s = lmp__sync_push(L, kind);
  lmp_shm_obj *objs[1] = {&s->o};
  size_t xl;
  lmp_shm_read_handle(L, objs, 1, &xl);
  if (lmp_shm_capacity(&s->o) < size || xl != 0)
    return lmp_raise(L, "SerializationError", "malformed %s handle", lmp__sync_name[kind]);
  return 1;
}

/* ---- Lock and RLock ---- */

int lmp__lock_acquire(lua_State *L, syncobj *s, double timeout) {
  shm_lock *k = s->o.p;
  if (s->kind == K_RLOCK && lmp_mutex_owner(&k->m) == lmp_tid()) {
    k->count++;
    return LMP_LOCK_OK;
  }
  int r = lmp_mutex_lock(L, &k->m, timeout);
  if (r != LMP_LOCK_TIMEOUT) k->count = 1;
  return r;
}

void lmp__lock_release(lua_State *L, syncobj *s) {
  shm_lock *k = s->o.p;
  if (s->kind == K_RLOCK) {
    if (lmp_mutex_owner(&k->m) != lmp_tid())
      lmp_raise(L, "ValueError", "RLock:release: cannot release un-acquired lock");
    if (--k->count > 0) return;
  }
  if (lmp_mutex_unlock(&k->m) != 0)
    lmp_raise(L, "ValueError", "Lock:release: semaphore or lock released too many times");
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
  return lmp__check_anylock(L, 1);
}

/* acquire([block [, timeout]]) -> true | false | true, "abandoned" */
static int l_lock_acquire(lua_State *L) {
  syncobj *s = fast_lock(L);
  if (lua_gettop(L) > 1) {
    lmp_checknargs(L, 3);
    return lmp__push_acquired(L, lmp__lock_acquire(L, s, lmp_opt_timeout(L, 2)));
  }
  return lmp__push_acquired(L, lmp__lock_acquire(L, s, LMP_FOREVER));
}

static int l_lock_release(lua_State *L) {
  syncobj *s = fast_lock(L);
  if (lua_gettop(L) > 1) lmp_checknargs(L, 1);
  lmp__lock_release(L, s);
  return 0;
}

static int l_lock_locked(lua_State *L) {
  syncobj *s = lmp__check_anylock(L, 1);
  lmp_checknargs(L, 1);
  lua_pushboolean(L, lmp_mutex_owner(&((shm_lock *)s->o.p)->m) != 0);
  return 1;
}

/* with(self, fn, ...): self:acquire(); fn(...) protected; self:release(); results or error. */
int lmp__with(lua_State *L) {
  lmp_checktype(L, 2, LUA_TFUNCTION);
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
  lmp_checknargs(L, 0);
  lmp__sync_new(L, K_LOCK, sizeof(shm_lock));
  return 1;
}

void lmp__new_rlock(lua_State *L) { lmp__sync_new(L, K_RLOCK, sizeof(shm_lock)); }

static int new_rlock(lua_State *L) {
  lmp_checknargs(L, 0);
  lmp__new_rlock(L);
  return 1;
}

static int lock_tostring(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  shm_lock *k = s->o.p;
  uint32_t owner = s->o.arena ? lmp_mutex_owner(&k->m) : 0;
  if (owner == 0) return lmp__sync_tostring(L, "unlocked");
  if (s->kind == K_RLOCK) return lmp__sync_tostring(L, "locked by %d, count %d", (int)owner, (int)k->count);
  return lmp__sync_tostring(L, "locked by %d", (int)owner);
}

static int dec_lock(lua_State *L) { return decode_kind(L, K_LOCK, sizeof(shm_lock)); }
static int dec_rlock(lua_State *L) { return decode_kind(L, K_RLOCK, sizeof(shm_lock)); }

/* ---- semaphores ---- */

typedef struct shm_sem {
  uint32_t value, waiters, max;
} shm_sem;

static syncobj *check_sem(lua_State *L, int idx) {
  return check_either(L, idx, K_SEM, K_BSEM, "lmp.Semaphore or lmp.BoundedSemaphore");
}

static int sem_new(lua_State *L, int kind) {
  lmp_checknargs(L, 1);
  lua_Integer n = lmp_optinteger(L, 1, 1);
  if (n < 0 || n > INT_MAX)
    return lmp_argerror(L, 1, "ValueError", "initial value must be from 0 to %d, got %I", INT_MAX,
                         (LUAI_UACINT)n);
  shm_sem *m = lmp__sync_new(L, kind, sizeof(shm_sem))->o.p;
  m->value = m->max = (uint32_t)n;
  return 1;
}

static int new_sem(lua_State *L) { return sem_new(L, K_SEM); }
static int new_bsem(lua_State *L) { return sem_new(L, K_BSEM); }

static int l_sem_acquire(lua_State *L) {
  shm_sem *m = check_sem(L, 1)->o.p;
  lmp_checknargs(L, 3);
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

/* release([k=1]) */
static int l_sem_release(lua_State *L) {
  syncobj *s = check_sem(L, 1);
  shm_sem *m = s->o.p;
  lmp_checknargs(L, 2);
  lua_Integer n = lmp_optinteger(L, 2, 1);
  if (n < 1 || n > INT_MAX)
    return lmp_argerror(L, 2, "ValueError", "must be from 1 to %d, got %I", INT_MAX, (LUAI_UACINT)n);
  for (;;) {
    uint32_t v = __atomic_load_n(&m->value, __ATOMIC_SEQ_CST);
    if ((s->kind == K_BSEM && (uint64_t)v + (uint64_t)n > m->max) ||
        (uint64_t)v + (uint64_t)n > INT_MAX)
      return lmp_raise(L, "ValueError", "%s:release: semaphore or lock released too many times",
                       s->kind == K_BSEM ? "BoundedSemaphore" : "Semaphore");
    if (__atomic_compare_exchange_n(&m->value, &v, v + (uint32_t)n, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      break;
  }
  if (__atomic_load_n(&m->waiters, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&m->value, (int)n);
  return 0;
}

static int l_sem_value(lua_State *L) {
  shm_sem *m = check_sem(L, 1)->o.p;
  lmp_checknargs(L, 1);
  lua_pushinteger(L, __atomic_load_n(&m->value, __ATOMIC_SEQ_CST));
  return 1;
}

static int sem_tostring(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  shm_sem *m = s->o.p;
  return lmp__sync_tostring(L, "value=%d", s->o.arena ? (int)m->value : 0);
}

static int dec_sem(lua_State *L) { return decode_kind(L, K_SEM, sizeof(shm_sem)); }
static int dec_bsem(lua_State *L) { return decode_kind(L, K_BSEM, sizeof(shm_sem)); }

/* ---- Event ---- */

typedef struct shm_event {
  uint32_t flag, waiters;
} shm_event;

static shm_event *check_event(lua_State *L, int nargs) {
  shm_event *e = lmp__sync_check(L, 1, K_EVENT)->o.p;
  lmp_checknargs(L, nargs);
  return e;
}

static int new_event(lua_State *L) {
  lmp_checknargs(L, 0);
  lmp__sync_new(L, K_EVENT, sizeof(shm_event));
  return 1;
}

static int l_event_set(lua_State *L) {
  shm_event *e = check_event(L, 1);
  __atomic_store_n(&e->flag, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&e->waiters, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&e->flag, INT_MAX);
  return 0;
}

static int l_event_clear(lua_State *L) {
  shm_event *e = check_event(L, 1);
  __atomic_store_n(&e->flag, 0, __ATOMIC_SEQ_CST);
  return 0;
}

static int l_event_is_set(lua_State *L) {
  shm_event *e = check_event(L, 1);
  lua_pushboolean(L, __atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) != 0);
  return 1;
}

/* wait([timeout]) -> true when the flag is set (at once or within the timeout) */
static int l_event_wait(lua_State *L) {
  shm_event *e = check_event(L, 2);
  lmp_deadline d;
  lmp_deadline_init(&d, lmp_checktimeout(L, 2));
  while (__atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) == 0) {
    double s = lmp_deadline_slice(L, &d, 0.05);
    if (s < 0) break;
    __atomic_add_fetch(&e->waiters, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) == 0) lmp_futex_wait(&e->flag, 0, s);
    __atomic_sub_fetch(&e->waiters, 1, __ATOMIC_SEQ_CST);
  }
  lua_pushboolean(L, __atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) != 0);
  return 1;
}

static int event_tostring(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  shm_event *e = s->o.p;
  return lmp__sync_tostring(L, s->o.arena && __atomic_load_n(&e->flag, __ATOMIC_SEQ_CST) ? "set" : "unset");
}

static int dec_event(lua_State *L) { return decode_kind(L, K_EVENT, sizeof(shm_event)); }

/* ---- opening ---- */

/* The Lock and RLock metatables: their methods carry both metatables as upvalues. */
static void open_locks(lua_State *L) {
  static const luaL_Reg lock_m[] = {{"acquire", l_lock_acquire}, {"release", l_lock_release},
                                    {"locked", l_lock_locked},   {"with", lmp__with},
                                    {NULL, NULL}};
  const luaL_Reg meta[] = {{"__gc", obj_gc}, {"__close", obj_gc},
                           {"__lmp_encode", lmp__sync_encode}, {"__tostring", lock_tostring},
                           {NULL, NULL}};
  for (int k = 0; k < 2; k++) {
    luaL_newmetatable(L, lmp__sync_name[k]);
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
}

void lmp__open_sync(lua_State *L) {
  int core = lua_gettop(L);
  open_locks(L);
  static const luaL_Reg sem_m[] = {{"acquire", l_sem_acquire},   {"release", l_sem_release},
                                   {"get_value", l_sem_value},   {"with", lmp__with},
                                   {NULL, NULL}};
  static const luaL_Reg event_m[] = {{"set", l_event_set},       {"clear", l_event_clear},
                                     {"is_set", l_event_is_set}, {"wait", l_event_wait},
                                     {NULL, NULL}};
  lmp__sync_class(L, K_SEM, sem_m, lmp__sync_encode, sem_tostring);
  lmp__sync_class(L, K_BSEM, sem_m, lmp__sync_encode, sem_tostring);
  lmp__sync_class(L, K_EVENT, event_m, lmp__sync_encode, event_tostring);
  static const luaL_Reg ctors[] = {{"Lock", new_lock}, {"RLock", new_rlock},
                                   {"Semaphore", new_sem}, {"BoundedSemaphore", new_bsem},
                                   {"Event", new_event}, {NULL, NULL}};
  luaL_setfuncs(L, ctors, 0);
  static const struct { int kind; lua_CFunction f; } decs[] = {
      {K_LOCK, dec_lock}, {K_RLOCK, dec_rlock}, {K_SEM, dec_sem}, {K_BSEM, dec_bsem},
      {K_EVENT, dec_event}};
  for (size_t i = 0; i < sizeof decs / sizeof decs[0]; i++)
    lmp_shm_register(L, core, lmp__sync_name[decs[i].kind], decs[i].f);
}
