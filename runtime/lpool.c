/*
** lpool.c — the Lua interface of a pool's core: lmp.core.pool_new and the lmp.PoolCore methods
** (apply, map, imap, close, terminate, join, stats, state) that lua/lmp/pool.lua builds mp.Pool
** on. It checks what C relies on; the facade checks what users pass, in their words.
** Caveat: the table of calls with tasks in flight is held from the registry, and each call
** holds the core: work in flight keeps its pool alive (as CPython's handler threads do); an
** idle pool that nobody holds is collected and terminates its workers.
*/
#include <string.h>

#include "broker.h"
#include "pool.h"

static const char pool_class; /* its address keys the metatable */

typedef struct pbox {
  lmp_pool *p;
} pbox;

static int l_callbacks_run(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lmp_callbacks_run());
  return 1;
}

static lmp_pool *checkpool(lua_State *L) {
  pbox *b = lmp_checkclass(L, 1, &pool_class, POOL_MT);
  if (b->p == NULL) lmp_raise(L, "ValueError", "the pool is gone");
  return b->p;
}

/* Raises ValueError unless the pool takes new work (fname names the call). */
static void check_running(lua_State *L, lmp_pool *p, const char *fname) {
  if (p->state != P_RUN)
    lmp_raise(L, "ValueError", "Pool not running (%s after %s)", fname,
              p->state == P_CLOSE ? "close()" : "terminate()");
  if (p->broken == 2) lmp_raise(L, "ProcessError", "pool is broken: %s", p->broken_why);
  if (p->broken)
    lmp_raise(L, "ProcessError",
              "pool is broken: its workers die before they are ready (does the initializer fail?)");
}

static double opt_number(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TNUMBER ? lua_tonumber(L, idx) : 0;
}

static int pool_gc(lua_State *L) {
  pbox *b = lua_touserdata(L, 1);
  lmp_pool *p = b->p;
  b->p = NULL;
  if (p == NULL) return 0;
  lmp_pool_destroy(L, p);
  luaL_unref(L, LUA_REGISTRYINDEX, p->calls);
  p->calls = LUA_NOREF;
  return 0;
}

static lua_Integer field_integer(lua_State *L, int t, const char *k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : def;
  lua_pop(L, 1);
  return v;
}

/* pool_new{processes=, init=, maxtasks=, task_timeout=, retries=} -> core. Raises ProcessError
** when workers cannot be started (those started are killed and reaped first). */
static int l_pool_new(lua_State *L) {
  lmp_checktype(L, 1, LUA_TTABLE);
  int n = (int)field_integer(L, 1, "processes", 0);
  if (n < 1 || n > 4096) return lmp_argerror(L, 1, "ValueError", "processes must be 1..4096");
  lua_getfield(L, 1, "init");
  size_t initlen;
  const char *init = lua_tolstring(L, -1, &initlen);
  if (init == NULL) return lmp_argerror(L, 1, "TypeError", "init must be a string");
  pbox *b = lua_newuserdatauv(L, sizeof *b, 1); /* closed first: __gc copes with NULL */
  b->p = NULL;
  lmp_setclass(L, &pool_class);
  int core = lua_gettop(L);
  lmp_pool *p = lmp_pool_create(L, n);
  if (p == NULL) return luaL_error(L, "not enough memory");
  b->p = p;
  lua_newtable(L);
  p->calls = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, 1, "task_timeout");
  p->task_timeout = opt_number(L, -1);
  lua_pop(L, 1);
  p->retries = (int)field_integer(L, 1, "retries", 0);
  long maxtasks = (long)field_integer(L, 1, "maxtasks", 0);
  if (lua_getfield(L, 1, "backend") == LUA_TSTRING) { /* a broker: Redis */
    size_t keylen;
    lua_getfield(L, 1, "key");
    const char *key = lua_tolstring(L, -1, &keylen);
    if (key == NULL) return lmp_argerror(L, 1, "TypeError", "key must be a string");
    lua_getfield(L, 1, "retry_window");
    p->backend = lmp_broker_start(L, p, lua_tostring(L, -3), key, keylen, opt_number(L, -1));
  } else {
    p->backend = lmp_workers_start(L, p, n, init, initlen, maxtasks);
  }
  lua_pushvalue(L, core);
  return 1;
}

/* apply(f, args, callback, error_callback, timeout) -> AsyncResult */
static int l_apply(lua_State *L) {
  lmp_pool *p = checkpool(L);
  check_running(L, p, "apply_async");
  lmp_checktype(L, 2, LUA_TFUNCTION);
  lmp_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 6);
  lmp_call *c = lmp_call_push(L, p, 1, CALL_APPLY, 4, 5, 7);
  int res = lua_gettop(L);
  c->timeout = opt_number(L, 6);
  lmp_fnent *f = lmp_pool_fn(L, p, 2);
  ptask *t = lmp_pool_task(L, p, c, K_APPLY, f, 3, 0, -1, "args");
  lmp_call_register(L, c, res);
  lmp_pool_submit(L, p, t);
  lua_settop(L, res);
  return 1;
}

