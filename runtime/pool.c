/*
** pool.c — the parent side of a process pool: workers, task queue, dispatch, results,
** worker deaths and timeouts. Policy (chunking, AsyncResult, imap, callbacks, retries'
** meaning) lives in lua/lmp/pool.lua; this file moves bytes and keeps the books.
**
** Each worker has one socketpair; the parent writes TASK frames and reads RESULT frames
** (frame.h) with non-blocking I/O driven by a uv_poll handle. A worker holds at most
** `window` tasks; they run in order, so the first one in its list is the one running.
** When a worker dies, results it wrote before dying are still read; then the running task
** fails (WorkerLostError, or TimeoutError when the parent killed it for being overdue) or
** is retried, the tasks queued behind it go back to the pool's queue, and a replacement is
** started. Every result reaches Lua through one handler, called protected:
**     handler(id, status, value, index)   status: "ok" | "error" | "lost" | "timeout" | "unencodable"
** Caveats: the handler runs inside the loop, so it must not block (blocking calls raise).
** A pool's memory is freed in the close callbacks of its handles, never earlier.
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec.h"
#include "frame.h"
#include "lmp_int.h"
#include "loop.h"
#include "result.h"
#include "fncache.h"

#define POOL_MT "lmp.PoolCore"

typedef lmp_fnent fnent;

typedef struct task {
  struct task *next;
  uint64_t id;
  fnent *fn;
  double timeout;  /* seconds, 0: none */
  double started;  /* monotonic time it became the running task of its worker */
  int retries;     /* retries left */
  int nfds;        /* descriptors the args carry (dups owned by the task) */
  int *fds;
  uint8_t kind;
  size_t arglen;
  char args[];     /* the codec message of the arguments */
} task;

typedef struct tqueue {
  task *head, *tail;
  long n;
} tqueue;

struct pool;

typedef struct worker {
  uv_poll_t poll;      /* first: the handle's close callback frees the worker */
  struct pool *pool;
  pid_t pid;
  int fd;
  int slot;
  int number;          /* PoolWorker-N */
  lmp_buf in;
  size_t inpos;
  lmp_buf out;
  size_t outpos;
  struct fdmark { size_t at; int nfds; const int *fds; } marks[8]; /* descriptors to attach */
  int nmarks;          /* ... at these offsets of out (a frame's first byte), in order */
  tqueue inflight;     /* sent, in order; the head is running */
  uint8_t *known;      /* bit set of the fn ids this worker has loaded */
  size_t capknown;     /* bytes of known */
  long sent;           /* tasks sent, for maxtasksperchild */
  int events;          /* what the poll handle watches */
  int eof, reaped, exitcode, overdue, quitting, ready;
  lmp_ring *ring;      /* its results ring (frame.h), shared with the worker */
} worker;

typedef struct pool {
  lmp_loop *lp;
  worker **w;          /* slots: NULL when empty */
  int n;
  tqueue queue;        /* waiting for a worker */
  uint64_t next_id;
  int handler;         /* registry ref: the Lua handler */
  int pending;         /* registry ref: task id -> its AsyncResult or chunk record */
  lmp_fncache fns;     /* the task functions sent so far (fncache.c) */
  lmp_buf scratch;     /* encoding space, reused by every submit */
  lmp_fdvec fdv;       /* descriptors found while encoding, reused likewise */
  char *init;          /* codec message for worker start (initializer...) */
  size_t initlen;
  long maxtasks;
  int window;          /* tasks in flight per worker */
  int state;           /* RUN, CLOSE, TERMINATE */
  int dead;            /* the Lua object is gone: free when handles are closed */
  int closes;          /* handles still closing */
  int init_failures;   /* workers that died before they were ready, in a row */
  int broken;          /* so many did that the pool gave up */
  tqueue held;         /* encoded, not yet queued (a map's chunks before the last is encoded) */
  double avg;          /* moving average of task durations (s) */
  uv_timer_t timer;    /* overdue-task check */
  uv_prepare_t prepare;/* before the loop blocks: flush writes, read the rings */
  uv_check_t check;    /* after it woke: workers need not announce results any more */
  uv_idle_t idle;      /* keeps the loop from blocking when results were just read */
  lmp_buf ringcopy;    /* a frame that wraps around the end of a ring, made whole */
  int timer_on;
  int since_pump;      /* submits since the loop last ran from submit */
  long timeouts;       /* tasks with a timeout in flight */
} pool;

enum { RUN, CLOSE, TERMINATE };

static int worker_counter; /* PoolWorker-N, across pools */

static void dispatch(pool *p);
static void pool_maybe_free(pool *p);
static void on_poll(uv_poll_t *h, int status, int events);
static void on_timer(uv_timer_t *h);

/* ---- tasks and queues ---- */

static void q_push(tqueue *q, task *t) {
  t->next = NULL;
  if (q->tail) q->tail->next = t;
  else q->head = t;
  q->tail = t;
  q->n++;
}

static void q_push_front(tqueue *q, task *t) {
  t->next = q->head;
  q->head = t;
  if (!q->tail) q->tail = t;
  q->n++;
}

static task *q_pop(tqueue *q) {
  task *t = q->head;
  if (t) {
    q->head = t->next;
    if (!q->head) q->tail = NULL;
    q->n--;
    t->next = NULL;
  }
  return t;
}

static void task_free(task *t) {
  lmp_fnent_release(t->fn);
  for (int i = 0; i < t->nfds; i++) close(t->fds[i]);
  free(t->fds);
  free(t);
}

/* ---- calling into Lua ---- */

typedef struct delivery {
  uint64_t id;
  const char *status;
  const char *msg;    /* a codec message to decode, or NULL */
  size_t len;
  const char *text;   /* or a plain message (lost/timeout) */
  int index;
  pid_t pid;
  int exitcode;
} delivery;

