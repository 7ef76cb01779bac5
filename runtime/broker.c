/*
** broker.c — the Redis backend of dispatch.h: a pool whose tasks go into a Redis stream that
** `lmp worker` processes on any number of machines serve (lua/lmp/cluster.lua), and whose
** results come back on a stream of its own. Every message carries an HMAC-SHA256 under the
** cluster key (clusterkey.c); codec messages are re-signed for this process once they pass.
** Caveats: runs on the parent's loop and never blocks outside it; replies arrive in the I/O
** phase and are only reported to the books. A task handed to Redis cannot be taken back for
** sure (withdraw says no): stopping it deletes it from the stream if no worker has it yet, and
** asks the worker that has it to kill it. Key names are shared with cluster.lua.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <sodium.h>

#include "broker.h"
#include "clusterkey.h"
#include "codec.h"
#include "pool.h"
#include "redis.h"

#define K_TASKS "lmp:tasks"
#define K_GROUP "lmp:workers"
#define MAX_OUTSTANDING 8192   /* tasks in Redis at once, per pool */
#define READ_COUNT "1024"      /* results read per XREAD */
#define READ_BLOCK_MS "1000"
#define ALIVE_TTL "30"         /* seconds the pool's liveness key lives unless refreshed */
#define KEY_TTL "3600"         /* seconds its other keys live after the last refresh */
#define TICK_MS 1000
#define RECONNECT_MS 250

/* What the backend keeps of a task handed to Redis. */
typedef struct bentry {
  lmp_task *t;
  uint64_t id;
  char entry[40];   /* its stream entry id, once XADD answered */
  int stopping;
  int reason;       /* LOST_* it is stopped for */
  struct bentry *next;
} bentry;

typedef struct broker {
  lmp_backend base;
  lmp_loop *lp;
  lmp_redis *cmd, *res;      /* commands, and the blocking reads of results */
  char *url;
  char *key;
  size_t keylen;
  char pool[40];             /* the pool's id */
  char k_fn[64], k_res[64], k_alive[64], k_cancel[64];
  bentry **map;              /* task id -> entry (open addressing; NULL empty, TOMB deleted) */
  size_t cap, used;
  long outstanding;
  uint8_t *fnknown;          /* function ids already stored in Redis */
  size_t capfn;
  char last[40];             /* the last result entry read */
  int reading;
  int up;                    /* both connections are up */
  int ups;                   /* how many of them said so */
  double down_since;         /* > 0 while a connection is down */
  double retry_window;       /* seconds to wait for Redis to come back */
  int stored_fn;             /* a function was stored: its hash proves Redis kept our data */
  bentry *stopped;           /* stopped tasks to report (never from inside stop) */
  uv_timer_t tick;           /* liveness, reconnection */
  uv_timer_t report;         /* reports stopped tasks on the next turn */
  int destroyed, closes;
  char why[256];
} broker;

static bentry TOMB;

static void read_results(broker *b);
static void fail_outstanding(broker *b, int reason, const char *why);

/* ---- the map of tasks handed out ---- */

static size_t slot_of(const broker *b, uint64_t id) { return (size_t)(id * 0x9E3779B97F4A7C15ULL) & (b->cap - 1); }

static int map_grow(broker *b) {
  size_t cap = b->cap ? b->cap * 2 : 1024;
  bentry **m = calloc(cap, sizeof *m);
  if (m == NULL) return -1;
  bentry **old = b->map;
  size_t oldcap = b->cap;
  b->map = m;
  b->cap = cap;
  b->used = 0;
  for (size_t i = 0; i < oldcap; i++) {
    bentry *e = old[i];
    if (e == NULL || e == &TOMB) continue;
    size_t s = slot_of(b, e->id);
    while (m[s] != NULL) s = (s + 1) & (cap - 1);
    m[s] = e;
    b->used++;
  }
  free(old);
  return 0;
}

static int map_put(broker *b, bentry *e) {
  if ((b->used + 1) * 2 > b->cap && map_grow(b) != 0) return -1;
  size_t s = slot_of(b, e->id);
  while (b->map[s] != NULL && b->map[s] != &TOMB) s = (s + 1) & (b->cap - 1);
  b->map[s] = e;
  b->used++;
  return 0;
}

static bentry *map_find(broker *b, uint64_t id, size_t *at) {
  if (b->cap == 0) return NULL;
  for (size_t s = slot_of(b, id), k = 0; k < b->cap; s = (s + 1) & (b->cap - 1), k++) {
    bentry *e = b->map[s];
    if (e == NULL) return NULL;
    if (e != &TOMB && e->id == id) {
      if (at) *at = s;
      return e;
    }
  }
  return NULL;
}

