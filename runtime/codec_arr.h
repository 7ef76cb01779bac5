/*
** codec_arr.h — direct access to Lua 5.4 tables (array part, hash nodes) and strings, so the
** codec reads a table's contents in one pass of plain loads instead of several Lua API calls
** per element (and writes number arrays in bulk when decoding).
** Caveat: this mirrors Lua 5.4's internal Table, Node, TValue and TString layouts;
** lmp__array_init checks the mirror against the running Lua once and, when anything differs,
** turns direct access off — every caller then takes the public API path, which stays complete.
*/
#ifndef LMP_CODEC_ARR_H
#define LMP_CODEC_ARR_H

#include <stddef.h>
#include <lua.h>

typedef union lmp_val {
  void *p;
  lua_Integer i;
  lua_Number n;
} lmp_val;

/* A value slot: 8 bytes of value, then the type tag. */
typedef struct lmp_tv {
  lmp_val v;
  unsigned char tt;
} lmp_tv;

/* A hash node: the value, then the key's tag and its value (`next` chains collisions). */
typedef struct lmp_lnode {
  lmp_val v;
  unsigned char tt, key_tt;
  int next;
  lmp_val key;
} lmp_lnode;

/* The head of a table. */
typedef struct lmp_ltable {
  void *gcnext;
  unsigned char tt, marked, flags, lsizenode;
  unsigned int alimit; /* never more than the size of the array part */
  lmp_tv *array;
  lmp_lnode *node;
  lmp_lnode *lastfree;
  void *metatable;
} lmp_ltable;

/* Tags ("variant" tags, with the collectable bit where it applies). */
#define TV_FALSE 0x01
#define TV_TRUE 0x11
#define TV_INT 0x03
#define TV_FLT 0x13
#define TV_SHRSTR 0x44
#define TV_LNGSTR 0x54
#define TV_TABLE 0x45
#define TV_ISNIL(tt) (((tt)&0x0f) == 0) /* nil, an empty slot or an absent key */
#define TV_ISSTR(tt) (((tt)&0x0f) == LUA_TSTRING)

/* A string's bytes and length (tag tt): the same pointer lua_tolstring gives. */
#define LMP_TS_STR(ts) ((const char *)(ts) + 24)
static inline size_t lmp__ts_len(const void *ts, unsigned char tt) {
  if (tt == TV_SHRSTR) return ((const unsigned char *)ts)[11];
  return *(const size_t *)((const char *)ts + 16);
}

/* The string whose bytes lua_tolstring (or lua_pushlstring) gave as s. */
static inline void *lmp__ts_of(const char *s) { return (void *)(s - 24); }

/* A string's hash (short strings: always computed). */
static inline unsigned lmp__ts_hash(const void *ts) {
  return *(const unsigned *)((const char *)ts + 12);
}

/* The tag of a value holding the string ts: its own variant, with the collectable bit. */
static inline unsigned char lmp__ts_tag(const void *ts) {
  return (unsigned char)(((const unsigned char *)ts)[8] | 0x40);
}

#define LMP_BLACK 0x20 /* in an object's `marked`: traversed by the collector */

extern int lmp__array_direct; /* 1 once the layout was checked against this Lua */
extern int lmp__hash_direct;  /* 1 once lmp__shortkey_node was checked as well */

/* Where a new short-string key goes in the hash part of t, exactly as Lua 5.4's luaH_newkey
** places it (its main position, or a free node, moving a colliding node that is not in its
** own main position), with the key set; or the node already holding it. NULL when no node is
** free (the caller then goes through the API, which grows the table). Only for a table whose
** hash nodes were all placed by this function. The caller writes the value, and must not when
** t is black (LMP_BLACK: the collector would not see it). */
lmp_lnode *lmp__shortkey_node(lmp_ltable *t, void *ts);

/* Runs the layout check once per process (L: any state). */
void lmp__array_init(lua_State *L);

/* The table at idx through the mirror, or NULL when direct access is off. Valid until the
** table changes: fetch it again after anything that may run Lua code. */
static inline const lmp_ltable *lmp__table(lua_State *L, int idx) {
  return lmp__array_direct ? (const lmp_ltable *)lua_topointer(L, idx) : NULL;
}

/* The first *n slots of the array part of the table at idx (a lower bound of its size), or
** NULL with *n = 0 when direct access is off. */
static inline lmp_tv *lmp__array(lua_State *L, int idx, lua_Unsigned *n) {
  const lmp_ltable *t = lmp__table(L, idx);
  *n = t ? t->alimit : 0;
  return t ? t->array : NULL;
}

/* The real size of the array part of t (Lua keeps alimit as a hint when it is not a power
** of 2: the size is then the next power of 2). */
static inline lua_Unsigned lmp__array_size(const lmp_ltable *t) {
  lua_Unsigned a = t->alimit, p = 1;
  if (!(t->flags & 0x80) || (a & (a - 1)) == 0) return a;
  while (p < a) p <<= 1;
  return p;
}

/* Pushes the value v (a copy of a slot of a live table) onto the stack, through the
** one-slot table at idx whose slot is s: the slot is filled, read with lua_rawgeti (which
** allocates nothing, so no collection can see the unbarriered write) and emptied again. */
static inline void lmp__push_slot(lua_State *L, int idx, lmp_tv *s, const lmp_tv *v) {
  *s = *v;
  lua_rawgeti(L, idx, 1);
  s->tt = 0;
}

#endif
