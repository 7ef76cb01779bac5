/*
** loop.h — the parent's libuv loop (loop.c); the children table is in children.h.
*/
#ifndef LMP_LOOP_H
#define LMP_LOOP_H

#include <sys/types.h>
#include <uv.h>
#include "lmp_int.h"
#include "children.h"

typedef struct lmp_loop {
  uv_loop_t uv;
  uv_async_t chld;         /* woken by the SIGCHLD handler */
  uv_async_t wake;         /* woken by the SIGINT handler */
  uv_timer_t timer;        /* the timeout of the current wait */
  lua_State *L;            /* the thread running the loop now (for callbacks) */
  unsigned long events;    /* bumped by anything a waiter may be waiting for */
  int active;              /* producers of events (pools...): keeps ticks short */
  int running;             /* inside uv_run: blocking calls must not nest */
  int polling;             /* the run is a host's non-blocking poll (mp.poll, lmp_poll) */
  int closed;
  int backend_fd;
} lmp_loop;

/* A condition a blocking call waits for; must not raise. */
typedef int (*lmp_ready_fn)(lua_State *L, void *ud);

/* The loop of L's main state, created on first use. Raises on failure. */
lmp_loop *lmp_loop_get(lua_State *L);

/* Runs the loop until ready(L, ud) holds (returns 1) or timeout seconds pass (returns 0;
** timeout < 0 waits without limit, 0 looks once without blocking). Never blocks past the
** deadline. Raises InterruptedError on Ctrl-C, and ValueError when it would block inside a
** loop callback. */
int lmp_loop_wait(lua_State *L, lmp_ready_fn ready, void *ud, double timeout);

/* lmp_loop_wait without raising: LMP_WAIT_READY, LMP_WAIT_TIMEOUT, LMP_WAIT_INTERRUPTED (Ctrl-C)
** or LMP_WAIT_BUSY (it would block inside a loop callback); lmp_wait_result turns that into
** the return value or the error. For callers that must act before an interruption goes on. */
enum { LMP_WAIT_BUSY = -2, LMP_WAIT_INTERRUPTED = -1, LMP_WAIT_TIMEOUT = 0, LMP_WAIT_READY = 1 };
int lmp_loop_wait_status(lua_State *L, lmp_ready_fn ready, void *ud, double timeout);
int lmp_wait_result(lua_State *L, int r);

/* Waits in the loop until fd is readable (or writable); 1 when ready, 0 on timeout.
** Raises like lmp_loop_wait. A descriptor epoll cannot watch counts as ready. */
int lmp_wait_fd(lua_State *L, int fd, int writable, double timeout);

/* Runs ready loop work without blocking; returns 0 when the loop is already running. */
int lmp_loop_run_nowait(lua_State *L);

/* Records that something happened that a waiter may be waiting for. */
void lmp_loop_notify(lmp_loop *lp);

/* 1 while the loop of L runs (so the caller is inside a loop callback). */
int lmp_loop_busy(lua_State *L);
/* Ctrl-C that reached Lua code inside a loop turn (a callback, a delivery, whose errors lmp
** catches): kept for the wait around the turn, or the next one, to raise. */
void lmp_loop_interrupt_later(void);
/* Raises ValueError when called from inside a loop callback: for blocking calls, just before
** they would block. */
void lmp_check_may_block(lua_State *L);

/* For waits that cannot be loop events (futexes): call between short sleeps. Runs ready loop
** work, raises InterruptedError after Ctrl-C, returns the longest sleep (seconds) allowed
** before the next call. */
double lmp_wait_tick(lua_State *L);

#endif