/* Protected: finds what waits for the result, decodes the value and settles it: in C when it
** is an AsyncResult without callbacks that succeeded, else through the Lua handler
**     handler(id, status, value, index, pid, waiter) */
static int pdeliver(lua_State *L) {
  pool *p = lua_touserdata(L, 1);
  delivery *d = lua_touserdata(L, 2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->pending);
  if (lua_rawgeti(L, -1, (lua_Integer)d->id) == LUA_TNIL) return 0; /* cancelled, given up */
  int waiter = lua_gettop(L);
  lua_pushnil(L);
  lua_rawseti(L, waiter - 1, (lua_Integer)d->id);
  lmp_result *r = luaL_testudata(L, waiter, RESULT_MT);
  int ok = strcmp(d->status, "ok") == 0;
  if (r != NULL && ok && !r->callbacks) {
    lmp_decode(L, d->msg, d->len, NULL, 0);
    lmp_result_settle(L, waiter, 1);
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->handler);
  lua_pushinteger(L, (lua_Integer)d->id);
  lua_pushstring(L, d->status);
  if (r == NULL && ok && lua_getfield(L, waiter, "into") == LUA_TTABLE) {
    /* a chunk of a map: its results go straight into place; the handler gets true */
    lua_getfield(L, waiter, "start");
    lmp__decode_into(L, d->msg, d->len, -2, lua_tointeger(L, -1));
    lua_pop(L, 2);
    lua_pushboolean(L, 1);
  } else if (d->msg) {
    if (r == NULL && ok) lua_pop(L, 1); /* the "into" field that was not a table */
    lmp_decode(L, d->msg, d->len, NULL, 0);
  } else {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, d->text);
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, d->pid);
    lua_setfield(L, -2, "pid");
    lua_pushinteger(L, d->exitcode);
    lua_setfield(L, -2, "exitcode");
  }
  lua_pushinteger(L, d->index);
  lua_pushinteger(L, d->pid);
  lua_pushvalue(L, waiter);
  lua_call(L, 6, 0);
  return 0;
}

/* Hands one result to Lua. Errors of the handler itself are reported, never lost. */
static void deliver(pool *p, lua_State *L, delivery *d) {
  if (L == NULL || p->dead) return;
  int top = lua_gettop(L);
  lua_pushcfunction(L, pdeliver);
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, d);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    if (m == NULL && luaL_callmeta(L, -1, "__tostring")) m = lua_tostring(L, -1);
    fprintf(stderr, "lmp: error while delivering a pool result: %s\n", m ? m : "?");
    fflush(stderr);
  }
  lua_settop(L, top);
  lmp_loop_notify(p->lp);
}

/* ---- writing ---- */

static int worker_knows(worker *w, uint32_t id) {
  return (size_t)(id >> 3) < w->capknown && (w->known[id >> 3] >> (id & 7)) & 1;
}

/* Records that w has loaded function id (if memory allows; else it is simply sent again). */
static void worker_learns(worker *w, uint32_t id) {
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

static void set_events(worker *w) {
  int ev = (w->eof ? 0 : UV_READABLE) | (w->outpos < w->out.len ? UV_WRITABLE : 0);
  if (ev == w->events) return;
  w->events = ev;
  if (ev) uv_poll_start(&w->poll, ev, on_poll);
  else uv_poll_stop(&w->poll);
}

/* Writes what the worker's out buffer holds, without blocking. */
/* Sends out[from..to) with nfds descriptors attached to its first byte (SCM_RIGHTS). */
static ssize_t send_with_fds(worker *w, size_t len, const int *fds, int nfds) {
  struct iovec iov = {w->out.p + w->outpos, len};
  struct msghdr msg = {0};
  char cbuf[CMSG_SPACE(sizeof(int) * TASK_MAXFDS)];
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(cbuf, 0, sizeof cbuf);
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  return sendmsg(w->fd, &msg, MSG_NOSIGNAL);
}

/* Writes what the worker's out buffer holds, without blocking; a frame that carries
** descriptors goes out with them attached to its first byte. */
static void flush(worker *w) {
  while (w->outpos < w->out.len) {
    size_t len = w->out.len - w->outpos;
    const int *fds = NULL;
    int nfds = 0;
    if (w->nmarks > 0) {
      struct fdmark *m = &w->marks[0];
      if (m->at == w->outpos) fds = m->fds, nfds = m->nfds;
      else if (m->at - w->outpos < len) len = m->at - w->outpos; /* stop before it */
      if (nfds > 0 && w->nmarks > 1 && w->marks[1].at - w->outpos < len)
        len = w->marks[1].at - w->outpos;
    }
    ssize_t n = send_with_fds(w, len, fds, nfds);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) { /* dead: drop */
        w->outpos = w->out.len;
        w->nmarks = 0;
      }
      break;
    }
    if (nfds > 0) { /* the descriptors went with the first byte */
      memmove(w->marks, w->marks + 1, sizeof w->marks[0] * (size_t)--w->nmarks);
    }
    w->outpos += (size_t)n;
  }
  if (w->outpos == w->out.len) w->out.len = w->outpos = 0;
  set_events(w);
}

/* Appends a frame of the given type with up to three payload parts. -1 when out of memory. */
static int put_frame(worker *w, int type, const void *a, size_t na, const void *b, size_t nb,
                     const void *c, size_t nc) {
  size_t len = 1 + na + nb + nc;
  if (lmp_buf_reserve(&w->out, 4 + len) != 0) return -1;
  char head[FRAME_HEAD];
  put_u32(head, (uint32_t)len);
  head[4] = (char)type;
  lmp_buf_add(&w->out, head, sizeof head);
  if (na) lmp_buf_add(&w->out, a, na);
  if (nb) lmp_buf_add(&w->out, b, nb);
  if (nc) lmp_buf_add(&w->out, c, nc);
  return 0;
}

/* Sends t to w (queued in its out buffer). */
static int send_task(worker *w, task *t) {
  int sendfn = !worker_knows(w, t->fn->id);
  if (t->nfds > 0 && w->nmarks == (int)(sizeof w->marks / sizeof w->marks[0]))
    return -1; /* too many descriptor frames pending on this worker: later */
  char head[TASK_HEAD];
  put_u64(head, t->id);
  head[8] = (char)t->kind;
  put_u32(head + 9, t->fn->id);
  put_u32(head + 13, sendfn ? (uint32_t)t->fn->len : 0);
  head[17] = (char)t->nfds;
  size_t at = w->out.len;
  if (put_frame(w, F_TASK, head, sizeof head, sendfn ? t->fn->msg : NULL,
                sendfn ? t->fn->len : 0, t->args, t->arglen) != 0)
    return -1;
  if (t->nfds > 0) w->marks[w->nmarks++] = (struct fdmark){at, t->nfds, t->fds};
  if (sendfn) worker_learns(w, t->fn->id);
  return 0;
}

