/*
** codec_tab.c — the encoder's tables: the array part (numbers in bulk when they are all
** integers or all floats), the other pairs, the metatable.
** With direct access (codec_arr.h) a table's slots and hash nodes are read in place: keys and
** values that need no Lua call (nil, booleans, numbers, strings) are written straight from
** them, and only tables, functions and other objects are pushed onto the Lua stack to be
** encoded. Without it, the same goes through lua_rawgeti and lua_next.
*/
#include <string.h>

#include "codec_arr.h"
#include "codec_enc.h"

/* ---- values read in place ---- */

/* Pushes the slot v of a live table onto the stack. */
static void push_slot(enc *e, const lmp_tv *v) {
  if (e->pushslot == NULL) {
    lua_createtable(e->L, 1, 0);
    e->pushslot = lmp__table(e->L, -1)->array;
    lua_replace(e->L, e->pusherslot);
  }
  lmp__push_slot(e->L, e->pusherslot, e->pushslot, v);
}

/* 1 for a tag whose value is written without any Lua call. */
static inline int is_plain(unsigned char tt) {
  return tt == TV_INT || tt == TV_FLT || tt == TV_TRUE || tt == TV_FALSE || TV_ISSTR(tt) ||
         TV_ISNIL(tt);
}

/* Writes the slot v, which is_plain. */
static inline void put_plain(enc *e, const lmp_tv *v) {
  switch (v->tt) {
    case TV_INT: put_int(e, v->v.i); break;
    case TV_FLT: put_float(e, v->v.n); break;
    case TV_TRUE: put_byte(e, T_TRUE); break;
    case TV_FALSE: put_byte(e, T_FALSE); break;
    case TV_SHRSTR:
    case TV_LNGSTR: lmp__enc_string(e, LMP_TS_STR(v->v.p), lmp__ts_len(v->v.p, v->tt)); break;
    default: put_byte(e, T_NIL);
  }
}

/* ---- arrays ---- */

/* Writes narr slots a[0..narr) as raw 8-byte values when they are all integers or all
** floats; returns the table tag for that (T_TABLE_I / T_TABLE_F), or 0 with nothing
** written. */
static int put_numbers_direct(enc *e, const lmp_tv *a, lua_Integer narr) {
  unsigned char tt = a[0].tt;
  if (tt != TV_INT && tt != TV_FLT) return 0;
  unsigned char *p = room(e, (size_t)narr * 8);
  for (lua_Integer i = 0; i < narr; i++, p += 8) {
    if (a[i].tt != tt) return 0;
    uint64_t u;
    memcpy(&u, &a[i].v, 8);
    put_le64(p, u);
  }
  e->out->len += (size_t)narr * 8;
  return tt == TV_INT ? T_TABLE_I : T_TABLE_F;
}

/* The same through the API, for t[first..first+narr-1] (t at idx). */
static int put_numbers_api(enc *e, int idx, lua_Integer first, lua_Integer narr) {
  lua_State *L = e->L;
  int t = lua_rawgeti(L, idx, first);
  int isint = lua_isinteger(L, -1);
  lua_pop(L, 1);
  if (t != LUA_TNUMBER) return 0;
  unsigned char *p = room(e, (size_t)narr * 8);
  for (lua_Integer i = first; i < first + narr; i++, p += 8) {
    uint64_t u;
    t = lua_rawgeti(L, idx, i);
    if (t != LUA_TNUMBER || lua_isinteger(L, -1) != isint) {
      lua_pop(L, 1);
      return 0;
    }
    if (isint) {
      u = (uint64_t)lua_tointeger(L, -1);
    } else {
      lua_Number d = lua_tonumber(L, -1);
      memcpy(&u, &d, 8);
    }
    lua_pop(L, 1);
    put_le64(p, u);
  }
  e->out->len += (size_t)narr * 8;
  return isint ? T_TABLE_I : T_TABLE_F;
}

