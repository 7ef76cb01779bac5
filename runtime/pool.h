/*
** pool.h — a pool's books, shared by the bookkeeping (pool.c), the calls that gather results
** (result.c) and the Lua interface (lpool.c). Backends see dispatch.h only.
** Caveat: a call lives inside its Lua userdata (an AsyncResult, or an imap's call), kept alive
** by the pool's table of calls for as long as it has tasks.
*/
#ifndef LMP_POOL_H
#define LMP_POOL_H

#include <stdint.h>
#include <uv.h>

#include "dispatch.h"
#include "loop.h"

#define POOL_MT "lmp.PoolCore"
#define CALL_MT "lmp.AsyncResult"

/* ---- tuning ---- */
#define WINDOW_MAX 256            /* tasks in flight per worker, at most */
#define WINDOW_SLOW 5e-3          /* tasks of a stream that averages longer: one at a time */
#define WINDOW_MEDIUM 5e-4        /* ... longer than this: 4 */
#define WINDOW_QUICK 1e-4         /* ... longer than this: 32; quicker: WINDOW_MAX */
#define PUMP_EVERY 32             /* submits between two looks at the loop during a long submit */
#define PUMP_BYTES 1024           /* ... each this many bytes of arguments counting as one more */
#define TIMEOUT_CHECK_MS 10       /* how often tasks with a timeout are checked */
#define BROKEN_AFTER 9            /* failed starts in a row (weighted, see lmp_pool_worker_failed) */
#define ARGS_INLINE 256           /* arguments this small live in the task's own allocation */
#define RESULT_INLINE 64          /* results this small too */

enum { P_RUN, P_CLOSE, P_TERMINATE };
enum { T_QUEUED, T_OUT, T_SETTLED };
enum { CALL_APPLY, CALL_MAP, CALL_IMAP, CALL_RAW }; /* RAW: an apply of encoded messages */
enum { CALL_PENDING, CALL_OK, CALL_FAILED };
enum { STOP_WITHDRAW, STOP_DROP, STOP_KILL }; /* how lmp_pool_stop_call stops a call's work */

/* What a settled task brings back, until it is delivered. */
typedef struct outcome {
  int status;          /* RES_* for a result; -1 - LOST_* when it came back without one */
  char *block;         /* malloc'd memory holding msg (or NULL) */
  const char *msg;
  size_t n;
  uint32_t index;      /* failing item of a chunk (0-based) */
  pid_t pid;
  int code;            /* exit code of a lost worker */
  char *why;           /* malloc'd description of a loss */
} outcome;

/* A task as the pool keeps it. */
typedef struct ptask {
  lmp_task t;               /* first: the backends' view */
  struct ptask *cnext, *cprev; /* in its call's list of tasks not yet delivered */
  struct ptask *qprev;      /* in the pool's queue (t.next is the way forward): O(1) removal */
  struct ptask *snext;      /* in the pool's list of settled tasks awaiting delivery */
  struct ptask *tnext, *tprev; /* in the pool's list of started tasks with a timeout */
  lmp_call *call;
  lmp_pool *pool;
  double *avg;              /* its window is tuned on this average: its call's or its function's */
  int64_t start;            /* the first item of its call that it covers (1-based) */
  uint32_t count;           /* how many items it covers */
  double started;           /* monotonic time it started (0: not yet) */
  int retries;              /* retries left */
  int state;                /* T_QUEUED, T_OUT, T_SETTLED */
  int timed;                /* in the list of started tasks with a timeout */
  int stopping;             /* the backend was asked to stop it */
  int refs;                 /* the pool's, plus one per frame that lends its memory */
  int nshares;
  lmp_fdshare **shares;     /* the descriptors of t.fds, shared per object */
  int *fdv;
  char *argbuf;             /* owns t.args when they are not kept inline */
  outcome out;
  char rbuf[RESULT_INLINE]; /* a small result's bytes */
  char inl[];               /* small arguments, inline */
} ptask;

