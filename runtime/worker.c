/*
** worker.c — a pool worker's serving loop: read task frames from the parent's socket, run
** them in this process's fresh Lua state, write result frames back.
** Reads drain every complete frame per wake-up; a result is written before the next task
** starts, so no result waits for a slow task and none is lost when a task crashes. Task functions are
** cached by the id the parent gives them, so a closure sent a thousand times is loaded once.
** Caveats: blocking I/O only — the worker has no event loop; it leaves on EOF or QUIT.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "codec.h"
#include "frame.h"
#include "lmp_int.h"

#define FCACHE "lmp.worker.functions" /* fnid -> closure */

typedef struct wstate {
  int fd;
  lmp_buf in;      /* bytes read, not yet consumed */
  size_t pos;      /* consumed prefix of in */
  lmp_buf out;     /* result frames not yet written */
  long done;       /* tasks finished */
  lua_Integer range; /* >= 0: the value being sent is a chunk's results, of this length */
  lmp_ring *ring;  /* results go here when they fit (frame.h) */
  double last_task; /* how long the last task ran (s) */
  int fdq[TASK_MAXFDS * 4]; /* descriptors received, not yet taken by a task frame */
  int nfdq;
  int taskfds[TASK_MAXFDS]; /* the running task's descriptors until its args are decoded */
  int ntaskfds;
  long maxtasks;   /* leave after this many (0: never) */
} wstate;

/* Writes all of out; returns -1 when the parent is gone. */
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
  return 0;
}

/* Commits the result frames in out: into the ring when they fit (announced with a WAKE only
** if the parent is about to sleep), else through the socket. Returns -1 when the parent is
** gone. */
static int commit(wstate *w) {
  lmp_ring *r = w->ring;
  size_t n = w->out.len;
  if (n == 0) return 0;
  if (r != NULL) {
    uint64_t head = r->head;
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    if (r->size - (head - tail) >= n) {
      size_t at = (size_t)(head % r->size), first = r->size - at;
      if (first > n) first = n;
      memcpy(r->data + at, w->out.p, first);
      memcpy(r->data, w->out.p + first, n - first);
      __atomic_store_n(&r->head, head + n, __ATOMIC_SEQ_CST);
      w->out.len = 0;
      if (__atomic_load_n(&r->parent_waiting, __ATOMIC_SEQ_CST)) {
        char wake[FRAME_HEAD];
        put_u32(wake, 1);
        wake[4] = F_WAKE;
        if (lmp_buf_add(&w->out, wake, sizeof wake) != 0) return -1;
        return flush_out(w);
      }
      return 0;
    }
  }
  return flush_out(w);
}

/* recv into the input buffer, collecting descriptors that came along (SCM_RIGHTS) in order. */
static ssize_t recv_some(wstate *w, int flags) {
  struct iovec iov = {w->in.p + w->in.len, w->in.cap - w->in.len};
  char cbuf[CMSG_SPACE(sizeof(int) * TASK_MAXFDS)];
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t n = recvmsg(w->fd, &msg, flags | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    const int *fds = (const int *)CMSG_DATA(c);
    for (int i = 0; i < k; i++) {
      if (w->nfdq < (int)(sizeof w->fdq / sizeof w->fdq[0])) w->fdq[w->nfdq++] = fds[i];
      else close(fds[i]);
    }
  }
  return n;
}

/* Reads more input (blocking); returns bytes read, 0 at EOF, -1 on error. */
static ssize_t fill_in(wstate *w) {
  if (w->pos > 0) { /* keep only the partial frame, at the start */
    memmove(w->in.p, w->in.p + w->pos, w->in.len - w->pos);
    w->in.len -= w->pos;
    w->pos = 0;
  }
  if (lmp_buf_reserve(&w->in, 65536) != 0) return -1;
  ssize_t n = -1;
  /* After a quick task the next one often follows within microseconds (a caller doing
  ** apply():get() in a loop): look for it a moment before going to sleep. */
  if (w->last_task < 50e-6) {
    double until = lmp_monotonic() + 30e-6;
    do n = recv_some(w, MSG_DONTWAIT);
    while (n < 0 && (errno == EAGAIN || errno == EINTR) && lmp_monotonic() < until);
  }
  if (n < 0)
    do n = recv_some(w, 0);
    while (n < 0 && errno == EINTR);
  if (n > 0) w->in.len += (size_t)n;
  return n;
}

/* Message handler for tasks: {value = err, message = string, traceback = string}. */
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
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, 2, "traceback");
  lua_settop(L, 2);
  return 1;
}