/* Writes t[first..first+narr-1] (t at idx; tp: it through the mirror, or NULL) as tagged
** values. Returns T_TABLE. */
static int put_values(enc *e, int idx, const lmp_ltable *tp, lua_Integer first,
                      lua_Integer narr) {
  lua_State *L = e->L;
  lua_Unsigned asize = tp ? tp->alimit : 0;
  const lmp_tv *a = tp ? tp->array : NULL;
  push_frame(e, F_INDEX, 0, 0, NULL);
  frame *f = &e->frames[e->nframe - 1];
  for (lua_Integer i = first; i < first + narr; i++) {
    if ((lua_Unsigned)(i - 1) < asize && is_plain(a[i - 1].tt)) {
      if (a[i - 1].tt == TV_SHRSTR && i - first < KEY_SLOTS)
        put_keyed(e, &e->slots[i - first], a[i - 1].v.p);
      else
        put_plain(e, &a[i - 1]);
      continue;
    }
    /* an array of tables is walked in order: load the next ones ahead (their heads four
    ** slots ahead, then the nodes of the one two slots ahead, whose head is in by then) */
    if ((lua_Unsigned)(i + 3) < asize && a[i + 3].tt == TV_TABLE) {
      __builtin_prefetch(a[i + 3].v.p);
      if (e->nfew < 0) lmp__pmap_prefetch(&e->scratch->objs, a[i + 3].v.p);
    }
    if ((lua_Unsigned)(i + 1) < asize && a[i + 1].tt == TV_TABLE)
      __builtin_prefetch(((const lmp_ltable *)a[i + 1].v.p)->node);
    f->i = i;
    int t = lua_rawgeti(L, idx, i);
    lmp__enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (t >= LUA_TTABLE) a = lmp__array(L, idx, &asize); /* Lua code may have run */
  }
  pop_frame(e);
  return T_TABLE;
}

/* lmp__enc_array with the table through the mirror (tp, or NULL). */
static int put_array(enc *e, int idx, const lmp_ltable *tp, lua_Integer first,
                     lua_Integer narr) {
  if ((uint64_t)narr > ((size_t)-1) / 16) fail(e, "table too large");
  if (narr >= 4) {
    int kind;
    if (tp && first >= 1 && (lua_Unsigned)(first - 1 + narr) <= tp->alimit)
      kind = put_numbers_direct(e, tp->array + first - 1, narr);
    else
      kind = put_numbers_api(e, idx, first, narr);
    if (kind) return kind;
  }
  if (narr == 0) return T_TABLE;
  return put_values(e, idx, tp, first, narr);
}

int lmp__enc_array(enc *e, int idx, lua_Integer first, lua_Integer narr) {
  return put_array(e, idx, lmp__table(e->L, idx), first, narr);
}

/* ---- the other pairs ---- */

/* Where the other pairs start, for a table whose t[1..narr] went as its array: after the
** last array slot sent (0: from the beginning). Slots after it may still hold values. */
static lua_Unsigned pairs_start(const lmp_ltable *tp, lua_Integer narr) {
  lua_Unsigned asize = tp ? tp->alimit : 0;
  if (narr >= 1 && (lua_Unsigned)narr <= asize) return (lua_Unsigned)narr;
  if (narr >= 1) return asize; /* t[1..asize] all sent; t[asize+1..narr] are in the hash */
  return 0;
}

/* An upper bound of the pairs after slot `from` of the table at idx: the array slots after
** it and the hash nodes. Without direct access, the largest count a table header holds. */
static uint64_t pairs_bound(const lmp_ltable *t, lua_Unsigned from) {
  if (t == NULL) return 0xffffffffu;
  return lmp__array_size(t) - from + ((uint64_t)1 << t->lsizenode);
}

