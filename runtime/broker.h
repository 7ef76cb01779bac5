/*
** broker.h — the Redis backend of pools (broker.c).
*/
#ifndef LMP_BROKER_H
#define LMP_BROKER_H

#include <stddef.h>

#include "dispatch.h"

struct lua_State;

/* Starts the Redis backend of pool p: tasks go to the Redis at url (redis://host:port/db or
** unix:///path), authenticated with key (keylen bytes). retry_window: seconds to wait for Redis
** to come back after it went away before what it held fails. Raises ProcessError when Redis
** cannot be reached within a few seconds. */
lmp_backend *lmp_broker_start(struct lua_State *L, lmp_pool *p, const char *url, const char *key,
                              size_t keylen, double retry_window);

#endif
