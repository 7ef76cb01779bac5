/*
** queue.c — Queue, SimpleQueue and JoinableQueue: a byte ring in shared memory with futex
** waits, no broker process and no feeder thread. Items are encoded by the caller of put.
** Caveats: an item is a run of chunks [len u32 | flags u32 | bytes]; a chunk becomes visible only
** once fully written (tail moves on commit), so a writer killed mid-put leaves at most a
** started multi-chunk item, which the next writer (or a waiting reader) closes with an ABORT
** chunk; readers drop partial items. Timeouts bound the wait for progress, not the whole
** transfer of an item larger than the ring.
*/
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lmp_shm.h"

#define RING_CAP (1u << 20)
#define HDR 8u
#define F_FIRST 1u
#define F_LAST 2u
#define F_ABORT 4u
#define SPINS 4000

enum { Q_PLAIN, Q_SIMPLE, Q_JOINABLE };
static const char *const qname[] = {"lmp.Queue", "lmp.SimpleQueue", "lmp.JoinableQueue"};

typedef struct shm_queue {
  lmp_mutex wlock, rlock;  /* one writer and one reader at a time, each for a whole item */
  uint32_t wseq, rseq;     /* bumped on every commit / consume: the futex words */
  uint32_t rwaiters, wwaiters;
  uint32_t unfinished, jwaiters; /* JoinableQueue */
  uint32_t kind, maxsize;  /* maxsize 0: unbounded */
  int64_t nitems;          /* complete items not yet taken */
  uint32_t in_item;        /* a multi-chunk item is partly published */
  uint32_t pad;
  uint64_t head, tail, cap;
  char buf[];
} shm_queue;

typedef struct queueobj {
  lmp_shm_obj o;
  int kind, closed;
} queueobj;

/* The codec's scratch buffers, reused across calls (an error inside the codec longjmps past
** us, so the buffers are kept rather than owned by the call). */
static __thread lmp_buf enc_buf, dec_buf;

/* The queue at idx (any of the three kinds): TypeError for another value, ValueError once
** its memory is released (__close). */
static queueobj *check_queue(lua_State *L, int idx) {
  queueobj *q = NULL;
  for (int k = 0; k < 3 && q == NULL; k++) q = luaL_testudata(L, idx, qname[k]);
  if (q == NULL) lmp_typeerror(L, idx, "lmp.Queue, lmp.SimpleQueue or lmp.JoinableQueue");
  if (q->o.arena == NULL) lmp_raise(L, "ValueError", "queue is closed");
  return q;
}

static queueobj *check_open(lua_State *L, int idx) {
  queueobj *q = check_queue(L, idx);
  if (q->closed) lmp_raise(L, "ValueError", "queue is closed");
  return q;
}

/* ---- ring copies ---- */

static void ring_put(shm_queue *s, uint64_t pos, const void *src, size_t n) {
  if (n == 0) return;
  size_t at = (size_t)(pos % s->cap), first = s->cap - at;
  if (first > n) first = n;
  memcpy(s->buf + at, src, first);
  memcpy(s->buf, (const char *)src + first, n - first);
}

static void ring_get(shm_queue *s, uint64_t pos, void *dst, size_t n) {
  if (n == 0) return;
  size_t at = (size_t)(pos % s->cap), first = s->cap - at;
  if (first > n) first = n;
  memcpy(dst, s->buf + at, first);
  memcpy((char *)dst + first, s->buf, n - first);
}

/* Free bytes for writers (HDR bytes stay reserved so an ABORT chunk always fits). */
static uint64_t ring_free(shm_queue *s) {
  uint64_t used = s->tail - __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
  return used + HDR >= s->cap ? 0 : s->cap - HDR - used; /* an ABORT may use the reserve */
}