/* ---- workers ---- */

static int worker_alive(worker *w) {
  return w && !w->eof && !w->reaped && !w->overdue && !w->quitting;
}

static int worker_accepts(pool *p, worker *w) {
  if (!worker_alive(w) || w->inflight.n >= p->window) return 0;
  return p->maxtasks == 0 || w->sent < p->maxtasks;
}

static void worker_closed(uv_handle_t *h) {
  worker *w = (worker *)h;
  pool *p = w->pool;
  if (w->ring) munmap(w->ring, RING_BYTES);
  lmp_buf_free(&w->in);
  lmp_buf_free(&w->out);
  free(w->known);
  free(w);
  p->closes--;
  pool_maybe_free(p);
}

/* Takes w out of its slot and closes it; its tasks must have been dealt with. */
static void worker_retire(pool *p, worker *w) {
  if (p->w[w->slot] == w) p->w[w->slot] = NULL;
  w->nmarks = 0;
  lmp_fd_disown(w->fd);
  uv_poll_stop(&w->poll);
  close(w->fd);
  p->closes++;
  uv_close((uv_handle_t *)&w->poll, worker_closed);
}

static void on_exit_cb(void *ud, pid_t pid, int code);
static void reap_now(pool *p, worker *w);

/* Protected: encodes the start payload of a worker and forks it. */
static int pspawn(lua_State *L) {
  pool *p = lua_touserdata(L, 1);
  worker *w = lua_touserdata(L, 2);
  int childfd = (int)lua_tointeger(L, 3);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, childfd);
  lua_setfield(L, -2, "fd");
  lua_pushfstring(L, "PoolWorker-%d", w->number);
  lua_setfield(L, -2, "name");
  lua_pushinteger(L, p->maxtasks);
  lua_setfield(L, -2, "maxtasks");
  lua_pushlstring(L, p->init, p->initlen);
  lua_setfield(L, -2, "init");
  lua_pushinteger(L, (lua_Integer)(intptr_t)w->ring);
  lua_setfield(L, -2, "ring");
  lmp_encode(L, -1);
  size_t n;
  const char *payload = lua_tolstring(L, -1, &n);
  pid_t pid = lmp_fork_child(L, payload, n, "worker", 1, childfd);
  lua_pushinteger(L, pid);
  return 1;
}

/* Starts a worker in slot s. Returns 0, or -1 (the slot stays empty). */
static int spawn_worker(pool *p, lua_State *L, int s) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  worker *w = calloc(1, sizeof *w);
  if (w == NULL) {
    close(sv[0]);
    close(sv[1]);
    return -1;
  }
  w->pool = p;
  w->slot = s;
  w->fd = sv[0];
  w->number = ++worker_counter;
  void *ring = lmp_start_method_spawn() ? MAP_FAILED /* exec keeps no mapping */
                : mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (ring != MAP_FAILED) { /* without it, results simply all go through the socket */
    w->ring = ring;
    w->ring->size = RING_DATA;
  }
  int sz = 1 << 20;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  lmp_fd_own(sv[0]); /* later children must not hold the parent's end */
  int top = lua_gettop(L);
  lua_pushcfunction(L, pspawn);
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, w);
  lua_pushinteger(L, sv[1]);
  int rc = lua_pcall(L, 3, 1, 0);
  pid_t pid = rc == LUA_OK ? (pid_t)lua_tointeger(L, -1) : -1;
  lua_settop(L, top);
  close(sv[1]);
  if (pid <= 0) {
    lmp_fd_disown(sv[0]);
    close(sv[0]);
    if (w->ring) munmap(w->ring, RING_BYTES);
    free(w);
    return -1;
  }
  /* the worker has its ring now; children forked later need not inherit it */
  if (w->ring) madvise(w->ring, RING_BYTES, MADV_DONTFORK);
  w->pid = pid;
  fcntl(w->fd, F_SETFL, fcntl(w->fd, F_GETFL) | O_NONBLOCK);
  uv_poll_init(&p->lp->uv, &w->poll, w->fd);
  w->poll.data = w;
  w->events = UV_READABLE;
  uv_poll_start(&w->poll, UV_READABLE, on_poll);
  lmp_child_watch(pid, on_exit_cb, w);
  p->w[s] = w;
  return 0;
}

/* ---- results ---- */

static void task_done(pool *p, worker *w, task *t) {
  double now = lmp_monotonic();
  double took = now - t->started;
  p->avg = p->avg == 0 ? took : p->avg * 0.8 + took * 0.2;
  if (t->timeout > 0) p->timeouts--;
  task_free(t);
  if (w->inflight.head) w->inflight.head->started = now;
}

/* Handles one RESULT frame from w. */
static void on_result(pool *p, worker *w, const char *f, size_t len) {
  if (len < RESULT_HEAD) return;
  uint64_t id = get_u64(f);
  int status = (unsigned char)f[8];
  uint32_t index = get_u32(f + 9);
  /* Usually the first in line; but a batch that did not fit the ring came through the socket
  ** and may be read before results still in the ring: find it wherever it stands. */
  task *t = w->inflight.head, *prev = NULL;
  while (t != NULL && t->id != id) prev = t, t = t->next;
  if (t == NULL) return; /* not this worker's: ignore */
  if (prev == NULL) {
    q_pop(&w->inflight);
  } else {
    prev->next = t->next;
    if (w->inflight.tail == t) w->inflight.tail = prev;
    w->inflight.n--;
    t->next = NULL;
  }
  task_done(p, w, t);
  delivery d = {.id = id,
                .status = status == RES_OK ? "ok" : status == RES_ERROR ? "error" : "unencodable",
                .msg = f + RESULT_HEAD,
                .len = len - RESULT_HEAD,
                .index = (int)index,
                .pid = w->pid};
  deliver(p, p->lp->L, &d);
}

