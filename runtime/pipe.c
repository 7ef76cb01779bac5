/*
** pipe.c — Pipe(): two Connection objects over a unix socketpair, speaking wire.h's frames (a
** message per frame, its descriptors with it); plus the fd-readiness helper behind mp.wait.
** Caveat: a Connection travels only with its descriptor (Process args, pool tasks, another
** Pipe); through a Queue it cannot (a socket cannot be reopened from /proc).
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"
#include "lmp_shm.h"
#include "wire.h"

#define F_MESSAGE 1 /* the one frame type of a Pipe */
#define MAX_FDS LMP_FRAME_MAXFDS

typedef struct conn {
  int fd;
  int readable, writable;
  lmp_rin rin; /* received bytes and descriptors */
} conn;

static __thread lmp_buf enc_buf;
static __thread lmp_fdvec enc_fds;

/* The open Connection at idx: TypeError for another value, ValueError once closed. */
static conn *check_conn(lua_State *L, int idx) {
  conn *c = lmp_checkudata(L, idx, "lmp.Connection");
  if (c->fd < 0) lmp_raise(L, "ValueError", "connection is closed");
  return c;
}

static void check_readable(lua_State *L, conn *c) {
  if (!c->readable) lmp_raise(L, "ValueError", "connection is write-only");
}

static void conn_close(conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  lmp_rin_free(&c->rin);
}

static int l_gc(lua_State *L) {
  conn_close(lua_touserdata(L, 1));
  return 0;
}

/* Pushes a Connection over fd (which it now owns). */
static conn *push_conn(lua_State *L, int fd, int readable, int writable) {
  conn *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  c->fd = fd;
  c->readable = readable;
  c->writable = writable;
  luaL_setmetatable(L, "lmp.Connection");
  return c;
}

/* poll(2) for up to secs seconds, to the nanosecond (a 1 µs wait is not a 1 ms one). */
static int poll_for(struct pollfd *p, nfds_t n, double secs) {
  struct timespec ts = {0, 0};
  if (secs > 0) {
    ts.tv_sec = (time_t)secs;
    ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
  }
  return ppoll(p, n, &ts, NULL);
}

/* Waits for events on fd for one slice; returns -1 when the deadline has passed. */
static int wait_fd(lua_State *L, int fd, short events, lmp_deadline *d) {
  double s = lmp_deadline_slice(L, d, 0.5);
  if (s < 0) return -1;
  struct pollfd p = {fd, events, 0};
  poll_for(&p, 1, s);
  return 0;
}

/* ---- sending ---- */

/* 1 when the error object on top of the stack is an mp.Error of that type. */
static int error_is(lua_State *L, const char *type) {
  if (!lua_istable(L, -1)) return 0;
  lua_getfield(L, -1, "type");
  int yes = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), type) == 0;
  lua_pop(L, 1);
  return yes;
}

/* Like wait_fd once part of a frame is out: the loop's errors must not cut the frame. The first
** InterruptedError is kept on the stack (*pending = 1) and raised after the frame; the refusal
** to block inside a callback (ValueError) is dropped, since the frame has to be finished
** anyway (*pending = -1: no more ticks). */
static void wait_fd_midframe(lua_State *L, int fd, int *pending) {
  double s = 0.05;
  if (*pending == 0 && lmp_safe_tick(L, &s) != 0) {
    if (error_is(L, "InterruptedError")) *pending = 1; /* the error stays on top */
    else lua_pop(L, 1), *pending = -1;
  }
  struct pollfd p = {fd, POLLOUT, 0};
  poll_for(&p, 1, s);
}

/* Sends a frame of payload p (+ fds, with its first byte), blocking in slices. */
static void send_frame(lua_State *L, conn *c, const char *p, size_t n, const int *fds, int nfds) {
  if (!c->writable) lmp_raise(L, "ValueError", "connection is read-only");
  char h[LMP_FRAME_HEAD];
  lmp_frame_head(h, F_MESSAGE, n, nfds);
  struct iovec iov[2] = {{h, LMP_FRAME_HEAD}, {(void *)p, n}};
  int niov = n > 0 ? 2 : 1;
  char small[LMP_FRAME_HEAD + 4096];
  if (n <= 4096) { /* one contiguous buffer */
    memcpy(small, h, LMP_FRAME_HEAD);
    if (n > 0) memcpy(small + LMP_FRAME_HEAD, p, n);
    iov[0] = (struct iovec){small, LMP_FRAME_HEAD + n};
    niov = 1;
  }
  struct iovec *v = iov;
  int started = 0, pending = 0;
  lmp_deadline d;
  lmp_deadline_init(&d, -1);
  while (niov > 0) {
    ssize_t r = lmp_wire_sendmsg(c->fd, v, niov, started ? NULL : fds, started ? 0 : nfds,
                                 MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (started) wait_fd_midframe(L, c->fd, &pending);
        else wait_fd(L, c->fd, POLLOUT, &d);
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET)
        lmp_raise(L, "EOFError", "the other end of the pipe is closed");
      lmp_raise(L, "ValueError", "send failed: %s", strerror(errno));
    }
    started = 1;
    size_t k = (size_t)r;
    while (niov > 0 && k >= v->iov_len) {
      k -= v->iov_len;
      v++;
      niov--;
    }
    if (niov > 0) {
      v->iov_base = (char *)v->iov_base + k;
      v->iov_len -= k;
    }
  }
  if (pending > 0) lua_error(L);
}

