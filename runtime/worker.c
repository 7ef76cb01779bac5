/*
** worker.c — a pool worker's serving loop: read task frames from the parent's line, run them in
** this process's fresh Lua state, write result frames back (frame.h, wire.h, link.h).
** Reads drain every complete frame per wake-up; a result is committed before the next task
** starts, so no result waits for a slow task and none is lost when a task crashes. Task
** functions are cached by the id the parent gives them: a closure sent a thousand times is
** loaded once. Before a task runs, its claim is taken, so the parent can withdraw any task
** that has not started.
** Caveats: blocking I/O only — the worker has no event loop; it leaves on EOF or QUIT.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "bytes.h"
#include "codec.h"
#include "dispatch.h"
#include "frame.h"
#include "link.h"
#include "lmp_int.h"

#define FCACHE "lmp.worker.functions" /* fnid -> closure */
#define OUT_SMALL (64u << 10)          /* the result buffer shrinks back to this after a big one */
#define SPIN_AFTER 50e-6               /* after a task this quick, look for the next a moment */
#define SPIN_FOR 30e-6
#define BIG_MESSAGE (4u << 20)         /* a task or result this big is followed by a collection */

typedef struct wstate {
  int fd;
  lmp_rin in;        /* frames read, not yet handled */
  lmp_buf out;       /* result frames not yet committed */
  long done;         /* tasks finished */
  long maxtasks;     /* leave after this many (0: never) */
  lua_Integer range; /* >= 0: the value being sent is a chunk's results, of this length */
  lmp_ring *ring;    /* results go here when they fit */
  double last_task;  /* how long the last task ran (s) */
  int taskfds[LMP_FRAME_MAXFDS]; /* the running task's descriptors until its args are decoded */
  int ntaskfds;
  int big;           /* the last task moved a big message */
} wstate;

/* ---- writing ---- */

/* Writes all of out to the socket; -1 when the parent is gone. */
static int flush_out(wstate *w) {
  size_t off = 0;
  while (off < w->out.len) {
    ssize_t n = write(w->fd, w->out.p + off, w->out.len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    off += (size_t)n;
  }
  w->out.len = 0;
  if (w->out.cap > OUT_SMALL) lmp_buf_free(&w->out);
  return 0;
}

/* Commits the result frames in out: into the ring when they fit (announced with a WAKE only if
** the parent may sleep), else through the socket. -1 when the parent is gone. */
static int commit(wstate *w) {
  if (w->out.len == 0) return 0;
  int r = w->ring ? lmp_ring_commit(w->ring, w->out.p, w->out.len) : -1;
  if (r < 0) return flush_out(w);
  w->out.len = 0;
  if (r == 1) {
    char wake[LMP_FRAME_HEAD];
    lmp_frame_head(wake, F_WAKE, 0, 0);
    if (lmp_buf_add(&w->out, wake, sizeof wake) != 0) return -1;
    return flush_out(w);
  }
  return 0;
}

/* Starts a RESULT frame in out; returns the offset of its header. */
static size_t result_begin(wstate *w, uint64_t id, int status, uint32_t index) {
  char head[LMP_FRAME_HEAD + RESULT_HEAD];
  lmp_frame_head(head, F_RESULT, 0, 0); /* the length is set by result_end */
  lmp_put_le64(head + LMP_FRAME_HEAD, id);
  head[LMP_FRAME_HEAD + 8] = (char)status;
  lmp_put_le32(head + LMP_FRAME_HEAD + 9, index);
  size_t at = w->out.len;
  if (lmp_buf_add(&w->out, head, sizeof head) != 0) {
    fputs("lmp worker: out of memory\n", stderr);
    _exit(70);
  }
  return at;
}

static void result_end(wstate *w, size_t at) {
  lmp_put_le64(w->out.p + at, (uint64_t)(w->out.len - at - LMP_FRAME_HEAD));
}

/* Protected: encodes the value at 1 after a result header. */
static int encode_top(lua_State *L) {
  wstate *w = lua_touserdata(L, 2);
  if (w->range >= 0) /* a chunk's results: an array of known length, no table walk */
    lmp__encode_range(L, 1, 1, w->range, &w->out, NULL, "result");
  else
    lmp_encode_buf(L, 1, &w->out, NULL);
  return 0;
}

/* Encodes the value on top into a RESULT frame; 0, or -1 with the reason on top (the value
** below it). */
static int try_result(lua_State *L, wstate *w, uint64_t id, int status, uint32_t index) {
  size_t at = result_begin(w, id, status, index);
  lua_pushcfunction(L, encode_top);
  lua_pushvalue(L, -2);
  lua_pushlightuserdata(L, w);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    w->out.len = at;
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "message");
      lua_remove(L, -2);
    }
    if (!lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "result cannot be encoded");
    }
    return -1;
  }
  result_end(w, at);
  return 0;
}