/* Handles one frame from w (socket or ring): flen counts the type byte and the payload. */
static void handle_frame(pool *p, worker *w, const char *fr, uint32_t flen) {
  if (fr[4] == F_RESULT) {
    on_result(p, w, fr + FRAME_HEAD, flen - 1);
  } else if (fr[4] == F_READY) {
    w->ready = 1;
    p->init_failures = 0;
  } /* F_WAKE: only a wake-up, the ring is read below */
}

/* Handles the frames the worker committed to its ring; returns how many. */
static int drain_ring(pool *p, worker *w) {
  lmp_ring *r = w->ring;
  if (r == NULL) return 0;
  int n = 0;
  for (;;) {
    uint64_t tail = r->tail, head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    if (head - tail < FRAME_HEAD) break;
    char lenb[4];
    for (int i = 0; i < 4; i++) lenb[i] = r->data[(tail + (uint64_t)i) % r->size];
    uint32_t flen = get_u32(lenb);
    if (flen < 1 || 4 + (uint64_t)flen > head - tail) { /* the worker writes whole frames */
      kill(w->pid, SIGKILL);
      r->tail = head;
      break;
    }
    size_t at = (size_t)(tail % r->size), total = 4 + (size_t)flen;
    const char *fr = r->data + at;
    if (at + total > r->size) { /* wraps around: make it whole */
      p->ringcopy.len = 0;
      if (lmp_buf_reserve(&p->ringcopy, total) != 0) break;
      memcpy(p->ringcopy.p, r->data + at, r->size - at);
      memcpy(p->ringcopy.p + (r->size - at), r->data, total - (r->size - at));
      fr = p->ringcopy.p;
    }
    /* the space is given back before the frame is handled: a callback may do anything */
    if (fr != r->data + at) __atomic_store_n(&r->tail, tail + total, __ATOMIC_RELEASE);
    handle_frame(p, w, fr, flen);
    if (fr == r->data + at) __atomic_store_n(&r->tail, tail + total, __ATOMIC_RELEASE);
    n++;
    if (p->w[w->slot] != w) break; /* retired by a callback */
  }
  return n;
}

/* Reads what is there and handles every complete frame, then the ring's. Returns 0 at EOF or
** on error. */
static int drain(pool *p, worker *w) {
  for (;;) {
    if (w->inpos > 0) { /* keep only the partial frame, at the start */
      memmove(w->in.p, w->in.p + w->inpos, w->in.len - w->inpos);
      w->in.len -= w->inpos;
      w->inpos = 0;
    }
    if (lmp_buf_reserve(&w->in, 65536) != 0) return 0;
    ssize_t n = recv(w->fd, w->in.p + w->in.len, w->in.cap - w->in.len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      w->eof = 1;
    } else if (n > 0) {
      w->in.len += (size_t)n;
    }
    int more = n > 0 && (size_t)n == w->in.cap - (w->in.len - (size_t)n); /* filled: maybe more */
    /* every complete frame */
    while (w->in.len - w->inpos >= FRAME_HEAD) {
      uint32_t flen = get_u32(w->in.p + w->inpos);
      if (flen < 1 || flen > FRAME_MAX) {
        w->eof = 1; /* a protocol error: treat the worker as lost */
        kill(w->pid, SIGKILL);
        break;
      }
      if (w->in.len - w->inpos < 4 + (size_t)flen) {
        lmp_buf_reserve(&w->in, 4 + (size_t)flen);
        break;
      }
      const char *fr = w->in.p + w->inpos;
      w->inpos += 4 + (size_t)flen;
      handle_frame(p, w, fr, flen);
      if (p->w[w->slot] != w) return 0; /* retired by a callback */
    }
    if (w->inpos > 0 && w->inpos == w->in.len) w->in.len = w->inpos = 0;
    if (w->eof) break;
    if (n < 0 || !more) break; /* EAGAIN or a short read: all there was */
  }
  drain_ring(p, w);
  return !w->eof;
}