/* send_bytes(s [, offset [, size]]): offset is 0-based, like Python's. */
static int l_send_bytes(lua_State *L) {
  conn *c = check_conn(L, 1);
  size_t n;
  const char *p = lmp_checklstring(L, 2, &n);
  lmp_checknargs(L, 4);
  lua_Integer off = lmp_optinteger(L, 3, 0);
  if (off < 0 || (size_t)off > n)
    return lmp_argerror(L, 3, "ValueError", "offset %I out of range (0..%I)", (LUAI_UACINT)off,
                        (LUAI_UACINT)n);
  lua_Integer size = lmp_optinteger(L, 4, (lua_Integer)(n - (size_t)off));
  if (size < 0 || (size_t)size > n - (size_t)off)
    return lmp_argerror(L, 4, "ValueError", "size %I out of range (0..%I)", (LUAI_UACINT)size,
                        (LUAI_UACINT)(n - (size_t)off));
  send_frame(L, c, p + off, (size_t)size, NULL, 0);
  return 0;
}

static int l_send(lua_State *L) {
  conn *c = check_conn(L, 1);
  if (lua_isnone(L, 2)) return lmp_argerror(L, 2, "TypeError", "value expected (nil is a value too)");
  lmp_checknargs(L, 2);
  enc_buf.len = 0;
  enc_fds.n = 0;
  lmp_encode_buf(L, 2, &enc_buf, &enc_fds);
  if (enc_fds.n > MAX_FDS) lmp_raise(L, "SerializationError", "too many descriptors in one message");
  send_frame(L, c, enc_buf.p, enc_buf.len, enc_fds.fd, enc_fds.n);
  if (enc_buf.cap > (4u << 20)) lmp_buf_free(&enc_buf);
  return 0;
}

/* ---- receiving ---- */

/* Receives at least one more byte (want: bytes wanted). 0 ok, -1 EOF, -2 timeout. */
static int fill(lua_State *L, conn *c, size_t want, lmp_deadline *d) {
  int spins = 0;
  for (;;) {
    ssize_t r = lmp_rin_recv(&c->rin, c->fd, want, MSG_DONTWAIT);
    if (r > 0) return 0;
    if (r == 0) return -1;
    if (errno == ENOMEM) lmp_raise(L, "ProcessError", "not enough memory to receive");
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      if (errno == ECONNRESET) return -1;
      lmp_raise(L, "ValueError", "recv failed: %s", strerror(errno));
    }
    /* the sender is usually mid-stream: retrying a little is cheaper than sleeping and being
    ** woken (which also costs the sender a wake-up per message) */
    if (spins++ < 64) continue;
    if (wait_fd(L, c->fd, POLLIN, d) < 0) return -2;
  }
}

/* Reads one frame into *f (its payload valid until the next read; its descriptors now the
** caller's). Returns 0, -1 on EOF, -2 on timeout. */
static int read_frame(lua_State *L, conn *c, lmp_frame *f, double timeout) {
  check_readable(L, c);
  lmp_deadline d;
  lmp_deadline_init(&d, timeout);
  size_t need = 0;
  for (;;) {
    int got = lmp_rin_next(&c->rin, f, &need);
    if (got > 0) return 0;
    if (got < 0) lmp_raise(L, "ValueError", "malformed message on the pipe");
    /* a frame that started is read to its end */
    if (lmp_rin_pending(&c->rin) > 0) lmp_deadline_init(&d, -1);
    int r = fill(L, c, need, &d);
    if (r < 0) return r;
  }
}

static void close_fds(const lmp_frame *f) {
  for (int i = 0; i < f->nfds; i++) close(f->fds[i]);
}

static int frame_error(lua_State *L, int r) {
  if (r == -1) return lmp_raise(L, "EOFError", "the other end of the pipe is closed");
  return lmp_raise(L, "TimeoutError", "no message within the timeout");
}

