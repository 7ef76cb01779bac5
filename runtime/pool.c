/*
** pool.c — a pool's books: tasks and their queue, dispatch windows, retries, timeouts, stopping a
** call's work, and the delivery of results to their calls at one safe point of the loop turn.
** Whatever runs the tasks is reached through dispatch.h only.
** Caveat: backends report results in the middle of their I/O; those are only recorded here and
** delivered to Lua (decoding, callbacks) from the check phase, when no I/O is under way.
*/
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "codec.h"
#include "pool.h"

#define BIG_ARGS (64u << 10) /* arguments this big are handed over, not copied */

/* A descriptor sent by queued tasks: one duplicate per object, however many tasks send it. */
struct lmp_fdshare {
  lmp_fdshare *next;
  int orig, fd, refs;
  dev_t dev;
  ino_t ino;
};

static void on_check(uv_check_t *h);
static void on_idle(uv_idle_t *h);
static void task_init(lmp_pool *p, ptask *t, lmp_call *c, int kind, lmp_fnent *f);
static void on_timer(uv_timer_t *h);

static const lmp_call_ops *call_ops;

void lmp_pool_set_call_ops(const lmp_call_ops *ops) { call_ops = ops; }

void lmp_pool_push_calls(lua_State *L, lmp_pool *p) {
  if (p->calls == LUA_NOREF) lua_newtable(L); /* the pool is being freed: nothing to keep */
  else lua_rawgeti(L, LUA_REGISTRYINDEX, p->calls);
}

/* ---- shared descriptors ---- */

/* The share of descriptor fd (the same open file as before), taking a reference; NULL with
** errno set when it cannot be duplicated. */
static lmp_fdshare *share_get(lmp_pool *p, int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return NULL;
  for (lmp_fdshare *s = p->shares; s != NULL; s = s->next)
    if (s->orig == fd && s->dev == st.st_dev && s->ino == st.st_ino) {
      s->refs++;
      return s;
    }
  lmp_fdshare *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (s->fd < 0) {
    free(s);
    return NULL;
  }
  lmp_fd_own(s->fd); /* workers forked meanwhile must not hold it */
  *s = (lmp_fdshare){p->shares, fd, s->fd, 1, st.st_dev, st.st_ino};
  p->shares = s;
  return s;
}

static void share_put(lmp_pool *p, lmp_fdshare *s) {
  if (--s->refs > 0) return;
  lmp_fdshare **pp = &p->shares;
  while (*pp != s) pp = &(*pp)->next;
  *pp = s->next;
  lmp_fd_disown(s->fd);
  close(s->fd);
  free(s);
}

/* ---- tasks ---- */

static void task_free(ptask *t) {
  lmp_fnent_release(t->t.fn);
  for (int i = 0; i < t->nshares; i++) share_put(t->pool, t->shares[i]);
  free(t->shares);
  free(t->fdv);
  free(t->argbuf);
  free(t->out.block);
  free(t->out.why);
  free(t);
}

void lmp_task_hold(lmp_task *t) { ((ptask *)t)->refs++; }

void lmp_task_release(lmp_task *t) {
  ptask *pt = (ptask *)t;
  if (--pt->refs == 0) task_free(pt);
}

/* Takes t out of its call's list (the call no longer waits for it). */
static void task_unlink(ptask *t) {
  lmp_call *c = t->call;
  if (c == NULL) return;
  if (t->cprev) t->cprev->cnext = t->cnext;
  else c->tasks = t->cnext;
  if (t->cnext) t->cnext->cprev = t->cprev;
  t->cnext = t->cprev = NULL;
  c->ntasks--;
}

/* Timeouts count from the start: the pool's list of started tasks that have one. */
static void time_add(lmp_pool *p, ptask *t) {
  if (t->timed || t->t.timeout <= 0) return;
  t->timed = 1;
  t->tprev = NULL;
  t->tnext = p->timed;
  if (p->timed) p->timed->tprev = t;
  p->timed = t;
  if (!p->timer_on) {
    p->timer_on = 1;
    uv_timer_start(&p->timer, on_timer, TIMEOUT_CHECK_MS, TIMEOUT_CHECK_MS);
  }
}

static void time_remove(lmp_pool *p, ptask *t) {
  if (!t->timed) return;
  t->timed = 0;
  if (t->tprev) t->tprev->tnext = t->tnext;
  else p->timed = t->tnext;
  if (t->tnext) t->tnext->tprev = t->tprev;
  t->tnext = t->tprev = NULL;
}

