/*
** workers.c — the local backend of dispatch.h: a pool's worker processes, each on its own line
** (link.h), with windows of tasks, exact withdrawal through the ring's claims, deaths and their
** replacements, and the short watch of the ring that makes a lone quick round trip fast.
** Caveats: runs no Lua code at all (replacements are forked from C with the paths saved at the
** start), so it is safe in the middle of any loop phase. A worker holds at most its window of
** tasks; they run in order, so the first in its list is the running one.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bytes.h"
#include "frame.h"
#include "link.h"
#include "pool.h"

#define SOCK_BUF (1 << 20)
#define FLUSH_AT (16u << 10)   /* a busy worker's tasks go out in one write once this many wait */
#define LEND_AT (16u << 10)    /* arguments this big are sent from the task's memory */
#define SPIN_LIMIT 250e-6      /* the longest watch of the ring for a lone quick result */
#define SPIN_TASKS 150e-6      /* ... only for tasks that average less than this */

typedef struct lworkers lworkers;

typedef struct worker {
  lworkers *b;
  lmp_link *link;
  pid_t pid;
  int slot, number;          /* PoolWorker-N */
  lmp_task *head, *tail;     /* in flight, in order: the head is running (or about to) */
  int n;
  uint32_t seq;              /* tasks sent on this line */
  uint8_t *known;            /* bit set of the function ids this worker has loaded */
  size_t capknown;
  long sent;                 /* for maxtasksperchild */
  int ready, reaped, exitcode, quitting, gone;
  int stop_reason;           /* >= 0: the pool killed it to stop stop_task (LOST_*) */
  lmp_task *stop_task;
} worker;

struct lworkers {
  lmp_backend base;
  lmp_loop *lp;
  worker **w;
  int n;
  char *init;                /* the initializer's codec message */
  size_t initlen;
  long maxtasks;
  char *path, *cpath;        /* package paths for the workers */
  int spawn;                 /* exec'd workers: no shared memory, no ring */
  int destroyed, closes;
  uv_prepare_t prepare;      /* before the loop blocks: flush, read rings, announce */
  uv_check_t check;          /* after it woke: the parent is busy, no more announcements */
};

static int worker_counter; /* PoolWorker-N, across pools */

static int spawn_worker(lworkers *b, int slot);
static void pump(lmp_backend *base);

/* ---- a worker's list of tasks ---- */

static void list_push(worker *w, lmp_task *t) {
  t->next = NULL;
  t->where = w;
  if (w->tail) w->tail->next = t;
  else w->head = t;
  w->tail = t;
  w->n++;
}

static void list_remove(worker *w, lmp_task *t) {
  lmp_task **pp = &w->head, *prev = NULL;
  while (*pp != NULL && *pp != t) prev = *pp, pp = &(*pp)->next;
  if (*pp == NULL) return;
  *pp = t->next;
  if (w->tail == t) w->tail = prev;
  t->next = NULL;
  t->where = NULL;
  w->n--;
}

static lmp_task *list_pop(worker *w) {
  lmp_task *t = w->head;
  if (t != NULL) list_remove(w, t);
  return t;
}

/* ---- sending ---- */

static int knows(worker *w, uint32_t id) {
  return (size_t)(id >> 3) < w->capknown && (w->known[id >> 3] >> (id & 7)) & 1;
}

/* Records that w has loaded function id (when memory allows; else it is sent again). */
static void learns(worker *w, uint32_t id) {
  size_t need = (size_t)(id >> 3) + 1;
  if (need > w->capknown) {
    size_t cap = w->capknown ? w->capknown : 64;
    while (cap < need) cap *= 2;
    uint8_t *k = realloc(w->known, cap);
    if (k == NULL) return;
    memset(k + w->capknown, 0, cap - w->capknown);
    w->known = k;
    w->capknown = cap;
  }
  w->known[id >> 3] |= (uint8_t)(1u << (id & 7));
}

static void release_task(void *ud) { lmp_task_release(ud); }

