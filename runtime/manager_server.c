/*
** manager_server.c — the Manager server's event loop: one libuv loop serves every client.
** It accepts connections, authenticates them (HMAC challenge-response in both directions),
** reads request frames and hands each to the Lua dispatcher (lmp.manager_server), and writes
** the replies it returns at once or later (a parked request: a blocked get or acquire).
** After answering, the loop looks for the next request for a moment before it sleeps, so a
** client calling in a loop is served without a wake-up on either side.
** Caveats: the dispatcher runs inside the loop (blocking lmp calls there raise ValueError);
** a connection is closed at a safe point (never in the middle of a dispatch), and only then
** is the dispatcher told.
*/
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "bytes.h"
#include "loop.h"
#include "manager.h"

#define SERVER_MT "lmp.ManagerServer"
#define READ_CHUNK 65536
#define AUTH_TIMEOUT 10.0 /* seconds a new connection has to authenticate */
#define SPIN_GAP 60e-6    /* how long to look for a client's next request after a reply */
#define SPIN_MAX 2e-3     /* the longest run of requests served without going back to the loop */
#define SPIN_FDS 64

typedef struct sconn {
  struct server *srv;
  uv_poll_t poll;
  int fd, id;
  int ready;           /* authenticated */
  int doomed;          /* to be closed at the next safe point */
  int closed;          /* the poll handle is closing; freed in its close callback */
  int end_after_write; /* refused: close once "NO" is written */
  int events;          /* what the poll handle watches */
  double since;
  unsigned char nonce[MGR_NONCE];
  lmp_buf in, out;
  size_t inpos, outpos;
  struct sconn *next;
} sconn;

typedef struct server {
  lua_State *L;
  uv_loop_t *uv;
  uv_poll_t lpoll;
  uv_prepare_t prepare;
  uv_timer_t timer;   /* the dispatcher's timer (timeouts of parked requests) */
  uv_timer_t sweep;   /* closes connections that do not authenticate */
  int lfd;
  int running, stop, handles_live;
  int handled;        /* requests answered since the last look before sleeping */
  int next_id;
  sconn *conns;
  char *key;
  size_t keylen;
  char address[256];
  int handler;        /* registry ref: the dispatcher table {request=, closed=, timer=} */
} server;

/* ---- the server's own exit: its socket file goes with it ---- */

static char term_path[256], term_dir[256];

/* SIGTERM (and the parent's death): remove the socket file and its directory, leave.
** Async-signal-safe: unlink, rmdir and _exit only. */
static void on_term(int sig) {
  (void)sig;
  if (term_path[0]) unlink(term_path);
  if (term_dir[0]) rmdir(term_dir);
  _exit(0);
}

/* ---- connections ---- */

static void conn_watch(sconn *c);

/* The close callback of a connection's poll handle: the memory goes only now. */
static void free_conn(uv_handle_t *h) {
  sconn *c = h->data;
  lmp_buf_free(&c->in);
  lmp_buf_free(&c->out);
  free(c);
}

/* Calls the dispatcher's handler `name` with n arguments already pushed; errors in it are
** reported on stderr (a bug in the server, which goes on). Returns the number of results. */
static int call_handler(server *s, const char *name, int n, int nres) {
  lua_State *L = s->L;
  int base = lua_gettop(L) - n;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_insert(L, base + 1);
  if (lua_pcall(L, n, nres, 0) != LUA_OK) {
    fprintf(stderr, "lmp manager: %s handler failed: %s\n", name,
            luaL_tolstring(L, -1, NULL));
    fflush(stderr);
    lua_settop(L, base);
    return -1;
  }
  return nres;
}