/* ---- the queue ---- */

static void queue_push(lmp_pool *p, ptask *t, int front) {
  t->state = T_QUEUED;
  t->started = 0;
  if (front) {
    t->qprev = NULL;
    t->t.next = (lmp_task *)p->qhead;
    if (p->qhead) p->qhead->qprev = t;
    else p->qtail = t;
    p->qhead = t;
  } else {
    t->t.next = NULL;
    t->qprev = p->qtail;
    if (p->qtail) p->qtail->t.next = (lmp_task *)t;
    else p->qhead = t;
    p->qtail = t;
  }
  p->nqueued++;
}

/* Takes a queued task out of the queue wherever it is (a stopped call's: many at once). */
static void queue_remove(lmp_pool *p, ptask *t) {
  ptask *next = (ptask *)t->t.next;
  if (t->qprev) t->qprev->t.next = (lmp_task *)next;
  else p->qhead = next;
  if (next) next->qprev = t->qprev;
  else p->qtail = t->qprev;
  t->t.next = NULL;
  t->qprev = NULL;
  p->nqueued--;
}

static ptask *queue_pop(lmp_pool *p) {
  ptask *t = p->qhead;
  if (t == NULL) return NULL;
  queue_remove(p, t);
  return t;
}

static void pump(lmp_pool *p) {
  if (p->backend != NULL && !p->dead) p->backend->ops->pump(p->backend);
}

/* ---- settling ---- */

void lmp_pool_kick(lmp_pool *p) {
  if (p->dead) return;
  if (p->settled != NULL) uv_idle_start(&p->idle, on_idle); /* the poll must not block now */
  lmp_loop_notify(p->lp);
}

/* Records t's outcome for delivery. */
static void settle(lmp_pool *p, ptask *t) {
  time_remove(p, t);
  t->state = T_SETTLED;
  t->snext = NULL;
  if (p->settled_tail) p->settled_tail->snext = t;
  else p->settled = t;
  p->settled_tail = t;
  lmp_pool_kick(p);
}

/* Settles t as lost (reason LOST_*, why describes it). */
static void settle_lost(lmp_pool *p, ptask *t, int reason, const char *why, pid_t pid, int code) {
  t->out.status = -1 - reason;
  t->out.why = why ? strdup(why) : NULL;
  t->out.pid = pid;
  t->out.code = code;
  settle(p, t);
}

/* Fails every queued task (the pool cannot run them). */
static void fail_queue(lmp_pool *p, int reason, const char *why) {
  ptask *t;
  while ((t = queue_pop(p)) != NULL) settle_lost(p, t, reason, why, 0, 0);
}

/* ---- from the backend ---- */

int lmp_pool_window(const lmp_pool *p, const ptask *t) {
  double avg = *t->avg;
  if (avg <= 0) return 1; /* unknown: one at a time */
  /* slow: one at a time, but a map's chunk has the next beside it, so the worker need not
  ** wait for the parent (and the bytes of a big chunk) between two: chunks are alike, and the
  ** default chunking makes the last ones small. Not at the end of the queue, though: a chunk
  ** waiting behind a running one while another worker sits idle would make the call last up
  ** to a chunk longer (8 tasks of 0.25 s on 2 workers took 1.17 s so, instead of 1.0) */
  if (avg > WINDOW_SLOW) return t->t.kind != K_APPLY && p->nqueued > p->processes ? 2 : 1;
  if (avg > WINDOW_MEDIUM) return 4;
  if (avg > WINDOW_QUICK) return 32;
  return WINDOW_MAX;
}

lmp_task *lmp_pool_next(lmp_pool *p, int width) {
  ptask *t = p->qhead;
  if (t == NULL || width >= lmp_pool_window(p, t)) return NULL;
  queue_pop(p);
  t->state = T_OUT;
  return &t->t;
}

void lmp_pool_started(lmp_pool *p, lmp_task *t, double now) {
  ptask *pt = (ptask *)t;
  if (pt->started > 0) return;
  pt->started = now;
  time_add(p, pt);
}