/* Starts a RESULT frame in out; returns the offset of its header. */
static size_t result_begin(wstate *w, uint64_t id, int status, uint32_t index) {
  char head[FRAME_HEAD + RESULT_HEAD];
  head[4] = F_RESULT;
  put_u64(head + 5, id);
  head[13] = (char)status;
  put_u32(head + 14, index);
  size_t at = w->out.len;
  if (lmp_buf_add(&w->out, head, sizeof head) != 0) {
    fputs("lmp worker: out of memory\n", stderr);
    _exit(70);
  }
  return at;
}

static void result_end(wstate *w, size_t at) {
  put_u32(w->out.p + at, (uint32_t)(w->out.len - at - 4));
}

/* Encodes the value on top into a RESULT frame (protected: a value that cannot be encoded
** becomes an RES_UNENCODABLE result with the codec's message). Pops the value. */
static int encode_top(lua_State *L) {
  wstate *w = lua_touserdata(L, 2);
  if (w->range >= 0) /* a chunk's results: an array of known length, no table walk */
    lmp__encode_range(L, 1, 1, w->range, &w->out, NULL, "result");
  else
    lmp_encode_buf(L, 1, &w->out, NULL);
  return 0;
}

/* Tries to encode the value on top into a RESULT frame; returns 0, or -1 with the reason
** on top of the stack (the value stays below it). */
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
** reported as RES_UNENCODABLE with the codec's reason; an error whose value cannot be encoded
** is sent with its message and traceback only. */
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
  /* stack: value reason */
  size_t at = result_begin(w, id, RES_UNENCODABLE, index);
  lmp_encode_buf(L, -1, &w->out, NULL); /* a string: cannot fail */
  result_end(w, at);
  lua_pop(L, 2);
}

typedef struct chunkrun {
  int kind;
  lua_Integer i; /* the item being run: the failing one when the chunk raises */
} chunkrun;