/* recv_bytes([maxlength]) */
static int l_recv_bytes(lua_State *L) {
  conn *c = check_conn(L, 1);
  lmp_checknargs(L, 2);
  lua_Integer maxlen = lmp_optinteger(L, 2, -1);
  if (maxlen < 0 && !lua_isnoneornil(L, 2))
    return lmp_argerror(L, 2, "ValueError", "negative maxlength %I", (LUAI_UACINT)maxlen);
  lmp_frame f;
  int r = read_frame(L, c, &f, -1);
  if (r < 0) return frame_error(L, r);
  close_fds(&f);
  if (maxlen >= 0 && f.n > (size_t)maxlen)
    return lmp_raise(L, "ValueError", "message of %I bytes exceeds maxlength %I",
                     (lua_Integer)f.n, maxlen);
  lua_pushlstring(L, f.p, f.n);
  lmp_rin_shrink(&c->rin); /* after a big message, the buffer is small again */
  return 1;
}

/* Protected part of recv: decode(p, n, fds, k). */
static int decode_frame(lua_State *L) {
  lmp_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2), lua_touserdata(L, 3),
             (int)lua_tointeger(L, 4));
  return 1;
}

static int l_recv(lua_State *L) {
  conn *c = check_conn(L, 1);
  lmp_checknargs(L, 1);
  lmp_frame f;
  int r = read_frame(L, c, &f, -1);
  if (r < 0) return frame_error(L, r);
  if (f.nfds == 0) {
    lmp_decode(L, f.p, f.n, NULL, 0);
    lmp_rin_shrink(&c->rin);
    return 1;
  }
  /* the frame's descriptors are ours (decoders dup what they keep): close them afterwards,
  ** also when decoding fails */
  lua_pushcfunction(L, decode_frame);
  lua_pushlightuserdata(L, (void *)f.p);
  lua_pushinteger(L, (lua_Integer)f.n);
  lua_pushlightuserdata(L, f.fds);
  lua_pushinteger(L, f.nfds);
  int status = lua_pcall(L, 4, 1, 0);
  close_fds(&f);
  if (status != LUA_OK) return lua_error(L);
  lmp_rin_shrink(&c->rin);
  return 1;
}

/* poll([timeout]): true when data (or EOF) can be read. No argument: look once, as Python's
** poll(); an explicit nil (Python's None) or math.huge: no limit. */
static int l_poll(lua_State *L) {
  conn *c = check_conn(L, 1);
  lmp_checknargs(L, 2);
  double t = lua_isnone(L, 2) ? 0 : lmp_checktimeout(L, 2);
  check_readable(L, c);
  if (lmp_rin_pending(&c->rin) >= LMP_FRAME_HEAD) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lmp_deadline d;
  lmp_deadline_init(&d, t);
  for (;;) {
    struct pollfd p = {c->fd, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
    if (wait_fd(L, c->fd, POLLIN, &d) < 0) break;
  }
  lua_pushboolean(L, 0);
  return 1;
}

static int l_close(lua_State *L) {
  conn *c = lmp_checkudata(L, 1, "lmp.Connection");
  lmp_checknargs(L, 1);
  conn_close(c);
  return 0;
}

static int l_fileno(lua_State *L) {
  conn *c = check_conn(L, 1);
  lmp_checknargs(L, 1);
  lua_pushinteger(L, c->fd);
  return 1;
}

static int l_closed(lua_State *L) {
  conn *c = lmp_checkudata(L, 1, "lmp.Connection");
  lmp_checknargs(L, 1);
  lua_pushboolean(L, c->fd < 0);
  return 1;
}

/* _ready(): a recv would not block (data buffered, readable, or EOF); never for a closed or
** write-only end. */
static int l_ready(lua_State *L) {
  conn *c = lmp_checkudata(L, 1, "lmp.Connection");
  if (c->fd < 0 || !c->readable) {
    lua_pushboolean(L, 0);
    return 1;
  }
  struct pollfd p = {c->fd, POLLIN, 0};
  lua_pushboolean(L, lmp_rin_pending(&c->rin) >= LMP_FRAME_HEAD || poll(&p, 1, 0) > 0);
  return 1;
}

/* ---- handles: payload = flags byte; the fd goes with it ---- */

/* Payload: flags byte, then the socket's inode (8 bytes, little-endian), so that a decoder
** handed a raw fd number that means something else in its process notices. */
static int l_encode(lua_State *L) {
  conn *c = lua_touserdata(L, 1);
  if (c == NULL || c->fd < 0) return lmp_raise(L, "SerializationError", "cannot send a closed connection");
  struct stat st;
  if (fstat(c->fd, &st) != 0)
    return lmp_raise(L, "SerializationError", "cannot send a connection: %s", strerror(errno));
  char p[9];
  p[0] = (char)(c->readable | c->writable << 1);
  lmp_put_le64(p + 1, (uint64_t)st.st_ino);
  lua_pushliteral(L, "lmp.Connection");
  lua_pushlstring(L, p, sizeof p);
  lua_pushinteger(L, c->fd);
  return 3;
}

/* The fd passed in belongs to the codec's caller: we dup it. */
static int l_decode(lua_State *L) {
  size_t len;
  const char *p = lua_tolstring(L, 1, &len);
  if (p == NULL || len != 9) return lmp_raise(L, "SerializationError", "malformed Pipe end handle");
  if (!lua_isinteger(L, 2))
    return lmp_raise(L, "SerializationError", "a Pipe end can only be sent with its descriptor "
                     "(Process args, another Pipe), not through a Queue");
  int fd = (int)lua_tointeger(L, 2);
  uint64_t ino = lmp_get_le64(p + 1);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || (uint64_t)st.st_ino != ino)
    return lmp_raise(L, "SerializationError", "Pipe end handle: descriptor %d is not the pipe's "
                     "socket here (the descriptor must travel with the message)", fd);
  int mine = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (mine < 0)
    return lmp_raise(L, "SerializationError", "cannot duplicate a Pipe end's descriptor: %s",
                     strerror(errno));
  push_conn(L, mine, p[0] & 1, (p[0] >> 1) & 1);
  return 1;
}