/* Takes the task out of the map: the backend holds it no more. */
static lmp_task *forget_entry(broker *b, bentry *e) {
  size_t at;
  if (map_find(b, e->id, &at) == e) b->map[at] = &TOMB;
  b->outstanding--;
  lmp_task *t = e->t;
  t->where = NULL;
  free(e);
  return t;
}

/* ---- commands ---- */

static int command(broker *b, lmp_redis *r, int argc, const char **argv, const size_t *lens,
                   lmp_redis_cb cb) {
  return lmp_redis_command(r, argc, argv, lens, cb, b);
}

/* A command of C strings. */
static int commandv(broker *b, lmp_redis *r, int argc, const char **argv) {
  size_t lens[16];
  for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  return command(b, r, argc, argv, lens, NULL);
}

/* ---- sending ---- */

static int fn_known(broker *b, uint32_t id) {
  return (size_t)(id >> 3) < b->capfn && (b->fnknown[id >> 3] >> (id & 7)) & 1;
}

static void fn_learn(broker *b, uint32_t id) {
  size_t need = (size_t)(id >> 3) + 1;
  if (need > b->capfn) {
    size_t cap = b->capfn ? b->capfn : 64;
    while (cap < need) cap *= 2;
    uint8_t *k = realloc(b->fnknown, cap);
    if (k == NULL) return;
    memset(k + b->capfn, 0, cap - b->capfn);
    b->fnknown = k;
    b->capfn = cap;
  }
  b->fnknown[id >> 3] |= (uint8_t)(1u << (id & 7));
}

/* Stores a task function in the pool's hash: HSET fn <id> <mac><message>. */
static int send_fn(broker *b, const lmp_fnent *f) {
  char fid[16];
  snprintf(fid, sizeof fid, "%u", f->id);
  const char *parts[3] = {b->pool, fid, f->msg};
  size_t plens[3] = {strlen(b->pool), strlen(fid), f->len};
  unsigned char mac[LMP_CLUSTER_MAC_BYTES];
  lmp_cluster_mac(b->key, b->keylen, "fn", parts, plens, 3, mac);
  char *val = malloc(sizeof mac + f->len);
  if (val == NULL) return -1;
  memcpy(val, mac, sizeof mac);
  memcpy(val + sizeof mac, f->msg, f->len);
  const char *argv[4] = {"HSET", b->k_fn, fid, val};
  size_t lens[4] = {4, strlen(b->k_fn), strlen(fid), sizeof mac + f->len};
  int rc = command(b, b->cmd, 4, argv, lens, NULL);
  free(val);
  if (rc == 0) b->stored_fn = 1;
  return rc;
}

/* The answer to a task's XADD: its entry id, kept for deleting it when it is stopped. */
static void on_xadd(lmp_redis *r, redisReply *reply, void *ud);

typedef struct xadd_ud {
  broker *b;
  uint64_t id;
} xadd_ud;

static void on_xadd(lmp_redis *r, redisReply *reply, void *ud) {
  xadd_ud *x = ud;
  broker *b = x->b;
  uint64_t id = x->id;
  free(x);
  if (reply == NULL || b->destroyed || reply->type != REDIS_REPLY_STRING) return;
  bentry *e = map_find(b, id, NULL);
  if (e == NULL) return; /* settled or stopped meanwhile */
  snprintf(e->entry, sizeof e->entry, "%.*s", (int)reply->len, reply->str);
  if (e->stopping) { /* stopped before the id came: delete it now */
    const char *argv[3] = {"XDEL", K_TASKS, e->entry};
    commandv(b, b->cmd, 3, argv);
  }
}