/* Writes the pairs of the table t not in t[1..narr], walking its hash nodes in place;
** returns how many, or -1 (nothing written) when array slots after narr hold values (the
** caller then walks with lua_next). */
static int64_t put_pairs_direct(enc *e, const lmp_ltable *t, lua_Integer narr) {
  lua_State *L = e->L;
  lua_Unsigned from = pairs_start(t, narr), size = lmp__array_size(t);
  for (lua_Unsigned j = from; j < size; j++)
    if (!TV_ISNIL(t->array[j].tt)) return -1;
  lua_Integer skip = (lua_Unsigned)narr > from ? narr : 0; /* keys 1..skip: sent already */
  size_t nodes = (size_t)1 << t->lsizenode;
  int64_t count = 0;
  /* the strings and tables this one holds are read next: start loading them (and the
  ** tables' slots of the identity map), so their cache misses overlap instead of following
  ** one another */
  const lmp_pmap *objs = e->nfew < 0 ? &e->scratch->objs : NULL;
  lmp_strmemo *memo = e->nsfew < 0 ? e->scratch->strs : NULL; /* and the strings' memo slots */
  for (size_t i = 0; i < nodes; i++) {
    unsigned char tt = t->node[i].tt;
    if (tt == TV_TABLE || TV_ISSTR(tt)) __builtin_prefetch(t->node[i].v.p);
    if (tt == TV_TABLE && objs) lmp__pmap_prefetch(objs, t->node[i].v.p);
    if (tt == TV_SHRSTR && memo) __builtin_prefetch(lmp__memo_set(memo, LMP_TS_STR(t->node[i].v.p)));
  }
  push_frame(e, F_KEYOF, 0, 0, NULL);
  frame *f = &e->frames[e->nframe - 1];
  for (size_t i = 0; i < nodes; i++) {
    const lmp_lnode *n = &t->node[i];
    if (TV_ISNIL(n->tt)) continue;
    lmp_tv key = {n->key, n->key_tt}, val = {n->v, n->tt};
    if (skip && key.tt == TV_INT && key.v.i >= 1 && key.v.i <= skip) continue;
    count++;
    int plainkey = is_plain(key.tt);
    if (plainkey) {
      if (key.tt == TV_SHRSTR && i < KEY_SLOTS) put_keyed(e, &e->keys[i], key.v.p);
      else put_plain(e, &key);
    }
    if (plainkey && is_plain(val.tt)) {
      put_plain(e, &val);
      continue;
    }
    if (plainkey) { /* only the value goes on the stack; the key stays in the frame */
      push_slot(e, &val);
      f->kind = F_KEYSLOT;
      f->key = key;
      lmp__enc_value(e, lua_gettop(L));
      lua_pop(L, 1);
    } else {
      push_slot(e, &key);
      push_slot(e, &val);
      int top = lua_gettop(L);
      f->kind = F_KEYOF;
      lmp__enc_value(e, top - 1);
      f->kind = F_KEY;
      f->idx = top - 1;
      lmp__enc_value(e, top);
      lua_settop(L, top - 2);
    }
    /* Lua code may have run (a hook): the table stays where it is, its nodes must too */
    if (((size_t)1 << t->lsizenode) != nodes) fail(e, "table changed while it was being sent");
  }
  pop_frame(e);
  return count;
}

/* The same with lua_next. */
static uint64_t put_pairs_api(enc *e, int idx, lua_Integer narr) {
  lua_State *L = e->L;
  lua_Unsigned from = pairs_start(lmp__table(L, idx), narr);
  lua_Integer skip = (lua_Unsigned)narr > from ? narr : 0;
  if (from) lua_pushinteger(L, (lua_Integer)from);
  else lua_pushnil(L);
  uint64_t count = 0;
  push_frame(e, F_KEYOF, 0, 0, NULL);
  frame *f = &e->frames[e->nframe - 1];
  while (lua_next(L, idx) != 0) {
    int top = lua_gettop(L);
    if (skip && lua_isinteger(L, -2)) {
      lua_Integer k = lua_tointeger(L, -2);
      if (k >= 1 && k <= skip) {
        lua_pop(L, 1);
        continue;
      }
    }
    f->kind = F_KEYOF;
    lmp__enc_value(e, top - 1);
    f->kind = F_KEY;
    f->idx = top - 1;
    lmp__enc_value(e, top);
    count++;
    lua_pop(L, 1);
  }
  pop_frame(e);
  return count;
}