/* One submission (apply_async, a map, an imap): where its tasks' results go. */
struct lmp_call {
  lmp_pool *pool;
  int kind, state;
  int ref;                 /* key in the pool's table of calls while it has tasks (or LUA_NOREF) */
  int callbacks;           /* a callback or error_callback is set */
  int progress;            /* a progress function is set */
  int stopped;             /* its work was stopped: what still comes back is dropped */
  int open;                /* more tasks may come (an imap being fed) */
  ptask *tasks;            /* not yet delivered */
  long ntasks;
  int64_t total, done;     /* items */
  double avg;              /* its own tasks' average duration (map-like calls' windows) */
  lmp_fnent *fn;           /* map-like calls: the function of all its tasks */
  double timeout;          /* per task */
  int kind_of_tasks;       /* K_MAP or K_STARMAP */
  int64_t next_start;      /* imap: the position of the next item added */
  int64_t err_at;          /* imap: the position of the error kept (0: none) */
  int64_t yielded;         /* imap (ordered): the last position taken */
  /* imap: values wait in a ring of slots (a Lua table, uservalue UV_RESULTS) of slotcap
  ** entries: an ordered imap's value of position p in slot p % slotcap; an unordered one's in
  ** arrival order, with its position in pos[] */
  int ordered;
  int64_t changes, seen;   /* deliveries so far, and when a wait began */
  size_t slotcap;
  uint8_t *got;            /* ordered: arrived flags, by slot */
  int64_t *pos;            /* unordered: the positions of arrivals, by slot */
  uint64_t arrived, taken; /* unordered: arrivals so far, and taken so far */
  int64_t ntaken;          /* items taken (both kinds) */
};

typedef struct lmp_pool {
  lmp_loop *lp;
  lmp_backend *backend;
  int state;               /* P_RUN, P_CLOSE, P_TERMINATE */
  int processes;
  uint64_t next_id;
  ptask *qhead, *qtail;    /* waiting for a worker */
  long nqueued;
  ptask *settled, *settled_tail; /* results waiting for delivery to Lua */
  lmp_fncache fns;         /* the task functions sent so far */
  lmp_buf scratch;         /* encoding space */
  lmp_fdvec fdv;           /* descriptors found while encoding */
  lmp_fdshare *shares;     /* descriptors shared by queued tasks */
  double task_timeout;     /* defaults for tasks */
  int retries;
  ptask *timed;            /* started tasks with a timeout */
  int init_failures, broken; /* broken: 1 workers cannot start, 2 the backend failed */
  char broken_why[256];
  int dead;                /* the Lua object is gone: freed once handles are closed */
  int closes;              /* handles still closing */
  int calls;               /* registry ref: the table of calls with tasks in flight */
  int delivering;
  ptask *current;          /* the task being delivered (when delivering it raises) */
  size_t since_pump;       /* weight of the submits since the last look at the loop */
  size_t last_objs;        /* objects in the last slice encoded (lmp__encode_range) */
  uv_timer_t timer;        /* overdue-task check */
  uv_check_t check;        /* after the poll: deliver */
  uv_idle_t idle;          /* results wait for delivery: the poll must not block */
  int timer_on;
} lmp_pool;

/* ---- pool.c: the books ---- */

/* Creates the books of a pool (no backend yet); NULL when out of memory. */
lmp_pool *lmp_pool_create(lua_State *L, int processes);
/* The Lua object is gone: stops everything; memory goes once the loop closed the handles. */
void lmp_pool_destroy(lua_State *L, lmp_pool *p);

/* Makes a task of call c: the function entry f (a reference is taken), its arguments the value
** at argidx, or the slice argidx[first..first+count-1] when count >= 0 (encoded, descriptors
** shared). Raises SerializationError naming root when they cannot be encoded. */
ptask *lmp_pool_task(lua_State *L, lmp_pool *p, lmp_call *c, int kind, lmp_fnent *f, int argidx,
                     int64_t first, int64_t count, const char *root);
/* Makes a task of call c from messages already encoded: the function entry f (a reference is
** taken) and the arguments' message (copied). */
ptask *lmp_pool_task_raw(lmp_pool *p, lmp_call *c, int kind, lmp_fnent *f, const char *args,
                         size_t arglen);