/* XADD lmp:tasks * p <pool> t <id> f <fnid> k <kind> o <timeout ms> r <retries> a <args> h <mac> */
static int send_task(broker *b, lmp_task *t) {
  if (!fn_known(b, t->fn->id)) {
    if (send_fn(b, t->fn) != 0) return -1;
    fn_learn(b, t->fn->id);
  }
  char tid[24], fid[16], kind[4], to[24], rt[16];
  snprintf(tid, sizeof tid, "%llu", (unsigned long long)t->id);
  snprintf(fid, sizeof fid, "%u", t->fn->id);
  snprintf(kind, sizeof kind, "%d", t->kind);
  snprintf(to, sizeof to, "%.0f", t->timeout > 0 ? t->timeout * 1000.0 : 0.0);
  snprintf(rt, sizeof rt, "%d", lmp_pool_task_retries(t));
  const char *parts[7] = {b->pool, tid, fid, kind, to, rt, t->args};
  size_t plens[7] = {strlen(b->pool), strlen(tid), strlen(fid), strlen(kind), strlen(to), strlen(rt),
                     t->arglen};
  unsigned char mac[LMP_CLUSTER_MAC_BYTES];
  lmp_cluster_mac(b->key, b->keylen, "task", parts, plens, 7, mac);
  const char *argv[19] = {"XADD", K_TASKS, "*", "p", b->pool, "t", tid, "f", fid, "k", kind,
                          "o", to, "r", rt, "a", t->args, "h", (const char *)mac};
  size_t lens[19];
  for (int i = 0; i < 16; i++) lens[i] = strlen(argv[i]);
  lens[16] = t->arglen;
  lens[17] = 1;
  lens[18] = sizeof mac; /* raw bytes */
  bentry *e = calloc(1, sizeof *e);
  xadd_ud *x = malloc(sizeof *x);
  if (e == NULL || x == NULL || (e->t = t, e->id = t->id, map_put(b, e)) != 0) {
    free(e);
    free(x);
    return -1;
  }
  *x = (xadd_ud){b, t->id};
  if (lmp_redis_command(b->cmd, 19, argv, lens, on_xadd, x) != 0) {
    size_t at;
    if (map_find(b, e->id, &at) == e) b->map[at] = &TOMB;
    free(e);
    free(x);
    return -1;
  }
  t->where = e;
  b->outstanding++;
  return 0;
}

static void pump(lmp_backend *base) {
  broker *b = (broker *)base;
  if (b->destroyed || !b->up) return;
  while (b->outstanding < MAX_OUTSTANDING) {
    lmp_task *t = lmp_pool_next(base->pool, 0);
    if (t == NULL) break;
    if (send_task(b, t) != 0) {
      lmp_pool_requeue(base->pool, t);
      break;
    }
  }
}

/* ---- results ---- */

/* The fields of a result entry: t <id> s <status> i <index> w <worker> m <message> h <mac>. */
typedef struct rfields {
  const char *v[6];
  size_t n[6];
} rfields;

static int fields_of(const redisReply *kv, rfields *f) {
  static const char names[] = "tsiwmh";
  memset(f, 0, sizeof *f);
  if (kv->type != REDIS_REPLY_ARRAY) return -1;
  for (size_t i = 0; i + 1 < kv->elements; i += 2) {
    const redisReply *k = kv->element[i], *v = kv->element[i + 1];
    if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len != 1) continue;
    const char *at = strchr(names, k->str[0]);
    if (at == NULL) continue;
    f->v[at - names] = v->str;
    f->n[at - names] = v->len;
  }
  for (int i = 0; i < 6; i++)
    if (f->v[i] == NULL) return -1;
  return 0;
}

/* Reports one result to the books, once it passed its check (the first result of a task wins). */
static void take_result(broker *b, const rfields *f) {
  const char *parts[6] = {b->pool, f->v[0], f->v[1], f->v[2], f->v[3], f->v[4]};
  size_t lens[6] = {strlen(b->pool), f->n[0], f->n[1], f->n[2], f->n[3], f->n[4]};
  /* a worker that refused a task cannot sign its notice; unsigned, it can only fail the task */
  int refusal = f->n[1] == 1 && f->v[1][0] == 'R';
  if (!refusal && !lmp_cluster_mac_ok(b->key, b->keylen, "result", parts, lens, 6, f->v[5], f->n[5])) {
    fprintf(stderr, "lmp: a result on %s fails its HMAC check: refused\n", b->k_res);
    return;
  }
  uint64_t id = strtoull(f->v[0], NULL, 10);
  bentry *e = map_find(b, id, NULL);
  if (e == NULL || e->stopping) return; /* a second result of a task run twice, or stopped */
  char status = f->n[1] ? f->v[1][0] : '?';
  uint32_t index = (uint32_t)strtoul(f->v[2], NULL, 10);
  lmp_task *t = forget_entry(b, e);
  lmp_pool *p = b->base.pool;
  if (status == '0' || status == '1' || status == '2') {
    char *block = malloc(f->n[4] ? f->n[4] : 1);
    if (block) {
      memcpy(block, f->v[4], f->n[4]);
      lmp__codec_resign(block, f->n[4]); /* authenticated above: now signed for this process */
    }
    lmp_pool_result(p, t, status - '0', block, block, f->n[4], index, 0);
  } else {
    char why[512];
    snprintf(why, sizeof why, "%.*s (%.*s)", (int)f->n[4], f->v[4], (int)f->n[3], f->v[3]);
    lmp_pool_lost(p, t, status == 'T' ? LOST_TIMEOUT : refusal ? LOST_REFUSED : LOST_DIED, why, 0, 0);
  }
}