/* Queues t on w's line; -1 when out of memory (t stays the caller's). */
static int send_task(worker *w, lmp_task *t) {
  int sendfn = !knows(w, t->fn->id);
  uint32_t seq = w->seq;
  char head[TASK_HEAD];
  lmp_put_le64(head, t->id);
  head[8] = (char)t->kind;
  lmp_put_le32(head + 9, t->fn->id);
  lmp_put_le64(head + 13, sendfn ? (uint64_t)t->fn->len : 0);
  lmp_put_le32(head + 21, seq);
  struct iovec parts[3] = {{head, sizeof head}, {sendfn ? t->fn->msg : NULL, sendfn ? t->fn->len : 0},
                           {(char *)t->args, t->arglen}};
  int lend = t->arglen >= LEND_AT;
  lmp_ring *r = lmp_link_ring(w->link);
  if (r != NULL) lmp_claim_reset(r, seq);
  /* a frame that lends the task's memory or carries its descriptors holds the task until it is
  ** written; a copied one needs nothing more of it (and coalesces with its neighbours) */
  int hold = lend || t->nfds > 0;
  if (hold) lmp_task_hold(t);
  int rc = lend ? lmp_wq_frame_lend(lmp_link_out(w->link), F_TASK, parts, 2, t->args, t->arglen,
                                    t->fds, t->nfds, release_task, t)
                : lmp_wq_frame(lmp_link_out(w->link), F_TASK, parts, 3, t->fds, t->nfds,
                               hold ? release_task : NULL, hold ? t : NULL);
  if (rc != 0) {
    if (hold) lmp_task_release(t);
    return -1;
  }
  t->seq = seq;
  w->seq++;
  if (sendfn) learns(w, t->fn->id);
  return 0;
}

static void send_plain(worker *w, int type) {
  lmp_wq_frame(lmp_link_out(w->link), type, NULL, 0, NULL, 0, NULL, NULL);
  lmp_link_flush(w->link);
}

/* ---- workers ---- */

static int alive(const worker *w) {
  return w != NULL && !w->reaped && !w->quitting && w->stop_reason < 0 && !lmp_link_ended(w->link);
}

/* How many tasks w may still be given (by the window, maxtasksperchild, the ring). */
static int accepts(const lworkers *b, const worker *w) {
  if (!alive(w)) return 0;
  if (b->maxtasks > 0 && w->sent >= b->maxtasks) return 0;
  if (lmp_link_ring(w->link) == NULL && w->n > 0) return 0; /* no claims: one at a time */
  return w->n < WINDOW_MAX;
}

/* The worker that may take a task and holds the fewest, or NULL. */
static worker *pick(lworkers *b) {
  worker *best = NULL;
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (accepts(b, w) && (best == NULL || w->n < best->n)) best = w;
  }
  return best;
}

/* Work waits and a slot is empty (a replacement could not start, or a closed pool's workers
** left before an imap added more): start workers again. */
static void refill(lworkers *b) {
  lmp_pool *p = b->base.pool;
  if (lmp_pool_queued(p) == 0 || lmp_pool_accepting(p) == 0) return;
  for (int i = 0; i < b->n; i++)
    if (b->w[i] == NULL) spawn_worker(b, i);
}

static void pump(lmp_backend *base) {
  lworkers *b = (lworkers *)base;
  lmp_pool *p = base->pool;
  if (b->destroyed) return;
  refill(b);
  double now = lmp_monotonic();
  for (;;) {
    worker *w = pick(b);
    if (w == NULL) break;
    lmp_task *t = lmp_pool_next(p, w->n);
    if (t == NULL) break;
    int idle = w->n == 0;
    if (send_task(w, t) != 0) {
      lmp_pool_requeue(p, t);
      break;
    }
    list_push(w, t);
    w->sent++;
    if (idle) lmp_pool_started(p, t, now);
    /* an idle worker gets its task now; busy ones get theirs in one write before the poll */
    if (idle || lmp_link_queued(w->link) > FLUSH_AT) lmp_link_flush(w->link);
  }
  if (lmp_pool_accepting(p) != 1 && lmp_pool_queued(p) == 0) { /* closed: idle workers leave */
    for (int i = 0; i < b->n; i++) {
      worker *w = b->w[i];
      if (alive(w) && w->n == 0) {
        w->quitting = 1;
        send_plain(w, F_QUIT);
      }
    }
  }
}

/* ---- results ---- */

