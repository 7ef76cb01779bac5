/*
** cond.c — Condition in shared memory, over a Lock or RLock (its user value 1).
** notify wakes only processes that were already waiting: every waiter draws a ticket when it
** starts waiting, and a notify grants its wake-ups to tickets drawn before it. A waiter takes
** the oldest grant it may; one that times out while a grant is there for it takes that grant
** (wait returns true) rather than let it go to waste.
** Caveats: a waiter killed while waiting stays counted, so a later notify may be spent on it;
** more than GRANTS notifies outstanding at once are merged (then a later waiter may take an
** earlier grant).
*/
#include <limits.h>

#include "sync.h"

#define GRANTS 16

typedef struct grant {
  uint64_t bound;  /* tickets below it may take this grant */
  uint32_t count, pad;
} grant;

typedef struct shm_cond {
  lmp_mutex m;       /* guards what follows; held for a few instructions, never while asleep */
  uint32_t seq;      /* futex word: bumped by every notify that grants */
  uint32_t waiting;  /* waiters that have not taken a grant nor left */
  uint64_t tickets;  /* tickets drawn so far */
  uint32_t ngrants, pad;
  grant grants[GRANTS]; /* oldest first: bounds increase */
} shm_cond;

static shm_cond *check_cond(lua_State *L) { return lmp__sync_check(L, 1, K_COND)->o.p; }

/* Pushes the condition's lock and returns it. */
static syncobj *cond_lock(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  return lmp__check_anylock(L, -1);
}

static void guard(shm_cond *c) { lmp_mutex_lock(NULL, &c->m, LMP_FOREVER); }
static void unguard(shm_cond *c) { lmp_mutex_unlock(&c->m); }

/* Takes the oldest grant that ticket may take (then this waiter no longer counts as waiting);
** with give_up, leaves the waiters either way. Returns 1 when a grant was taken. */
static int take_grant(shm_cond *c, uint64_t ticket, int give_up) {
  int took = 0;
  guard(c);
  for (uint32_t i = 0; i < c->ngrants && i < GRANTS; i++) {
    if (c->grants[i].bound <= ticket) continue;
    if (--c->grants[i].count == 0) {
      for (uint32_t j = i + 1; j < c->ngrants; j++) c->grants[j - 1] = c->grants[j];
      c->ngrants--;
    }
    took = 1;
    break;
  }
  if ((took || give_up) && c->waiting > 0) c->waiting--;
  unguard(c);
  return took;
}

/* Grants up to n wake-ups to the waiters present now that no grant is held for yet; returns
** how many were granted. */
static uint32_t grant_wakeups(shm_cond *c, uint64_t n) {
  guard(c);
  uint64_t held = 0;
  for (uint32_t i = 0; i < c->ngrants; i++) held += c->grants[i].count;
  uint64_t avail = c->waiting > held ? c->waiting - held : 0;
  uint32_t k = (uint32_t)(n < avail ? n : avail);
  if (k > 0) {
    grant *last = c->ngrants > 0 ? &c->grants[c->ngrants - 1] : NULL;
    if (last != NULL && (last->bound == c->tickets || c->ngrants == GRANTS)) {
      last->bound = c->tickets; /* the same waiters (or the table is full: merged) */
      last->count += k;
    } else {
      c->grants[c->ngrants++] = (grant){c->tickets, k, 0};
    }
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_SEQ_CST);
  }
  unguard(c);
  return k;
}