static void on_results(lmp_redis *r, redisReply *reply, void *ud) {
  broker *b = ud;
  b->reading = 0;
  if (reply == NULL || b->destroyed) return;
  const char *del[1026];
  size_t dlen[1026];
  int ndel = 2;
  del[0] = "XDEL";
  del[1] = b->k_res;
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
    redisReply *stream = reply->element[0];
    redisReply *entries = stream->type == REDIS_REPLY_ARRAY && stream->elements == 2 ? stream->element[1] : NULL;
    for (size_t i = 0; entries && i < entries->elements && ndel < 1026; i++) {
      redisReply *en = entries->element[i];
      if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 || en->element[0]->type != REDIS_REPLY_STRING)
        continue;
      snprintf(b->last, sizeof b->last, "%s", en->element[0]->str);
      del[ndel++] = en->element[0]->str;
      rfields f;
      if (fields_of(en->element[1], &f) == 0) take_result(b, &f);
    }
  }
  if (ndel > 2) { /* delivered results leave Redis at once: its memory stays flat */
    for (int i = 0; i < ndel; i++) dlen[i] = strlen(del[i]);
    command(b, b->cmd, ndel, del, dlen, NULL);
  }
  lmp_pool_kick(b->base.pool);
  read_results(b);
  pump(&b->base);
}

static void read_results(broker *b) {
  if (b->reading || b->destroyed || !b->up) return;
  const char *argv[8] = {"XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", b->k_res,
                         b->last};
  size_t lens[8];
  for (int i = 0; i < 8; i++) lens[i] = strlen(argv[i]);
  if (command(b, b->res, 8, argv, lens, on_results) == 0) b->reading = 1;
}

/* ---- stopping ---- */

static void on_report(uv_timer_t *h) {
  broker *b = h->data;
  bentry *e;
  while ((e = b->stopped) != NULL) {
    b->stopped = e->next;
    int reason = e->reason;
    lmp_task *t = forget_entry(b, e);
    lmp_pool_lost(b->base.pool, t, reason, reason == LOST_TERMINATED ? "the pool was terminated"
                  : "the call was stopped; its task was taken out of Redis", 0, 0);
  }
}

/* Stops the task of entry e: out of the stream if no worker has it, and a kill request for the
** worker that has it (the cancel set, which workers watch). Reported on the next turn. */
static void stop_entry(broker *b, bentry *e, int reason) {
  if (e->stopping) return;
  e->stopping = 1;
  e->reason = reason;
  char tid[24];
  snprintf(tid, sizeof tid, "%llu", (unsigned long long)e->id);
  const char *sadd[3] = {"SADD", b->k_cancel, tid};
  commandv(b, b->cmd, 3, sadd);
  if (e->entry[0]) {
    const char *xdel[3] = {"XDEL", K_TASKS, e->entry};
    commandv(b, b->cmd, 3, xdel);
  }
  e->next = b->stopped;
  b->stopped = e;
  if (!b->destroyed) uv_timer_start(&b->report, on_report, 0, 0);
}

static int withdraw(lmp_backend *base, lmp_task *t) { return 0; }

static void stop(lmp_backend *base, lmp_task *t, int reason) {
  broker *b = (broker *)base;
  if (t->where != NULL) stop_entry(b, t->where, reason);
}

static void close_(lmp_backend *base) { (void)base; }

static void each_entry(broker *b, void (*fn)(broker *, bentry *, int), int arg) {
  for (size_t i = 0; i < b->cap; i++) {
    bentry *e = b->map[i];
    if (e != NULL && e != &TOMB) fn(b, e, arg);
  }
}

static void terminate(lmp_backend *base) {
  each_entry((broker *)base, stop_entry, LOST_TERMINATED);
}

static int gone(lmp_backend *base) {
  broker *b = (broker *)base;
  return b->outstanding == 0;
}

static void forget(lmp_backend *base) { (void)base; } /* ids are never reused */