static void on_poll(uv_poll_t *h, int status, int events) {
  worker *w = h->data;
  pool *p = w->pool;
  if (status < 0) events = UV_READABLE; /* an error: find out by reading */
  if (events & UV_READABLE) {
    drain(p, w);
    if (p->w[w->slot] != w) return;
    if (w->eof) {
      set_events(w);
      reap_now(p, w); /* the exit may already be reapable */
      return;
    }
  }
  if (events & UV_WRITABLE) flush(w);
  dispatch(p);
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

/* Fails every queued task: the pool cannot run them. */
static void fail_queue(pool *p, lua_State *L, const char *text, pid_t pid, int code) {
  task *t;
  while ((t = q_pop(&p->queue)) != NULL) {
    delivery d = {.id = t->id, .status = "lost", .text = text, .pid = pid, .exitcode = code};
    task_free(t);
    deliver(p, L, &d);
  }
}

/* Describes how a worker ended, for WorkerLostError / TimeoutError messages. */
static void describe_end(char *text, size_t n, worker *w, task *running) {
  int code = w->exitcode;
  if (w->overdue)
    snprintf(text, n, "task timed out after %g s; worker PoolWorker-%d (pid %d) was killed",
             running ? running->timeout : 0.0, w->number, (int)w->pid);
  else if (code < 0)
    snprintf(text, n, "worker PoolWorker-%d (pid %d) died: killed by signal %d (%s)", w->number,
             (int)w->pid, -code, signame(-code));
  else
    snprintf(text, n, "worker PoolWorker-%d (pid %d) died: exited with status %d", w->number,
             (int)w->pid, code);
}

/* The worker is gone for good: settle its tasks, retire it, start a replacement. */
static void worker_lost(pool *p, worker *w) {
  drain(p, w); /* results written before the end still count */
  if (p->w[w->slot] != w) return;
  lua_State *L = p->lp->L;
  /* a worker that died before it was ready ran nothing: all its tasks go back */
  task *running = w->ready ? q_pop(&w->inflight) : NULL;
  task *rest[128];
  int nrest = 0;
  task *t;
  while ((t = q_pop(&w->inflight)) != NULL) {
    if (t->timeout > 0) p->timeouts--;
    if (nrest < 128) rest[nrest++] = t;
    else q_push(&p->queue, t);
  }
  while (nrest > 0) q_push_front(&p->queue, rest[--nrest]);
  char text[200];
  describe_end(text, sizeof text, w, running);
  int slot = w->slot, code = w->exitcode, overdue = w->overdue, ready = w->ready;
  pid_t pid = w->pid;
  worker_retire(p, w);
  if (running) {
    if (running->timeout > 0) p->timeouts--;
    if (!overdue && running->retries > 0 && p->state != TERMINATE) {
      running->retries--;
      q_push_front(&p->queue, running);
    } else {
      delivery d = {.id = running->id, .status = overdue ? "timeout" : "lost", .text = text,
                    .pid = pid, .exitcode = code};
      task_free(running);
      deliver(p, L, &d);
    }
  }
  if (p->dead) return;
  if (p->state == TERMINATE) /* what went back to the queue will never run now */
    fail_queue(p, L, "the pool was terminated before the task ran", pid, code);
  /* Workers that die before they are ready, in a row: an initializer that fails (it exits
  ** with a status) breaks the pool after 3; deaths by signal (a killer outside, a crash) after
  ** 9, so random kills of fresh workers do not pass for a broken initializer. */
  if (!ready && p->state != TERMINATE && (p->init_failures += code > 0 ? 3 : 1) >= 9) {
    p->broken = 1;
    fail_queue(p, L, "pool workers die before they are ready (does the initializer fail?)", pid, code);
  }
  if (!p->broken && p->state != TERMINATE && (p->state == RUN || p->queue.n > 0))
    spawn_worker(p, L, slot);
  lmp_loop_notify(p->lp);
  dispatch(p);
}

static void reap_now(pool *p, worker *w) {
  if (w->reaped) worker_lost(p, w);
}

static void on_exit_cb(void *ud, pid_t pid, int code) {
  worker *w = ud;
  w->reaped = 1;
  w->exitcode = code;
  worker_lost(w->pool, w);
}

/* ---- dispatch ---- */

static int pick(pool *p) {
  int best = -1;
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (!worker_accepts(p, w)) continue;
    if (best < 0 || w->inflight.n < p->w[best]->inflight.n) best = i;
  }
  return best;
}

/* A worker's share of queued tasks: many small ones go together (fewer wake-ups), long or
** unknown ones one by one (balance, and cancel() works until a worker takes the task). */
static void tune_window(pool *p) {
  if (p->avg == 0 || p->avg > 0.005) p->window = 1; /* unknown or slow: one at a time */
  else if (p->avg > 0.0005) p->window = 4;
  else if (p->avg > 0.0001) p->window = 32;
  else p->window = 256;
}

static void dispatch(pool *p) {
  if (p->dead) return;
  tune_window(p);
  double now = lmp_monotonic();
  while (p->queue.head) {
    int s = pick(p);
    if (s < 0) break;
    worker *w = p->w[s];
    task *t = q_pop(&p->queue);
    int idle = w->inflight.n == 0;
    if (send_task(w, t) != 0) {
      q_push_front(&p->queue, t);
      break;
    }
    q_push(&w->inflight, t);
    w->sent++;
    if (idle) t->started = now;
    if (t->timeout > 0) p->timeouts++;
    /* an idle worker gets its task now; busy ones get theirs in one write later */
    if (idle || w->out.len - w->outpos > 16384) flush(w);
  }
  if (p->state == CLOSE && p->queue.n == 0) {
    for (int i = 0; i < p->n; i++) {
      worker *w = p->w[i];
      if (worker_alive(w) && w->inflight.n == 0) {
        w->quitting = 1;
        put_frame(w, F_QUIT, NULL, 0, NULL, 0, NULL, 0);
        flush(w);
      }
    }
  }
  if (p->timeouts > 0 && !p->timer_on) {
    p->timer_on = 1;
    uv_timer_start(&p->timer, on_timer, 10, 10);
  }
}

static void on_idle(uv_idle_t *h) { uv_idle_stop(h); }

/* One quick task in flight (the apply(...):get() round trip): its result is due within a few
** tens of microseconds, sooner than the parent could go to sleep and be woken. So watch the
** worker's ring for a moment before sleeping. Never when more is in flight: then the workers
** need the CPU, and results come in batches anyway. Returns how many frames it handled. */
static int spin_for_result(pool *p) {
  worker *only = NULL;
  long inflight = 0;
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (w == NULL) continue;
    inflight += w->inflight.n;
    if (w->inflight.n) only = w;
  }
  if (inflight != 1 || only->ring == NULL || !(p->avg > 0 && p->avg < 150e-6)) return 0;
  double until = lmp_monotonic() + (3 * p->avg + 30e-6 < 250e-6 ? 3 * p->avg + 30e-6 : 250e-6);
  lmp_ring *r = only->ring;
  for (int k = 0;; k++) {
    if (__atomic_load_n(&r->head, __ATOMIC_ACQUIRE) != r->tail) return drain_ring(p, only);
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((k & 63) == 63 && lmp_monotonic() > until) return 0;
  }
}

/* Before the loop blocks: write everything coalesced so far, read the rings, and tell the
** workers to announce what comes next (then look once more, so nothing slips between). When
** results were read, the loop must not block this time: the idle handle sees to that. */
static void on_prepare(uv_prepare_t *h) {
  pool *p = h->data;
  int got = 0;
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (w && w->outpos < w->out.len) flush(w);
    if (w && p->w[i] == w) got += drain_ring(p, w);
  }
  if (!got) got = spin_for_result(p);
  for (int i = 0; i < p->n && !got; i++) {
    worker *w = p->w[i];
    if (!w || !w->ring) continue;
    __atomic_store_n(&w->ring->parent_waiting, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->ring->head, __ATOMIC_SEQ_CST) != w->ring->tail) got += drain_ring(p, w);
  }
  if (got) {
    dispatch(p);
    uv_idle_start(&p->idle, on_idle);
  }
}