/* apply_raw(kind, fnmsg, argsmsg, timeout, callback) -> AsyncResult: a task given as codec
** messages encoded elsewhere (the Redis worker's, see cluster.lua); callback(status, message,
** index) gets its outcome undecoded. */
static int l_apply_raw(lua_State *L) {
  lmp_pool *p = checkpool(L);
  check_running(L, p, "apply_raw");
  int kind = (int)lmp_checkinteger(L, 2);
  size_t fnlen, arglen;
  const char *fn = lmp_checklstring(L, 3, &fnlen), *args = lmp_checklstring(L, 4, &arglen);
  lmp_checktype(L, 6, LUA_TFUNCTION);
  lua_settop(L, 6);
  lmp_call *c = lmp_call_push(L, p, 1, CALL_RAW, 6, 7, 7);
  int res = lua_gettop(L);
  c->timeout = opt_number(L, 5);
  int forgot = 0;
  lmp_fnent *f = lmp_fncache_raw(L, &p->fns, fn, fnlen, &forgot);
  if (forgot && p->backend) p->backend->ops->forget(p->backend);
  ptask *t = lmp_pool_task_raw(p, c, kind == K_APPLY || kind == K_STARMAP ? kind : K_MAP, f, args,
                               arglen);
  if (t == NULL) return luaL_error(L, "not enough memory");
  lmp_call_register(L, c, res);
  lmp_pool_submit(L, p, t);
  lua_settop(L, res);
  return 1;
}

typedef struct chunking {
  lmp_pool *p;
  lmp_call *c;
  lmp_fnent *f;
  int kind;
  lua_Integer n, chunksize; /* chunksize 0: the default, guided (see next_count) */
  lua_Integer ramp;         /* the default's next size before the caps */
  lua_Integer cap;          /* the most items whose weight fits CHUNK_WEIGHT (0: not known) */
} chunking;

/* The weight of a chunk stands for the memory a worker goes through for it: what the message
** makes the worker build (CHUNK_OBJ bytes per table or string, about what Lua spends on one)
** and a quarter of its bytes (numbers and long strings are read in bulk). Default chunks are
** kept at about CHUNK_WEIGHT, so a worker's data stays in its caches and memory it reuses:
** a chunk of 200k records built and dropped at once costs it twice the time of 500 chunks. */
#define CHUNK_OBJ 64
#define CHUNK_WEIGHT (128u << 10)

/* The size of the next chunk from start. A given chunksize is kept. The default holds CPython's
** ceil(n / (4 * processes)) as its largest chunk, but the first chunks are smaller (1/16 of it,
** doubling), so workers start while the parent still encodes, and the last ones shrink with
** what is left (a quarter of it per process), so no worker finishes long after the others;
** and none weighs much more than CHUNK_WEIGHT (see chunk_weighed). */
static lua_Integer next_count(chunking *k, lua_Integer start) {
  lua_Integer left = k->n - start + 1;
  if (k->chunksize > 0) return left < k->chunksize ? left : k->chunksize;
  lua_Integer parts = 4 * (lua_Integer)k->p->processes;
  lua_Integer most = (k->n + parts - 1) / parts;
  if (k->ramp == 0) k->ramp = most / 16 > 0 ? most / 16 : 1;
  lua_Integer count = (left + parts - 1) / parts;
  if (count > k->ramp) count = k->ramp;
  if (k->cap > 0 && count > k->cap) count = k->cap;
  if (k->ramp < most) k->ramp = k->ramp * 2 < most ? k->ramp * 2 : most;
  return count > 0 ? count : 1;
}

/* Learns from the chunk just encoded (count items, arglen bytes, objs objects) how many items
** the next may hold. */
static void chunk_weighed(chunking *k, lua_Integer count, size_t arglen, size_t objs) {
  double weight = (double)objs * CHUNK_OBJ + (double)arglen / 4;
  double fit = weight > 0 ? (double)count * CHUNK_WEIGHT / weight : 0;
  k->cap = fit >= 1e15 || fit <= 0 ? 0 : fit < 1 ? 1 : (lua_Integer)fit;
}

/* Protected (seq at 1, chunking at 2): submits every chunk, each as soon as it is encoded, so
** the workers start on the first while the rest is encoded. */
static int psubmit_chunks(lua_State *L) {
  chunking *k = lua_touserdata(L, 2);
  lua_Integer count;
  for (lua_Integer start = 1; start <= k->n; start += count) {
    count = next_count(k, start);
    k->f->refs++; /* the task's own */
    ptask *t = lmp_pool_task(L, k->p, k->c, k->kind, k->f, 1, start, count, "seq");
    chunk_weighed(k, count, t->t.arglen, k->p->last_objs);
    lmp_pool_submit(L, k->p, t);
  }
  return 0;
}

