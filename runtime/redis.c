/*
** redis.c — a Redis connection on the parent's libuv loop (redis.h), and its Lua interface
** (lmp.core.redis): call (waits in the loop for the reply), send (does not wait), close.
** Caveats: hiredis owns its context and frees it after the disconnect callback; this file's
** struct lives until both the owner has closed it and hiredis is done with it. Reply callbacks
** run in the loop's I/O phase and never run Lua: a reply waited for from Lua is copied.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "lmp_int.h"
#include "loop.h"
#include "redis.h"

struct lmp_redis {
  redisAsyncContext *ac;    /* NULL once hiredis let it go */
  uv_timer_t *probe;        /* looks for a failed connect or a dead socket (see probe_cb) */
  int state;                /* 0 connecting, 1 up, -1 failed */
  int closing;              /* the owner closed it */
  int freeing;              /* inside redisAsyncFree, whose callbacks must not free this */
  int fd;                   /* owned while connected (children do not inherit it) */
  long pending;
  char err[160];
  lmp_redis_state_cb state_cb;
  void *ud;
};

typedef struct pend {
  lmp_redis *r;
  lmp_redis_cb cb;
  void *ud;
} pend;

static void set_failed(lmp_redis *r, const char *why) {
  if (r->state == -1) return;
  r->state = -1;
  snprintf(r->err, sizeof r->err, "%s", why && *why ? why : "connection lost");
  if (r->state_cb) r->state_cb(r, 0, r->ud);
}

/* The struct goes once the owner has closed it, hiredis has let the context go and no reply
** callback is left to run. */
static void maybe_free(lmp_redis *r) {
  if (r->ac == NULL && r->closing && r->pending == 0 && !r->freeing) free(r);
}

static void probe_closed(uv_handle_t *h) { free(h); }

static void probe_stop(lmp_redis *r) {
  if (r->probe == NULL) return;
  uv_timer_stop(r->probe);
  uv_close((uv_handle_t *)r->probe, probe_closed);
  r->probe = NULL;
}

/* hiredis's libuv adapter drops a poll event that comes with an error, and libuv stops
** watching a socket once it reported one: a refused TCP connect would never finish, and a
** server that died with our bytes unread (a reset, not an end of file) would never be noticed
** — a call would wait for its reply forever. So the socket is looked at now and then (every
** 20 ms while connecting, every 100 ms once up), and an error found there is handed to hiredis,
** which reads it and calls on_connect or on_disconnect. */
static void probe_cb(uv_timer_t *t) {
  lmp_redis *r = t->data;
  if (r->ac == NULL || r->state < 0) {
    probe_stop(r);
    return;
  }
  struct pollfd p = {r->fd, r->state == 0 ? POLLOUT : POLLIN, 0};
  if (poll(&p, 1, 0) != 1 || !(p.revents & (POLLERR | POLLHUP | POLLNVAL))) return;
  if (r->state == 0) redisAsyncHandleWrite(r->ac);
  else redisAsyncHandleRead(r->ac);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  lmp_redis *r = ac->data;
  if (status != REDIS_OK) {
    probe_stop(r);
    lmp_fd_disown(r->fd);
    r->ac = NULL; /* hiredis frees a context whose connection failed */
    set_failed(r, ac->errstr);
    maybe_free(r);
  }
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  lmp_redis *r = ac->data;
  probe_stop(r);
  lmp_fd_disown(r->fd);
  r->ac = NULL;
  if (!r->closing) set_failed(r, status == REDIS_OK ? "the server closed the connection" : ac->errstr);
  maybe_free(r);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  pend *pd = privdata;
  lmp_redis *r = pd->r;
  if (pd->cb) pd->cb(r, reply, pd->ud);
  free(pd);
  r->pending--;
  maybe_free(r);
}

/* The answer to SELECT (sent first): the connection is up, or the database is refused. */
static void on_select(lmp_redis *r, redisReply *reply, void *ud) {
  (void)ud;
  if (reply == NULL) return; /* failed: said by the disconnect */
  if (reply->type == REDIS_REPLY_ERROR) {
    set_failed(r, reply->str);
    return;
  }
  if (r->state == 0) {
    if (r->probe != NULL) {
      uv_timer_set_repeat(r->probe, 100);
      uv_timer_again(r->probe);
    }
    r->state = 1;
    if (r->state_cb) r->state_cb(r, 1, r->ud);
  }
}

