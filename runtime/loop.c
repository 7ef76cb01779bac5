/*
** loop.c — the parent's event loop: one libuv loop per Lua state that loaded lmp.
** Every blocking call of lmp waits here (lmp_loop_wait), so child exits, results and
** callbacks are processed while the caller waits, and Ctrl-C interrupts the wait.
** Caveats: uv_run is not re-entrant, so a blocking call made from inside a loop callback
** raises instead of nesting. SIGINT is caught only while lmp waits; otherwise the handler
** that was there before (lua.c's, the host's, or the default) gets the signal.
*/
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <unistd.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "lmp_int.h"
#include "lmp.h"
#include "loop.h"
#include "lmp_shm.h"

#define LOOP_KEY "lmp.loop"

/* ---- Ctrl-C: a handler that only sets a flag and wakes the loop ---- */

static volatile sig_atomic_t interrupted;   /* SIGINT seen during a wait */
static volatile sig_atomic_t waiting;       /* inside lmp_loop_wait / a tick window */
static struct timespec tick_until;          /* lmp_wait_tick's window (monotonic) */
static uv_async_t *volatile wake_async;     /* the loop to wake on SIGINT */
static struct sigaction previous;           /* the handler we chain to outside waits */

static int in_tick_window(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now); /* async-signal-safe */
  return now.tv_sec < tick_until.tv_sec ||
         (now.tv_sec == tick_until.tv_sec && now.tv_nsec < tick_until.tv_nsec);
}

static void on_sigint(int sig, siginfo_t *info, void *uctx) {
  if (waiting || in_tick_window()) {
    interrupted = 1;
    uv_async_t *a = wake_async;
    if (a != NULL) uv_async_send(a);
    return;
  }
  /* not ours: behave as if we were never installed */
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction != NULL) previous.sa_sigaction(sig, info, uctx);
  } else if (previous.sa_handler == SIG_DFL) {
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
  } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != NULL) {
    previous.sa_handler(sig);
  }
}

/* Makes sure our SIGINT handler is in place, remembering whatever was there before.
** Returns 0 when SIGINT is ignored (a background job, a worker): then Ctrl-C is not ours. */
static int claim_sigint(void) {
  struct sigaction cur;
  sigaction(SIGINT, NULL, &cur);
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigint) return 1;
  if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_IGN) return 0;
  previous = cur;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigint;
  sa.sa_flags = SA_SIGINFO; /* no SA_RESTART: blocking syscalls see EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  return 1;
}

/* ---- SIGCHLD: our own handler, which only wakes the loop ----
** libuv's signal watchers keep a process-wide table that a forked child inherits with the
** parent's entries in it, so a child's own loop would never hear of its children. lmp's handler
** is installed afresh in every process that loads lmp, and chains to what was there before. */

static uv_async_t *volatile chld_async;     /* the loop to wake on SIGCHLD */
static struct sigaction previous_chld;
static int chld_installed;                   /* in this process (reset in a forked child) */
static pid_t chld_owner;

static void on_sigchld(int sig, siginfo_t *info, void *uctx) {
  int saved = errno;
  uv_async_t *a = chld_async;
  if (a != NULL) uv_async_send(a);
  if (previous_chld.sa_flags & SA_SIGINFO) {
    if (previous_chld.sa_sigaction != NULL) previous_chld.sa_sigaction(sig, info, uctx);
  } else if (previous_chld.sa_handler != SIG_DFL && previous_chld.sa_handler != SIG_IGN &&
             previous_chld.sa_handler != NULL) {
    previous_chld.sa_handler(sig);
  }
  errno = saved;
}

/* Installs the SIGCHLD handler once per process (a forked child installs its own). */
static void claim_sigchld(void) {
  if (chld_installed && chld_owner == getpid()) return;
  struct sigaction cur, sa;
  sigaction(SIGCHLD, NULL, &cur);
  if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigchld)) previous_chld = cur;
  else memset(&previous_chld, 0, sizeof previous_chld);
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigchld;
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGCHLD, &sa, NULL);
  chld_installed = 1;
  chld_owner = getpid();
}

/* ---- SIGTERM, for servers that drain (`lmp worker`): a flag and a wake-up ---- */

static volatile sig_atomic_t term_seen;

static void on_sigterm(int sig) {
  (void)sig;
  term_seen = 1;
  uv_async_t *a = wake_async;
  if (a != NULL) uv_async_send(a);
}

/* catch_sigterm(): SIGTERM no longer kills this process; sigterm_seen() tells it came. */
static int l_catch_sigterm(lua_State *L) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  return 0;
}