/* Publishes one chunk at tail (the caller holds wlock and checked the room). */
static void put_chunk(shm_queue *s, const char *p, uint32_t len, uint32_t flags) {
  uint32_t h[2] = {len, flags};
  ring_put(s, s->tail, h, HDR);
  ring_put(s, s->tail + HDR, p, len);
  __atomic_store_n(&s->tail, s->tail + HDR + len, __ATOMIC_RELEASE);
  __atomic_add_fetch(&s->wseq, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&s->rwaiters, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&s->wseq, INT_MAX);
}

/* Closes a multi-chunk item whose writer is gone; the caller holds wlock. */
static void abort_item(shm_queue *s) {
  if (!s->in_item) return;
  put_chunk(s, NULL, 0, F_ABORT);
  s->in_item = 0;
}

static int take_wlock(lua_State *L, shm_queue *s, double timeout) {
  int r = lmp_mutex_lock(L, &s->wlock, timeout);
  if (r == LMP_LOCK_ABANDONED) abort_item(s);
  return r;
}

/* Sleeps on *w (== seq) for up to the next slice, counted in *waiters. Returns -1 when the
** deadline has passed, -2 when the loop raised (error on the stack). Spins first: the other
** side is usually about to act. */
static int wait_on(lua_State *L, uint32_t *w, uint32_t seq, uint32_t *waiters, lmp_deadline *d,
                   int *spun) {
  for (int i = 0; i < SPINS && !*spun; i++) {
    if (__atomic_load_n(w, __ATOMIC_ACQUIRE) != seq) return 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((i & 255) == 255 && !d->forever && lmp_monotonic() >= d->end) break; /* a short wait */
  }
  *spun = 1; /* once per operation: a long wait sleeps */
  double sl = lmp_deadline_slice(NULL, d, 0.05);
  if (sl < 0) return -1;
  if (L != NULL && lmp_safe_tick(L, &sl) != 0) return -2;
  __atomic_add_fetch(waiters, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(w, __ATOMIC_SEQ_CST) == seq) lmp_futex_wait(w, seq, sl);
  __atomic_sub_fetch(waiters, 1, __ATOMIC_SEQ_CST);
  return 0;
}

/* Waits until the ring has room for need bytes (or maxsize allows an item when count).
** Returns -1 on timeout, -2 on a loop error (on the stack). */
static int wait_room(lua_State *L, shm_queue *s, uint64_t need, int count, lmp_deadline *d) {
  int spun = 0;
  for (;;) {
    uint32_t seq = __atomic_load_n(&s->rseq, __ATOMIC_SEQ_CST);
    int ok = ring_free(s) >= need;
    if (count && s->maxsize && __atomic_load_n(&s->nitems, __ATOMIC_SEQ_CST) >= s->maxsize)
      ok = 0;
    if (ok) return 0;
    int r = wait_on(L, &s->rseq, seq, &s->wwaiters, d, &spun);
    if (r < 0) return r;
  }
}

/* Leaves put_bytes: withdraws a partial item, releases the writer lock, raises Full (r == -1)
** or the loop's error (r == -2). */
static void put_fail(lua_State *L, shm_queue *s, int r) {
  abort_item(s);
  lmp_mutex_unlock(&s->wlock);
  if (r == -2) lua_error(L);
  lmp_raise(L, "Full", "queue is full");
}