/* Splits url into a host and port, or a socket path, and a database number. */
static const char *parse_url(const char *url, char *host, size_t hn, int *port, char *path,
                             size_t pn, int *db) {
  *port = 6379;
  *db = 0;
  host[0] = path[0] = '\0';
  if (strncmp(url, "unix://", 7) == 0) {
    const char *p = url + 7, *q = strchr(p, '?');
    size_t n = q ? (size_t)(q - p) : strlen(p);
    if (n == 0 || n >= pn || p[0] != '/') return "unix:// needs an absolute socket path";
    memcpy(path, p, n);
    path[n] = '\0';
    if (q && sscanf(q, "?db=%d", db) != 1) return "unix:// takes ?db=N only";
    return NULL;
  }
  if (strncmp(url, "redis://", 8) != 0) return "the address must start with redis:// or unix://";
  const char *p = url + 8, *slash = strchr(p, '/'), *colon = strchr(p, ':');
  if (colon && slash && colon > slash) colon = NULL;
  const char *hend = colon ? colon : slash ? slash : p + strlen(p);
  size_t n = (size_t)(hend - p);
  if (n == 0 || n >= hn) return "redis:// needs a host";
  memcpy(host, p, n);
  host[n] = '\0';
  if (colon) {
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || v <= 0 || v > 65535 || (*end && *end != '/')) return "bad port";
    *port = (int)v;
  }
  if (slash && slash[1] != '\0') {
    char *end;
    long v = strtol(slash + 1, &end, 10);
    if (end == slash + 1 || *end || v < 0) return "bad database number";
    *db = (int)v;
  }
  return NULL;
}

