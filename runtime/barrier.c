/*
** barrier.c — Barrier in shared memory: parties wait until all have arrived; the last one runs
** the action (user value 1, which travels with the handle by value) before releasing them.
** Caveat: a party killed while waiting is not noticed; the others wait for their timeout.
*/
#include <limits.h>
#include <string.h>

#include "sync.h"

typedef struct shm_barrier {
  lmp_mutex m;
  uint32_t parties, count, gen, broken, fail_gen, draining;
  double timeout; /* < 0: none */
} shm_barrier;

static shm_barrier *check_barrier(lua_State *L, int nargs) {
  shm_barrier *b = lmp__sync_check(L, 1, K_BARRIER)->o.p;
  lmp_checknargs(L, nargs);
  return b;
}

/* Barrier(parties [, action [, timeout]]) */
static int new_barrier(lua_State *L) {
  lmp_checknargs(L, 3);
  lua_Integer n = lmp_checkinteger(L, 1);
  if (n < 1 || n >= INT_MAX)
    return lmp_argerror(L, 1, "ValueError", "parties must be from 1 to %d, got %I", INT_MAX - 1, (LUAI_UACINT)n);
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION)
    return lmp_typeerror(L, 2, "function or nil");
  double t = lmp_checktimeout(L, 3);
  syncobj *s = lmp__sync_new(L, K_BARRIER, sizeof(shm_barrier));
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

/* The internal lock is held for a few instructions only: no loop ticks while taking it. */
static void barrier_lock(shm_barrier *b) { lmp_mutex_lock(NULL, &b->m, LMP_FOREVER); }