/* Writes one encoded item; raises Full on timeout. The caller holds nothing. */
static void put_bytes(lua_State *L, shm_queue *s, const char *p, size_t n, double timeout) {
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  if (take_wlock(L, s, timeout) == LMP_LOCK_TIMEOUT) lmp_raise(L, "Full", "queue is full");
  if (n + HDR <= s->cap - HDR) { /* fits: one chunk */
    int r = wait_room(L, s, HDR + n, 1, &d);
    if (r < 0) put_fail(L, s, r);
    if (s->kind == Q_JOINABLE) __atomic_add_fetch(&s->unfinished, 1, __ATOMIC_SEQ_CST);
    put_chunk(s, p, (uint32_t)n, F_FIRST | F_LAST);
    __atomic_add_fetch(&s->nitems, 1, __ATOMIC_SEQ_CST);
    lmp_mutex_unlock(&s->wlock);
    return;
  }
  size_t sent = 0;
  uint64_t min_chunk = s->cap / 4;
  int r = wait_room(L, s, 0, 1, &d);
  if (r < 0) put_fail(L, s, r);
  while (sent < n) {
    uint64_t want = n - sent < min_chunk ? n - sent : min_chunk;
    if ((r = wait_room(L, s, HDR + want, 0, &d)) < 0) put_fail(L, s, r);
    lmp_deadline_init(&d, timeout); /* progress: the timeout starts again */
    uint64_t room = ring_free(s) - HDR, len = n - sent;
    if (len > room) len = room;
    if (len > UINT32_MAX / 2) len = UINT32_MAX / 2;
    uint32_t flags = (sent == 0 ? F_FIRST : 0) | (sent + len == n ? F_LAST : 0);
    if (flags & F_LAST && s->kind == Q_JOINABLE)
      __atomic_add_fetch(&s->unfinished, 1, __ATOMIC_SEQ_CST);
    put_chunk(s, p + sent, (uint32_t)len, flags);
    s->in_item = !(flags & F_LAST);
    sent += len;
  }
  __atomic_add_fetch(&s->nitems, 1, __ATOMIC_SEQ_CST);
  lmp_mutex_unlock(&s->wlock);
}

/* While a reader waits for the rest of an item: if the writer died, close its item. */
static void check_writer(shm_queue *s) {
  uint32_t owner = lmp_mutex_owner(&s->wlock);
  if (owner != 0 && owner != lmp_tid() && lmp_owner_dead(owner) &&
      take_wlock(NULL, s, 0) != LMP_LOCK_TIMEOUT)
    lmp_mutex_unlock(&s->wlock);
}

/* Reads one item into out; returns 0, -1 on timeout before an item started, -2 when the loop
** raised (error on the stack; a partly read item is lost, the rest of the queue is intact), or
** -3 when there was no memory for the item (it was dropped whole). The caller holds rlock.
** Chunks of an item this reader did not see start (the rest of an item whose reader was
** interrupted or killed) are dropped; every committed item that leaves the ring stops
** counting in nitems. */
static int get_bytes(lua_State *L, shm_queue *s, lmp_buf *out, double timeout) {
  enum { IDLE, ASSEMBLING, DROPPING } state = IDLE;
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  int spun = 0;
  for (;;) {
    uint32_t seq = __atomic_load_n(&s->wseq, __ATOMIC_SEQ_CST);
    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE), head = s->head;
    if (tail == head) {
      int r = wait_on(L, &s->wseq, seq, &s->rwaiters, &d, &spun);
      if (r == -2) return -2;
      if (r < 0) {
        if (state == IDLE) return -1;
        check_writer(s); /* an item that started is waited for while its writer lives */
        lmp_deadline_init(&d, 0.05);
      }
      continue;
    }
    uint32_t h[2];
    ring_get(s, head, h, HDR);
    if (h[1] & F_ABORT) state = IDLE;
    else if (h[1] & F_FIRST) out->len = 0, state = ASSEMBLING;
    if (state == ASSEMBLING) {
      if (lmp_buf_reserve(out, h[0]) != 0) {
        state = DROPPING; /* no memory for this item: drop it whole, keep the queue sound */
      } else {
        ring_get(s, head + HDR, out->p + out->len, h[0]);
        out->len += h[0];
      }
    }
    __atomic_store_n(&s->head, head + HDR + h[0], __ATOMIC_RELEASE);
    __atomic_add_fetch(&s->rseq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->wwaiters, __ATOMIC_SEQ_CST) > 0) lmp_futex_wake(&s->rseq, INT_MAX);
    if ((h[1] & F_LAST) && !(h[1] & F_ABORT)) {
      __atomic_sub_fetch(&s->nitems, 1, __ATOMIC_SEQ_CST);
      if (state == ASSEMBLING) return 0;
      if (state == DROPPING) return -3;
    }
  }
}