static void on_result(worker *w, const lmp_frame *f) {
  if (f->n < RESULT_HEAD) return;
  uint64_t id = lmp_get_le64(f->p);
  int status = (unsigned char)f->p[8];
  uint32_t index = lmp_get_le32(f->p + 9);
  /* usually the first in line; but a batch that did not fit the ring came through the socket
  ** and may be read before results still in the ring: find it wherever it stands */
  lmp_task *t = w->head;
  while (t != NULL && t->id != id) t = t->next;
  if (t == NULL) return; /* withdrawn meanwhile, or not this worker's: nothing waits for it */
  int was_head = t == w->head;
  list_remove(w, t);
  lmp_pool *p = w->b->base.pool;
  if (f->n - RESULT_HEAD <= RESULT_INLINE) { /* small: copied, no allocation */
    lmp_pool_result_copy(p, t, status, f->p + RESULT_HEAD, f->n - RESULT_HEAD, index, w->pid);
  } else {
    const char *msg;
    char *block = lmp_link_keep(w->link, f, &msg);
    lmp_pool_result(p, t, status, block, block ? msg + RESULT_HEAD : NULL, f->n - RESULT_HEAD,
                    index, w->pid);
  }
  if (was_head && w->head != NULL) lmp_pool_started(p, w->head, lmp_monotonic());
  pump(&w->b->base); /* it has room now */
}

static void worker_gone(worker *w);

/* The line's callback: every frame from the worker, and its end (f == NULL). */
static int on_frame(void *owner, lmp_link *k, const lmp_frame *f) {
  worker *w = owner;
  if (f == NULL) {
    if (w->reaped) worker_gone(w);
    else lmp_children_reap(); /* its exit may be reapable already */
    return 1;
  }
  switch (f->type) {
    case F_RESULT: on_result(w, f); break;
    case F_READY:
      w->ready = 1;
      lmp_pool_worker_ready(w->b->base.pool);
      break;
    case F_WAKE: lmp_link_drain_ring(k); break;
    default: break;
  }
  return 0;
}

/* ---- deaths ---- */

static const char *signame(int sig) {
  switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    default: return "signal";
  }
}

/* Says how w ended, for WorkerLostError and TimeoutError messages. */
static void describe_end(char *text, size_t n, const worker *w, const lmp_task *running) {
  int code = w->exitcode;
  if (lmp_pool_accepting(w->b->base.pool) == 0 && running != NULL)
    snprintf(text, n, "the pool was terminated; worker PoolWorker-%d (pid %d) was killed while it "
             "ran the task", w->number, (int)w->pid);
  else if (w->stop_reason == LOST_TIMEOUT && running == w->stop_task)
    snprintf(text, n, "task timed out after %g s; worker PoolWorker-%d (pid %d) was killed",
             running ? running->timeout : 0.0, w->number, (int)w->pid);
  else if (w->stop_reason == LOST_STOPPED && running == w->stop_task)
    snprintf(text, n, "the call was stopped; worker PoolWorker-%d (pid %d) was killed", w->number,
             (int)w->pid);
  else if (w->stop_reason >= 0 && running != NULL)
    snprintf(text, n, "worker PoolWorker-%d (pid %d) was killed to stop another task, which "
             "ended just before", w->number, (int)w->pid);
  else if (code < 0)
    snprintf(text, n, "worker PoolWorker-%d (pid %d) died: killed by signal %d (%s)", w->number,
             (int)w->pid, -code, signame(-code));
  else
    snprintf(text, n, "worker PoolWorker-%d (pid %d) died: exited with status %d", w->number,
             (int)w->pid, code);
}

/* 1 when the worker began running t (a worker that was never ready ran nothing). */
static int started(const worker *w, const lmp_task *t) {
  if (!w->ready) return 0;
  lmp_ring *r = lmp_link_ring(w->link);
  if (r == NULL) return 1;
  return __atomic_load_n(&r->claim[t->seq % LMP_CLAIMS], __ATOMIC_ACQUIRE) == LMP_CLAIM_STARTED;
}

static void backend_release(lworkers *b);

static void link_closed(void *ud) { backend_release(ud); }

/* Takes w out of its slot and closes its line; its tasks must have been dealt with. */
static void retire(worker *w) {
  lworkers *b = w->b;
  if (b->w[w->slot] == w) b->w[w->slot] = NULL;
  lmp_child_watch(w->pid, NULL, NULL);
  b->closes++;
  lmp_link_close(w->link, link_closed, b);
  free(w->known);
  free(w);
}