/* After the loop woke up: the parent is busy, workers need not announce results — unless
** this was a host's mp.poll()/lmp_poll(): then the parent may be away (sleeping on the
** backend fd of lmp_backend_fd) until something is announced, so workers keep announcing,
** and what came in before the flag was up is read now (the same Dekker pair as prepare). */
static void on_check(uv_check_t *h) {
  pool *p = h->data;
  int away = p->lp->polling;
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (!w || !w->ring) continue;
    __atomic_store_n(&w->ring->parent_waiting, away, __ATOMIC_SEQ_CST);
    if (away && __atomic_load_n(&w->ring->head, __ATOMIC_SEQ_CST) != w->ring->tail)
      drain_ring(p, w);
  }
}

/* Every 10 ms while tasks with a timeout run: kill the workers of overdue ones. */
static void on_timer(uv_timer_t *h) {
  pool *p = h->data;
  double now = lmp_monotonic();
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (!w || w->overdue || w->reaped) continue;
    task *t = w->inflight.head;
    if (t && t->timeout > 0 && t->started > 0 && now - t->started > t->timeout) {
      w->overdue = 1;
      kill(w->pid, SIGKILL);
    }
  }
  if (p->timeouts <= 0) {
    uv_timer_stop(h);
    p->timer_on = 0;
  }
}

/* ---- freeing ---- */

static void handle_closed(uv_handle_t *h) {
  pool *p = h->data;
  p->closes--;
  pool_maybe_free(p);
}

static void pool_maybe_free(pool *p) {
  if (!p->dead || p->closes > 0) return;
  task *t;
  while ((t = q_pop(&p->queue)) != NULL) task_free(t);
  lmp_fncache_free(&p->fns);
  lmp_buf_free(&p->scratch);
  lmp_fdvec_free(&p->fdv);
  lmp_buf_free(&p->ringcopy);
  free(p->w);
  free(p->init);
  free(p);
#ifdef __GLIBC__
  /* a busy pool leaves much freed memory behind: give it back, so later forks copy less */
  malloc_trim(0);
#endif
}

/* ---- Lua interface ---- */

typedef struct pbox {
  pool *p;
} pbox;

static pool *checkpool(lua_State *L) {
  pbox *b = luaL_checkudata(L, 1, POOL_MT);
  if (b->p == NULL) luaL_error(L, "pool core is closed");
  return b->p;
}

/* Kills every worker and fails what is outstanding (terminate, or collection). */
static void kill_all(lua_State *L, pool *p, int deliver_failures) {
  p->state = TERMINATE;
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (w && !w->reaped) kill(w->pid, SIGKILL);
  }
  if (!deliver_failures) return;
  task *t;
  while ((t = q_pop(&p->queue)) != NULL) {
    delivery d = {.id = t->id, .status = "lost", .text = "the pool was terminated before the task ran"};
    task_free(t);
    deliver(p, L, &d);
  }
}

static int pool_gc(lua_State *L) {
  pbox *b = luaL_checkudata(L, 1, POOL_MT);
  pool *p = b->p;
  if (p == NULL) return 0;
  b->p = NULL;
  kill_all(L, p, 0);
  p->dead = 1;
  p->lp->active--;
  task *h;
  while ((h = q_pop(&p->held)) != NULL) task_free(h);
  for (int i = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (!w) continue;
    task *t;
    while ((t = q_pop(&w->inflight)) != NULL) task_free(t);
    lmp_child_watch(w->pid, NULL, NULL);
    worker_retire(p, w);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, p->handler);
  luaL_unref(L, LUA_REGISTRYINDEX, p->pending);
  lmp_fncache_unref(L, &p->fns);
  p->closes += 4;
  uv_close((uv_handle_t *)&p->timer, handle_closed);
  uv_close((uv_handle_t *)&p->prepare, handle_closed);
  uv_close((uv_handle_t *)&p->check, handle_closed);
  uv_close((uv_handle_t *)&p->idle, handle_closed);
  /* memory is freed by the close callbacks, the next time the loop runs: never run it from
  ** a finalizer, which may be called in the middle of anything */
  return 0;
}

/* pool_new(handler, n, init_message, maxtasks, pending) -> pool core */
static int l_pool_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int n = (int)luaL_checkinteger(L, 2);
  size_t initlen;
  const char *init = luaL_checklstring(L, 3, &initlen);
  lua_Integer maxtasks = luaL_optinteger(L, 4, 0);
  luaL_checktype(L, 5, LUA_TTABLE);
  luaL_argcheck(L, n >= 1 && n <= 4096, 2, "processes must be between 1 and 4096");
  pbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->p = NULL;
  luaL_setmetatable(L, POOL_MT);
  pool *p = calloc(1, sizeof *p);
  if (p == NULL) return luaL_error(L, "not enough memory");
  p->w = calloc((size_t)n, sizeof *p->w);
  p->init = malloc(initlen ? initlen : 1);
  if (p->w == NULL || p->init == NULL) {
    free(p->w);
    free(p->init);
    free(p);
    return luaL_error(L, "not enough memory");
  }
  memcpy(p->init, init, initlen);
  p->initlen = initlen;
  p->n = n;
  p->maxtasks = maxtasks;
  p->window = 1;
  p->lp = lmp_loop_get(L);
  lua_pushvalue(L, 1);
  p->handler = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 5);
  p->pending = luaL_ref(L, LUA_REGISTRYINDEX);
  lmp_fncache_init(L, &p->fns);
  uv_timer_init(&p->lp->uv, &p->timer);
  p->timer.data = p;
  uv_prepare_init(&p->lp->uv, &p->prepare);
  p->prepare.data = p;
  uv_prepare_start(&p->prepare, on_prepare);
  uv_unref((uv_handle_t *)&p->prepare);
  uv_check_init(&p->lp->uv, &p->check);
  p->check.data = p;
  uv_check_start(&p->check, on_check);
  uv_unref((uv_handle_t *)&p->check);
  uv_idle_init(&p->lp->uv, &p->idle);
  p->idle.data = p;
  uv_unref((uv_handle_t *)&p->idle);
  b->p = p;
  p->lp->active++;
  for (int i = 0; i < n; i++) {
    if (spawn_worker(p, L, i) != 0) {
      int e = errno;
      pool_gc(L);
      return luaL_error(L, "cannot start pool worker: %s", strerror(e));
    }
  }
  return 1;
}