/* Raises what a failed get_bytes stands for. */
static int get_failed(lua_State *L, int r) {
  if (r == -2) return lua_error(L);
  if (r == -3)
    return lmp_raise(L, "ProcessError", "not enough memory for a queue item (it was dropped)");
  return lmp_raise(L, "Empty", "queue is empty");
}

/* ---- Lua methods ---- */

static void do_put(lua_State *L, queueobj *q, double timeout) {
  enc_buf.len = 0;
  lmp_encode_buf(L, 2, &enc_buf, NULL);
  put_bytes(L, q->o.p, enc_buf.p, enc_buf.len, timeout);
  if (enc_buf.cap > (4u << 20)) lmp_buf_free(&enc_buf);
}

static void check_item(lua_State *L) {
  if (lua_isnone(L, 2)) lmp_argerror(L, 2, "TypeError", "value expected (nil is a value too)");
}

/* put(v [, block [, timeout]]) */
static int l_put(lua_State *L) {
  queueobj *q = check_open(L, 1);
  check_item(L);
  lmp_checknargs(L, 4);
  double timeout = lmp_opt_timeout(L, 3);
  do_put(L, q, timeout);
  return 0;
}

static int l_put_nowait(lua_State *L) {
  queueobj *q = check_open(L, 1);
  check_item(L);
  lmp_checknargs(L, 2);
  do_put(L, q, 0);
  return 0;
}

static int do_get(lua_State *L, queueobj *q, double timeout) {
  shm_queue *s = q->o.p;
  if (timeout == 0 && __atomic_load_n(&s->nitems, __ATOMIC_SEQ_CST) <= 0)
    return lmp_raise(L, "Empty", "queue is empty");
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  if (lmp_mutex_lock(L, &s->rlock, timeout) == LMP_LOCK_TIMEOUT)
    return lmp_raise(L, "Empty", "queue is empty");
  double left = d.forever ? -1 : d.end - lmp_monotonic();
  int r = get_bytes(L, s, &dec_buf, d.forever ? LMP_FOREVER : (left < 0 ? 0 : left));
  lmp_mutex_unlock(&s->rlock);
  if (r < 0) return get_failed(L, r);
  lmp_decode(L, dec_buf.p, dec_buf.len, NULL, 0);
  if (dec_buf.cap > (4u << 20)) lmp_buf_free(&dec_buf);
  return 1;
}

/* get([block [, timeout]]) */
static int l_get(lua_State *L) {
  queueobj *q = check_open(L, 1);
  lmp_checknargs(L, 3);
  return do_get(L, q, lmp_opt_timeout(L, 2));
}

static int l_get_nowait(lua_State *L) {
  queueobj *q = check_open(L, 1);
  lmp_checknargs(L, 1);
  return do_get(L, q, 0);
}

/* The queue of a method that takes no argument. */
static shm_queue *check_noargs(lua_State *L) {
  queueobj *q = check_queue(L, 1);
  lmp_checknargs(L, 1);
  return q->o.p;
}

static int l_qsize(lua_State *L) {
  shm_queue *s = check_noargs(L);
  int64_t n = __atomic_load_n(&s->nitems, __ATOMIC_SEQ_CST);
  lua_pushinteger(L, n < 0 ? 0 : n);
  return 1;
}

static int l_empty(lua_State *L) {
  shm_queue *s = check_noargs(L);
  lua_pushboolean(L, __atomic_load_n(&s->nitems, __ATOMIC_SEQ_CST) <= 0);
  return 1;
}