/* Protected (stack: fn args chunkrun): runs fn over args[1..n] into a new table {n = n} left
** on the stack. One protected call for the whole chunk, not one per item. */
static int pchunk(lua_State *L) {
  chunkrun *c = lua_touserdata(L, 3);
  lua_settop(L, 2);
  int fn = 1, args = 2;
  lua_Integer n = (lua_getfield(L, args, "n") == LUA_TNUMBER) ? lua_tointeger(L, -1)
                                                               : luaL_len(L, args);
  lua_pop(L, 1);
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
      lua_Integer m = (lua_getfield(L, t, "n") == LUA_TNUMBER) ? lua_tointeger(L, -1)
                                                               : luaL_len(L, t);
      lua_pop(L, 1);
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

/* Runs one task (fn and args on the stack: fn args); leaves the result value on the stack
** and returns the status and the failing index for chunks. */
static int run_task(lua_State *L, int kind, uint32_t *index) {
  /* stack: msgh fn args */
  int fn = 2, args = 3;
  if (kind == K_APPLY) {
    int n = (int)(lua_getfield(L, args, "n") == LUA_TNUMBER ? lua_tointeger(L, -1)
                                                             : luaL_len(L, args));
    lua_pop(L, 1);
    luaL_checkstack(L, n + 4, "too many arguments");
    int base = lua_gettop(L);
    lua_pushvalue(L, fn);
    for (int i = 1; i <= n; i++) lua_rawgeti(L, args, i);
    if (lua_pcall(L, n, LUA_MULTRET, 1) != LUA_OK) return RES_ERROR;
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
  if (lua_pcall(L, 3, 1, 1) != LUA_OK) {
    *index = (uint32_t)(c.i > 0 ? c.i - 1 : 0);
    return RES_ERROR;
  }
  return RES_OK;
}

static void close_taskfds(wstate *w) {
  for (int i = 0; i < w->ntaskfds; i++) close(w->taskfds[i]);
  w->ntaskfds = 0;
}

/* Handles the TASK frame at p (len bytes after the type byte). */
static void do_task(lua_State *L, wstate *w, const char *p, size_t len) {
  if (len < TASK_HEAD) {
    fputs("lmp worker: malformed task frame\n", stderr);
    _exit(71);
  }
  uint64_t id = get_u64(p);
  int kind = (unsigned char)p[8];
  uint32_t fnid = get_u32(p + 9), fnlen = get_u32(p + 13);
  const char *fnmsg = p + TASK_HEAD, *argmsg = fnmsg + fnlen;
  if (fnlen > len - TASK_HEAD) {
    fputs("lmp worker: malformed task frame\n", stderr);
    _exit(71);
  }
  size_t arglen = len - TASK_HEAD - fnlen;
  int nfds = (unsigned char)p[17];
  if (nfds > TASK_MAXFDS || nfds > w->nfdq) {
    fputs("lmp worker: a task's descriptors are missing\n", stderr);
    _exit(71);
  }
  memcpy(w->taskfds, w->fdq, sizeof(int) * (size_t)nfds); /* the frame's, first in line */
  w->nfdq -= nfds;
  memmove(w->fdq, w->fdq + nfds, sizeof(int) * (size_t)w->nfdq);
  w->ntaskfds = nfds;
  lua_settop(L, 0);
  lua_pushcfunction(L, task_msgh);
  lua_getfield(L, LUA_REGISTRYINDEX, FCACHE);
  if (fnlen > 0) {
    lmp_decode(L, fnmsg, fnlen, NULL, 0);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, fnid);
  } else {
    lua_rawgeti(L, -1, fnid);
  }
  lua_remove(L, -2); /* the cache */
  lmp_decode(L, argmsg, arglen, w->taskfds, nfds); /* decoders dup what they keep */
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
  w->done++;
}

/* The protected part of a task: decoding can raise (a bad message, a missing module). */
static int ptask(lua_State *L) {
  wstate *w = lua_touserdata(L, 1);
  const char *p = lua_touserdata(L, 2);
  size_t len = (size_t)lua_tointeger(L, 3);
  do_task(L, w, p, len);
  return 0;
}

/* serve(fd, maxtasks [, ring]): the worker's loop; returns when the parent says QUIT, closes the
** socket, or maxtasks tasks are done. */
static int l_serve(lua_State *L) {
  wstate w = {.fd = (int)luaL_checkinteger(L, 1), .maxtasks = (long)luaL_optinteger(L, 2, 0),
              .range = -1,
              .last_task = 1.0,
              .ring = (lmp_ring *)(intptr_t)luaL_optinteger(L, 3, 0)};
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, FCACHE);
  char ready[FRAME_HEAD];
  put_u32(ready, 1);
  ready[4] = F_READY;
  lmp_buf_add(&w.out, ready, sizeof ready);
  int quit = 0;
  while (!quit) {
    /* process every complete frame we have */
    for (;;) {
      size_t avail = w.in.len - w.pos;
      if (avail < FRAME_HEAD) break;
      uint32_t flen = get_u32(w.in.p + w.pos);
      if (flen < 1 || flen > FRAME_MAX) _exit(71);
      if (avail < 4 + (size_t)flen) {
        lmp_buf_reserve(&w.in, 4 + (size_t)flen - avail); /* the next read completes it */
        break;
      }
      const char *p = w.in.p + w.pos + FRAME_HEAD;
      int type = (unsigned char)w.in.p[w.pos + 4];
      size_t plen = flen - 1;
      w.pos += 4 + (size_t)flen;
      if (type == F_TASK) {
        /* Results are written before the next task starts: once a task is running, every
        ** result before it is in the parent's socket buffer, so a crash of this task can
        ** neither lose them nor be blamed on them. */
        if (w.out.len > 0 && commit(&w) != 0) {
          quit = 2;
          break;
        }
        uint64_t id = plen >= 8 ? get_u64(p) : 0;
        lua_settop(L, 0);
        lua_pushcfunction(L, ptask);
        lua_pushlightuserdata(L, &w);
        lua_pushlightuserdata(L, (void *)p);
        lua_pushinteger(L, (lua_Integer)plen);
        int st = lua_pcall(L, 3, 0, 0);
        close_taskfds(&w); /* when decoding failed half-way */
        if (st != LUA_OK) { /* the task could not even start */
          lua_createtable(L, 0, 2);
          lua_insert(L, -2);
          lua_setfield(L, -2, "value");
          lua_pushliteral(L, "task could not be decoded in the worker");
          lua_setfield(L, -2, "message");
          send_result(L, &w, id, RES_ERROR, 0);
          w.done++;
        }
        if (w.maxtasks > 0 && w.done >= w.maxtasks) quit = 1;
      } else if (type == F_QUIT) {
        quit = 1;
      } else if (type == F_FORGET) {
        lua_newtable(L);
        lua_setfield(L, LUA_REGISTRYINDEX, FCACHE);
      }
      if (quit) break;
    }
    if (quit) break;
    if (w.out.len > 0 && commit(&w) != 0) break;
    ssize_t n = fill_in(&w);
    if (n <= 0) break; /* the parent closed the socket or is gone */
  }
  commit(&w);
  lmp_buf_free(&w.in);
  lmp_buf_free(&w.out);
  return 0;
}

void lmp__open_worker(lua_State *L) {
  lua_pushcfunction(L, l_serve);
  lua_setfield(L, -2, "worker_serve");
}
