/*
** manager_client.c — a process's connection to a Manager server (`lmp.ManagerConn`): the
** authenticated connect, a call (request + reply, matched by sequence number) and one-way
** messages (reference counting). A call spins briefly for a fast reply, then waits in the loop
** (so Ctrl-C and callbacks work); inside a loop callback it waits with poll() instead.
** Caveats: one connection serves every proxy of one manager in a process, so calls made from
** callbacks while another call waits are answered out of order: replies for other sequence
** numbers are kept aside. A proxy of a dead server raises ProcessError at once.
*/
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bytes.h"
#include "codec.h"
#include "loop.h"
#include "manager.h"

#define CONN_MT "lmp.ManagerConn"
#define READ_CHUNK 65536
#define ANSWER_LIMIT 30.0  /* seconds a server may take to answer what it answers at once */

typedef struct kept {      /* a reply read while waiting for another one */
  uint32_t seq;
  struct kept *next;
  size_t n;
  char body[];
} kept;

typedef struct mconn {
  int fd;                  /* -1 once closed */
  int dead;                /* the server is gone: every call raises */
  int flushing;            /* inside flush(): appenders leave the writing to it */
  uint32_t seq;
  lmp_buf out;             /* complete frames not yet written, from outpos */
  size_t outpos;
  lmp_buf in;              /* bytes read, from inpos */
  size_t inpos;
  kept *kept;
  uint32_t dropped[32];    /* replies nobody waits for any more (interrupted calls) */
  int n_dropped;
  double avg;              /* moving average of reply times: how long spinning pays */
  double avg_parked;       /* the same for calls the server may park */
  char address[256];
  char why[256];           /* why the connection is dead */
} mconn;

/* The address of the connection whose request is being encoded (proxy hooks ask). */
static const char *encoding_for;

static mconn *check_conn(lua_State *L, int idx) { return luaL_checkudata(L, idx, CONN_MT); }

/* Closes the socket and frees the buffers (idempotent); the userdata stays. */
static void conn_close(mconn *c) {
  if (c->fd >= 0) {
    lmp_fd_disown(c->fd);
    close(c->fd);
    c->fd = -1;
  }
  lmp_buf_free(&c->out);
  lmp_buf_free(&c->in);
  c->outpos = c->inpos = 0;
  while (c->kept) {
    kept *k = c->kept;
    c->kept = k->next;
    free(k);
  }
}

/* Marks the connection dead (the server is gone); the message says why. */
static void conn_die(mconn *c, const char *why) {
  if (!c->dead) snprintf(c->why, sizeof c->why, "%s", why);
  c->dead = 1;
  conn_close(c);
}

static int raise_gone(lua_State *L, mconn *c) {
  return lmp_raise(L, "ProcessError", "the manager at %s is gone (%s)", c->address,
                   c->why[0] ? c->why : "connection closed");
}

/* ---- writing ---- */

/* Writes what it can of out without blocking: 1 all written, 0 some left, -1 error. */
static int write_some(mconn *c) {
  while (c->outpos < c->out.len) {
    ssize_t w = send(c->fd, c->out.p + c->outpos, c->out.len - c->outpos,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -1;
    }
    c->outpos += (size_t)w;
  }
  c->out.len = c->outpos = 0;
  return 1;
}

/* Waits up to seconds for fd to be ready without running the loop (EINTR continues). */
static int plain_wait(int fd, short events, double seconds) {
  double until = lmp_monotonic() + seconds;
  for (;;) {
    double left = until - lmp_monotonic();
    if (left < 0) return 0;
    struct pollfd p = {fd, events, 0};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r > 0) return 1;
    if (r < 0 && errno != EINTR) return 1; /* the read or write reports it */
  }
}

/* Writes every pending frame, waiting (without the loop: the server reads at once) while the
** socket is full. Raises ProcessError when the server is gone. */
static void flush(lua_State *L, mconn *c) {
  if (c->flushing) return;
  c->flushing = 1;
  int r;
  while ((r = write_some(c)) == 0)
    if (!plain_wait(c->fd, POLLOUT, ANSWER_LIMIT)) {
      r = -1;
      errno = ETIMEDOUT;
      break;
    }
  c->flushing = 0;
  if (r < 0) {
    conn_die(c, errno == ETIMEDOUT ? "its server stopped reading" : "the connection to its server was lost");
    raise_gone(L, c);
  }
}

/* ---- building requests ---- */

/* encode_args(buf, table): appends the table's message to buf (called protected). */
static int encode_args(lua_State *L) {
  lmp__encode_named(L, 2, lua_touserdata(L, 1), NULL, "args");
  return 0;
}