void lmp_pool_result(lmp_pool *p, lmp_task *t, int status, char *block, const char *msg, size_t n,
                     uint32_t index, pid_t pid) {
  ptask *pt = (ptask *)t;
  if (pt->started > 0) {
    double took = lmp_monotonic() - pt->started;
    *pt->avg = *pt->avg == 0 ? took : *pt->avg * 0.8 + took * 0.2;
  }
  pt->out = (outcome){status, block, msg, n, index, pid, 0, NULL};
  if (msg == NULL) pt->out.status = -1 - LOST_DIED, pt->out.why = strdup("out of memory reading the result");
  settle(p, pt);
}

void lmp_pool_result_copy(lmp_pool *p, lmp_task *t, int status, const char *msg, size_t n,
                          uint32_t index, pid_t pid) {
  ptask *pt = (ptask *)t;
  if (n <= RESULT_INLINE) {
    memcpy(pt->rbuf, msg, n);
    lmp_pool_result(p, t, status, NULL, pt->rbuf, n, index, pid);
    return;
  }
  char *block = malloc(n);
  if (block) memcpy(block, msg, n);
  lmp_pool_result(p, t, status, block, block, n, index, pid);
}

void lmp_pool_lost(lmp_pool *p, lmp_task *t, int reason, const char *why, pid_t pid, int code) {
  ptask *pt = (ptask *)t;
  time_remove(p, pt);
  int stopped = pt->call == NULL || pt->call->stopped;
  if (reason == LOST_DIED && pt->retries > 0 && p->state != P_TERMINATE && !stopped && !p->broken) {
    pt->retries--;
    queue_push(p, pt, 1);
    pump(p);
    return;
  }
  if (p->state == P_TERMINATE && reason == LOST_DIED) reason = LOST_TERMINATED;
  settle_lost(p, pt, reason, why, pid, code);
}

void lmp_pool_requeue(lmp_pool *p, lmp_task *t) {
  ptask *pt = (ptask *)t;
  time_remove(p, pt);
  if (p->state == P_TERMINATE || p->broken) {
    settle_lost(p, pt, p->broken ? LOST_BROKEN : LOST_TERMINATED,
                p->broken ? "pool workers die before they are ready (does the initializer fail?)"
                          : "the pool was terminated before the task ran", 0, 0);
    return;
  }
  queue_push(p, pt, 1);
}

void lmp_pool_worker_ready(lmp_pool *p) { p->init_failures = 0; }

int lmp_pool_worker_failed(lmp_pool *p, int exited, const char *why, pid_t pid, int code) {
  /* an initializer that fails (the worker exits with a status) breaks the pool after 3 in a row;
  ** deaths by signal (a killer outside, a crash) after 9, so random kills of fresh workers do
  ** not pass for a broken initializer */
  if (p->state == P_TERMINATE) return 0;
  p->init_failures += exited ? 3 : 1;
  if (p->init_failures < BROKEN_AFTER) return 0;
  p->broken = 1;
  fail_queue(p, LOST_BROKEN, "pool workers die before they are ready (does the initializer fail?)");
  return 1;
}

void lmp_pool_backend_failed(lmp_pool *p, const char *why) {
  if (p->broken) return;
  p->broken = 2;
  snprintf(p->broken_why, sizeof p->broken_why, "%s", why);
  fail_queue(p, LOST_BACKEND, why);
}

int lmp_pool_task_retries(const lmp_task *t) { return ((const ptask *)t)->retries; }

int lmp_pool_accepting(lmp_pool *p) {
  return p->state == P_RUN ? 1 : p->state == P_CLOSE ? 2 : 0;
}

long lmp_pool_queued(lmp_pool *p) { return p->nqueued; }

/* ---- submitting ---- */

typedef struct encjob {
  lmp_buf *out;
  lmp_fdvec *fds;
  const char *root;
  int64_t first, count;
  size_t objs;
} encjob;

/* Protected: encodes the value at 1 (or its slice) as the job says. */
static int pencode(lua_State *L) {
  encjob *j = lua_touserdata(L, 2);
  if (j->count < 0) lmp__encode_named(L, 1, j->out, j->fds, j->root);
  else j->objs = lmp__encode_range(L, 1, j->first, j->count, j->out, j->fds, j->root);
  return 0;
}