/* Closes connections marked doomed and tells the dispatcher (a safe point). */
static void reap_conns(server *s) {
  for (sconn **p = &s->conns; *p;) {
    sconn *c = *p;
    if (!c->doomed) {
      p = &c->next;
      continue;
    }
    *p = c->next;
    int was_ready = c->ready;
    lmp_fd_disown(c->fd);
    uv_poll_stop(&c->poll);
    c->closed = 1;
    uv_close((uv_handle_t *)&c->poll, free_conn);
    close(c->fd);
    if (was_ready && !s->stop) {
      lua_pushinteger(s->L, c->id);
      call_handler(s, "closed", 1, 0);
    }
  }
}

static void doom(sconn *c) { c->doomed = 1; }

/* Writes what it can without blocking; dooms the connection on error. */
static void conn_flush(sconn *c) {
  while (c->outpos < c->out.len) {
    ssize_t w = send(c->fd, c->out.p + c->outpos, c->out.len - c->outpos, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) doom(c);
      break;
    }
    c->outpos += (size_t)w;
  }
  if (c->outpos == c->out.len) {
    c->out.len = c->outpos = 0;
    if (c->end_after_write) doom(c);
  }
  conn_watch(c);
}

/* Queues a frame of two parts and tries to write it. */
static void conn_send(sconn *c, const void *a, size_t na, const void *b, size_t nb) {
  if (c->doomed) return;
  size_t n = na + nb;
  if (n > MGR_MAX_FRAME || lmp_buf_reserve(&c->out, MGR_LEN + n) != 0) {
    doom(c);
    return;
  }
  unsigned char *p = (unsigned char *)c->out.p + c->out.len;
  lmp_put_le32(p, (uint32_t)n);
  memcpy(p + MGR_LEN, a, na);
  if (nb) memcpy(p + MGR_LEN + na, b, nb);
  c->out.len += MGR_LEN + n;
  conn_flush(c);
}

static void send_reply(sconn *c, uint32_t seq, int status, const char *msg, size_t n) {
  unsigned char h[MGR_REP_HEAD];
  lmp_put_le32(h, seq);
  h[4] = (unsigned char)status;
  conn_send(c, h, sizeof h, msg, n);
}

static uint32_t le32(const unsigned char *p) { return lmp_get_le32(p); }

/* The client's answer to the challenge: its HMAC, then its own challenge. */
static void handle_auth(sconn *c, const unsigned char *b, size_t n) {
  server *s = c->srv;
  if (n != MGR_MAC + MGR_NONCE ||
      !lmp__mgr_mac_ok(b, s->key, s->keylen, "lmp-manager-client", c->nonce)) {
    c->end_after_write = 1;
    conn_send(c, "NO", 2, NULL, 0);
    return;
  }
  unsigned char ok[2 + MGR_MAC];
  memcpy(ok, "OK", 2);
  lmp__mgr_mac(ok + 2, s->key, s->keylen, "lmp-manager-server", b + MGR_MAC);
  c->ready = 1;
  conn_send(c, ok, sizeof ok, s->address, strlen(s->address));
}

/* One request: the dispatcher answers (status, message), or answers later (nothing). */
static void handle_request(sconn *c, const unsigned char *b, size_t n) {
  server *s = c->srv;
  lua_State *L = s->L;
  if (n < MGR_REQ_HEAD || n < (size_t)MGR_REQ_HEAD + b[9]) {
    doom(c);
    return;
  }
  uint32_t seq = le32(b);
  int flags = b[4];
  uint32_t id = le32(b + 5);
  size_t mlen = b[9];
  int top = lua_gettop(L);
  lua_pushinteger(L, c->id);
  lua_pushinteger(L, seq);
  lua_pushinteger(L, flags);
  lua_pushinteger(L, id);
  lua_pushlstring(L, (const char *)b + MGR_REQ_HEAD, mlen);
  lua_pushlstring(L, (const char *)b + MGR_REQ_HEAD + mlen, n - MGR_REQ_HEAD - mlen);
  if (call_handler(s, "request", 6, 2) == 2 && lua_isinteger(L, -2)) {
    size_t rn;
    const char *msg = lua_tolstring(L, -1, &rn);
    if (msg != NULL) {
      send_reply(c, seq, (int)lua_tointeger(L, -2), msg, rn);
      s->handled++;
    }
  }
  lua_settop(L, top);
}

