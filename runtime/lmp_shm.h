/*
** lmp_shm.h — internals shared by the shared-memory objects (shm.c, sync.c, value.c, queue.c):
** arenas and handles, futex waits, the owner-checked mutex, and the common userdata head.
** Caveat: everything in shared memory is plain data (no pointers): offsets and 32/64-bit words.
*/
#ifndef LMP_SHM_H
#define LMP_SHM_H

#include <stdint.h>
#include <sys/types.h>
#include "lmp_int.h"

/* ---- futexes and waiting (sync.c) ---- */

/* Blocks while *w == val for at most secs seconds (never process-private: memory is shared).
** Returns 0 when woken (or *w changed), ETIMEDOUT, or EINTR. */
int lmp_futex_wait(uint32_t *w, uint32_t val, double secs);
void lmp_futex_wake(uint32_t *w, int n);

/* This thread's id (== pid in a single-threaded process), cached: no syscall. */
uint32_t lmp_tid(void);
/* True when no process or thread with that id exists any more. */
int lmp_owner_dead(uint32_t tid);

/* The hook of futex waits into the parent's loop (loop.c registers lmp_wait_tick). */
typedef double (*lmp_tick_fn)(lua_State *L);
void lmp_set_tick_hook(lmp_tick_fn fn);

/* A deadline for a blocking call: timeout < 0 means none. */
typedef struct lmp_deadline {
  double end;
  int forever;
} lmp_deadline;

void lmp_deadline_init(lmp_deadline *d, double timeout);

/* The optional (block, timeout) arguments at idx, idx+1 of a blocking method, as a timeout in
** seconds: 0 when not blocking, LMP_FOREVER to wait without limit. block must be a boolean
** (or nil: true); the timeout follows the one rule (lmp_checktimeout). */
double lmp_opt_timeout(lua_State *L, int idx);
/* Runs the parent's loop work (lmp_wait_tick, when L is not NULL) and returns how long the
** caller may sleep before asking again (at most cap), or a negative number when the deadline
** has passed. May raise InterruptedError through L. */
double lmp_deadline_slice(lua_State *L, lmp_deadline *d, double cap);

/* The loop's tick (lmp_wait_tick) under protection, for waits that hold shared state an error
** must not abandon. Returns 0 with *slice capped to the tick's answer, or -2 with the error on
** top of the stack. */
int lmp_safe_tick(lua_State *L, double *slice);

/* ---- the owner-checked mutex: word = owner tid, 0 when free; sleepers = processes asleep ---- */
typedef struct lmp_mutex {
  uint32_t word;
  uint32_t sleepers;
} lmp_mutex;

#define LMP_LOCK_OK 0
#define LMP_LOCK_ABANDONED 1
#define LMP_LOCK_TIMEOUT (-1)

/* Takes the mutex; uncontended it is one CAS. A holder that died is detected on the waiter's
** slice timeouts and its lock taken over (LMP_LOCK_ABANDONED). timeout < 0 waits forever, 0
** only tries. L may be NULL (no loop ticks). */
int lmp_mutex_lock(lua_State *L, lmp_mutex *m, double timeout);
/* Releases; returns -1 when the mutex was not held. */
int lmp_mutex_unlock(lmp_mutex *m);
uint32_t lmp_mutex_owner(const lmp_mutex *m);

/* ---- arenas (shm.c) ---- */
typedef struct lmp_arena lmp_arena;

/* Every shared-memory userdata starts with this. */
typedef struct lmp_shm_obj {
  lmp_arena *arena; /* NULL once released */
  uint64_t off;     /* object offset inside the arena */
  void *p;          /* mapped address of the object */
} lmp_shm_obj;

/* Carves size bytes (zeroed, 16-byte aligned) from an arena; refcount 1. Returns 0, or -1
** with errno set. */
int lmp_shm_alloc(size_t size, lmp_shm_obj *o);
/* Drops this process's reference (idempotent per object); memory goes back to its arena when
** no process holds it any more and it was never sent as a handle. */
void lmp_shm_release(lmp_shm_obj *o);

/* Handle payloads: a count byte, then one fixed-size record per object, then type data. The
** encode hook returns typename, payload, and one fd per record (see shm.c). */
#define LMP_REF_SIZE 32
/* Appends o's record to b and pins the object (it may be in flight: never freed). */
void lmp_shm_ref_write(lmp_shm_obj *o, luaL_Buffer *b);
/* Reads a record at p and fills o, mapping the arena when needed (from fd if >= 0, else from
** /proc/<creator>/fd/<n>); takes a new reference. Raises on failure. */
void lmp_shm_ref_read(lua_State *L, const char *p, int fd, lmp_shm_obj *o);
/* Bytes usable at o->p (decoders check a handle's object fits before trusting its header). */
size_t lmp_shm_capacity(const lmp_shm_obj *o);
/* The arena fd of o (valid in this process). */
int lmp_shm_fd(const lmp_shm_obj *o);

/* Pushes a handle for the shared objects objs[0..n) with type data extra: the values an
** __lmp_encode method returns (typename, payload, fds...). Returns the number pushed. */
int lmp_shm_push_handle(lua_State *L, const char *type, lmp_shm_obj **objs, int n,
                        const char *extra, size_t extralen);
/* Parses a handle payload at stack index 1 with fds at 2..: reads ref i into objs[i]
** (n expected), returns the type data. Raises on malformed input. */
const char *lmp_shm_read_handle(lua_State *L, lmp_shm_obj **objs, int n, size_t *extralen);

/* Registers a handle decoder with core.register_handle when the codec provides it. The table
** lmp.core is at index -2 and the decoder function on top (popped). */
void lmp_shm_register(lua_State *L, int core, const char *type, lua_CFunction fn);

/* Creates a metatable (name) with methods in __index and the given metamethods; pops it. */
void lmp_shm_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                      const luaL_Reg *meta);

/* ---- lock-like objects shared by sync.c and value.c ---- */
/* Creates a new RLock userdata on the stack. */
void lmp__new_rlock(lua_State *L);
/* True when the value at idx is a Lock or RLock userdata. */
int lmp__is_lock(lua_State *L, int idx);
/* Method with(self, fn, ...): self:acquire(), fn(...) protected, self:release(), fn's results
** or its error re-raised. */
int lmp__with(lua_State *L);

/* The elements of the Array (or RawArray) at idx when its typecode is tc, else NULL; *n gets
** their count. For C code that writes shared elements without a Lua call for each. */
void *lmp__array_elements(lua_State *L, int idx, int tc, uint64_t *n);

#endif