static int l_full(lua_State *L) {
  shm_queue *s = check_noargs(L);
  lua_pushboolean(L, s->maxsize > 0 && __atomic_load_n(&s->nitems, __ATOMIC_SEQ_CST) >= s->maxsize);
  return 1;
}

/* close(): this handle puts and gets no more (other handles are unaffected). */
static int l_close(lua_State *L) {
  queueobj *q = check_queue(L, 1);
  lmp_checknargs(L, 1);
  q->closed = 1;
  return 0;
}

static int l_noop(lua_State *L) {
  check_queue(L, 1);
  lmp_checknargs(L, 1);
  return 0;
}

/* The JoinableQueue at 1 (task_done and join exist only there). */
static queueobj *check_joinable(lua_State *L) {
  queueobj *q = luaL_testudata(L, 1, qname[Q_JOINABLE]);
  if (q == NULL) lmp_typeerror(L, 1, qname[Q_JOINABLE]);
  return check_queue(L, 1);
}

static int l_task_done(lua_State *L) {
  queueobj *q = check_joinable(L);
  shm_queue *s = q->o.p;
  lmp_checknargs(L, 1);
  uint32_t v = __atomic_load_n(&s->unfinished, __ATOMIC_SEQ_CST);
  do {
    if (v == 0) return lmp_raise(L, "ValueError", "task_done() called too many times");
  } while (!__atomic_compare_exchange_n(&s->unfinished, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST));
  if (v == 1) lmp_futex_wake(&s->unfinished, INT_MAX);
  return 0;
}