/* Sends the value on top as the task's result (pops it). A result that cannot be encoded is
** sent as RES_UNENCODABLE with the codec's reason; an error whose value cannot be encoded is
** sent with its message and traceback only. */
static void send_result(lua_State *L, wstate *w, uint64_t id, int status, uint32_t index) {
  if (try_result(L, w, id, status, index) == 0) {
    lua_pop(L, 1);
    return;
  }
  if (status == RES_ERROR && lua_istable(L, -2)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setfield(L, -2, "value");
    if (try_result(L, w, id, status, index) == 0) {
      lua_pop(L, 1);
      return;
    }
  }
  size_t at = result_begin(w, id, RES_UNENCODABLE, index); /* stack: value reason */
  lmp_encode_buf(L, -1, &w->out, NULL);                     /* a string: cannot fail */
  result_end(w, at);
  lua_pop(L, 2);
}

/* ---- running ---- */

/* Pushes the traceback of the task's error, from where it was raised down to the task
** function itself: lmp's own frames below it are left out. */
static void task_traceback(lua_State *L, const void *taskfn) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "stack traceback:");
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Slnf", &ar);
    int is_task = lua_topointer(L, -1) == taskfn;
    lua_pop(L, 1);
    if (ar.currentline > 0)
      lua_pushfstring(L, "\n\t%s:%d: in ", ar.short_src, ar.currentline);
    else
      lua_pushfstring(L, "\n\t%s: in ", ar.short_src);
    luaL_addvalue(&b);
    if (ar.name != NULL)
      lua_pushfstring(L, "%s '%s'",
                      (*ar.namewhat && strcmp(ar.namewhat, "global") != 0) ? ar.namewhat : "function",
                      ar.name);
    else if (*ar.what == 'm') lua_pushliteral(L, "main chunk");
    else if (*ar.what == 'C') lua_pushliteral(L, "?");
    else lua_pushfstring(L, "function <%s:%d>", ar.short_src, ar.linedefined);
    luaL_addvalue(&b);
    if (is_task) break;
  }
  luaL_pushresult(&b);
}

/* Message handler of tasks: {value = err, message = string, traceback = string}. Upvalue 1 is
** the task function (where the traceback stops). */
static int task_msgh(lua_State *L) {
  lua_settop(L, 1);
  lua_createtable(L, 0, 3); /* 2: the error info */
  lua_pushvalue(L, 1);
  lua_setfield(L, 2, "value");
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    lua_pushvalue(L, 1);
  } else if (!(luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)) {
    lua_settop(L, 2);
    if (!(lua_istable(L, 1) && lua_getfield(L, 1, "message") == LUA_TSTRING)) {
      lua_settop(L, 2);
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
  }
  lua_setfield(L, 2, "message");
  task_traceback(L, lua_topointer(L, lua_upvalueindex(1)));
  lua_setfield(L, 2, "traceback");
  lua_settop(L, 2);
  return 1;
}

/* After a memory error (no message handler runs for those): the error info, once the task's
** garbage is collected. */
static void memory_error(lua_State *L, const char *what) {
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  lua_createtable(L, 0, 2);
  lua_pushfstring(L, "%s ran out of memory in %s (pid %d)", "the worker", what, (int)getpid());
  lua_setfield(L, -2, "message");
  lua_pushliteral(L, "MemoryError");
  lua_setfield(L, -2, "value");
}

typedef struct chunkrun {
  int kind;
  lua_Integer i; /* the item being run: the failing one when the chunk raises */
} chunkrun;