/* The entry of the task function at idx (a reference is taken). When the cache had to be
** emptied to make room, the workers forget theirs too. */
static fnent *fn_for(lua_State *L, pool *p, int idx) {
  int forgot = 0;
  fnent *f = lmp_fncache_get(L, &p->fns, idx, &forgot);
  for (int i = 0; forgot && i < p->n; i++) {
    worker *w = p->w[i];
    if (!worker_alive(w)) continue;
    put_frame(w, F_FORGET, NULL, 0, NULL, 0, NULL, 0);
    if (w->known) memset(w->known, 0, w->capknown);
  }
  return f;
}

/* Protected encoding of the arguments (args at 1, or seq at 1 with first and count at 4, 5):
** on an error the function reference taken for the task is given back before the error
** goes on. */
static int pencode_args(lua_State *L) {
  lmp_buf *box = lua_touserdata(L, 2);
  if (lua_isnoneornil(L, 4))
    lmp__encode_named(L, 1, box, lua_touserdata(L, 6), lua_tostring(L, 3));
  else
    lmp__encode_range(L, 1, lua_tointeger(L, 4), lua_tointeger(L, 5), box, lua_touserdata(L, 6),
                      lua_tostring(L, 3));
  return 0;
}

static void encode_args(lua_State *L, int idx, lmp_buf *box, const char *root, fnent *f,
                        lua_Integer first, lua_Integer count, lmp_fdvec *fds) {
  lua_pushcfunction(L, pencode_args);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, box);
  lua_pushstring(L, root);
  int nargs = 6;
  if (count >= 0) {
    lua_pushinteger(L, first);
    lua_pushinteger(L, count);
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  lua_pushlightuserdata(L, fds);
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
    lmp_fnent_release(f);
    lua_error(L);
  }
}

/* Encodes and queues a task (or holds it), registering waiter (a stack index) for its result
** before anything can arrive. Raises SerializationError (nothing is sent) when fn or args
** cannot be encoded. Returns the task's id. */
static uint64_t submit_task(lua_State *L, pool *p, int kind, int fnidx, int argidx, double timeout,
                            int retries, int hold, lua_Integer first, lua_Integer count,
                            int waiter) {
  if (p->state != RUN) lmp_raise(L, "ValueError", "pool is not running");
  if (p->broken)
    lmp_raise(L, "ProcessError",
              "pool is broken: its workers die before they are ready (does the initializer fail?)");
  fnent **ref = luaL_testudata(L, fnidx, "lmp.FnRef");
  fnent *f;
  if (ref != NULL) {
    f = *ref;
    f->refs++;
  } else {
    f = fn_for(L, p, fnidx);
  }
  lmp_buf *box = &p->scratch; /* the function is done with it */
  box->len = 0;
  p->fdv.n = 0; /* descriptors of lmp handles in the args (Pipe ends...) */
  const char *root = kind == K_APPLY ? "args" : count >= 0 ? "seq" : "chunk";
  encode_args(L, argidx, box, root, f, first, count, &p->fdv);
  if (p->fdv.n > TASK_MAXFDS) {
    lmp_fnent_release(f);
    lmp_raise(L, "SerializationError", "args: more than %d descriptors in one task", TASK_MAXFDS);
  }
  task *t = malloc(sizeof *t + box->len);
  int *fds = p->fdv.n ? malloc(sizeof(int) * (size_t)p->fdv.n) : NULL;
  if (t == NULL || (p->fdv.n && fds == NULL)) {
    free(t);
    free(fds);
    lmp_fnent_release(f);
    luaL_error(L, "not enough memory");
  }
  memset(t, 0, sizeof *t);
  t->fn = f;
  for (int i = 0; i < p->fdv.n; i++) { /* the task's own copies: the caller may close its */
    fds[i] = fcntl(p->fdv.fd[i], F_DUPFD_CLOEXEC, 0);
    if (fds[i] >= 0) t->nfds++;
    else break;
  }
  t->fds = fds;
  if (t->nfds != p->fdv.n) {
    task_free(t);
    lmp_raise(L, "SerializationError", "args: cannot duplicate a descriptor: %s", strerror(errno));
  }
  uint64_t id = t->id = ++p->next_id;
  t->kind = (uint8_t)kind;
  t->timeout = timeout > 0 ? timeout : 0;
  t->retries = retries > 0 ? retries : 0;
  t->arglen = box->len;
  memcpy(t->args, box->p, box->len);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->pending);
  lua_pushvalue(L, waiter);
  lua_rawseti(L, -2, (lua_Integer)id);
  lua_pop(L, 1);
  if (hold) {
    q_push(&p->held, t);
  } else {
    q_push(&p->queue, t);
    dispatch(p); /* t may be done and freed from here on */
    /* a long run of submits: let results in and more tasks out now and then, so the
    ** workers are not idle while the caller is still submitting */
    if (++p->since_pump >= 32 && p->queue.n > 0) {
      p->since_pump = 0;
      lmp_loop_run_nowait(L);
    }
  }
  return id;
}

/* submit(kind, fn, args, timeout, retries, hold, first, count, rec) -> task id.
** rec (a table) waits for the result: rec.id is set, then the handler gets it. With first
** and count, the task's arguments are args[first..first+count-1] as an array with n = count
** (a map chunk, encoded straight from the input table). A held task waits for release(true)
** (queued) or release(false) (dropped). */
static int l_submit(lua_State *L) {
  pool *p = checkpool(L);
  int kind = (int)luaL_checkinteger(L, 2);
  if (!luaL_testudata(L, 3, "lmp.FnRef")) luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_checktype(L, 4, LUA_TTABLE);
  double timeout = luaL_optnumber(L, 5, 0);
  int retries = (int)luaL_optinteger(L, 6, 0);
  int hold = lua_toboolean(L, 7);
  lua_Integer first = luaL_optinteger(L, 8, 1), count = luaL_optinteger(L, 9, -1);
  luaL_checktype(L, 10, LUA_TTABLE);
  lua_Integer id = (lua_Integer)(p->next_id + 1);
  lua_pushinteger(L, id);
  lua_setfield(L, 10, "id");
  uint64_t got = submit_task(L, p, kind, 3, 4, timeout, retries, hold, first, count, 10);
  (void)got;
  lua_pushinteger(L, id);
  return 1;
}