/* ignore_sigterm(): SIGTERM does nothing to this process (the forked workers of a server that
** drains: a SIGTERM sent to the whole process group is their supervisor's to act on). */
static int l_ignore_sigterm(lua_State *L) {
  (void)L;
  signal(SIGTERM, SIG_IGN);
  return 0;
}

static int l_sigterm_seen(lua_State *L) {
  lua_pushboolean(L, term_seen);
  return 1;
}

/* ---- the loop object ---- */

static void on_wake(uv_async_t *a) { (void)a; }

static void on_chld(uv_async_t *a) {
  lmp_loop *lp = a->data;
  lmp_children_reap();
  lmp_loop_notify(lp);
}

/* The wait's deadline: the poll must not block past it (see loop_wait). */
static void on_timer(uv_timer_t *t) {
  lmp_loop *lp = t->data;
  uv_stop(&lp->uv);
}

static void close_cb(uv_handle_t *h) { (void)h; }

static void walk_close(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, close_cb);
}

static int loop_gc(lua_State *L) {
  lmp_loop **box = luaL_checkudata(L, 1, "lmp.Loop");
  lmp_loop *lp = *box;
  if (lp != NULL && !lp->closed) {
    lp->closed = 1;
    if (wake_async == &lp->wake) wake_async = NULL;
    if (chld_async == &lp->chld) chld_async = NULL;
    lmp_children_at_exit();
    uv_walk(&lp->uv, walk_close, NULL);
    uv_run(&lp->uv, UV_RUN_DEFAULT);
    uv_loop_close(&lp->uv);
    lmp_fd_disown(lp->backend_fd);
    free(lp);
  }
  *box = NULL;
  return 0;
}

/* Creates the loop of L: SIGCHLD watcher, wake-up handle, timer. Raises on failure. */
static lmp_loop *loop_create(lua_State *L) {
  lmp_loop **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, "lmp.Loop");
  lmp_loop *lp = calloc(1, sizeof *lp);
  if (lp == NULL) luaL_error(L, "not enough memory");
  lmp__std_fds_open(); /* libuv asserts its descriptors are above 2 when it closes them */
  int rc = uv_loop_init(&lp->uv);
  if (rc != 0) {
    free(lp);
    luaL_error(L, "cannot create the event loop: %s", uv_strerror(rc));
  }
  *box = lp;
  lp->uv.data = lp;
  uv_async_init(&lp->uv, &lp->wake, on_wake);
  uv_unref((uv_handle_t *)&lp->wake);
  uv_async_init(&lp->uv, &lp->chld, on_chld);
  lp->chld.data = lp;
  uv_unref((uv_handle_t *)&lp->chld);
  chld_async = &lp->chld;
  claim_sigchld();
  uv_timer_init(&lp->uv, &lp->timer);
  lp->timer.data = lp;
  uv_unref((uv_handle_t *)&lp->timer);
  lp->backend_fd = uv_backend_fd(&lp->uv);
  lmp_fd_own(lp->backend_fd);
  lua_setfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
  return lp;
}

lmp_loop *lmp_loop_get(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
  lmp_loop **box = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (box != NULL && *box != NULL) return *box;
  return loop_create(L);
}

/* Something happened: a waiter re-checks its condition, and a poll later in this loop turn
** must not block (the event may have come before the poll, from a timer or a callback). */
void lmp_loop_notify(lmp_loop *lp) {
  lp->events++;
  if (lp->running) uv_stop(&lp->uv);
}

int lmp_loop_busy(lua_State *L) { return lmp_loop_get(L)->running; }

void lmp_loop_interrupt_later(void) { interrupted = 1; }

void lmp_check_may_block(lua_State *L) {
  if (lmp_loop_get(L)->running)
    lmp_raise(L, "ValueError",
              "a blocking lmp call cannot run inside a callback (the loop is busy); use a "
              "timeout of 0 or move the call out of the callback");
}

/* ---- waiting ---- */

