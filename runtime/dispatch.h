/*
** dispatch.h — the one interface between a pool's bookkeeping (pool.c: tasks, calls, windows,
** retries, timeouts, delivery, callbacks) and what runs its tasks: local worker processes
** today (workers.c), a broker such as Redis tomorrow. The pool hands out tasks and asks for
** them back; a backend moves them to workers and reports what became of each one.
** Caveat: every function here runs on the parent's loop thread and must not run Lua code: a
** backend reports results and the pool delivers them to Lua later, at one safe point.
*/
#ifndef LMP_DISPATCH_H
#define LMP_DISPATCH_H

#include <stdint.h>
#include <sys/types.h>

#include "fncache.h"

typedef struct lmp_pool lmp_pool;
typedef struct lmp_call lmp_call;
typedef struct lmp_backend lmp_backend;

enum { K_APPLY = 0, K_MAP = 1, K_STARMAP = 2 };       /* what a task runs */
enum { RES_OK = 0, RES_ERROR = 1, RES_UNENCODABLE = 2 }; /* what a worker answers */

/* Why a task came back without a result. */
enum {
  LOST_DIED,     /* its worker died while running it (or was killed from outside) */
  LOST_TIMEOUT,  /* the pool stopped it: overdue (lmp_backend_ops.stop) */
  LOST_STOPPED,  /* the pool stopped it: its call was stopped (Ctrl-C, imap break) */
  LOST_TERMINATED, /* the pool was terminated */
  LOST_BROKEN,   /* the workers cannot start (an initializer that fails) */
  LOST_BACKEND,  /* what runs the tasks is gone for good (Redis went away) */
  LOST_REFUSED   /* a worker refused it (it failed its authentication there): never retried */
};

typedef struct lmp_fdshare lmp_fdshare; /* a descriptor shared by the tasks that send it */

/* A task as backends see it. The pool owns it; a backend may keep it while it holds it. */
typedef struct lmp_task {
  struct lmp_task *next;    /* in the pool's queue, or in the list of the backend holding it */
  uint64_t id;
  uint8_t kind;             /* K_APPLY, K_MAP, K_STARMAP */
  lmp_fnent *fn;            /* the task function's message, with its cache id */
  const char *args;         /* the codec message of the arguments */
  size_t arglen;
  int nfds;                 /* descriptors the arguments carry (SCM_RIGHTS) */
  const int *fds;
  double timeout;           /* seconds, 0: none */
  const double *avg;        /* average duration of its stream's tasks (0: unknown) */
  void *where;              /* backend: what holds it (a worker...) */
  uint32_t seq;             /* backend: its number on that line */
} lmp_task;

/* What a backend does for a pool. Every function is given the backend it belongs to. */
typedef struct lmp_backend_ops {
  const char *name;
  /* Takes queued tasks from the pool (lmp_pool_next) while it has room for them. */
  void (*pump)(lmp_backend *b);
  /* Takes back task t, handed out and not started: 1 when it will never run (the backend holds
  ** it no more), 0 when it has started (or finished). */
  int (*withdraw)(lmp_backend *b, lmp_task *t);
  /* Stops running task t at once (local: its worker is killed and replaced); t then comes back
  ** through lmp_pool_lost with the reason given. */
  void (*stop)(lmp_backend *b, lmp_task *t, int reason);
  /* No more tasks will come: workers leave once the queue is empty and they are idle. */
  void (*close)(lmp_backend *b);
  /* Kills every worker now; what they held comes back through lmp_pool_lost. */
  void (*terminate)(lmp_backend *b);
  /* 1 when every worker has left. */
  int (*gone)(lmp_backend *b);
  /* The pool's function cache was emptied: workers drop the functions they loaded. */
  void (*forget)(lmp_backend *b);
  /* Pushes a table describing the workers ({workers = {pid...}, inflight = n, ...}). */
  void (*stats)(lmp_backend *b, struct lua_State *L);
  /* The pool is being freed: kill everything, hold nothing more; handles close later. */
  void (*destroy)(lmp_backend *b);
} lmp_backend_ops;

struct lmp_backend {
  const lmp_backend_ops *ops;
  lmp_pool *pool;
};

/* ---- from a backend to the pool ---- */

/* The next queued task for a worker that has width tasks in flight (NULL when none may go
** there: the queue is empty or the task's window is full). The task now belongs to the backend. */
lmp_task *lmp_pool_next(lmp_pool *p, int width);

/* The task at the head of a worker's line has started (timeouts count from now). */
void lmp_pool_started(lmp_pool *p, lmp_task *t, double now);

/* A task's result: status RES_*, the codec message at msg (n bytes) in block (malloc'd, now the
** pool's; NULL when out of memory: the task then fails), index the failing item of a chunk, pid
** the worker. */
void lmp_pool_result(lmp_pool *p, lmp_task *t, int status, char *block, const char *msg, size_t n,
                     uint32_t index, pid_t pid);

/* Like lmp_pool_result, the message copied (the backend keeps its memory): small results cost
** no allocation this way. */
void lmp_pool_result_copy(lmp_pool *p, lmp_task *t, int status, const char *msg, size_t n,
                          uint32_t index, pid_t pid);

/* A task came back without a result (LOST_*); why describes it ("worker PoolWorker-3 (pid 12)
** died: killed by signal 9 (SIGKILL)"). The pool retries it or fails it. */
void lmp_pool_lost(lmp_pool *p, lmp_task *t, int reason, const char *why, pid_t pid, int code);

/* A task the backend held but never started goes back to the front of the queue (several: the
** last one first, so they keep their order). */
void lmp_pool_requeue(lmp_pool *p, lmp_task *t);

/* Workers could start and run their initializer (resets the count of failed starts). */
void lmp_pool_worker_ready(lmp_pool *p);

/* A worker died before it was ready; returns 1 when the pool now counts as broken (then the
** backend starts no more workers). exited: it exited with a status (rather than a signal). */
int lmp_pool_worker_failed(lmp_pool *p, int exited, const char *why, pid_t pid, int code);

/* The backend cannot run anything any more (why says what happened): queued tasks fail with
** ProcessError and new calls raise it. */
void lmp_pool_backend_failed(lmp_pool *p, const char *why);

/* How many times the task may still be run again after its worker died. */
int lmp_pool_task_retries(const lmp_task *t);

/* 1 while the pool runs (neither closed nor terminated), 2 when closed, 0 when terminated. */
int lmp_pool_accepting(lmp_pool *p);

/* Tasks waiting in the pool's queue. */
long lmp_pool_queued(lmp_pool *p);

/* Something happened that the pool's waiters and deliveries must see. */
void lmp_pool_kick(lmp_pool *p);

/* Holds / releases a task's memory while a frame lends it (the pool may be done with the
** task before the frame is written). */
void lmp_task_hold(lmp_task *t);
void lmp_task_release(lmp_task *t);

#endif