/* Gives the task the descriptors found while encoding (shared per object). */
static int take_fds(lmp_pool *p, ptask *t) {
  int n = p->fdv.n;
  if (n == 0) return 0;
  t->shares = calloc((size_t)n, sizeof *t->shares);
  t->fdv = calloc((size_t)n, sizeof *t->fdv);
  if (t->shares == NULL || t->fdv == NULL) return -1;
  for (int i = 0; i < n; i++) {
    lmp_fdshare *s = share_get(p, p->fdv.fd[i]);
    if (s == NULL) return -1;
    t->shares[t->nshares++] = s;
    t->fdv[i] = s->fd;
  }
  t->t.fds = t->fdv;
  t->t.nfds = n;
  return 0;
}

/* Gives the new task t the encoded arguments of the scratch buffer: inline when small (they
** were allocated with it), handed over when big, else copied. 0, or -1 when out of memory. */
static int take_args(lmp_pool *p, ptask *t, size_t arglen) {
  lmp_buf *b = &p->scratch;
  if (arglen <= ARGS_INLINE) {
    memcpy(t->inl, b->p, arglen);
    t->t.args = t->inl;
    return 0;
  }
  if (b->len >= BIG_ARGS) {
    t->argbuf = b->p;
    *b = (lmp_buf){0};
  } else if ((t->argbuf = malloc(arglen)) != NULL) {
    memcpy(t->argbuf, b->p, arglen);
  } else {
    return -1;
  }
  t->t.args = t->argbuf;
  return 0;
}

ptask *lmp_pool_task(lua_State *L, lmp_pool *p, lmp_call *c, int kind, lmp_fnent *f, int argidx,
                     int64_t first, int64_t count, const char *root) {
  p->scratch.len = 0;
  p->fdv.n = 0;
  encjob j = {&p->scratch, &p->fdv, root, first, count, 0};
  lua_pushcfunction(L, pencode);
  lua_pushvalue(L, argidx);
  lua_pushlightuserdata(L, &j);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lmp_fnent_release(f);
    if (p->scratch.cap > BIG_ARGS) lmp_buf_free(&p->scratch);
    lua_error(L);
  }
  if (p->fdv.n > 64) {
    lmp_fnent_release(f);
    lmp_raise(L, "SerializationError", "%s: more than 64 descriptors in one task", root);
  }
  size_t arglen = p->scratch.len;
  p->last_objs = j.objs;
  ptask *t = calloc(1, sizeof *t + (arglen <= ARGS_INLINE ? arglen : 0));
  if (t == NULL || take_args(p, t, arglen) != 0) {
    free(t);
    lmp_fnent_release(f);
    luaL_error(L, "not enough memory");
  }
  t->pool = p;
  t->refs = 1;
  t->t.arglen = arglen;
  t->t.fn = f;
  if (take_fds(p, t) != 0) {
    int e = errno;
    task_free(t);
    lmp_raise(L, "SerializationError", "%s: cannot share a descriptor: %s", root, strerror(e));
  }
  task_init(p, t, c, kind, f);
  if (count >= 0) {
    t->start = first;
    t->count = (uint32_t)count;
  }
  return t;
}

/* Links a new task to its call and gives it its defaults. */
static void task_init(lmp_pool *p, ptask *t, lmp_call *c, int kind, lmp_fnent *f) {
  t->pool = p;
  t->refs = 1;
  t->t.fn = f;
  t->t.id = ++p->next_id;
  t->t.kind = (uint8_t)kind;
  t->t.timeout = c->timeout > 0 ? c->timeout : p->task_timeout;
  t->retries = p->retries;
  t->call = c;
  t->avg = c->kind == CALL_MAP || c->kind == CALL_IMAP ? &c->avg : &f->avg;
  t->t.avg = t->avg;
  t->start = 1;
  t->count = 1;
  t->cnext = c->tasks;
  if (c->tasks) c->tasks->cprev = t;
  c->tasks = t;
  c->ntasks++;
}

ptask *lmp_pool_task_raw(lmp_pool *p, lmp_call *c, int kind, lmp_fnent *f, const char *args,
                         size_t arglen) {
  int inl = arglen <= ARGS_INLINE;
  ptask *t = calloc(1, sizeof *t + (inl ? arglen : 0));
  char *a = t == NULL ? NULL : inl ? t->inl : malloc(arglen);
  if (a == NULL) {
    free(t);
    lmp_fnent_release(f);
    return NULL;
  }
  memcpy(a, args, arglen);
  if (!inl) t->argbuf = a;
  t->t.args = a;
  t->t.arglen = arglen;
  task_init(p, t, c, kind, f);
  return t;
}