static void stats(lmp_backend *base, lua_State *L) {
  broker *b = (broker *)base;
  lua_createtable(L, 0, 4);
  lua_newtable(L);
  lua_setfield(L, -2, "workers");
  lua_pushinteger(L, b->outstanding);
  lua_setfield(L, -2, "inflight");
  lua_pushstring(L, b->pool);
  lua_setfield(L, -2, "pool");
  lua_pushstring(L, "redis");
  lua_setfield(L, -2, "backend");
}

/* ---- connections ---- */

static void on_state(lmp_redis *r, int ok, void *ud);

static void fail_entry(broker *b, bentry *e, int reason) {
  (void)reason;
  e->stopping = 1;
  e->reason = LOST_BACKEND;
  e->next = b->stopped;
  b->stopped = e;
}

/* Redis is gone for good: what it holds fails, and the pool takes no more work. */
static void fail_outstanding(broker *b, int reason, const char *why) {
  snprintf(b->why, sizeof b->why, "%s", why);
  each_entry(b, fail_entry, reason);
  bentry *e;
  while ((e = b->stopped) != NULL) {
    b->stopped = e->next;
    lmp_task *t = forget_entry(b, e);
    lmp_pool_lost(b->base.pool, t, LOST_BACKEND, b->why, 0, 0);
  }
  lmp_pool_backend_failed(b->base.pool, b->why);
}

static int open_connections(broker *b, const char **err) {
  b->ups = 0;
  b->cmd = lmp_redis_open(&b->lp->uv, b->url, on_state, b, err);
  if (b->cmd == NULL) return -1;
  b->res = lmp_redis_open(&b->lp->uv, b->url, on_state, b, err);
  if (b->res == NULL) {
    lmp_redis_close(b->cmd);
    b->cmd = NULL;
    return -1;
  }
  return 0;
}

static void close_connections(broker *b) {
  if (b->cmd) lmp_redis_close(b->cmd);
  if (b->res) lmp_redis_close(b->res);
  b->cmd = b->res = NULL;
  b->up = 0;
  b->reading = 0;
}

/* Says the pool is alive, and keeps its keys from expiring while it is. */
static void refresh(broker *b) {
  const char *set[5] = {"SET", b->k_alive, "1", "EX", ALIVE_TTL};
  commandv(b, b->cmd, 5, set);
  const char *keys[3] = {b->k_fn, b->k_res, b->k_cancel};
  for (int i = 0; i < 3; i++) {
    const char *ex[3] = {"EXPIRE", keys[i], KEY_TTL};
    commandv(b, b->cmd, 3, ex);
  }
}

/* After a reconnection: if Redis lost the pool's functions, it restarted without them, and
** the tasks it held are gone with them. */
static void on_exists(lmp_redis *r, redisReply *reply, void *ud) {
  broker *b = ud;
  if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0 && b->stored_fn &&
      !b->destroyed)
    fail_outstanding(b, LOST_BACKEND, "Redis lost the pool's tasks (it restarted without them)");
}

static void on_group(lmp_redis *r, redisReply *reply, void *ud) { (void)r, (void)reply, (void)ud; }

static void set_up(broker *b) {
  b->up = 1;
  b->down_since = 0;
  const char *grp[6] = {"XGROUP", "CREATE", K_TASKS, K_GROUP, "$", "MKSTREAM"};
  size_t lens[6];
  for (int i = 0; i < 6; i++) lens[i] = strlen(grp[i]);
  command(b, b->cmd, 6, grp, lens, on_group); /* BUSYGROUP when it exists: fine */
  if (b->stored_fn) {
    const char *ex[2] = {"EXISTS", b->k_fn};
    size_t el[2] = {6, strlen(b->k_fn)};
    command(b, b->cmd, 2, ex, el, on_exists);
  }
  refresh(b);
  read_results(b);
  pump(&b->base);
}

static void on_state(lmp_redis *r, int ok, void *ud) {
  broker *b = ud;
  if (b->destroyed) return;
  if (ok) {
    if (++b->ups == 2) set_up(b);
    return;
  }
  if (b->down_since == 0) b->down_since = lmp_monotonic();
  b->up = 0;
  snprintf(b->why, sizeof b->why, "the Redis server at %s went away: %s", b->url, lmp_redis_error(r));
  lmp_loop_notify(b->lp);
}