/* Gives w's tasks back to the pool: the running one fails (or is retried), the others go back
** to the queue in their order. */
static void give_back(worker *w) {
  lmp_pool *p = w->b->base.pool;
  lmp_task *running = w->head != NULL && started(w, w->head) ? list_pop(w) : NULL;
  lmp_task *rest[WINDOW_MAX + 1];
  int nrest = 0;
  lmp_task *t;
  while ((t = list_pop(w)) != NULL) {
    if (nrest < WINDOW_MAX + 1) rest[nrest++] = t;
    else lmp_pool_requeue(p, t);
  }
  while (nrest > 0) lmp_pool_requeue(p, rest[--nrest]);
  if (running == NULL) return;
  char text[200];
  describe_end(text, sizeof text, w, running);
  int reason = running == w->stop_task && w->stop_reason >= 0 ? w->stop_reason : LOST_DIED;
  lmp_pool_lost(p, running, reason, text, w->pid, w->exitcode);
}

/* The worker has exited (reaped): read what it wrote before the end, settle its tasks, retire
** it and start a replacement when the pool still needs one. */
static void worker_gone(worker *w) {
  if (w->gone) return;
  w->gone = 1;
  lworkers *b = w->b;
  lmp_pool *p = b->base.pool;
  lmp_link_read(w->link); /* results written before the end still count */
  lmp_link_drain_ring(w->link);
  int slot = w->slot, ready = w->ready, code = w->exitcode;
  pid_t pid = w->pid;
  char text[200];
  describe_end(text, sizeof text, w, NULL);
  give_back(w);
  retire(w);
  if (b->destroyed) return;
  int broken = !ready && lmp_pool_worker_failed(p, code > 0, text, pid, code);
  int state = lmp_pool_accepting(p);
  if (!broken && (state == 1 || (state == 2 && lmp_pool_queued(p) > 0))) spawn_worker(b, slot);
  lmp_pool_kick(p);
  pump(&b->base);
}

static void on_exit_cb(void *ud, pid_t pid, int code) {
  worker *w = ud;
  (void)pid;
  w->reaped = 1;
  w->exitcode = code;
  worker_gone(w);
}

/* ---- starting workers ---- */

/* The start payload of a worker in slot w (frame.h's WORKER_PAYLOAD_HEAD layout). */
static char *worker_payload(lworkers *b, int fd, worker *w, lmp_ring *ring, size_t *n) {
  char name[32];
  int nl = snprintf(name, sizeof name, "PoolWorker-%d", w->number);
  *n = WORKER_PAYLOAD_HEAD + (size_t)nl + b->initlen;
  char *pl = malloc(*n);
  if (pl == NULL) return NULL;
  lmp_put_le32(pl, (uint32_t)fd);
  lmp_put_le64(pl + 4, (uint64_t)b->maxtasks);
  lmp_put_le64(pl + 12, (uint64_t)(uintptr_t)ring);
  lmp_put_le32(pl + 20, (uint32_t)nl);
  memcpy(pl + WORKER_PAYLOAD_HEAD, name, (size_t)nl);
  memcpy(pl + WORKER_PAYLOAD_HEAD + nl, b->init, b->initlen);
  return pl;
}

/* Starts a worker in slot s. Returns 0, or -1 with errno set (the slot stays empty). */
static int spawn_worker(lworkers *b, int slot) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  worker *w = calloc(1, sizeof *w);
  lmp_ring *ring = b->spawn ? NULL : lmp_ring_new(); /* without one, results use the socket */
  size_t n = 0;
  char *payload = w ? (w->number = ++worker_counter, worker_payload(b, sv[1], w, ring, &n)) : NULL;
  lmp_link *k = payload ? lmp_link_open(&b->lp->uv, sv[0], ring, on_frame, w) : NULL;
  if (k == NULL) {
    int e = errno ? errno : ENOMEM;
    free(payload);
    lmp_ring_free(ring);
    free(w);
    close(sv[0]);
    close(sv[1]);
    errno = e;
    return -1;
  }
  int sz = SOCK_BUF;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  pid_t pid = lmp_fork_with(b->path, b->cpath, payload, n, "worker", 1, sv[1]);
  int e = errno;
  free(payload);
  close(sv[1]);
  *w = (worker){.b = b, .link = k, .pid = pid, .slot = slot, .number = w->number, .stop_reason = -1};
  if (pid <= 0) {
    b->closes++;
    lmp_link_close(k, link_closed, b); /* unmaps the ring too */
    free(w);
    errno = e;
    return -1;
  }
  if (ring) madvise(ring, LMP_RING_BYTES, MADV_DONTFORK); /* later children need not inherit it */
  lmp_child_watch(pid, on_exit_cb, w);
  b->w[slot] = w;
  return 0;
}

