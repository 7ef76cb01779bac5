/*
** redis.h — a Redis connection on a libuv loop (hiredis and its libuv adapter), for the Redis
** backend of pools (broker.c) and, through lmp.core.redis, the `lmp worker` serving loop.
** Caveats: replies reach their callbacks in the loop's I/O phase — callbacks run no Lua; a
** connection that fails stays failed (its owner decides whether to open another).
*/
#ifndef LMP_REDIS_H
#define LMP_REDIS_H

#include <stddef.h>
#include <uv.h>

struct redisReply;
typedef struct lmp_redis lmp_redis;

/* Called with each reply (NULL when the connection failed before it came). */
typedef void (*lmp_redis_cb)(lmp_redis *r, struct redisReply *reply, void *ud);
/* Called once when the connection is ready (ok = 1) or has failed or closed (ok = 0). */
typedef void (*lmp_redis_state_cb)(lmp_redis *r, int ok, void *ud);

/* Opens a connection to url — redis://host[:port][/db] or unix:///path[?db=N] — on loop; the
** connection is made in the background and state(r, 1, ud) says when it is up (after SELECT),
** state(r, 0, ud) when it failed or later dropped. Returns NULL with *err set (a static
** message) when url is malformed or memory is short. */
lmp_redis *lmp_redis_open(uv_loop_t *loop, const char *url, lmp_redis_state_cb state, void *ud,
                          const char **err);

/* Sends a command of argc binary-safe arguments; cb(r, reply, cbud) runs when it is answered
** (cb may be NULL: the reply is dropped). Returns 0, or -1 when the connection is down. */
int lmp_redis_command(lmp_redis *r, int argc, const char **argv, const size_t *lens,
                      lmp_redis_cb cb, void *cbud);

/* 1 once connected (and not failed since); -1 after a failure; 0 while connecting. */
int lmp_redis_state(const lmp_redis *r);

/* Why the connection failed ("" while it is fine). */
const char *lmp_redis_error(const lmp_redis *r);

/* Commands sent and not yet answered. */
long lmp_redis_pending(const lmp_redis *r);

/* Closes the connection; callbacks of commands still pending run with a NULL reply. The memory
** goes once hiredis is done with it. */
void lmp_redis_close(lmp_redis *r);

/* The Lua interface: lmp.core.redis(url [, timeout]) -> connection with call, send, close. */
void lmp__open_redis(struct lua_State *L);

#endif