/* Handles every complete frame in the input buffer. */
static void handle_frames(sconn *c) {
  while (!c->doomed && c->in.len - c->inpos >= MGR_LEN) {
    const unsigned char *p = (const unsigned char *)c->in.p + c->inpos;
    uint32_t n = le32(p);
    if (!c->ready && n > MGR_AUTH_MAX) {
      doom(c);
      break;
    }
    if (c->in.len - c->inpos - MGR_LEN < n) break;
    c->inpos += MGR_LEN + n;
    if (c->ready) handle_request(c, p + MGR_LEN, n);
    else if (!c->end_after_write) handle_auth(c, p + MGR_LEN, n);
  }
  if (c->inpos == c->in.len) c->in.len = c->inpos = 0;
}

/* Reads what is there and handles it; returns 1 when something was read. */
static int conn_read(sconn *c) {
  int got = 0;
  for (;;) {
    if (c->inpos > 0 && c->in.cap - c->in.len < READ_CHUNK / 2) {
      memmove(c->in.p, c->in.p + c->inpos, c->in.len - c->inpos);
      c->in.len -= c->inpos;
      c->inpos = 0;
    }
    if (lmp_buf_reserve(&c->in, READ_CHUNK) != 0) {
      doom(c);
      return got;
    }
    size_t room = c->in.cap - c->in.len;
    ssize_t r = recv(c->fd, c->in.p + c->in.len, room, MSG_DONTWAIT);
    if (r > 0) {
      c->in.len += (size_t)r;
      got = 1;
      if ((size_t)r < room) break; /* drained */
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) doom(c);
    break;
  }
  handle_frames(c);
  return got;
}

/* A connection is readable or writable: write what is pending, read and serve, then close
** what was doomed meanwhile. */
static void on_conn(uv_poll_t *h, int status, int events) {
  sconn *c = h->data;
  if (c->closed) return;
  if (status < 0) doom(c);
  if (!c->doomed && (events & UV_WRITABLE)) conn_flush(c);
  if (!c->doomed && (events & UV_READABLE)) conn_read(c);
  reap_conns(c->srv);
}

/* Watches the connection for input, and for room to write while output is pending. */
static void conn_watch(sconn *c) {
  if (c->closed || c->doomed) return;
  int want = UV_READABLE | (c->outpos < c->out.len ? UV_WRITABLE : 0);
  if (want != c->events) {
    uv_poll_start(&c->poll, want, on_conn);
    c->events = want;
  }
}

/* Accepts every pending connection and sends each its challenge. */
static void on_listen(uv_poll_t *h, int status, int events) {
  server *s = h->data;
  for (;;) {
    int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      break; /* EAGAIN, or out of descriptors: the next wake-up tries again */
    }
    sconn *c = calloc(1, sizeof *c);
    if (c == NULL || uv_poll_init(s->uv, &c->poll, fd) != 0) {
      free(c);
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails on Unix sockets */
    lmp_fd_own(fd);
    c->srv = s;
    c->fd = fd;
    c->id = ++s->next_id;
    c->since = lmp_monotonic();
    c->poll.data = c;
    c->next = s->conns;
    s->conns = c;
    lmp__mgr_random(c->nonce, MGR_NONCE);
    conn_send(c, MGR_MAGIC, MGR_MAGIC_LEN, c->nonce, MGR_NONCE);
    conn_watch(c);
  }
  reap_conns(s);
}

