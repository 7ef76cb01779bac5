/*
** codec_pmap.h — pointer-keyed hash maps for the codec (object identity within a message, the
** set of module members) and the per-state scratch memory of the encoder.
** Open addressing with linear probing, memory outside the Lua heap. A map is emptied in O(1)
** by a generation count, so the scratch keeps its maps from message to message.
** Caveat: a key is an address; it means the same object only while that object stays alive.
*/
#ifndef LMP_CODEC_PMAP_H
#define LMP_CODEC_PMAP_H

#include <stddef.h>
#include <stdint.h>
#include "lmp_int.h"

typedef struct lmp_pment {
  const void *k; /* NULL: never used */
  uint32_t v;
  uint32_t gen; /* the entry is live only in its map's generation */
} lmp_pment;

typedef struct lmp_pmap {
  lmp_pment *e;
  size_t mask; /* capacity - 1 (0 with no storage) */
  size_t n;    /* live entries */
  uint32_t gen;
  int shift;   /* 64 - log2(capacity) */
} lmp_pmap;

/* The home slot of address p: Fibonacci hashing (the top bits of p times 2^64 / phi), so
** aligned addresses, whose low bits are all zero, and runs of objects at a fixed stride (lmp's
** allocator puts tables 64 bytes apart, alloc.c) still spread. The callers prefetch slots a
** few objects ahead, so a big map's cache misses overlap. (Keeping an object's place within its
** page to walk the map in order suited malloc's layout only, and cost 1.6× on records in
** lmp's slabs, where pages of tables collide slot for slot.) */
static inline size_t lmp__pmap_hash(const lmp_pmap *m, const void *p) {
  return (size_t)(((uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull) >> m->shift);
}

/* Starts loading the home slot of p into the cache. */
static inline void lmp__pmap_prefetch(const lmp_pmap *m, const void *p) {
  if (m->e != NULL) __builtin_prefetch(&m->e[lmp__pmap_hash(m, p)], 1);
}

/* The live entry of p, or NULL when p is not in the map. */
static inline lmp_pment *lmp__pmap_find(const lmp_pmap *m, const void *p) {
  if (m->e == NULL) return NULL;
  for (size_t i = lmp__pmap_hash(m, p);; i = (i + 1) & m->mask) {
    lmp_pment *e = &m->e[i];
    if (e->k == NULL || e->gen != m->gen) return NULL;
    if (e->k == p) return e;
  }
}

/* The live entry of p, made (with v = 0, *isnew = 1) when p is not there yet; NULL when
** memory is exhausted (the map is unchanged then). */
lmp_pment *lmp__pmap_put(lmp_pmap *m, const void *p, int *isnew);
/* Empties the map, keeping its storage. */
void lmp__pmap_clear(lmp_pmap *m);
void lmp__pmap_free(lmp_pmap *m);

/* ---- the encoder's scratch memory ---- */

#define LMP_STRMEMO 8192 /* slots of the string memo: 4096 sets of 2 (a power of 2) */
#define LMP_STRKEEP 16384 /* strings first sent this early in a message keep their slot */

typedef struct lmp_strmemo {
  const char *s;
  uint32_t off; /* where its T_STR is in the message */
  uint32_t gen;
} lmp_strmemo;

/* The memo's set (two slots) for the string at s, in slots strs. */
static inline lmp_strmemo *lmp__memo_set(lmp_strmemo *strs, const char *s) {
  size_t h = (size_t)(((uint64_t)(uintptr_t)s * 0x9E3779B97F4A7C15ull) >> 40);
  return &strs[(h & (LMP_STRMEMO / 2 - 1)) * 2];
}

/* What the encoder needs beyond its stack frame, kept per Lua state between messages (until
** the garbage collector takes it): the identity map; the memo of short strings, a two-way
** set-associative cache from address to offset that forgets — a string that lost its slot is
** sent in full once more, and lookups stay cheap however many distinct strings pass — except
** that strings first sent in the message's first LMP_STRKEEP bytes (table keys, mostly: their
** back references are the shortest) keep their slot; the buffer of mp.encode. */
typedef struct lmp_scratch {
  int busy;
  lmp_pmap objs;
  lmp_strmemo *strs; /* LMP_STRMEMO slots, NULL until needed */
  uint32_t strgen;
  lmp_buf buf;
} lmp_scratch;

/* Pushes this state's scratch (or a fresh one when it is in use: a nested message), marked
** busy and as a to-be-closed slot: removing it from the stack, or an error unwinding past it,
** gives it back. */
lmp_scratch *lmp__scratch_acquire(lua_State *L);
/* Pushes a new scratch that is not the state's (its memory freed by the GC, or by
** lmp__scratch_free). */
lmp_scratch *lmp__scratch_push(lua_State *L);
void lmp__scratch_free(lmp_scratch *s);

#endif