/* The count of a table of arguments: its integer n, else its length (-1: an n that is no
** integer). Raw reads: what was decoded has no metatable. */
static lua_Integer arg_count(lua_State *L, int t) {
  lua_Integer n;
  int isnum = 1;
  if (lua_getfield(L, t, "n") == LUA_TNIL) n = (lua_Integer)lua_rawlen(L, t);
  else n = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  return isnum ? n : -1;
}

static int bad_count(lua_State *L) { return luaL_error(L, "the task's args.n is out of range"); }

/* Protected (stack: fn args chunkrun): runs fn over args[1..n] into a new table {n = n} left
** on the stack. One protected call for the whole chunk, not one per item. */
static int pchunk(lua_State *L) {
  chunkrun *c = lua_touserdata(L, 3);
  lua_settop(L, 2);
  int fn = 1, args = 2;
  lua_Integer n = arg_count(L, args);
  if (n < 0 || n > INT32_MAX) return luaL_error(L, "the chunk's item count is out of range");
  lua_createtable(L, (int)n, 1);
  int res = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i++) {
    c->i = i;
    lua_pushvalue(L, fn);
    lua_rawgeti(L, args, i);
    int nargs = 1;
    if (c->kind == K_STARMAP) {
      int t = lua_gettop(L);
      if (!lua_istable(L, t)) return luaL_error(L, "starmap: each item must be a table of arguments");
      lua_Integer m = arg_count(L, t);
      if (m < 0 || m > LMP_MAX_ARGS) return luaL_error(L, "starmap: args.n out of range");
      luaL_checkstack(L, (int)m + 4, "too many arguments");
      for (lua_Integer j = 1; j <= m; j++) lua_rawgeti(L, t, j);
      lua_remove(L, t);
      nargs = (int)m;
    }
    lua_call(L, nargs, 1);
    lua_rawseti(L, res, i);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, res, "n");
  return 1;
}

/* Runs one task (stack: msgh fn args); leaves the result value (or the error info) on top and
** returns the status, with the failing item of a chunk in *index. */
static int run_task(lua_State *L, int kind, uint32_t *index) {
  int fn = 2, args = 3;
  if (kind == K_APPLY) {
    lua_Integer want = arg_count(L, args);
    int n = want < 0 || want > LMP_MAX_ARGS || !lua_checkstack(L, (int)want + 4) ? -1 : (int)want;
    int base = lua_gettop(L);
    if (n < 0) { /* the parent checks args.n: only a message made elsewhere gets here */
      lua_pushcfunction(L, bad_count);
      n = 0;
    } else {
      lua_pushvalue(L, fn);
    }
    for (int i = 1; i <= n; i++) lua_rawgeti(L, args, i);
    int st = lua_pcall(L, n, LUA_MULTRET, 1);
    if (st == LUA_ERRMEM) memory_error(L, "a task");
    if (st != LUA_OK) return RES_ERROR;
    int nres = lua_gettop(L) - base;
    lua_createtable(L, nres, 1);
    lua_insert(L, base + 1);
    for (int i = nres; i >= 1; i--) lua_rawseti(L, base + 1, i);
    lua_pushinteger(L, nres);
    lua_setfield(L, base + 1, "n");
    return RES_OK;
  }
  chunkrun c = {kind, 0};
  lua_pushcfunction(L, pchunk);
  lua_pushvalue(L, fn);
  lua_pushvalue(L, args);
  lua_pushlightuserdata(L, &c);
  int st = lua_pcall(L, 3, 1, 1);
  if (st == LUA_OK) return RES_OK;
  *index = (uint32_t)(c.i > 0 ? c.i - 1 : 0);
  if (st == LUA_ERRMEM) memory_error(L, "a map task");
  return RES_ERROR;
}

static void close_taskfds(wstate *w) {
  for (int i = 0; i < w->ntaskfds; i++) close(w->taskfds[i]);
  w->ntaskfds = 0;
}