/* ---- the loop's phases ---- */

/* One quick task in flight (the apply(...):get() round trip): its result is due within tens of
** microseconds, sooner than the parent could sleep and be woken. So watch its ring a moment
** before sleeping — never when more is in flight: the workers need the CPU then, and results
** come in batches anyway. Returns how many frames it handled. */
static int spin_for_result(lworkers *b) {
  worker *only = NULL;
  long inflight = 0;
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (w == NULL) continue;
    inflight += w->n;
    if (w->n) only = w;
  }
  if (inflight != 1 || lmp_link_ring(only->link) == NULL) return 0;
  double avg = only->head->avg ? *only->head->avg : 0;
  if (!(avg > 0 && avg < SPIN_TASKS)) return 0;
  double span = 3 * avg + 30e-6;
  double until = lmp_monotonic() + (span < SPIN_LIMIT ? span : SPIN_LIMIT);
  for (int k = 0;; k++) {
    if (lmp_link_ring_ready(only->link)) return lmp_link_drain_ring(only->link);
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((k & 63) == 63 && lmp_monotonic() > until) return 0;
  }
}

/* Before the loop blocks: write everything coalesced so far, read the rings, and tell the
** workers to announce what comes next (then look once more, so nothing slips between). */
static void on_prepare(uv_prepare_t *h) {
  lworkers *b = h->data;
  int got = 0;
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (w == NULL) continue;
    if (lmp_link_queued(w->link) > 0) lmp_link_flush(w->link);
    got += lmp_link_drain_ring(w->link);
  }
  if (!got) got = spin_for_result(b);
  for (int i = 0; i < b->n && !got; i++) {
    worker *w = b->w[i];
    if (w != NULL && lmp_link_announce(w->link, 1)) got += lmp_link_drain_ring(w->link);
  }
  if (got) pump(&b->base);
}

/* After the loop woke: the parent is busy, workers need not announce results — unless this was
** a host's mp.poll()/lmp_poll(): then the parent may be away (sleeping on the backend fd) until
** something is announced, so workers keep announcing, and what came in before is read now. */
static void on_check(uv_check_t *h) {
  lworkers *b = h->data;
  int away = b->lp->polling;
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (w == NULL) continue;
    if (lmp_link_announce(w->link, away)) lmp_link_drain_ring(w->link);
  }
}

/* ---- the interface ---- */

static int withdraw(lmp_backend *base, lmp_task *t) {
  worker *w = t->where;
  if (w == NULL) return 0;
  lmp_ring *r = lmp_link_ring(w->link);
  if (r == NULL || !lmp_claim_withdraw(r, t->seq)) return 0;
  int was_head = t == w->head;
  list_remove(w, t);
  if (was_head && w->head != NULL) lmp_pool_started(base->pool, w->head, lmp_monotonic());
  return 1;
}

static void stop(lmp_backend *base, lmp_task *t, int reason) {
  worker *w = t->where;
  if (w == NULL || w->reaped || w->stop_reason >= 0) return;
  w->stop_reason = reason;
  w->stop_task = t;
  kill(w->pid, SIGKILL); /* its death is handled when it is reaped */
}

static void close_(lmp_backend *base) { pump(base); }

static void terminate(lmp_backend *base) {
  lworkers *b = (lworkers *)base;
  for (int i = 0; i < b->n; i++)
    if (b->w[i] != NULL && !b->w[i]->reaped) kill(b->w[i]->pid, SIGKILL);
}

static int gone(lmp_backend *base) {
  lworkers *b = (lworkers *)base;
  for (int i = 0; i < b->n; i++)
    if (b->w[i] != NULL) return 0;
  return 1;
}

static void forget(lmp_backend *base) {
  lworkers *b = (lworkers *)base;
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (!alive(w)) continue;
    send_plain(w, F_FORGET);
    if (w->known) memset(w->known, 0, w->capknown);
  }
}