static int new_cond(lua_State *L) {
  lmp_checknargs(L, 1);
  if (lua_isnoneornil(L, 1)) {
    lmp__new_rlock(L);
  } else {
    lmp__check_anylock(L, 1);
    lua_pushvalue(L, 1);
  }
  lmp__sync_new(L, K_COND, sizeof(shm_cond)); /* L: lock cond */
  lua_rotate(L, -2, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int l_cond_acquire(lua_State *L) {
  check_cond(L);
  lmp_checknargs(L, 3);
  double timeout = lmp_opt_timeout(L, 2);
  syncobj *k = cond_lock(L, 1);
  return lmp__push_acquired(L, lmp__lock_acquire(L, k, timeout));
}

static int l_cond_release(lua_State *L) {
  check_cond(L);
  lmp_checknargs(L, 1);
  lmp__lock_release(L, cond_lock(L, 1));
  return 0;
}

/* Sleeps until ticket is granted a wake-up or the deadline passes; returns 1 when woken, 0 on
** timeout, -2 when the loop raised (its error on top of the stack). */
static int sleep_for_grant(lua_State *L, shm_cond *c, uint64_t ticket, double timeout) {
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  uint32_t seq = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
  for (;;) {
    if (take_grant(c, ticket, 0)) return 1;
    double s = lmp_deadline_slice(NULL, &d, 0.05);
    int failed = 0;
    if (s < 0 || (failed = lmp_safe_tick(L, &s)) != 0) {
      /* timeout, or the loop raised: stop waiting, but a wake-up granted meanwhile is taken,
      ** not lost */
      int woken = take_grant(c, ticket, 1);
      return failed ? -2 : woken;
    }
    lmp_futex_wait(&c->seq, seq, s);
    seq = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
  }
}

/* wait([timeout]) -> true when notified, false on timeout; the lock is held again either way
** (also when it raises, like Python's). */
static int l_cond_wait(lua_State *L) {
  shm_cond *c = check_cond(L);
  lmp_checknargs(L, 2);
  double timeout = lmp_checktimeout(L, 2);
  syncobj *ks = cond_lock(L, 1);
  shm_lock *k = ks->o.p;
  if (lmp_mutex_owner(&k->m) != lmp_tid())
    return lmp_raise(L, "ValueError", "cannot wait on un-acquired lock");
  lmp__may_sleep(L, timeout); /* inside a callback: raise before anything changes */
  guard(c);
  uint64_t ticket = c->tickets++;
  c->waiting++;
  unguard(c);
  uint32_t depth = k->count;
  k->count = 0;
  lmp_mutex_unlock(&k->m);
  int r = sleep_for_grant(L, c, ticket, timeout);
  lmp_mutex_lock(NULL, &k->m, LMP_FOREVER);
  k->count = depth;
  if (r == -2) return lua_error(L);
  lua_pushboolean(L, r);
  return 1;
}

/* wait_for(pred [, timeout]): waits until pred() is true (checked with the lock held, before
** the first wait and after every wake-up) or the timeout passes; returns pred()'s last value. */
static int l_cond_wait_for(lua_State *L) {
  check_cond(L);
  lmp_checktype(L, 2, LUA_TFUNCTION);
  lmp_checknargs(L, 3);
  lmp_deadline d;
  lmp_deadline_init(&d, lmp_checktimeout(L, 3));
  lua_settop(L, 2);
  for (;;) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1)) return 1;
    double left = d.forever ? LMP_FOREVER : d.end - lmp_monotonic();
    if (!d.forever && left <= 0) return 1;
    lua_pop(L, 1);
    lua_pushcfunction(L, l_cond_wait);
    lua_pushvalue(L, 1);
    if (d.forever) lua_pushnil(L);
    else lua_pushnumber(L, left);
    lua_call(L, 2, 0);
  }
}

static void cond_notify(lua_State *L, uint64_t n) {
  shm_cond *c = check_cond(L);
  syncobj *ks = cond_lock(L, 1);
  if (lmp_mutex_owner(&((shm_lock *)ks->o.p)->m) != lmp_tid())
    lmp_raise(L, "ValueError", "cannot notify on un-acquired lock");
  if (grant_wakeups(c, n) > 0) lmp_futex_wake(&c->seq, INT_MAX);
}

/* notify([n=1]) */
static int l_cond_notify(lua_State *L) {
  check_cond(L);
  lmp_checknargs(L, 2);
  lua_Integer n = lmp_optinteger(L, 2, 1);
  if (n < 0) return lmp_argerror(L, 2, "ValueError", "must be >= 0, got %I", (LUAI_UACINT)n);
  cond_notify(L, (uint64_t)n);
  return 0;
}

static int l_cond_notify_all(lua_State *L) {
  check_cond(L);
  lmp_checknargs(L, 1);
  cond_notify(L, UINT32_MAX);
  return 0;
}

/* Handle: the condition and its lock, then the lock's kind. */
static int cond_encode(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  if (s == NULL || s->o.arena == NULL)
    return lmp_raise(L, "SerializationError", "cannot send a closed condition");
  syncobj *k = cond_lock(L, 1);
  lmp_shm_obj *objs[2] = {&s->o, &k->o};
  char kind = (char)k->kind;
  return lmp_shm_push_handle(L, lmp__sync_name[K_COND], objs, 2, &kind, 1);
}

static int dec_cond(lua_State *L) {
  size_t len;
  const char *p = lua_tolstring(L, 1, &len);
  if (p == NULL || len != 1 + 2 * LMP_REF_SIZE + 1 || (p[len - 1] != K_LOCK && p[len - 1] != K_RLOCK))
    return lmp_raise(L, "SerializationError", "malformed lmp.Condition handle");
  syncobj *c = lmp__sync_push(L, K_COND);
  syncobj *k = lmp__sync_push(L, p[len - 1]);
  lmp_shm_obj *objs[2] = {&c->o, &k->o};
  lmp_shm_read_handle(L, objs, 2, &len);
  if (lmp_shm_capacity(&c->o) < sizeof(shm_cond) || lmp_shm_capacity(&k->o) < sizeof(shm_lock))
    return lmp_raise(L, "SerializationError", "malformed lmp.Condition handle");
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int cond_tostring(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  const char *lock = luaL_tolstring(L, -1, NULL);
  return lmp__sync_tostring(L, "over %s", lock);
}

void lmp__open_cond(lua_State *L, int core) {
  static const luaL_Reg cond_m[] = {
      {"acquire", l_cond_acquire}, {"release", l_cond_release}, {"wait", l_cond_wait},
      {"wait_for", l_cond_wait_for}, {"notify", l_cond_notify},
      {"notify_all", l_cond_notify_all}, {"with", lmp__with},
      {NULL, NULL}};
  lmp__sync_class(L, K_COND, cond_m, cond_encode, cond_tostring);
  lua_pushcfunction(L, new_cond);
  lua_setfield(L, core, "Condition");
  lmp_shm_register(L, core, lmp__sync_name[K_COND], dec_cond);
}
