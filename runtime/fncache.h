/*
** fncache.h — the task functions a pool has sent (fncache.c): each distinct closure message
** gets an id, and workers keep what they loaded under that id.
*/
#ifndef LMP_FNCACHE_H
#define LMP_FNCACHE_H

#include <stdint.h>
#include "lmp_int.h"

#define FNCACHE_MAX 512 /* distinct task functions remembered before the cache is reset */
#define FNHASH 1024     /* slots of the cache (twice FNCACHE_MAX) */

/* A task function as sent to workers; shared by the cache and the tasks that use it. */
typedef struct lmp_fnent {
  uint64_t hash;
  uint32_t id;
  int refs;        /* tasks using it, +1 while it is in the cache */
  double avg;      /* average duration of its apply tasks (their dispatch window) */
  size_t len;
  char msg[];      /* the codec message of the closure */
} lmp_fnent;

typedef struct lmp_fncache {
  lmp_fnent *slot[FNHASH]; /* by the hash of their message (open addressing) */
  int n;                   /* entries */
  uint32_t next_id;
  int snaps;               /* registry ref: closure -> snapshot (weak keys) */
  int lasts;               /* registry ref: closure -> its entry at the last submit (weak keys) */
  lmp_buf scratch;         /* encoding space */
} lmp_fncache;

void lmp_fncache_init(lua_State *L, lmp_fncache *c);
/* Drops the registry reference (with the Lua state at hand). */
void lmp_fncache_unref(lua_State *L, lmp_fncache *c);
/* Frees the entries the cache holds (tasks keep theirs) and its buffer. */
void lmp_fncache_free(lmp_fncache *c);

/* The entry for the closure at idx, with a reference taken for the caller. *forgot is set to
** 1 when the cache was emptied to make room: workers must forget the ids they know. Raises
** SerializationError when the closure cannot be encoded. */
lmp_fnent *lmp_fncache_get(lua_State *L, lmp_fncache *c, int idx, int *forgot);

/* The entry for a function message given as bytes (already encoded elsewhere), with a
** reference taken for the caller; *forgot as for lmp_fncache_get. */
lmp_fnent *lmp_fncache_raw(lua_State *L, lmp_fncache *c, const char *msg, size_t len, int *forgot);

void lmp_fnent_release(lmp_fnent *f);

/* 1 when the table at idx was given to mp.constant (its contents will not change). */
int lmp_is_constant(lua_State *L, int idx);
void lmp__open_fncache(lua_State *L);

#endif