lmp_redis *lmp_redis_open(uv_loop_t *loop, const char *url, lmp_redis_state_cb state, void *ud,
                          const char **err) {
  char host[256], path[256];
  int port, db;
  *err = parse_url(url, host, sizeof host, &port, path, sizeof path, &db);
  if (*err) return NULL;
  lmp_redis *r = calloc(1, sizeof *r);
  if (r == NULL) {
    *err = "not enough memory";
    return NULL;
  }
  /* hiredis writes with write(): a server that went away must be an error, not a SIGPIPE */
  struct sigaction cur;
  if (sigaction(SIGPIPE, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  redisAsyncContext *ac = path[0] ? redisAsyncConnectUnix(path) : redisAsyncConnect(host, port);
  if (ac == NULL || ac->err) {
    static char why[200];
    snprintf(why, sizeof why, "cannot connect: %s", ac ? ac->errstr : "out of memory");
    *err = why;
    if (ac) redisAsyncFree(ac);
    free(r);
    return NULL;
  }
  /* a host that vanished (no reset ever comes) is found by TCP's keep-alive probes */
  if (!path[0]) redisEnableKeepAlive(&ac->c);
  if (redisLibuvAttach(ac, loop) != REDIS_OK) {
    *err = "cannot watch the connection";
    redisAsyncFree(ac);
    free(r);
    return NULL;
  }
  r->ac = ac;
  r->fd = ac->c.fd;
  r->state_cb = state;
  r->ud = ud;
  ac->data = r;
  lmp_fd_own(r->fd);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->probe = malloc(sizeof *r->probe);
  if (r->probe != NULL) {
    uv_timer_init(loop, r->probe);
    r->probe->data = r;
    uv_timer_start(r->probe, probe_cb, 20, 20);
  }
  char dbs[16];
  snprintf(dbs, sizeof dbs, "%d", db);
  const char *argv[2] = {"SELECT", dbs};
  size_t lens[2] = {6, strlen(dbs)};
  lmp_redis_command(r, 2, argv, lens, on_select, NULL);
  return r;
}

int lmp_redis_command(lmp_redis *r, int argc, const char **argv, const size_t *lens,
                      lmp_redis_cb cb, void *cbud) {
  if (r->ac == NULL || r->state < 0) return -1;
  pend *pd = malloc(sizeof *pd);
  if (pd == NULL) return -1;
  *pd = (pend){r, cb, cbud};
  if (redisAsyncCommandArgv(r->ac, on_reply, pd, argc, argv, lens) != REDIS_OK) {
    free(pd);
    return -1;
  }
  r->pending++;
  return 0;
}

int lmp_redis_state(const lmp_redis *r) { return r->state; }
const char *lmp_redis_error(const lmp_redis *r) { return r->err; }
long lmp_redis_pending(const lmp_redis *r) { return r->pending; }

void lmp_redis_close(lmp_redis *r) {
  if (r->closing) return;
  r->closing = 1;
  r->state_cb = NULL;
  probe_stop(r);
  redisAsyncContext *ac = r->ac;
  int connected = r->state == 1;
  if (ac != NULL) {
    /* pending callbacks run with NULL; a connected context then calls on_disconnect, one that
    ** never connected does not: it is let go here */
    if (!connected) lmp_fd_disown(r->fd);
    r->freeing = 1; /* its callbacks (on_reply, on_disconnect) run inside */
    redisAsyncFree(ac);
    r->freeing = 0;
    r->ac = NULL;
  }
  maybe_free(r);
}

/* ---- the Lua interface ---- */

#define REDIS_MT "lmp.Redis"

/* A reply copied out of hiredis (which frees its own after the callback). */
typedef struct rcopy {
  int type;
  long long integer;
  char *str;
  size_t len;
  size_t n;
  struct rcopy **elem;
} rcopy;

static void rcopy_free(rcopy *c) {
  if (c == NULL) return;
  for (size_t i = 0; i < c->n; i++) rcopy_free(c->elem[i]);
  free(c->elem);
  free(c->str);
  free(c);
}

static rcopy *rcopy_make(const redisReply *rp, int depth) {
  rcopy *c = calloc(1, sizeof *c);
  if (c == NULL || depth > 32) return c;
  c->type = rp->type;
  c->integer = rp->integer;
  if (rp->str != NULL) {
    c->str = malloc(rp->len + 1);
    if (c->str) memcpy(c->str, rp->str, rp->len), c->str[rp->len] = '\0', c->len = rp->len;
  }
  if (rp->type == REDIS_REPLY_ARRAY && rp->elements > 0) {
    c->elem = calloc(rp->elements, sizeof *c->elem);
    if (c->elem == NULL) return c;
    c->n = rp->elements;
    for (size_t i = 0; i < rp->elements; i++) c->elem[i] = rcopy_make(rp->element[i], depth + 1);
  }
  return c;
}

typedef struct luaconn {
  lmp_redis *r;
  lmp_loop *lp;
  int up;          /* connected once */
} luaconn;

/* A reply waited for by a Lua call. */
typedef struct waitcell {
  int done, abandoned;
  rcopy *reply;
} waitcell;

static void on_lua_reply(lmp_redis *r, redisReply *reply, void *ud) {
  waitcell *w = ud;
  if (w->abandoned) {
    free(w);
    return;
  }
  w->done = 1;
  w->reply = reply ? rcopy_make(reply, 0) : NULL;
}

static void on_lua_state(lmp_redis *r, int ok, void *ud) {
  luaconn *c = ud;
  if (ok) c->up = 1;
  lmp_loop_notify(c->lp);
}

static luaconn *checkconn(lua_State *L) {
  luaconn *c = lmp_checkudata(L, 1, REDIS_MT);
  if (c->r == NULL) lmp_raise(L, "ValueError", "the Redis connection is closed");
  if (lmp_redis_state(c->r) < 0)
    lmp_raise(L, "ProcessError", "Redis: %s", lmp_redis_error(c->r));
  return c;
}

/* Pushes a copied reply as a Lua value: strings, integers, tables {n=} for arrays (a nil
** element is false); an error reply raises ProcessError. */
static void push_reply(lua_State *L, const rcopy *c, int depth) {
  if (c == NULL) {
    lua_pushnil(L);
    return;
  }
  switch (c->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS: lua_pushlstring(L, c->str ? c->str : "", c->len); break;
    case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)c->integer); break;
    case REDIS_REPLY_ARRAY:
      lua_createtable(L, (int)c->n, 1);
      for (size_t i = 0; i < c->n; i++) {
        if (c->elem[i] != NULL && c->elem[i]->type == REDIS_REPLY_NIL) lua_pushboolean(L, 0);
        else push_reply(L, c->elem[i], depth + 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      lua_pushinteger(L, (lua_Integer)c->n);
      lua_setfield(L, -2, "n");
      break;
    case REDIS_REPLY_ERROR:
      if (depth == 0) {
        lmp_raise(L, "ProcessError", "Redis: %s", c->str ? c->str : "error");
      }
      lua_pushfstring(L, "ERR %s", c->str ? c->str : "");
      break;
    default: lua_pushnil(L); break;
  }
}

/* Gathers the arguments from index 2 on (strings and numbers). */
static int gather_args(lua_State *L, const char **argv, size_t *lens, int max) {
  int n = lua_gettop(L) - 1;
  if (n < 1) return lmp_argerror(L, 2, "ValueError", "a command is required");
  if (n > max) return lmp_argerror(L, max + 2, "ValueError", "too many arguments (at most %d)", max);
  for (int i = 0; i < n; i++) {
    int t = lua_type(L, i + 2);
    if (t != LUA_TSTRING && t != LUA_TNUMBER) lmp_typeerror(L, i + 2, "string or number");
    argv[i] = lua_tolstring(L, i + 2, &lens[i]);
  }
  return n;
}

#define MAX_ARGS 512

static int done_fn(lua_State *L, void *ud) { return ((waitcell *)ud)->done; }

/* call(cmd, ...) -> the reply: waits in the loop (callbacks run meanwhile). */
static int c_call(lua_State *L) {
  luaconn *c = checkconn(L);
  const char *argv[MAX_ARGS];
  size_t lens[MAX_ARGS];
  int n = gather_args(L, argv, lens, MAX_ARGS);
  waitcell *w = calloc(1, sizeof *w);
  if (w == NULL) return luaL_error(L, "not enough memory");
  if (lmp_redis_command(c->r, n, argv, lens, on_lua_reply, w) != 0) {
    free(w);
    return lmp_raise(L, "ProcessError", "Redis: the connection is down");
  }
  int r = lmp_loop_wait_status(L, done_fn, w, LMP_FOREVER);
  if (r != LMP_WAIT_READY) {
    w->abandoned = 1; /* freed by its callback */
    return lmp_wait_result(L, r);
  }
  rcopy *reply = w->reply;
  free(w);
  if (reply == NULL) {
    lmp_raise(L, "ProcessError", "Redis: %s", lmp_redis_error(c->r));
  }
  int top = lua_gettop(L);
  if (reply->type == REDIS_REPLY_ERROR) {
    lua_pushfstring(L, "Redis: %s", reply->str ? reply->str : "error");
    rcopy_free(reply);
    lmp_error_push(L, "ProcessError", lua_tostring(L, -1));
    return lua_error(L);
  }
  push_reply(L, reply, 0);
  rcopy_free(reply);
  return lua_gettop(L) - top;
}

/* send(cmd, ...): sends without waiting; the reply is dropped. */
static int c_send(lua_State *L) {
  luaconn *c = checkconn(L);
  const char *argv[MAX_ARGS];
  size_t lens[MAX_ARGS];
  int n = gather_args(L, argv, lens, MAX_ARGS);
  if (lmp_redis_command(c->r, n, argv, lens, NULL, NULL) != 0)
    return lmp_raise(L, "ProcessError", "Redis: the connection is down");
  return 0;
}

/* pending() -> commands not yet answered */
static int c_pending(lua_State *L) {
  luaconn *c = lmp_checkudata(L, 1, REDIS_MT);
  lua_pushinteger(L, c->r ? lmp_redis_pending(c->r) : 0);
  return 1;
}

static int c_close(lua_State *L) {
  luaconn *c = lmp_checkudata(L, 1, REDIS_MT);
  if (c->r) lmp_redis_close(c->r);
  c->r = NULL;
  return 0;
}

static int up_fn(lua_State *L, void *ud) {
  luaconn *c = ud;
  return c->up || lmp_redis_state(c->r) < 0;
}

/* redis(url [, timeout]) -> connection, once it is up; ProcessError when it cannot be made
** within timeout seconds (default 5). */
static int l_redis(lua_State *L) {
  size_t n;
  const char *url = lmp_checklstring(L, 1, &n);
  double timeout = lua_isnoneornil(L, 2) ? 5.0 : lmp_checktimeout(L, 2);
  luaconn *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->r = NULL;
  c->up = 0;
  c->lp = lmp_loop_get(L);
  luaL_setmetatable(L, REDIS_MT);
  const char *err;
  c->r = lmp_redis_open(&c->lp->uv, url, on_lua_state, c, &err);
  if (c->r == NULL) /* a malformed address is misuse; an unreachable one is not */
    return lmp_raise(L, strncmp(err, "cannot connect", 14) == 0 ? "ProcessError" : "ValueError",
                     "cannot reach Redis at %s: %s", url, err);
  if (!lmp_loop_wait(L, up_fn, c, timeout) || lmp_redis_state(c->r) < 0) {
    const char *why = lmp_redis_state(c->r) < 0 ? lmp_redis_error(c->r) : "timed out";
    lua_pushstring(L, why);
    lmp_redis_close(c->r);
    c->r = NULL;
    return lmp_raise(L, "ProcessError", "cannot reach Redis at %s: %s", url, lua_tostring(L, -1));
  }
  return 1;
}

void lmp__open_redis(lua_State *L) {
  if (luaL_newmetatable(L, REDIS_MT)) {
    static const luaL_Reg methods[] = {{"call", c_call},       {"send", c_send},
                                       {"pending", c_pending}, {"close", c_close},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_redis);
  lua_setfield(L, -2, "redis");
}