/* Queues task t and hands out what the backend can take. */
void lmp_pool_submit(lua_State *L, lmp_pool *p, ptask *t);

/* The entry of the task function at idx (a reference is taken). */
lmp_fnent *lmp_pool_fn(lua_State *L, lmp_pool *p, int idx);

/* Stops the work of call c: queued tasks are dropped and tasks in a worker's window withdrawn.
** STOP_KILL also kills the workers running its tasks (they are replaced); STOP_DROP lets those
** run to their end, their results dropped; STOP_WITHDRAW (cancel) does as STOP_DROP only when
** some task could be withdrawn, and leaves the call untouched otherwise. Returns how many tasks
** will never run. Runs no Lua code (safe in a finalizer). */
long lmp_pool_stop_call(lua_State *L, lmp_pool *p, lmp_call *c, int mode);

/* Closes the pool (workers leave once the queue is done) / terminates it (everything is killed,
** what is outstanding fails). */
void lmp_pool_close(lmp_pool *p);
void lmp_pool_terminate(lmp_pool *p);

/* Delivers every settled task to its call (decoding, callbacks); runs Lua, protected. */
void lmp_pool_deliver(lua_State *L, lmp_pool *p);

/* The window (tasks in flight per worker) for the stream of task t, in p as it is now. */
int lmp_pool_window(const lmp_pool *p, const ptask *t);

/* ---- result.c: calls ---- */

/* Pushes a new call userdata of kind for pool p (core at index owner); callback,
** error_callback and progress are stack indexes (nil or none allowed). */
lmp_call *lmp_call_push(lua_State *L, lmp_pool *p, int owner, int kind, int callback,
                        int error_callback, int progress);
/* Gives the call at idx a new results table of narr slots (map and imap calls). */
void lmp_call_new_results(lua_State *L, int idx, int narr);
/* No more tasks will be added to c (at idx): a map whose tasks are all delivered settles. */
void lmp_call_close(lua_State *L, lmp_call *c, int idx);
/* Registers the call at idx in the pool's table of calls, where it stays while it has tasks. */
void lmp_call_register(lua_State *L, lmp_call *c, int idx);
/* Takes c out of the table of calls when it has no task left and expects none. */
void lmp_call_unregister_if_done(lua_State *L, lmp_call *c);
/* Protected (lua_CFunction): delivers the settled task (light userdata at 1) into its call:
** decodes, settles, runs callbacks. Raises when the result cannot be decoded. */
int lmp_call_deliver(lua_State *L);
/* Fails c with the error object on top (popped): a call not yet settled is settled (its
** error_callback runs); an imap keeps the error for position at. */
void lmp_call_fail(lua_State *L, lmp_call *c, int64_t at);
/* Pushes the call userdata of c (nil when it is not registered). */
void lmp_call_push_ud(lua_State *L, lmp_call *c);
/* Pushes the pool's table of calls. */
void lmp_pool_push_calls(lua_State *L, lmp_pool *p);

/* What the books call in the calls above them (result.c gives them when it opens), so that
** pool.c names nothing of result.c: lmp_call_deliver, lmp_call_fail, lmp_call_unregister_if_done. */
typedef struct lmp_call_ops {
  lua_CFunction deliver;
  void (*fail)(lua_State *L, lmp_call *c, int64_t at);
  void (*unregister_if_done)(lua_State *L, lmp_call *c);
} lmp_call_ops;
void lmp_pool_set_call_ops(const lmp_call_ops *ops);

void lmp__open_pool_calls(lua_State *L);

/* ---- workers.c: the local backend ---- */

/* Starts n local worker processes for p, their start payload being init (the codec message of
** {initializer, initargs}). On failure every started worker is killed and reaped, and a
** ProcessError is raised. */
lmp_backend *lmp_workers_start(lua_State *L, lmp_pool *p, int n, const char *init, size_t initlen,
                               long maxtasks);

#endif