static void timespec_after(struct timespec *ts, double s) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += (time_t)s;
  ts->tv_nsec += (long)((s - (double)(time_t)s) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Leaves a wait: stops the timer and lets Ctrl-C go back to its previous owner. */
static void wait_leave(lmp_loop *lp) {
  uv_timer_stop(&lp->timer);
  uv_unref((uv_handle_t *)&lp->wake);
  lp->running = 0;
  waiting = 0;
}

/* Runs ready loop work once without blocking (nothing when the loop is already running). */
static void look_once(lmp_loop *lp, lua_State *L) {
  if (lp->running) return;
  lp->running = 1;
  lp->L = L;
  uv_run(&lp->uv, UV_RUN_NOWAIT);
  lp->running = 0;
}

/* The wait itself: 1 ready, 0 timed out, -1 interrupted, -2 called from a callback.
** The deadline is ours, on the monotonic clock; the loop's timer only wakes the poll. On
** libuv 1.44 a timer that is already due when uv_run starts fires before the poll, and the poll
** then blocks with no timeout: so the timer (like every event, lmp_loop_notify) calls uv_stop,
** which makes that poll return at once, and the deadline is checked before every turn. */
/* 1 once for a Ctrl-C not yet raised (seen in an earlier wait, or in a callback's code), when
** the caller is not itself inside a loop turn. */
static int take_interrupt(lmp_loop *lp) {
  if (!interrupted || lp->running) return 0;
  interrupted = 0;
  return 1;
}

static int loop_wait(lua_State *L, lmp_ready_fn ready, void *ud, double timeout) {
  lmp_loop *lp = lmp_loop_get(L);
  if (take_interrupt(lp)) return -1;
  if (ready != NULL && ready(L, ud)) return 1;
  if (timeout == 0) {
    look_once(lp, L);
    if (take_interrupt(lp)) return -1;
    return ready != NULL && ready(L, ud);
  }
  if (lp->running) return -2;
  double deadline = timeout > 0 ? lmp_monotonic() + timeout : 0;
  lp->running = 1;
  lp->L = L;
  claim_sigint();
  wake_async = &lp->wake;
  waiting = 1;
  uv_ref((uv_handle_t *)&lp->wake); /* keeps UV_RUN_ONCE blocking */
  int result = 0;
  for (;;) {
    uv_run_mode mode = UV_RUN_ONCE;
    if (timeout > 0) {
      double left = deadline - lmp_monotonic();
      if (left <= 0) break;
      if (left < 1e-3) { /* below the loop timer's millisecond: look until it is over */
        mode = UV_RUN_NOWAIT;
      } else {
        uv_update_time(&lp->uv); /* the loop clock may be stale since the last run */
        uv_timer_start(&lp->timer, on_timer, (uint64_t)ceil(left * 1000.0), 0);
      }
    }
    uv_run(&lp->uv, mode);
    if (interrupted) { /* Ctrl-C wins over a result that came in the same turn */
      interrupted = 0;
      result = -1;
      break;
    }
    if (ready != NULL && ready(L, ud)) {
      result = 1;
      break;
    }
  }
  wait_leave(lp);
  return result;
}

/* Turns loop_wait's result into a return value or the error it stands for. */
int lmp_wait_result(lua_State *L, int r) {
  if (r == -1) return lmp_raise(L, "InterruptedError", "interrupted by Ctrl-C (SIGINT)");
  if (r == -2)
    return lmp_raise(L, "ValueError",
                     "a blocking lmp call cannot run inside a callback (the loop is busy)");
  return r;
}

int lmp_loop_wait(lua_State *L, lmp_ready_fn ready, void *ud, double timeout) {
  return lmp_wait_result(L, loop_wait(L, ready, ud, timeout));
}

int lmp_loop_wait_status(lua_State *L, lmp_ready_fn ready, void *ud, double timeout) {
  return loop_wait(L, ready, ud, timeout);
}

int lmp_loop_run_nowait(lua_State *L) {
  lmp_loop *lp = lmp_loop_get(L);
  if (lp->running) return 0;
  look_once(lp, L);
  return 1;
}

/* The tick of waits that sleep outside the loop (futexes, see futex.c): called before each
** sleep of such a wait, never when it would not sleep, so it is where a blocking call made from
** a callback is refused. */
double lmp_wait_tick(lua_State *L) {
  lmp_loop *lp = lmp_loop_get(L);
  lmp_check_may_block(L);
  if (claim_sigint()) {
    timespec_after(&tick_until, 0.25);
    wake_async = &lp->wake;
  }
  if (interrupted) {
    interrupted = 0;
    tick_until.tv_sec = 0;
    return lmp_raise(L, "InterruptedError", "interrupted by Ctrl-C (SIGINT)");
  }
  lmp_loop_run_nowait(L);
  return lp->active > 0 ? 0.002 : 0.1;
}


/* ---- waiting for a file descriptor ---- */

typedef struct fdwait {
  uv_poll_t poll;
  int ready;
} fdwait;

static void on_poll(uv_poll_t *h, int status, int events) {
  fdwait *w = h->data;
  w->ready = status < 0 ? -1 : 1;
  uv_poll_stop(h);
}

static void free_on_close(uv_handle_t *h) { free(h->data); }

static int fd_ready(lua_State *L, void *ud) { return ((fdwait *)ud)->ready != 0; }

int lmp_wait_fd(lua_State *L, int fd, int writable, double timeout) {
  struct pollfd pf = {fd, (short)(writable ? POLLOUT : POLLIN), 0};
  int pr;
  do pr = poll(&pf, 1, 0);
  while (pr < 0 && errno == EINTR);
  if (pr != 0) return 1; /* ready, or an error that the caller's read or write will report */
  if (timeout == 0) return 0;
  lmp_loop *lp = lmp_loop_get(L);
  fdwait *w = calloc(1, sizeof *w);
  if (w == NULL) return luaL_error(L, "not enough memory");
  if (uv_poll_init(&lp->uv, &w->poll, fd) != 0) {
    free(w); /* not pollable (a regular file): always ready */
    return 1;
  }
  w->poll.data = w;
  uv_poll_start(&w->poll, writable ? UV_WRITABLE : UV_READABLE, on_poll);
  int r = loop_wait(L, fd_ready, w, timeout);
  uv_close((uv_handle_t *)&w->poll, free_on_close); /* freed in its close callback */
  return lmp_wait_result(L, r);
}

/* ---- Lua functions ---- */

static int never_ready(lua_State *L, void *ud) { return 0; }

/* sleep(seconds): waits in the loop, so callbacks and child exits are handled meanwhile.
** sleep(0) only runs what is ready. */
static int l_sleep(lua_State *L) {
  if (lua_type(L, 1) != LUA_TNUMBER) return lmp_typeerror(L, 1, "number");
  double s = lua_tonumber(L, 1);
  if (isnan(s) || s < 0) return lmp_argerror(L, 1, "ValueError", "seconds must be a non-negative number");
  lmp_loop_wait(L, never_ready, NULL, lmp_timeout_of(s));
  return 0;
}

static int events_since(lua_State *L, void *ud) {
  return lmp_loop_get(L)->events != *(unsigned long *)ud;
}

/* run_once([timeout]): runs ready work; with a timeout, waits up to that long for an event.
** Returns false when a blocking call is already running the loop. */
static int l_run_once(lua_State *L) {
  double timeout = lua_isnoneornil(L, 1) ? 0 : lmp_checktimeout(L, 1);
  lmp_loop *lp = lmp_loop_get(L);
  if (lp->running) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (timeout != 0) {
    unsigned long start = lp->events;
    lmp_loop_wait(L, events_since, &start, timeout);
  }
  lp->polling = 1; /* the caller goes back to its own work: results must be announced */
  lmp_loop_run_nowait(L);
  lp->polling = 0;
  if (take_interrupt(lp)) return lmp_wait_result(L, LMP_WAIT_INTERRUPTED);
  lua_pushboolean(L, 1);
  return 1;
}

/* wait_event([timeout]): waits until something happens in the loop (a result, a child exit,
** a callback) or timeout seconds pass (nil or negative: no limit). Returns true when
** something happened. Raises InterruptedError on Ctrl-C. */
static int l_wait_event(lua_State *L) {
  double timeout = lmp_checktimeout(L, 1);
  lmp_loop *lp = lmp_loop_get(L);
  unsigned long start = lp->events;
  lua_pushboolean(L, lmp_loop_wait(L, events_since, &start, timeout));
  return 1;
}

static int l_backend_fd(lua_State *L) {
  lua_pushinteger(L, uv_backend_fd(&lmp_loop_get(L)->uv));
  return 1;
}

void lmp__open_loop(lua_State *L) {
  if (luaL_newmetatable(L, "lmp.Loop")) {
    lua_pushcfunction(L, loop_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"sleep", l_sleep},
                                 {"run_once", l_run_once},
                                 {"wait_event", l_wait_event},
                                 {"backend_fd", l_backend_fd},
                                 {"catch_sigterm", l_catch_sigterm},
                                 {"ignore_sigterm", l_ignore_sigterm},
                                 {"sigterm_seen", l_sigterm_seen},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lmp_set_tick_hook(lmp_wait_tick);
  lmp_loop_get(L);
}

/* ---- the embedding entries (lmp.h) ---- */

/* Protected: require("lmp").poll() -> the number of callbacks that ran. */
static int prun_poll(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lmp");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "poll");
  lua_call(L, 0, 1);
  return 1;
}

int lmp_poll(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
  int loaded = lua_touserdata(L, -1) != NULL;
  lua_pop(L, 1);
  if (!loaded) return -1;
  lua_pushcfunction(L, prun_poll);
  if (lmp_pcall_traceback(L, 0, 1) != LUA_OK) { /* a host cannot catch it: say what it was */
    fprintf(stderr, "lmp: lmp_poll failed: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return n;
}

int lmp_backend_fd(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
  lmp_loop **box = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (box == NULL || *box == NULL) return -1;
  return uv_backend_fd(&(*box)->uv);
}