/* Appends a request frame for the arguments at stack index first..top to out: header, then
** their codec message (a table {n=, ...}). Raises (nothing appended) when they cannot be
** encoded. */
static void put_request(lua_State *L, mconn *c, uint32_t seq, int flags, lua_Integer id,
                        const char *method, size_t mlen, int first) {
  int top = lua_gettop(L), nargs = top - first + 1;
  lua_createtable(L, nargs, 1);
  for (int i = 0; i < nargs; i++) {
    lua_pushvalue(L, first + i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, nargs);
  lua_setfield(L, -2, "n");
  size_t start = c->out.len;
  if (mlen > 255) lmp_raise(L, "ValueError", "method name too long");
  if (lmp_buf_reserve(&c->out, MGR_LEN + MGR_REQ_HEAD + mlen) != 0) luaL_error(L, "not enough memory");
  unsigned char *h = (unsigned char *)c->out.p + start;
  lmp_put_le32(h + 4, (uint32_t)seq);
  h[8] = (unsigned char)flags;
  lmp_put_le32(h + 9, (uint32_t)id);
  h[13] = (unsigned char)mlen;
  memcpy(h + 14, method, mlen);
  c->out.len += MGR_LEN + MGR_REQ_HEAD + mlen;
  const char *saved = encoding_for;
  encoding_for = c->address;
  lua_pushcfunction(L, encode_args);
  lua_pushlightuserdata(L, &c->out);
  lua_pushvalue(L, -3);
  int st = lua_pcall(L, 2, 0, 0);
  encoding_for = saved;
  if (st != LUA_OK) {
    c->out.len = start;
    lua_error(L);
  }
  size_t n = c->out.len - start - MGR_LEN;
  if (n > MGR_MAX_FRAME) {
    c->out.len = start;
    lmp_raise(L, "ValueError", "request too large");
  }
  h = (unsigned char *)c->out.p + start; /* the encoder may have moved the buffer */
  lmp_put_le32(h, (uint32_t)n);
  lua_settop(L, top);
}

/* ---- reading replies ---- */

static uint32_t le32(const char *p) { return lmp_get_le32(p); }

/* 1 (and forgets it) when nobody waits for the reply to seq any more. */
static int is_dropped(mconn *c, uint32_t seq) {
  for (int i = 0; i < c->n_dropped; i++)
    if (c->dropped[i] == seq) {
      c->dropped[i] = c->dropped[--c->n_dropped];
      return 1;
    }
  return 0;
}

/* The reply to seq will be dropped when it comes (its caller was interrupted). */
static void drop_later(mconn *c, uint32_t seq) {
  if (c->n_dropped == 32) memmove(c->dropped, c->dropped + 1, 31 * sizeof c->dropped[0]), c->n_dropped--;
  c->dropped[c->n_dropped++] = seq;
}

/* Looks for the reply to seq among kept replies and complete frames in `in` (keeping others
** aside); pushes its body (status byte and message) as a string and returns 1, else 0.
** Sets *bad on a malformed frame. */
static int take_reply(lua_State *L, mconn *c, uint32_t seq, int *bad) {
  for (kept **k = &c->kept; *k; k = &(*k)->next)
    if ((*k)->seq == seq) {
      kept *f = *k;
      *k = f->next;
      lua_pushlstring(L, f->body, f->n);
      free(f);
      return 1;
    }
  while (c->in.len - c->inpos >= MGR_LEN) {
    const char *p = c->in.p + c->inpos;
    uint32_t n = le32(p);
    if (n < MGR_REP_HEAD) return *bad = 1, 0;
    if (c->in.len - c->inpos - MGR_LEN < n) break;
    uint32_t s = le32(p + MGR_LEN);
    c->inpos += MGR_LEN + n;
    if (s == seq) {
      lua_pushlstring(L, p + MGR_LEN + 4, n - 4);
      return 1;
    }
    if (is_dropped(c, s)) continue;
    kept *f = malloc(sizeof *f + n - 4);
    if (f == NULL) return *bad = 1, 0;
    f->seq = s;
    f->n = n - 4;
    memcpy(f->body, p + MGR_LEN + 4, n - 4);
    f->next = c->kept;
    c->kept = f;
  }
  return 0;
}

/* Reads what is there without blocking: >0 bytes read, 0 end of stream, -1 nothing (EAGAIN),
** -2 error. */
static ssize_t read_some(mconn *c) {
  if (c->inpos > 0 && c->inpos == c->in.len) c->in.len = c->inpos = 0;
  if (c->inpos > (1u << 20)) {
    memmove(c->in.p, c->in.p + c->inpos, c->in.len - c->inpos);
    c->in.len -= c->inpos;
    c->inpos = 0;
  }
  if (lmp_buf_reserve(&c->in, READ_CHUNK) != 0) return -2;
  ssize_t r;
  do r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  if (r > 0) c->in.len += (size_t)r;
  if (r < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? -1 : -2;
  return r;
}

/* wait_fd_protected(fd): waits in the loop until fd is readable (called protected). */
static int wait_fd_protected(lua_State *L) {
  int fd = (int)lua_tointeger(L, 1);
  lmp_wait_fd(L, fd, 0, -1);
  return 0;
}

/* Waits for the socket to become readable in the loop; returns 0, or -1 with the error
** (InterruptedError) on the stack. In a loop callback it waits with poll(), since only
** requests the server answers at once are sent from there. */
static int wait_readable(lua_State *L, mconn *c) {
  if (lmp_loop_busy(L)) {
    if (!plain_wait(c->fd, POLLIN, ANSWER_LIMIT)) {
      conn_die(c, "its server did not answer");
      raise_gone(L, c);
    }
    return 0;
  }
  lua_pushcfunction(L, wait_fd_protected);
  lua_pushinteger(L, c->fd);
  return lua_pcall(L, 1, 0, 0) == LUA_OK ? 0 : -1;
}

#define SPIN_PARKED 30e-6 /* how long a call the server may park looks for a quick answer */

/* Reads until the reply to seq is there (pushed as a string: status byte, message).
** Spins a moment first: a server that answers at once answers within microseconds, so a call
** spins for up to 3 times the recent answer time (when that is short); a call the server may
** park spins briefly and is not counted. On an error from the wait (Ctrl-C) returns -1 with
** the error on the stack; 0 when pushed. */
static int read_reply(lua_State *L, mconn *c, uint32_t seq, int interruptible, int parkable) {
  double t0 = lmp_monotonic();
  double spin = parkable ? (c->avg_parked < 2 * SPIN_PARKED ? SPIN_PARKED : 0)
                         : c->avg < 250e-6 ? 3 * c->avg + 30e-6 : 0;
  if (spin > 300e-6) spin = 300e-6;
  for (int k = 0;; k++) {
    int bad = 0;
    if (take_reply(L, c, seq, &bad)) break;
    if (bad) {
      conn_die(c, "malformed reply");
      raise_gone(L, c);
    }
    ssize_t r = read_some(c);
    if (r > 0) continue;
    if (r == 0 || r == -2) {
      conn_die(c, "the connection to its server was lost");
      raise_gone(L, c);
    }
    if (lmp_monotonic() - t0 < spin) {
      sched_yield(); /* on a busy machine the server may need this very core */
      continue;
    }
    if (!interruptible) {
      if (!plain_wait(c->fd, POLLIN, ANSWER_LIMIT)) {
        conn_die(c, "its server did not answer");
        raise_gone(L, c);
      }
    } else if (wait_readable(L, c) != 0) {
      return -1;
    }
  }
  double dt = lmp_monotonic() - t0;
  double *avg = parkable ? &c->avg_parked : &c->avg; /* contended locks stop spinning */
  *avg = 0.8 * *avg + 0.2 * (dt < 1e-3 ? dt : 1e-3);
  return 0;
}

/* Turns a reply body (a string on top) into results on the stack (returns how many) or
** raises the error it carries. A reply to a cancelled request raises InterruptedError. */
static int push_results(lua_State *L, int top) {
  size_t n;
  const char *body = lua_tolstring(L, -1, &n);
  int status = (unsigned char)body[0];
  if (status == MGR_CANCELLED) return lmp_raise(L, "InterruptedError", "interrupted by Ctrl-C (SIGINT)");
  lmp_decode(L, body + 1, n - 1, NULL, 0);
  if (status == MGR_ERROR) {
    if (lua_istable(L, -1)) {
      luaL_getmetatable(L, "lmp.Error");
      lua_setmetatable(L, -2);
    }
    return lua_error(L);
  }
  if (!lua_istable(L, -1)) return lmp_raise(L, "SerializationError", "malformed manager reply");
  lua_getfield(L, -1, "n");
  lua_Integer cnt = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (cnt < 0 || cnt > 250 || !lua_checkstack(L, (int)cnt + 2))
    return lmp_raise(L, "SerializationError", "malformed manager reply");
  int t = lua_gettop(L);
  for (lua_Integer i = 1; i <= cnt; i++) lua_rawgeti(L, t, i);
  lua_remove(L, t);
  lua_remove(L, t - 1);
  return lua_gettop(L) - top;
}

/* After Ctrl-C interrupted a parked request: cancels it and waits for its reply (the server
** answers a cancel at once). Re-raises the interrupt; when the request had completed anyway,
** the error carries its results in `late` (packed), for the caller to undo. */
static int cancel_parked(lua_State *L, mconn *c, uint32_t seq) {
  int err = lua_gettop(L);
  uint32_t cseq = ++c->seq ? c->seq : ++c->seq;
  lua_pushinteger(L, seq);
  put_request(L, c, cseq, MGR_F_CANCEL | MGR_F_ONEWAY, seq, "", 0, lua_gettop(L));
  lua_pop(L, 1);
  flush(L, c);
  read_reply(L, c, seq, 0, 1);
  size_t n;
  const char *body = lua_tolstring(L, -1, &n);
  if ((unsigned char)body[0] == MGR_OK && lua_istable(L, err)) {
    lmp_decode(L, body + 1, n - 1, NULL, 0);
    lua_setfield(L, err, "late");
  }
  lua_settop(L, err);
  return lua_error(L);
}

/* conn:call(flags, id, method, ...) -> results. flags: MGR_F_PARK for calls that may wait
** for another process (dropped inside a loop callback, where the server then refuses to
** wait). Raises the server's error, ProcessError when the server is gone, InterruptedError
** on Ctrl-C. */
static int l_call(lua_State *L) {
  mconn *c = check_conn(L, 1);
  int flags = (int)luaL_checkinteger(L, 2) & MGR_F_PARK;
  lua_Integer id = luaL_checkinteger(L, 3);
  size_t mlen;
  const char *method = luaL_checklstring(L, 4, &mlen);
  if (c->dead || c->fd < 0) return raise_gone(L, c);
  if (flags && lmp_loop_busy(L)) flags = 0;
  uint32_t seq = ++c->seq ? c->seq : ++c->seq;
  put_request(L, c, seq, flags, id, method, mlen, 5);
  int top = lua_gettop(L);
  flush(L, c);
  if (read_reply(L, c, seq, 1, flags) != 0) {
    if (!flags || c->dead) {
      drop_later(c, seq);
      return lua_error(L);
    }
    return cancel_parked(L, c, seq);
  }
  return push_results(L, top);
}

/* conn:send(id, method, ...) -> true | false: a one-way message (no reply). Never raises on a
** dead connection (finalizers send these); the write waits only while the socket is full. */
static int l_send(lua_State *L) {
  mconn *c = check_conn(L, 1);
  lua_Integer id = luaL_checkinteger(L, 2);
  size_t mlen;
  const char *method = luaL_checklstring(L, 3, &mlen);
  if (c->dead || c->fd < 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  put_request(L, c, 0, MGR_F_ONEWAY, id, method, mlen, 4);
  if (!c->flushing) {
    if (write_some(c) < 0) conn_die(c, "the connection to its server was lost");
    else if (lua_toboolean(L, lua_upvalueindex(1)) && c->outpos < c->out.len) flush(L, c);
  }
  lua_pushboolean(L, !c->dead);
  return 1;
}

/* ---- connecting ---- */

/* Reads one frame of at most max bytes with a deadline (the handshake); pushes its body. */
static int read_frame_until(lua_State *L, mconn *c, size_t max, double until) {
  for (;;) {
    if (c->in.len - c->inpos >= MGR_LEN) {
      uint32_t n = le32(c->in.p + c->inpos);
      if (n > max) return -1;
      if (c->in.len - c->inpos - MGR_LEN >= n) {
        lua_pushlstring(L, c->in.p + c->inpos + MGR_LEN, n);
        c->inpos += MGR_LEN + n;
        return 0;
      }
    }
    ssize_t r = read_some(c);
    if (r > 0) continue;
    if (r == 0 || r == -2) return -1;
    double left = until - lmp_monotonic();
    if (left <= 0 || !plain_wait(c->fd, POLLIN, left)) return -2;
  }
}

static int conn_gc(lua_State *L) {
  conn_close(check_conn(L, 1));
  return 0;
}

/* The handshake of a new connection (see manager.h); pushes the server's address. Returns
** NULL on success, else a message. */
static const char *handshake(lua_State *L, mconn *c, const char *key, size_t keylen, double until) {
  int r = read_frame_until(L, c, MGR_AUTH_MAX, until);
  if (r != 0) return r == -2 ? "the server did not answer" : "the server closed the connection";
  size_t n;
  const char *hello = lua_tolstring(L, -1, &n);
  if (n != MGR_MAGIC_LEN + MGR_NONCE || memcmp(hello, MGR_MAGIC, MGR_MAGIC_LEN) != 0)
    return "this is not an lmp manager";
  unsigned char answer[MGR_MAC + MGR_NONCE], mine[MGR_NONCE];
  lmp__mgr_mac(answer, key, keylen, "lmp-manager-client", (const unsigned char *)hello + MGR_MAGIC_LEN);
  lmp__mgr_random(mine, MGR_NONCE);
  memcpy(answer + MGR_MAC, mine, MGR_NONCE);
  lua_pop(L, 1);
  if (lmp__mgr_frame(&c->out, answer, sizeof answer) != 0) return "not enough memory";
  int w;
  while ((w = write_some(c)) == 0)
    if (!plain_wait(c->fd, POLLOUT, until - lmp_monotonic())) return "the server did not answer";
  if (w < 0) return "the server closed the connection";
  r = read_frame_until(L, c, MGR_AUTH_MAX, until);
  if (r == -2) return "the server did not answer";
  const char *verdict = r == 0 ? lua_tolstring(L, -1, &n) : NULL;
  if (verdict == NULL || n < 2 || memcmp(verdict, "OK", 2) != 0)
    return "authentication failed: the manager refused the key";
  if (n < 2 + MGR_MAC || !lmp__mgr_mac_ok((const unsigned char *)verdict + 2, key, keylen,
                                          "lmp-manager-server", mine))
    return "authentication failed: the server does not know the key";
  lua_pushlstring(L, verdict + 2 + MGR_MAC, n - 2 - MGR_MAC);
  lua_remove(L, -2);
  return NULL;
}

/* mgr_connect(address, authkey [, timeout=10]) -> conn, the server's address.
** Raises ProcessError when nobody listens there or the authentication fails. */
static int l_connect(lua_State *L) {
  const char *address = luaL_checkstring(L, 1);
  size_t keylen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  double timeout = luaL_optnumber(L, 3, 10);
  mconn *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  c->fd = -1;
  c->avg = c->avg_parked = 50e-6;
  luaL_setmetatable(L, CONN_MT);
  char err[300];
  c->fd = lmp__mgr_dial(address, err, sizeof err);
  if (c->fd < 0) return lmp_raise(L, "ProcessError", "Manager: %s", err);
  lmp_fd_own(c->fd);
  const char *why = handshake(L, c, key, keylen, lmp_monotonic() + timeout);
  if (why != NULL) {
    conn_close(c);
    return lmp_raise(L, "ProcessError", "Manager at %s: %s", address, why);
  }
  snprintf(c->address, sizeof c->address, "%s", lua_tostring(L, -1));
  c->in.len = c->inpos = 0;
  return 2;
}

/* conn:close([why]): later calls raise ProcessError saying why. */
static int l_close(lua_State *L) {
  mconn *c = check_conn(L, 1);
  const char *why = luaL_optstring(L, 2, "the connection was closed");
  conn_close(c);
  if (!c->dead) snprintf(c->why, sizeof c->why, "%s", why);
  c->dead = 1;
  return 0;
}

static int l_alive(lua_State *L) {
  mconn *c = check_conn(L, 1);
  lua_pushboolean(L, !c->dead && c->fd >= 0);
  return 1;
}

static int l_why(lua_State *L) {
  mconn *c = check_conn(L, 1);
  lua_pushstring(L, c->why);
  return 1;
}

/* mgr_encoding() -> the address of the manager whose request is being encoded, or nil. */
static int l_encoding(lua_State *L) {
  if (encoding_for == NULL) return 0;
  lua_pushstring(L, encoding_for);
  return 1;
}

/* Adds mgr_connect and mgr_encoding to lmp.core and makes the connection class. */
void lmp__open_manager_client(lua_State *L) {
  if (luaL_newmetatable(L, CONN_MT)) {
    static const luaL_Reg methods[] = {{"call", l_call},   {"close", l_close},
                                       {"alive", l_alive}, {"why", l_why},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_pushboolean(L, 0);
    lua_pushcclosure(L, l_send, 1);
    lua_setfield(L, -2, "send");      /* finalizers: never waits on a full socket */
    lua_pushboolean(L, 1);
    lua_pushcclosure(L, l_send, 1);
    lua_setfield(L, -2, "send_sync"); /* holds: on the wire before the handle leaves */
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_connect);
  lua_setfield(L, -2, "mgr_connect");
  lua_pushcfunction(L, l_encoding);
  lua_setfield(L, -2, "mgr_encoding");
}