/* apply(f, args, timeout, retries, callback, error_callback) -> AsyncResult: the hot path of
** apply_async, with the result made and registered here. */
static int l_apply(lua_State *L) {
  pool *p = checkpool(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TTABLE);
  double timeout = luaL_optnumber(L, 4, 0);
  int retries = (int)luaL_optinteger(L, 5, 0);
  lua_settop(L, 7);
  lua_pushnil(L); /* 8: no job */
  lmp_result *r = lmp_result_push(L, 1, 6, 7, 8);
  int res = lua_gettop(L);
  r->id = p->next_id + 1;
  submit_task(L, p, K_APPLY, 2, 3, timeout, retries, 0, 1, -1, res);
  lua_settop(L, res);
  return 1;
}

/* fn(f) -> a reference to f as sent now, for many submits of one call (map, imap). */
static int l_fn(lua_State *L) {
  pool *p = checkpool(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  fnent **ref = lua_newuserdatauv(L, sizeof *ref, 0);
  *ref = NULL;
  luaL_setmetatable(L, "lmp.FnRef");
  *ref = fn_for(L, p, 2);
  return 1;
}

static int fnref_gc(lua_State *L) {
  fnent **ref = luaL_checkudata(L, 1, "lmp.FnRef");
  lmp_fnent_release(*ref);
  *ref = NULL;
  return 0;
}

/* cancel(id) -> true when the task was still waiting (it will never run). */
static int l_cancel(lua_State *L) {
  pool *p = checkpool(L);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 2);
  task **pp = &p->queue.head, *prev = NULL;
  while (*pp) {
    task *t = *pp;
    if (t->id == id) {
      *pp = t->next;
      if (p->queue.tail == t) p->queue.tail = prev;
      p->queue.n--;
      task_free(t);
      lua_rawgeti(L, LUA_REGISTRYINDEX, p->pending);
      lua_pushnil(L);
      lua_rawseti(L, -2, (lua_Integer)id);
      lua_pushboolean(L, 1);
      return 1;
    }
    prev = t;
    pp = &t->next;
  }
  lua_pushboolean(L, 0);
  return 1;
}

/* release(commit): queues the held tasks (commit) or drops them. */
static int l_release(lua_State *L) {
  pool *p = checkpool(L);
  int commit = lua_toboolean(L, 2);
  task *t;
  while ((t = q_pop(&p->held)) != NULL) {
    if (commit) q_push(&p->queue, t);
    else task_free(t);
  }
  if (commit) dispatch(p);
  return 0;
}

/* queued(id) -> true while the task waits for a worker (it has not started). */
static int l_queued(lua_State *L) {
  pool *p = checkpool(L);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 2);
  for (task *t = p->queue.head; t; t = t->next)
    if (t->id == id) {
      lua_pushboolean(L, 1);
      return 1;
    }
  lua_pushboolean(L, 0);
  return 1;
}

static int l_close(lua_State *L) {
  pool *p = checkpool(L);
  if (p->state == RUN) {
    p->state = CLOSE;
    dispatch(p);
  }
  return 0;
}

static int l_terminate(lua_State *L) {
  pool *p = checkpool(L);
  if (p->state != TERMINATE) kill_all(L, p, 1);
  return 0;
}

static int all_gone(lua_State *L, void *ud) {
  pool *p = ud;
  for (int i = 0; i < p->n; i++)
    if (p->w[i]) return 0;
  return 1;
}

/* join([timeout]) -> true when every worker has exited */
static int l_join(lua_State *L) {
  pool *p = checkpool(L);
  double timeout = lua_isnoneornil(L, 2) ? -1 : luaL_checknumber(L, 2);
  lua_pushboolean(L, lmp_loop_wait(L, all_gone, p, timeout));
  return 1;
}

/* stats() -> {queued=, inflight=, workers={pid...}, window=} */
static int l_stats(lua_State *L) {
  pool *p = checkpool(L);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, p->queue.n);
  lua_setfield(L, -2, "queued");
  long inflight = 0;
  lua_createtable(L, p->n, 0);
  for (int i = 0, k = 0; i < p->n; i++) {
    worker *w = p->w[i];
    if (!w) continue;
    inflight += w->inflight.n;
    lua_pushinteger(L, w->pid);
    lua_rawseti(L, -2, ++k);
  }
  lua_setfield(L, -2, "workers");
  lua_pushinteger(L, inflight);
  lua_setfield(L, -2, "inflight");
  lua_pushinteger(L, p->window);
  lua_setfield(L, -2, "window");
  return 1;
}

static int buf_gc(lua_State *L) {
  lmp_buf_free(lua_touserdata(L, 1));
  return 0;
}

void lmp__open_pool(lua_State *L) {
  if (luaL_newmetatable(L, "lmp.Buf")) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, "lmp.FnRef")) {
    lua_pushcfunction(L, fnref_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, POOL_MT)) {
    static const luaL_Reg methods[] = {
        {"submit", l_submit}, {"cancel", l_cancel}, {"close", l_close},
        {"terminate", l_terminate}, {"join", l_join}, {"stats", l_stats},
        {"release", l_release}, {"fn", l_fn}, {"queued", l_queued},
        {"apply", l_apply}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_pool_new);
  lua_setfield(L, -2, "pool_new");
  lua_pushinteger(L, K_APPLY);
  lua_setfield(L, -2, "K_APPLY");
  lua_pushinteger(L, K_MAP);
  lua_setfield(L, -2, "K_MAP");
  lua_pushinteger(L, K_STARMAP);
  lua_setfield(L, -2, "K_STARMAP");
}