/* Handles a TASK frame (f->p, f->n); its descriptors are in w->taskfds. */
static void do_task(lua_State *L, wstate *w, const lmp_frame *f) {
  const char *p = f->p;
  uint64_t id = lmp_get_le64(p);
  int kind = (unsigned char)p[8];
  uint32_t fnid = lmp_get_le32(p + 9);
  uint64_t fnlen = lmp_get_le64(p + 13);
  const char *fnmsg = p + TASK_HEAD, *argmsg = fnmsg + fnlen;
  size_t arglen = f->n - TASK_HEAD - (size_t)fnlen;
  lua_settop(L, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, FCACHE);
  if (fnlen > 0) {
    lmp_decode(L, fnmsg, (size_t)fnlen, NULL, 0);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, fnid);
  } else if (lua_rawgeti(L, -1, fnid) != LUA_TFUNCTION) {
    luaL_error(L, "task function %d is not known here", (int)fnid);
  }
  lua_remove(L, -2);              /* the cache; stack: fn */
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, task_msgh, 1);
  lua_insert(L, 1);               /* stack: msgh fn */
  lmp_decode(L, argmsg, arglen, w->taskfds, w->ntaskfds); /* decoders dup what they keep */
  close_taskfds(w);
  uint32_t index = 0;
  double t0 = lmp_monotonic();
  int status = run_task(L, kind, &index); /* the result (or error info) on top */
  w->last_task = lmp_monotonic() - t0;
  w->range = -1;
  if (status == RES_OK && kind != K_APPLY) {
    lua_getfield(L, -1, "n");
    w->range = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  send_result(L, w, id, status, index);
  w->range = -1;
  lua_settop(L, 0);
  fflush(stdout); /* what the task printed reaches the parent's stdout now */
  if (f->n > BIG_MESSAGE || w->out.len > BIG_MESSAGE) w->big = 1;
}

/* After a task that moved a big message: give the memory back now rather than at some later
** collection, so an idle worker stays small. */
static void shrink_after_big(lua_State *L, wstate *w) {
  if (!w->big) return;
  w->big = 0;
  lua_gc(L, LUA_GCCOLLECT);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* The protected part of a task: decoding can raise (a bad message, a missing module). */
static int ptask(lua_State *L) {
  do_task(L, lua_touserdata(L, 1), lua_touserdata(L, 2));
  return 0;
}

/* Protected: loads the function a TASK frame carries into the cache, without running it. */
static int plearn(lua_State *L) {
  const lmp_frame *f = lua_touserdata(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, FCACHE);
  lmp_decode(L, f->p + TASK_HEAD, (size_t)lmp_get_le64(f->p + 13), NULL, 0);
  lua_rawseti(L, -2, lmp_get_le32(f->p + 9));
  return 0;
}

/* Runs the TASK frame f unless the parent withdrew it. Returns -1 when the frame is malformed. */
static int handle_task(lua_State *L, wstate *w, const lmp_frame *f) {
  memcpy(w->taskfds, f->fds, sizeof(int) * (size_t)f->nfds);
  w->ntaskfds = f->nfds;
  if (f->n < TASK_HEAD || lmp_get_le64(f->p + 13) > f->n - TASK_HEAD) {
    close_taskfds(w);
    return -1;
  }
  if (w->ring != NULL && !lmp_claim_start(w->ring, lmp_get_le32(f->p + 21))) {
    /* withdrawn: the parent forgot it and nothing is sent back — but a function it carried is
    ** known here from now on, as far as the parent is concerned */
    close_taskfds(w);
    if (lmp_get_le64(f->p + 13) > 0) {
      lua_pushcfunction(L, plearn);
      lua_pushlightuserdata(L, (void *)f);
      if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1); /* the next task says it is missing */
    }
    return 0;
  }
  uint64_t id = lmp_get_le64(f->p);
  lua_settop(L, 0);
  lua_pushcfunction(L, ptask);
  lua_pushlightuserdata(L, w);
  lua_pushlightuserdata(L, (void *)f);
  int st = lua_pcall(L, 2, 0, 0);
  close_taskfds(w); /* when decoding failed half-way */
  if (st != LUA_OK) { /* the task could not even start */
    if (st == LUA_ERRMEM) {
      memory_error(L, "decoding a task");
    } else { /* stack: err */
      const char *m = lua_tostring(L, -1);
      if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "message");
        m = lua_tostring(L, -1);
        lua_pop(L, 1); /* the table keeps the string */
      }
      lua_pushfstring(L, "task could not be decoded in the worker: %s", m ? m : "?");
      lua_createtable(L, 0, 2); /* err msg info */
      lua_insert(L, -3);        /* info err msg */
      lua_setfield(L, -3, "message");
      lua_setfield(L, -2, "value");
    }
    send_result(L, w, id, RES_ERROR, 0);
  }
  w->done++;
  return 0;
}

