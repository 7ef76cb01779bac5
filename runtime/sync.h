/*
** sync.h — what the synchronization objects share (sync.c, cond.c, barrier.c): the userdata,
** the kinds and their metatable names, checks, and the Lock/RLock operations.
*/
#ifndef LMP_SYNC_H
#define LMP_SYNC_H

#include "lmp_shm.h"

enum { K_LOCK, K_RLOCK, K_SEM, K_BSEM, K_EVENT, K_COND, K_BARRIER };
extern const char *const lmp__sync_name[]; /* "lmp.Lock"... by kind */

/* Every synchronization userdata (user value 1: a Condition's lock, a Barrier's action). */
typedef struct syncobj {
  lmp_shm_obj o;
  int kind;
} syncobj;

/* Lock and RLock in shared memory. */
typedef struct shm_lock {
  lmp_mutex m;
  uint32_t count; /* RLock recursion depth */
} shm_lock;

/* The object of kind at idx: TypeError for another value, ValueError once it is closed. */
syncobj *lmp__sync_check(lua_State *L, int idx, int kind);
/* Pushes a fresh userdata of kind (with 1 user value), not attached to shared memory yet. */
syncobj *lmp__sync_push(lua_State *L, int kind);
/* Pushes a new object of kind with size zeroed bytes of shared memory; raises ProcessError
** when shared memory cannot be had. */
syncobj *lmp__sync_new(lua_State *L, int kind, size_t size);
/* The Lock or RLock at idx (TypeError / ValueError as lmp__sync_check). */
syncobj *lmp__check_anylock(lua_State *L, int idx);
/* Acquires a Lock or RLock (recursion for RLock); returns an LMP_LOCK_* code. */
int lmp__lock_acquire(lua_State *L, syncobj *s, double timeout);
/* Releases it; ValueError when this process may not. */
void lmp__lock_release(lua_State *L, syncobj *s);
/* Pushes acquire's results: true | false | true, "abandoned". */
int lmp__push_acquired(lua_State *L, int r);
/* Creates the metatable of kind with methods in __index, __gc/__close, encode and tostring. */
void lmp__sync_class(lua_State *L, int kind, const luaL_Reg *methods, lua_CFunction encode,
                     lua_CFunction tostring);
/* Pushes "<lmp.Kind at 0x... state>" with state formatted like lua_pushfstring, or
** "... closed>" for a closed object; for __tostring. */
int lmp__sync_tostring(lua_State *L, const char *fmt, ...);
/* The default handle encoder (one object, no type data). */
int lmp__sync_encode(lua_State *L);
/* Runs the loop's tick once when a wait of timeout seconds may sleep: raises ValueError inside
** a loop callback (and InterruptedError after Ctrl-C) before the wait changes anything. */
void lmp__may_sleep(lua_State *L, double timeout);

void lmp__open_cond(lua_State *L, int core);
void lmp__open_barrier(lua_State *L, int core);

#endif