void lmp_pool_submit(lua_State *L, lmp_pool *p, ptask *t) {
  if (p->broken) {
    settle_lost(p, t, LOST_BROKEN, "pool workers die before they are ready (does the initializer fail?)", 0, 0);
    return;
  }
  if (p->state == P_TERMINATE) { /* an imap still being fed */
    settle_lost(p, t, LOST_TERMINATED, "the pool was terminated before the task ran", 0, 0);
    return;
  }
  size_t weight = 1 + t->t.arglen / PUMP_BYTES;
  queue_push(p, t, 0);
  pump(p);
  /* a long run of submits: let results in and more tasks out now and then, so the workers are
  ** not idle while the caller is still submitting (a big task counts for more: it took longer
  ** to encode, and the workers get through their windows sooner) */
  p->since_pump += weight;
  if (p->since_pump >= PUMP_EVERY && p->nqueued > 0) {
    p->since_pump = 0;
    lmp_loop_run_nowait(L);
  }
}

lmp_fnent *lmp_pool_fn(lua_State *L, lmp_pool *p, int idx) {
  int forgot = 0;
  lmp_fnent *f = lmp_fncache_get(L, &p->fns, idx, &forgot);
  if (forgot && p->backend) p->backend->ops->forget(p->backend);
  return f;
}

/* ---- stopping ---- */

/* The pool is done with t (not settled, or delivered): its call stops waiting for it. */
static void task_drop(lmp_pool *p, ptask *t) {
  time_remove(p, t);
  task_unlink(t);
  t->call = NULL;
  lmp_task_release(&t->t);
}

long lmp_pool_stop_call(lua_State *L, lmp_pool *p, lmp_call *c, int mode) {
  long never = 0;
  int kill = mode == STOP_KILL;
  for (ptask *t = c->tasks, *next; t != NULL; t = next) {
    next = t->cnext;
    if (t->state == T_QUEUED) {
      queue_remove(p, t);
      task_drop(p, t);
      never++;
    } else if (t->state == T_OUT && p->backend != NULL) {
      if (p->backend->ops->withdraw(p->backend, &t->t)) {
        task_drop(p, t);
        never++;
      } else if (kill && !t->stopping) {
        t->stopping = 1;
        p->backend->ops->stop(p->backend, &t->t, LOST_STOPPED);
      }
    } /* settled ones are dropped when their turn to be delivered comes */
  }
  if (mode != STOP_WITHDRAW || never > 0) {
    c->stopped = 1;
    c->open = 0;
  }
  call_ops->unregister_if_done(L, c);
  pump(p); /* workers that were holding its tasks have room again */
  return never;
}

/* Every TIMEOUT_CHECK_MS while tasks with a timeout run: stop the overdue ones. */
static void on_timer(uv_timer_t *h) {
  lmp_pool *p = h->data;
  double now = lmp_monotonic();
  for (ptask *t = p->timed; t != NULL; t = t->tnext)
    if (!t->stopping && now - t->started > t->t.timeout) {
      t->stopping = 1;
      p->backend->ops->stop(p->backend, &t->t, LOST_TIMEOUT);
    }
  if (p->timed == NULL) {
    uv_timer_stop(h);
    p->timer_on = 0;
  }
}

void lmp_pool_close(lmp_pool *p) {
  if (p->state != P_RUN) return;
  p->state = P_CLOSE;
  if (p->backend) p->backend->ops->close(p->backend);
}

void lmp_pool_terminate(lmp_pool *p) {
  if (p->state == P_TERMINATE) return;
  p->state = P_TERMINATE;
  fail_queue(p, LOST_TERMINATED, "the pool was terminated before the task ran");
  if (p->backend) p->backend->ops->terminate(p->backend);
}

/* ---- delivering ---- */

/* Fails t's call with the error on top (a result that could not be decoded...). */
static void deliver_failed(lua_State *L, ptask *t) {
  if (!lmp_iserror_value(L, -1)) {
    const char *m = lua_tostring(L, -1);
    lmp_error_push(L, "SerializationError", m ? m : "the result cannot be delivered");
    lua_remove(L, -2);
  }
  call_ops->fail(L, t->call, t->start);
}

/* Takes the next settled task off the list, the call counting it delivered from here on. */
static ptask *next_settled(lmp_pool *p) {
  ptask *t = p->settled;
  if (t == NULL) return NULL;
  p->settled = t->snext;
  if (p->settled == NULL) p->settled_tail = NULL;
  if (t->call != NULL) task_unlink(t);
  return t;
}

