/*
** result.h — AsyncResult objects (result.c), made and settled by the pool (pool.c).
*/
#ifndef LMP_RESULT_H
#define LMP_RESULT_H

#include <stdint.h>
#include "lmp_int.h"

#define RESULT_MT "lmp.AsyncResult"

enum { RESULT_PENDING, RESULT_OK, RESULT_FAILED };

typedef struct lmp_result {
  uint64_t id;    /* the task's id (0 for a map_async job) */
  int state;      /* RESULT_PENDING, RESULT_OK, RESULT_FAILED */
  int callbacks;  /* a callback or error_callback is set: settling goes through Lua */
} lmp_result;

/* Pushes a new pending result. owner (kept alive by the result), callback, error_callback
** and job are stack indexes (nil allowed). */
lmp_result *lmp_result_push(lua_State *L, int owner, int callback, int error_callback, int job);

/* Settles the result at idx with the value on top of the stack (popped). */
void lmp_result_settle(lua_State *L, int idx, int ok);

#endif