/* Pipe([duplex=true]) -> a, b */
static int l_Pipe(lua_State *L) {
  lmp_checknargs(L, 1);
  if (!lua_isnoneornil(L, 1)) lmp_checktype(L, 1, LUA_TBOOLEAN);
  int duplex = lua_isnoneornil(L, 1) ? 1 : lua_toboolean(L, 1);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return lmp_raise(L, "ProcessError", "cannot create a pipe: %s", strerror(errno));
  int sz = 1 << 20;
  for (int i = 0; i < 2; i++) {
    setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  }
  if (!duplex) {
    shutdown(sv[0], SHUT_WR);
    shutdown(sv[1], SHUT_RD);
  }
  /* created "closed first": if a push fails, the userdata's __gc closes its fd */
  conn *a = push_conn(L, -1, 1, duplex);
  conn *b = push_conn(L, -1, duplex, 1);
  a->fd = sv[0];
  b->fd = sv[1];
  return 2;
}

/* core._wait_fds(fds, secs): waits up to secs (one loop slice at most) for any of the fds to
** become readable; returns true if one is. */
static int l_wait_fds(lua_State *L) {
  lmp_checktype(L, 1, LUA_TTABLE);
  double secs = lmp_checknumber(L, 2);
  lmp_deadline d;
  lmp_deadline_init(&d, secs < 0 ? 0 : secs);
  double s = lmp_deadline_slice(L, &d, secs < 0 ? 0 : secs);
  int n = (int)luaL_len(L, 1);
  struct pollfd stack[16], *p = n <= 16 ? stack : malloc(sizeof *p * (size_t)n);
  if (p == NULL) return lmp_raise(L, "ProcessError", "not enough memory");
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    p[i] = (struct pollfd){(int)lua_tointeger(L, -1), POLLIN, 0};
    lua_pop(L, 1);
  }
  int r = poll_for(p, (nfds_t)n, s);
  if (p != stack) free(p);
  lua_pushboolean(L, r > 0);
  return 1;
}

void lmp__open_pipe(lua_State *L) {
  int core = lua_gettop(L);
  static const luaL_Reg methods[] = {
      {"send", l_send},     {"recv", l_recv},       {"send_bytes", l_send_bytes},
      {"recv_bytes", l_recv_bytes}, {"poll", l_poll}, {"close", l_close},
      {"fileno", l_fileno}, {"_fileno", l_fileno}, {"closed", l_closed},
      {"_ready", l_ready},  {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", l_gc}, {"__close", l_gc}, {"__lmp_encode", l_encode},
                                  {NULL, NULL}};
  lmp_shm_newclass(L, "lmp.Connection", methods, meta);
  lua_pushcfunction(L, l_Pipe);
  lua_setfield(L, core, "Pipe");
  lua_pushcfunction(L, l_wait_fds);
  lua_setfield(L, core, "_wait_fds");
  lmp_shm_register(L, core, "lmp.Connection", l_decode);
}