/* ---- reading ---- */

/* Reads more input (blocking, after a short look when the last task was quick). Returns the
** bytes read, 0 at end of stream, -1 on error. */
static ssize_t fill_in(wstate *w) {
  size_t need = lmp_rin_need(&w->in);
  ssize_t n = -1;
  /* after a quick task the next one often follows within microseconds (a caller doing
  ** apply():get() in a loop): look for it a moment before going to sleep */
  if (w->last_task < SPIN_AFTER) {
    double until = lmp_monotonic() + SPIN_FOR;
    do n = lmp_rin_recv(&w->in, w->fd, need, MSG_DONTWAIT);
    while (n < 0 && errno == EAGAIN && lmp_monotonic() < until);
  }
  if (n < 0) n = lmp_rin_recv(&w->in, w->fd, need, 0);
  return n;
}

/* Handles every complete frame buffered. Returns 1 to leave (QUIT, maxtasks, parent gone, a
** malformed frame). */
static int handle_frames(lua_State *L, wstate *w) {
  lmp_frame f;
  int r;
  while ((r = lmp_rin_next(&w->in, &f, NULL)) == 1) {
    if (f.type == F_TASK) {
      /* results are committed before the next task starts: once a task runs, every result
      ** before it is out, so its crash can neither lose them nor be blamed on them */
      if (commit(w) != 0) return 1;
      if (handle_task(L, w, &f) != 0) _exit(71);
      if (w->big && commit(w) != 0) return 1; /* the big result goes before memory is trimmed */
      shrink_after_big(L, w);
      if (w->maxtasks > 0 && w->done >= w->maxtasks) return 1;
    } else {
      for (int i = 0; i < f.nfds; i++) close(f.fds[i]);
      if (f.type == F_QUIT) return 1;
      if (f.type == F_FORGET) {
        lua_newtable(L);
        lua_setfield(L, LUA_REGISTRYINDEX, FCACHE);
      }
    }
  }
  if (r < 0) _exit(71); /* a protocol error: the parent treats the worker as lost */
  lmp_rin_shrink(&w->in);
  return 0;
}

/* serve(payload): the worker's loop; returns when the parent says QUIT, closes the line, or
** maxtasks tasks are done. */
static int l_serve(lua_State *L) {
  size_t n;
  const char *pl = luaL_checklstring(L, 1, &n);
  if (n < WORKER_PAYLOAD_HEAD) return luaL_error(L, "malformed worker payload");
  wstate w = {.fd = (int)lmp_get_le32(pl), .maxtasks = (long)lmp_get_le64(pl + 4), .range = -1,
              .last_task = 1.0, .ring = (lmp_ring *)(uintptr_t)lmp_get_le64(pl + 12)};
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, FCACHE);
  char ready[LMP_FRAME_HEAD];
  lmp_frame_head(ready, F_READY, 0, 0);
  lmp_buf_add(&w.out, ready, sizeof ready);
  if (flush_out(&w) == 0) {
    for (;;) {
      if (handle_frames(L, &w)) break;
      if (commit(&w) != 0) break;
      if (fill_in(&w) <= 0) break; /* the parent closed the line or is gone */
    }
  }
  commit(&w);
  lmp_rin_free(&w.in);
  lmp_buf_free(&w.out);
  return 0;
}

/* info(payload) -> name, initializer message */
static int l_info(lua_State *L) {
  size_t n;
  const char *pl = luaL_checklstring(L, 1, &n);
  uint32_t nl = n >= WORKER_PAYLOAD_HEAD ? lmp_get_le32(pl + 20) : 0;
  if (n < WORKER_PAYLOAD_HEAD || nl > n - WORKER_PAYLOAD_HEAD)
    return luaL_error(L, "malformed worker payload");
  lua_pushlstring(L, pl + WORKER_PAYLOAD_HEAD, nl);
  lua_pushlstring(L, pl + WORKER_PAYLOAD_HEAD + nl, n - WORKER_PAYLOAD_HEAD - nl);
  return 2;
}

void lmp__open_worker(lua_State *L) {
  lua_pushcfunction(L, l_serve);
  lua_setfield(L, -2, "worker_serve");
  lua_pushcfunction(L, l_info);
  lua_setfield(L, -2, "worker_info");
}