/* ---- tables ---- */

/* Reserves the varint of a count bounded by bound: its offset is returned, the bytes are
** padded varint continuation bytes until patch_count fills them. */
static size_t reserve_count(enc *e, uint64_t bound) {
  int n = 1;
  for (uint64_t v = bound; v >= 0x80; v >>= 7) n++;
  size_t at = e->out->len;
  unsigned char *p = room(e, (size_t)n);
  for (int i = 0; i < n - 1; i++) p[i] = 0x80;
  p[n - 1] = 0;
  e->out->len += (size_t)n;
  return at;
}

/* Writes count into the varint of `n` bytes reserved at `at` (non-minimal when count is
** small). */
static void patch_count(enc *e, size_t at, size_t n, uint64_t count) {
  unsigned char *p = (unsigned char *)e->out->p + at;
  for (size_t i = 0; i < n; i++, count >>= 7)
    p[i] = (unsigned char)((count & 0x7f) | (i < n - 1 ? 0x80 : 0));
}

/* Writes the contents of the table at idx (already numbered): the array part, the other
** pairs, and the metatable (at stack index mt, 0 for none). The pair count is written before
** the pairs, so the decoder can size the table: room for an upper bound of it is kept. */
static void write_table(enc *e, int idx, const lmp_ltable *tp, int mt) {
  lua_State *L = e->L;
  lua_Integer narr = (lua_Integer)lua_rawlen(L, idx);
  size_t tagpos = e->out->len;
  put_byte(e, T_TABLE);
  put_varint(e, (uint64_t)narr);
  uint64_t bound = pairs_bound(tp, pairs_start(tp, narr));
  size_t countpos = reserve_count(e, bound);
  size_t countlen = e->out->len - countpos;
  int kind = put_array(e, idx, tp, 1, narr);
  e->out->p[tagpos] = (char)((e->out->p[tagpos] & T_KEPT) | kind | (mt ? T_WITH_MT : 0));
  int64_t count = tp ? put_pairs_direct(e, tp, narr) : -1;
  if (count < 0) count = (int64_t)put_pairs_api(e, idx, narr);
  if ((uint64_t)count > bound) fail(e, "table changed while it was being sent");
  patch_count(e, countpos, countlen, (uint64_t)count);
  if (mt) {
    push_frame(e, F_MT, 0, 0, NULL);
    lmp__enc_value(e, mt);
    pop_frame(e);
  }
}

/* Writes the table at idx: a back reference, the globals, a module reference, a handle, or
** its contents, numbered before them so cycles resolve. */
void lmp__enc_table(enc *e, int idx) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  lua_Integer id;
  if (lmp__enc_sent(e, p, &id)) return;
  if (p == e->Gp) {
    put_byte(e, T_GLOBALS);
    return;
  }
  if (lmp__enc_modref(e, idx, p)) return;
  enter(e);
  int mt = 0;
  const lmp_ltable *t = lmp__array_direct ? p : NULL;
  if (t != NULL) __builtin_prefetch(t->node);
  if ((t == NULL || t->metatable != NULL) && lua_getmetatable(L, idx)) {
    mt = lua_gettop(L);
    if (lmp__enc_hook(L, mt)) {
      lmp__enc_handle(e, idx);
      lua_pop(L, 1);
      e->depth--;
      return;
    }
  }
  write_table(e, idx, t, mt);
  if (mt) lua_pop(L, 1);
  e->depth--;
}