/* Before the loop sleeps: after answering requests, look for the next ones a moment. Each
** ready connection (and the listener) is in the poll set, so nobody waits behind a busy one;
** the run is bounded so timers stay on time. */
static void on_prepare(uv_prepare_t *h) {
  server *s = h->data;
  reap_conns(s);
  if (!s->handled || s->stop) return;
  struct pollfd pf[SPIN_FDS];
  sconn *who[SPIN_FDS];
  double start = lmp_monotonic(), last = start;
  while (!s->stop) {
    int n = 0;
    for (sconn *c = s->conns; c && n < SPIN_FDS; c = c->next)
      if (c->ready && !c->doomed) pf[n] = (struct pollfd){c->fd, POLLIN, 0}, who[n++] = c;
    if (n == 0 || n == SPIN_FDS) break;
    int got = 0;
    if (n == 1) /* one client: its socket is all there is to look at */
      got = conn_read(who[0]);
    else if (poll(pf, (nfds_t)n, 0) > 0)
      for (int i = 0; i < n; i++)
        if (pf[i].revents) got |= conn_read(who[i]);
    reap_conns(s);
    double now = lmp_monotonic();
    if (got) last = now;
    if (now - last > SPIN_GAP || now - start > SPIN_MAX) break;
    sched_yield(); /* the client may need this very core to send its next request */
  }
  s->handled = 0;
}

/* The dispatcher's timer: parked requests whose timeout has come. */
static void on_timer(uv_timer_t *t) {
  server *s = t->data;
  call_handler(s, "timer", 0, 0);
  reap_conns(s);
}

/* Every second: drops connections that have not authenticated in time. */
static void on_sweep(uv_timer_t *t) {
  server *s = t->data;
  double now = lmp_monotonic();
  for (sconn *c = s->conns; c; c = c->next)
    if (!c->ready && now - c->since > AUTH_TIMEOUT) doom(c);
  reap_conns(s);
}

/* ---- the Lua side ---- */

static server *check_server(lua_State *L) { return luaL_checkudata(L, 1, SERVER_MT); }

static int stopped(lua_State *L, void *ud) { return ((server *)ud)->stop; }

static void close_cb(uv_handle_t *h) {
  server *s = h->data;
  s->handles_live--;
}

/* srv:run(dispatcher): serves until srv:stop(); then writes what is pending (briefly),
** closes every connection and the listener. */
static int l_run(lua_State *L) {
  server *s = check_server(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->running) return luaL_error(L, "the server is already running");
  lua_pushvalue(L, 2);
  s->handler = luaL_ref(L, LUA_REGISTRYINDEX);
  s->L = L;
  s->uv = &lmp_loop_get(L)->uv;
  uv_poll_init(s->uv, &s->lpoll, s->lfd);
  uv_prepare_init(s->uv, &s->prepare);
  uv_timer_init(s->uv, &s->timer);
  uv_timer_init(s->uv, &s->sweep);
  s->lpoll.data = s->prepare.data = s->timer.data = s->sweep.data = s;
  s->handles_live = 4;
  uv_poll_start(&s->lpoll, UV_READABLE, on_listen);
  uv_prepare_start(&s->prepare, on_prepare);
  uv_timer_start(&s->sweep, on_sweep, 1000, 1000);
  s->running = 1;
  lmp_loop_wait(L, stopped, s, -1);
  double until = lmp_monotonic() + 0.2;
  for (sconn *c = s->conns; c; c = c->next) {
    while (!c->doomed && c->outpos < c->out.len && lmp_monotonic() < until) {
      struct pollfd p = {c->fd, POLLOUT, 0};
      poll(&p, 1, 10);
      conn_flush(c);
    }
    doom(c);
  }
  reap_conns(s);
  uv_close((uv_handle_t *)&s->lpoll, close_cb);
  uv_close((uv_handle_t *)&s->prepare, close_cb);
  uv_close((uv_handle_t *)&s->timer, close_cb);
  uv_close((uv_handle_t *)&s->sweep, close_cb);
  while (s->handles_live > 0) uv_run(s->uv, UV_RUN_NOWAIT);
  close(s->lfd);
  s->lfd = -1;
  luaL_unref(L, LUA_REGISTRYINDEX, s->handler);
  s->running = 0;
  return 0;
}