/* join([timeout]) -> true when every item was task_done, false on timeout. */
static int l_join(lua_State *L) {
  queueobj *q = check_joinable(L);
  shm_queue *s = q->o.p;
  lmp_checknargs(L, 2);
  lmp_deadline d;
  lmp_deadline_init(&d, lmp_checktimeout(L, 2));
  for (;;) {
    uint32_t v = __atomic_load_n(&s->unfinished, __ATOMIC_SEQ_CST);
    if (v == 0) break;
    double sl = lmp_deadline_slice(L, &d, 0.05);
    if (sl < 0) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lmp_futex_wait(&s->unfinished, v, sl);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* _ready(): an item can be taken now (for mp.wait). */
static int l_ready(lua_State *L) {
  shm_queue *s = check_noargs(L);
  lua_pushboolean(L, __atomic_load_n(&s->nitems, __ATOMIC_SEQ_CST) > 0);
  return 1;
}

static int q_gc(lua_State *L) {
  queueobj *q = lua_touserdata(L, 1);
  lmp_shm_release(&q->o);
  return 0;
}

static int q_encode(lua_State *L) {
  queueobj *q = lua_touserdata(L, 1);
  if (q == NULL || q->o.arena == NULL)
    return lmp_raise(L, "SerializationError", "cannot send a closed queue");
  lmp_shm_obj *objs[1] = {&q->o};
  return lmp_shm_push_handle(L, qname[q->kind], objs, 1, "", 0);
}

static int q_decode(lua_State *L) {
  queueobj *q = lua_newuserdatauv(L, sizeof *q, 0);
  q->o.arena = NULL;
  q->closed = 0;
  lmp_shm_obj *objs[1] = {&q->o};
  size_t xl;
  lmp_shm_read_handle(L, objs, 1, &xl);
  shm_queue *s = q->o.p;
  size_t room = lmp_shm_capacity(&q->o);
  if (room < sizeof(shm_queue) || s->kind > Q_JOINABLE || s->cap == 0 ||
      s->cap > room - sizeof(shm_queue) || xl != 0)
    return lmp_raise(L, "SerializationError", "malformed queue handle");
  q->kind = (int)s->kind;
  luaL_setmetatable(L, qname[q->kind]);
  return 1;
}

/* Queue([maxsize]), JoinableQueue([maxsize]) (0 or negative: no limit), SimpleQueue(). */
static int new_queue(lua_State *L, int kind) {
  lmp_checknargs(L, kind == Q_SIMPLE ? 0 : 1);
  lua_Integer maxsize = kind == Q_SIMPLE ? 0 : lmp_optinteger(L, 1, 0);
  if (maxsize < 0) maxsize = 0;
  if (maxsize > INT32_MAX)
    return lmp_argerror(L, 1, "ValueError", "maxsize must be at most %d", INT32_MAX);
  queueobj *q = lua_newuserdatauv(L, sizeof *q, 0);
  q->o.arena = NULL;
  q->kind = kind;
  q->closed = 0;
  luaL_setmetatable(L, qname[kind]);
  if (lmp_shm_alloc(sizeof(shm_queue) + RING_CAP, &q->o) != 0)
    return lmp_raise(L, "ProcessError", "cannot allocate shared memory for a queue: %s",
                     strerror(errno));
  shm_queue *s = q->o.p;
  s->kind = (uint32_t)kind;
  s->maxsize = (uint32_t)maxsize;
  s->cap = RING_CAP;
  return 1;
}

static int l_Queue(lua_State *L) { return new_queue(L, Q_PLAIN); }
static int l_SimpleQueue(lua_State *L) { return new_queue(L, Q_SIMPLE); }
static int l_JoinableQueue(lua_State *L) { return new_queue(L, Q_JOINABLE); }

/* Test hook: _put_bytes(s [, timeout]) / _get_bytes([timeout]) move raw bytes (no codec). */
static int l_put_bytes(lua_State *L) {
  queueobj *q = check_open(L, 1);
  size_t n;
  const char *p = lmp_checklstring(L, 2, &n);
  put_bytes(L, q->o.p, p, n, lmp_checktimeout(L, 3));
  return 0;
}

static int l_get_bytes(lua_State *L) {
  queueobj *q = check_open(L, 1);
  shm_queue *s = q->o.p;
  double t = lmp_checktimeout(L, 2);
  if (lmp_mutex_lock(L, &s->rlock, t) == LMP_LOCK_TIMEOUT)
    return lmp_raise(L, "Empty", "queue is empty");
  int r = get_bytes(L, s, &dec_buf, t);
  lmp_mutex_unlock(&s->rlock);
  if (r < 0) return get_failed(L, r);
  lua_pushlstring(L, dec_buf.p, dec_buf.len);
  return 1;
}

void lmp__open_queue(lua_State *L) {
  int core = lua_gettop(L);
  static const luaL_Reg methods[] = {
      {"put", l_put},         {"get", l_get},         {"put_nowait", l_put_nowait},
      {"get_nowait", l_get_nowait}, {"qsize", l_qsize}, {"empty", l_empty},
      {"full", l_full},       {"close", l_close},     {"join_thread", l_noop},
      {"cancel_join_thread", l_noop}, {"task_done", l_task_done}, {"join", l_join},
      {"_ready", l_ready},    {"_put_bytes", l_put_bytes}, {"_get_bytes", l_get_bytes},
      {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", q_gc}, {"__close", q_gc}, {"__lmp_encode", q_encode},
                                  {NULL, NULL}};
  for (int k = 0; k < 3; k++) {
    lmp_shm_newclass(L, qname[k], methods, meta);
    if (k != Q_JOINABLE) { /* task_done/join only on JoinableQueue */
      luaL_getmetatable(L, qname[k]);
      lua_getfield(L, -1, "__index");
      lua_pushnil(L);
      lua_setfield(L, -2, "task_done");
      lua_pushnil(L);
      lua_setfield(L, -2, "join");
      lua_pop(L, 2);
    }
    lmp_shm_register(L, core, qname[k], q_decode);
  }
  static const luaL_Reg ctors[] = {{"Queue", l_Queue}, {"SimpleQueue", l_SimpleQueue},
                                   {"JoinableQueue", l_JoinableQueue}, {NULL, NULL}};
  luaL_setfuncs(L, ctors, 0);
}