/* The last arrival runs the action, then releases everyone (or breaks the barrier). */
static int barrier_last(lua_State *L, shm_barrier *b, uint32_t idx) {
  b->draining = 1;
  lmp_mutex_unlock(&b->m);
  int status = LUA_OK;
  if (lua_getiuservalue(L, 1, 1) == LUA_TFUNCTION) status = lua_pcall(L, 0, 0, 0);
  barrier_lock(b);
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

/* Takes the barrier's lock once the previous round has run its action; raises
** BrokenBarrierError (lock released) when it is broken. */
static void enter(lua_State *L, shm_barrier *b) {
  barrier_lock(b);
  while (b->draining) { /* the previous round is still running its action */
    uint32_t g = b->gen;
    lmp_mutex_unlock(&b->m);
    lmp_futex_wait(&b->gen, g, 0.01);
    barrier_lock(b);
  }
  if (b->broken) {
    lmp_mutex_unlock(&b->m);
    lmp_raise(L, "BrokenBarrierError", "barrier is broken");
  }
}

/* Waits for generation gen to end; returns 0, or -2 when the loop raised (error on top). A
** timeout or a loop error breaks the round for everyone. */
static int wait_round(lua_State *L, shm_barrier *b, uint32_t gen, double timeout) {
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  for (;;) {
    if (__atomic_load_n(&b->gen, __ATOMIC_SEQ_CST) != gen) return 0;
    double s = lmp_deadline_slice(NULL, &d, 0.05);
    int failed = 0;
    if (s < 0 || (failed = lmp_safe_tick(L, &s)) != 0) {
      barrier_lock(b);
      if (b->gen == gen) barrier_break(b);
      lmp_mutex_unlock(&b->m);
      return failed ? -2 : 0;
    }
    lmp_futex_wait(&b->gen, gen, s);
  }
}

/* wait([timeout]) -> the arrival index 0 .. parties-1 */
static int l_barrier_wait(lua_State *L) {
  shm_barrier *b = check_barrier(L, 2);
  double timeout = lua_isnoneornil(L, 2) ? b->timeout : lmp_checktimeout(L, 2);
  enter(L, b);
  if (b->count + 1 < b->parties && timeout != 0) {
    /* this party would sleep: inside a callback, raise before arriving */
    lmp_mutex_unlock(&b->m);
    lmp__may_sleep(L, timeout);
    enter(L, b);
  }
  uint32_t idx = b->count++, gen = b->gen;
  if (b->count == b->parties) return barrier_last(L, b, idx);
  lmp_mutex_unlock(&b->m);
  if (wait_round(L, b, gen, timeout) == -2) return lua_error(L);
  barrier_lock(b);
  int broken = b->fail_gen == gen && (b->broken || b->gen != gen);
  lmp_mutex_unlock(&b->m);
  if (broken) return lmp_raise(L, "BrokenBarrierError", "barrier is broken");
  lua_pushinteger(L, idx);
  return 1;
}

static int l_barrier_reset(lua_State *L) {
  shm_barrier *b = check_barrier(L, 1);
  barrier_lock(b);
  if (b->count > 0) barrier_break(b);
  b->broken = 0;
  b->count = 0;
  lmp_mutex_unlock(&b->m);
  return 0;
}

static int l_barrier_abort(lua_State *L) {
  shm_barrier *b = check_barrier(L, 1);
  barrier_lock(b);
  barrier_break(b);
  lmp_mutex_unlock(&b->m);
  return 0;
}

/* Fields parties, n_waiting, broken; methods otherwise (upvalue 1). */
static int barrier_index(lua_State *L) {
  shm_barrier *b = lmp__sync_check(L, 1, K_BARRIER)->o.p;
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
  if (strcmp(k, "parties") == 0) lua_pushinteger(L, b->parties);
  else if (strcmp(k, "n_waiting") == 0) lua_pushinteger(L, b->draining ? 0 : b->count);
  else if (strcmp(k, "broken") == 0) lua_pushboolean(L, b->broken);
  else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

/* Handle: the barrier, then its action encoded as a message (or nothing). */
static int barrier_encode(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  if (s == NULL || s->o.arena == NULL)
    return lmp_raise(L, "SerializationError", "cannot send a closed barrier");
  lmp_shm_obj *objs[1] = {&s->o};
  if (lua_getiuservalue(L, 1, 1) == LUA_TFUNCTION) {
    lmp_encode(L, -1); /* L: ... action message */
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
    return lmp_shm_push_handle(L, lmp__sync_name[K_BARRIER], objs, 1, m, len);
  }
  return lmp_shm_push_handle(L, lmp__sync_name[K_BARRIER], objs, 1, "", 0);
}

static int dec_barrier(lua_State *L) {
  syncobj *s = lmp__sync_push(L, K_BARRIER);
  lmp_shm_obj *objs[1] = {&s->o};
  size_t xl;
  const char *x = lmp_shm_read_handle(L, objs, 1, &xl);
  if (lmp_shm_capacity(&s->o) < sizeof(shm_barrier))
    return lmp_raise(L, "SerializationError", "malformed lmp.Barrier handle");
  if (xl > 0) {
    lmp_decode(L, x, xl, NULL, 0);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      return lmp_raise(L, "SerializationError", "malformed lmp.Barrier handle");
    lua_setiuservalue(L, -2, 1);
  }
  return 1;
}

static int barrier_tostring(lua_State *L) {
  syncobj *s = lua_touserdata(L, 1);
  shm_barrier *b = s->o.p;
  if (s->o.arena == NULL) return lmp__sync_tostring(L, "");
  return lmp__sync_tostring(L, "parties=%d n_waiting=%d%s", (int)b->parties,
                            (int)(b->draining ? 0 : b->count), b->broken ? " broken" : "");
}

void lmp__open_barrier(lua_State *L, int core) {
  static const luaL_Reg barrier_m[] = {{"wait", l_barrier_wait}, {"reset", l_barrier_reset},
                                       {"abort", l_barrier_abort}, {NULL, NULL}};
  lmp__sync_class(L, K_BARRIER, barrier_m, barrier_encode, barrier_tostring);
  luaL_getmetatable(L, lmp__sync_name[K_BARRIER]);
  lua_getfield(L, -1, "__index"); /* L: mt methods */
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__methods"); /* what REPL completion offers (it never calls __index) */
  lua_pushcclosure(L, barrier_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, new_barrier);
  lua_setfield(L, core, "Barrier");
  lmp_shm_register(L, core, lmp__sync_name[K_BARRIER], dec_barrier);
}