/* The live connection with that id, or NULL. */
static sconn *find_conn(server *s, lua_Integer id) {
  for (sconn *c = s->conns; c; c = c->next)
    if (c->id == id) return c->doomed ? NULL : c;
  return NULL;
}

/* srv:reply(cid, seq, status, message) -> true | false (that client is gone) */
static int l_reply(lua_State *L) {
  server *s = check_server(L);
  sconn *c = find_conn(s, luaL_checkinteger(L, 2));
  uint32_t seq = (uint32_t)luaL_checkinteger(L, 3);
  int status = (int)luaL_checkinteger(L, 4);
  size_t n;
  const char *msg = luaL_checklstring(L, 5, &n);
  if (c == NULL || !c->ready) {
    lua_pushboolean(L, 0);
    return 1;
  }
  send_reply(c, seq, status, msg, n);
  lua_pushboolean(L, !c->doomed);
  return 1;
}

/* srv:arm(seconds | nil): the dispatcher's timer fires `timer` after seconds (nil stops). */
static int l_arm(lua_State *L) {
  server *s = check_server(L);
  if (!s->running) return 0;
  if (lua_isnoneornil(L, 2)) {
    uv_timer_stop(&s->timer);
    return 0;
  }
  double t = luaL_checknumber(L, 2);
  uv_update_time(s->uv);
  uv_timer_start(&s->timer, on_timer, t <= 0 ? 0 : (uint64_t)(t * 1000.0 + 0.999), 0);
  return 0;
}

static int l_stop(lua_State *L) {
  check_server(L)->stop = 1;
  return 0;
}

static int l_conns(lua_State *L) {
  server *s = check_server(L);
  int n = 0;
  for (sconn *c = s->conns; c; c = c->next) n += c->ready && !c->doomed;
  lua_pushinteger(L, n);
  return 1;
}

static int server_gc(lua_State *L) {
  server *s = check_server(L);
  if (s->lfd >= 0 && !s->running) close(s->lfd), s->lfd = -1;
  free(s->key);
  s->key = NULL;
  return 0;
}

/* mgr_server(listen_fd, authkey, address, socket path | nil, directory | nil, parent pid)
** -> srv. In the server process: takes the listener, dies with its parent by SIGTERM, whose
** handler removes the socket file and its directory. */
static int l_server(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  size_t keylen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  const char *address = luaL_checkstring(L, 3);
  const char *path = luaL_optstring(L, 4, NULL);
  const char *dir = luaL_optstring(L, 5, NULL);
  pid_t parent = (pid_t)luaL_checkinteger(L, 6);
  server *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->lfd = -1;
  luaL_setmetatable(L, SERVER_MT);
  s->key = malloc(keylen ? keylen : 1);
  if (s->key == NULL) return luaL_error(L, "not enough memory");
  memcpy(s->key, key, keylen);
  s->keylen = keylen;
  snprintf(s->address, sizeof s->address, "%s", address);
  s->lfd = fd;
  lmp_fd_own(fd);
  snprintf(term_path, sizeof term_path, "%s", path ? path : "");
  snprintf(term_dir, sizeof term_dir, "%s", dir ? dir : "");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) on_term(SIGTERM); /* the parent died before prctl took effect */
  return 1;
}

/* Adds mgr_server to lmp.core and makes the server class. */
void lmp__open_manager_server(lua_State *L) {
  if (luaL_newmetatable(L, SERVER_MT)) {
    static const luaL_Reg methods[] = {{"run", l_run},   {"reply", l_reply}, {"arm", l_arm},
                                       {"stop", l_stop}, {"conns", l_conns}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, server_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_server);
  lua_setfield(L, -2, "mgr_server");
}