static void on_tick(uv_timer_t *h) {
  broker *b = h->data;
  if (b->destroyed) return;
  if (b->down_since == 0) {
    if (b->up) refresh(b);
    return;
  }
  if (lmp_monotonic() - b->down_since > b->retry_window) {
    char why[300];
    snprintf(why, sizeof why, "%s; it did not come back within %g s", b->why, b->retry_window);
    close_connections(b);
    fail_outstanding(b, LOST_BACKEND, why);
    b->down_since = 0;
    uv_timer_stop(h);
    return;
  }
  /* try again: new connections (a failed one stays failed) */
  close_connections(b);
  const char *err;
  open_connections(b, &err);
  uv_timer_start(h, on_tick, RECONNECT_MS, TICK_MS);
}

/* ---- life ---- */

static void handle_closed(uv_handle_t *h) {
  broker *b = h->data;
  if (--b->closes > 0) return;
  free(b->map);
  free(b->fnknown);
  free(b->url);
  sodium_memzero(b->key, b->keylen);
  free(b->key);
  free(b);
}

static void destroy(lmp_backend *base) {
  broker *b = (broker *)base;
  b->destroyed = 1;
  if (b->up) {
    const char *del[5] = {"DEL", b->k_fn, b->k_res, b->k_alive, b->k_cancel};
    commandv(b, b->cmd, 5, del);
  }
  for (size_t i = 0; i < b->cap; i++) {
    bentry *e = b->map[i];
    if (e == NULL || e == &TOMB) continue;
    if (e->entry[0] && b->up) {
      const char *xdel[3] = {"XDEL", K_TASKS, e->entry};
      commandv(b, b->cmd, 3, xdel);
    }
    b->map[i] = &TOMB;
    lmp_task *t = e->t;
    t->where = NULL;
    free(e);
    lmp_pool_requeue(base->pool, t); /* the books drop it: the pool is terminating */
  }
  b->stopped = NULL;
  b->outstanding = 0;
  close_connections(b); /* hiredis writes what is queued before it lets go */
  b->closes = 2;
  uv_close((uv_handle_t *)&b->tick, handle_closed);
  uv_close((uv_handle_t *)&b->report, handle_closed);
}

static const lmp_backend_ops ops = {"redis", pump, withdraw, stop, close_, terminate, gone, forget,
                                    stats, destroy};

static int up_or_failed(lua_State *L, void *ud) {
  broker *b = ud;
  return b->up || (b->cmd && lmp_redis_state(b->cmd) < 0) || (b->res && lmp_redis_state(b->res) < 0);
}

lmp_backend *lmp_broker_start(lua_State *L, lmp_pool *p, const char *url, const char *key,
                              size_t keylen, double retry_window) {
  broker *b = calloc(1, sizeof *b);
  char *u = strdup(url), *k = malloc(keylen ? keylen : 1);
  if (b == NULL || u == NULL || k == NULL) {
    free(b), free(u), free(k);
    luaL_error(L, "not enough memory");
  }
  memcpy(k, key, keylen);
  b->base.ops = &ops;
  b->base.pool = p;
  b->lp = lmp_loop_get(L);
  b->url = u;
  b->key = k;
  b->keylen = keylen;
  b->retry_window = retry_window > 0 ? retry_window : 10;
  lmp_random_hex(b->pool, 16);
  snprintf(b->k_fn, sizeof b->k_fn, "lmp:fn:%s", b->pool);
  snprintf(b->k_res, sizeof b->k_res, "lmp:res:%s", b->pool);
  snprintf(b->k_alive, sizeof b->k_alive, "lmp:pool:%s", b->pool);
  snprintf(b->k_cancel, sizeof b->k_cancel, "lmp:cancel:%s", b->pool);
  strcpy(b->last, "0-0");
  uv_timer_init(&b->lp->uv, &b->tick);
  b->tick.data = b;
  uv_timer_init(&b->lp->uv, &b->report);
  b->report.data = b;
  uv_unref((uv_handle_t *)&b->tick);
  uv_unref((uv_handle_t *)&b->report);
  const char *err = NULL;
  int ok = open_connections(b, &err) == 0 && lmp_loop_wait(L, up_or_failed, b, 5.0) && b->up;
  if (!ok) {
    char why[300];
    snprintf(why, sizeof why, "%s", err ? err
             : b->cmd && lmp_redis_state(b->cmd) < 0 ? lmp_redis_error(b->cmd)
             : b->res && lmp_redis_state(b->res) < 0 ? lmp_redis_error(b->res) : "timed out");
    destroy(&b->base);
    lmp_raise(L, "ProcessError", "Pool: cannot reach Redis at %s: %s", url, why);
  }
  uv_timer_start(&b->tick, on_tick, TICK_MS, TICK_MS);
  return &b->base;
}