/* The pool is done with a delivered task. */
static void delivered(lua_State *L, ptask *t) {
  lmp_call *c = t->call;
  if (c != NULL) {
    call_ops->unregister_if_done(L, c);
    t->call = NULL;
  }
  lmp_task_release(&t->t);
}

/* Protected: delivers settled tasks one after another (p->current is the one in hand, for
** the caller when delivering it raises), so a whole batch costs one protected call. */
static int pdeliver_all(lua_State *L) {
  lmp_pool *p = lua_touserdata(L, 1);
  int top = lua_gettop(L);
  while ((p->current = next_settled(p)) != NULL) {
    ptask *t = p->current;
    if (t->call != NULL && !t->call->stopped) {
      lua_pushcfunction(L, call_ops->deliver);
      lua_pushlightuserdata(L, t);
      lua_call(L, 1, 0);
    }
    p->current = NULL;
    delivered(L, t);
    lua_settop(L, top);
  }
  return 0;
}

void lmp_pool_deliver(lua_State *L, lmp_pool *p) {
  if (p->delivering || p->dead || L == NULL) return;
  p->delivering = 1;
  int top = lua_gettop(L);
  while (p->settled != NULL && lua_checkstack(L, 8)) {
    lua_pushcfunction(L, pdeliver_all);
    lua_pushlightuserdata(L, p);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK && p->current != NULL) { /* it could not be decoded */
      ptask *t = p->current;
      p->current = NULL;
      if (t->call != NULL) deliver_failed(L, t);
      delivered(L, t);
    }
    lua_settop(L, top);
  }
  uv_idle_stop(&p->idle);
  p->delivering = 0;
  lmp_loop_notify(p->lp);
}

static void on_check(uv_check_t *h) {
  lmp_pool *p = h->data;
  if (p->settled != NULL) lmp_pool_deliver(p->lp->L, p);
}

static void on_idle(uv_idle_t *h) {
  lmp_pool *p = h->data;
  if (p->settled == NULL) uv_idle_stop(h);
}

/* ---- life ---- */

lmp_pool *lmp_pool_create(lua_State *L, int processes) {
  lmp_pool *p = calloc(1, sizeof *p);
  if (p == NULL) return NULL;
  p->lp = lmp_loop_get(L);
  p->processes = processes;
  p->calls = LUA_NOREF;
  lmp_fncache_init(L, &p->fns);
  uv_timer_init(&p->lp->uv, &p->timer);
  p->timer.data = p;
  uv_check_init(&p->lp->uv, &p->check);
  p->check.data = p;
  uv_check_start(&p->check, on_check);
  uv_unref((uv_handle_t *)&p->check);
  uv_idle_init(&p->lp->uv, &p->idle);
  p->idle.data = p;
  uv_unref((uv_handle_t *)&p->idle);
  p->lp->active++;
  return p;
}

static void pool_free(lmp_pool *p) {
  lmp_fncache_free(&p->fns);
  lmp_buf_free(&p->scratch);
  lmp_fdvec_free(&p->fdv);
  free(p);
#ifdef __GLIBC__
  malloc_trim(0); /* a busy pool leaves much freed memory behind: later forks copy less */
#endif
}

static void handle_closed(uv_handle_t *h) {
  lmp_pool *p = h->data;
  if (--p->closes == 0) pool_free(p);
}

void lmp_pool_destroy(lua_State *L, lmp_pool *p) {
  p->state = P_TERMINATE;
  p->dead = 1;
  p->lp->active--;
  if (p->backend) p->backend->ops->destroy(p->backend); /* workers killed; tasks given back */
  p->backend = NULL;
  ptask *t;
  while ((t = queue_pop(p)) != NULL) task_drop(p, t);
  while ((t = p->settled) != NULL) {
    p->settled = t->snext;
    task_drop(p, t);
  }
  p->settled_tail = NULL;
  lmp_fncache_unref(L, &p->fns);
  p->closes = 3;
  uv_close((uv_handle_t *)&p->timer, handle_closed);
  uv_close((uv_handle_t *)&p->check, handle_closed);
  uv_close((uv_handle_t *)&p->idle, handle_closed);
  /* memory goes in the close callbacks, the next time the loop runs: never run it from a
  ** finalizer, which may be called in the middle of anything */
}