static void stats(lmp_backend *base, lua_State *L) {
  lworkers *b = (lworkers *)base;
  lua_createtable(L, 0, 3);
  lua_createtable(L, b->n, 0);
  long inflight = 0;
  for (int i = 0, k = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (w == NULL) continue;
    inflight += w->n;
    lua_pushinteger(L, w->pid);
    lua_rawseti(L, -2, ++k);
  }
  lua_setfield(L, -2, "workers");
  lua_pushinteger(L, inflight);
  lua_setfield(L, -2, "inflight");
}

/* One of the backend's handles or links has closed: once it is destroyed, the last frees it. */
static void backend_release(lworkers *b) {
  if (--b->closes > 0 || !b->destroyed) return;
  free(b->w);
  free(b->init);
  free(b->path);
  free(b->cpath);
  free(b);
}

static void handle_closed(uv_handle_t *h) { backend_release(h->data); }

static void destroy(lmp_backend *base) {
  lworkers *b = (lworkers *)base;
  b->destroyed = 1;
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (w == NULL) continue;
    if (!w->reaped) kill(w->pid, SIGKILL);
    lmp_task *t;
    while ((t = list_pop(w)) != NULL) lmp_pool_requeue(base->pool, t);
    retire(w);
  }
  /* the links close first (their count is in closes); the last close callback frees b */
  b->closes += 2;
  uv_close((uv_handle_t *)&b->prepare, handle_closed);
  uv_close((uv_handle_t *)&b->check, handle_closed);
}

static const lmp_backend_ops ops = {"local", pump, withdraw, stop, close_, terminate, gone, forget,
                                    stats, destroy};

/* Reads package.<field> of L into a malloc'd copy (NULL when missing). */
static char *package_field(lua_State *L, const char *field) {
  int top = lua_gettop(L);
  char *copy = NULL;
  if (lua_getglobal(L, "package") == LUA_TTABLE && lua_getfield(L, -1, field) == LUA_TSTRING)
    copy = strdup(lua_tostring(L, -1));
  lua_settop(L, top);
  return copy;
}

/* Creation failed part-way: every worker started is killed and reaped before the error. */
static void abort_start(lworkers *b) {
  for (int i = 0; i < b->n; i++) {
    worker *w = b->w[i];
    if (w == NULL) continue;
    kill(w->pid, SIGKILL);
    while (waitpid(w->pid, NULL, 0) < 0 && errno == EINTR) {}
    w->reaped = 1;
  }
  destroy(&b->base);
}

lmp_backend *lmp_workers_start(lua_State *L, lmp_pool *p, int n, const char *init, size_t initlen,
                               long maxtasks) {
  lworkers *b = calloc(1, sizeof *b);
  worker **slots = calloc((size_t)n, sizeof *slots);
  char *ini = malloc(initlen ? initlen : 1);
  if (b == NULL || slots == NULL || ini == NULL) {
    free(b);
    free(slots);
    free(ini);
    luaL_error(L, "not enough memory");
  }
  memcpy(ini, init, initlen);
  b->base.ops = &ops;
  b->base.pool = p;
  b->lp = lmp_loop_get(L);
  b->w = slots;
  b->n = n;
  b->init = ini;
  b->initlen = initlen;
  b->maxtasks = maxtasks;
  b->spawn = lmp_start_method_spawn();
  int top = lua_gettop(L);
  b->path = package_field(L, "path");
  b->cpath = package_field(L, "cpath");
  lua_settop(L, top);
  uv_prepare_init(&b->lp->uv, &b->prepare);
  b->prepare.data = b;
  uv_prepare_start(&b->prepare, on_prepare);
  uv_unref((uv_handle_t *)&b->prepare);
  uv_check_init(&b->lp->uv, &b->check);
  b->check.data = b;
  uv_check_start(&b->check, on_check);
  uv_unref((uv_handle_t *)&b->check);
  for (int i = 0; i < n; i++) {
    if (spawn_worker(b, i) == 0) continue;
    int e = errno;
    abort_start(b);
    lmp_raise(L, "ProcessError", "Pool: cannot start worker %d of %d: %s", i + 1, n, strerror(e));
  }
  return &b->base;
}