/* map(kind, f, seq, n, chunksize, timeout, progress, callback, error_callback) -> AsyncResult
** whose value is the results table. */
static int l_map(lua_State *L) {
  lmp_pool *p = checkpool(L);
  check_running(L, p, "map");
  int kind = (int)lmp_checkinteger(L, 2);
  lmp_checktype(L, 3, LUA_TFUNCTION);
  lmp_checktype(L, 4, LUA_TTABLE);
  lua_Integer n = lmp_checkinteger(L, 5), chunksize = lmp_checkinteger(L, 6);
  if (n < 0 || n > INT32_MAX || chunksize < 0) return lmp_argerror(L, 5, "ValueError", "bad size");
  lua_settop(L, 10);
  lmp_call *c = lmp_call_push(L, p, 1, CALL_MAP, 9, 10, 8);
  int res = lua_gettop(L);
  c->timeout = opt_number(L, 7);
  c->total = n;
  c->kind_of_tasks = kind == K_STARMAP ? K_STARMAP : K_MAP;
  c->open = 1;
  lmp_call_new_results(L, res, (int)n);
  chunking k = {p, c, lmp_pool_fn(L, p, 3), c->kind_of_tasks, n, chunksize, 0, 0};
  lmp_call_register(L, c, res);
  lua_pushcfunction(L, psubmit_chunks);
  lua_pushvalue(L, 4);
  lua_pushlightuserdata(L, &k);
  int st = lua_pcall(L, 2, 0, 0);
  lmp_fnent_release(k.f);
  if (st != LUA_OK) { /* an item cannot be sent: what was submitted is stopped */
    lmp_pool_stop_call(L, p, c, STOP_DROP);
    c->state = CALL_FAILED;
    lmp_call_close(L, c, res);
    return lua_error(L);
  }
  lmp_call_close(L, c, res);
  lua_settop(L, res);
  return 1;
}

/* imap(kind, f, ordered, total, timeout, progress) -> imap call */
static int l_imap(lua_State *L) {
  lmp_pool *p = checkpool(L);
  check_running(L, p, "imap");
  int kind = (int)lmp_checkinteger(L, 2);
  lmp_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 7);
  lmp_call *c = lmp_call_push(L, p, 1, CALL_IMAP, 8, 8, 7);
  int res = lua_gettop(L);
  c->ordered = lua_toboolean(L, 4);
  c->total = lua_isinteger(L, 5) ? lua_tointeger(L, 5) : -1;
  c->timeout = opt_number(L, 6);
  c->kind_of_tasks = kind == K_STARMAP ? K_STARMAP : K_MAP;
  c->open = 1;
  c->next_start = 1;
  lmp_call_new_results(L, res, 0);
  c->fn = lmp_pool_fn(L, p, 3);
  lmp_call_register(L, c, res);
  lua_settop(L, res);
  return 1;
}

static int l_close(lua_State *L) {
  lmp_pool_close(checkpool(L));
  return 0;
}

static int l_terminate(lua_State *L) {
  lmp_pool_terminate(checkpool(L));
  return 0;
}

static int all_gone(lua_State *L, void *ud) {
  lmp_pool *p = ud;
  return p->backend == NULL || p->backend->ops->gone(p->backend);
}

/* join([timeout]) -> true when every worker has left */
static int l_join(lua_State *L) {
  lmp_pool *p = checkpool(L);
  double timeout = lmp_checktimeout(L, 2);
  if (p->state == P_RUN) return lmp_raise(L, "ValueError", "join() needs close() or terminate() first");
  lua_pushboolean(L, lmp_loop_wait(L, all_gone, p, timeout));
  return 1;
}

/* stats() -> {workers = {pid...}, inflight = n, queued = n} */
static int l_stats(lua_State *L) {
  lmp_pool *p = checkpool(L);
  if (p->backend) p->backend->ops->stats(p->backend, L);
  else lua_newtable(L);
  lua_pushinteger(L, p->nqueued);
  lua_setfield(L, -2, "queued");
  return 1;
}

/* state() -> "RUN" | "CLOSE" | "TERMINATE", processes */
static int l_state(lua_State *L) {
  lmp_pool *p = checkpool(L);
  static const char *names[] = {"RUN", "CLOSE", "TERMINATE"};
  lua_pushstring(L, names[p->state]);
  lua_pushinteger(L, p->processes);
  return 2;
}

void lmp__open_pool(lua_State *L) {
  if (luaL_newmetatable(L, POOL_MT)) {
    lmp_class_register(L, &pool_class);
    static const luaL_Reg methods[] = {{"apply", l_apply},   {"map", l_map},
                                       {"imap", l_imap},     {"close", l_close},
                                       {"terminate", l_terminate}, {"join", l_join},
                                       {"stats", l_stats},   {"state", l_state},
                                       {"apply_raw", l_apply_raw},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lmp__open_pool_calls(L);
  lua_pushcfunction(L, l_pool_new);
  lua_setfield(L, -2, "pool_new");
  lua_pushinteger(L, K_APPLY);
  lua_setfield(L, -2, "K_APPLY");
  lua_pushinteger(L, K_MAP);
  lua_setfield(L, -2, "K_MAP");
  lua_pushinteger(L, K_STARMAP);
  lua_setfield(L, -2, "K_STARMAP");
  lua_pushcfunction(L, l_callbacks_run);
  lua_setfield(L, -2, "callbacks_run");
}
