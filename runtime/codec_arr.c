/*
** codec_arr.c — the layout check behind codec_arr.h: direct access is turned on only when
** tables and strings built through the public API read back, through the mirror, exactly as
** Lua 5.4 lays them out, and values written through it read back through the API.
*/
#include <string.h>

#include <lauxlib.h>

#include "codec_arr.h"

int lmp__array_direct;
int lmp__hash_direct;
static int checked;

#define EMPTY 0x10 /* an empty value slot (Lua's LUA_VEMPTY) */

lmp_lnode *lmp__shortkey_node(lmp_ltable *t, void *ts) {
  if (t->lastfree == NULL) return NULL; /* the shared empty node of a table without hash */
  size_t mask = ((size_t)1 << t->lsizenode) - 1;
  lmp_lnode *mp = &t->node[lmp__ts_hash(ts) & mask];
  for (lmp_lnode *n = mp;; n += n->next) { /* there already? */
    if (n->key_tt == TV_SHRSTR && n->key.p == ts) return n;
    if (n->next == 0) break;
  }
  if (!TV_ISNIL(mp->tt)) { /* the main position is taken: find a free node */
    lmp_lnode *f = t->lastfree, *free = NULL;
    while (f > t->node)
      if ((--f)->key_tt == 0) {
        free = f;
        break;
      }
    t->lastfree = f;
    if (free == NULL) return NULL;
    lmp_lnode *other = &t->node[lmp__ts_hash(mp->key.p) & mask]; /* where the taker belongs */
    if (other != mp) { /* the taker is out of its place: move it to the free node */
      while (other + other->next != mp) other += other->next;
      other->next = (int)(free - other);
      *free = *mp;
      if (mp->next != 0) {
        free->next += (int)(mp - free);
        mp->next = 0;
      }
      mp->tt = EMPTY;
    } else { /* the taker is in its place: the new key goes to the free node, chained */
      if (mp->next != 0) free->next = (int)((mp + mp->next) - free);
      mp->next = (int)(free - mp);
      mp = free;
    }
  }
  mp->key_tt = TV_SHRSTR;
  mp->key.p = ts;
  t->flags &= (unsigned char)~0x3f; /* no cached absence of metamethods */
  return mp;
}

/* 1 when the array part of a table made with the API reads as expected (table at -2, its
** metatable at -1). */
static int array_reads_back(lua_State *L) {
  const lmp_ltable *t = lua_topointer(L, -2);
  if (t == NULL || t->tt != LUA_TTABLE || t->alimit != 5 || t->array == NULL) return 0;
  const lmp_tv *a = t->array;
  if (a[0].tt != TV_INT || a[0].v.i != 7) return 0;
  if (a[1].tt != TV_FLT || a[1].v.n != 2.5) return 0;
  if (a[2].tt != TV_TRUE || a[3].tt != TV_FALSE) return 0;
  if (a[4].tt != TV_SHRSTR || a[4].v.p == NULL) return 0;
  return t->metatable == lua_topointer(L, -1);
}

/* 1 when the hash nodes of {s = 1, [2.5] = true} (at -1) read back. */
static int nodes_read_back(lua_State *L) {
  const lmp_ltable *t = lua_topointer(L, -1);
  int found = 0;
  if (t->lsizenode != 1 || t->node == NULL) return 0;
  for (int i = 0; i < 2; i++) {
    const lmp_lnode *n = &t->node[i];
    if (n->key_tt == TV_SHRSTR && n->tt == TV_INT && n->v.i == 1 &&
        lmp__ts_len(n->key.p, TV_SHRSTR) == 1 && LMP_TS_STR(n->key.p)[0] == 's')
      found |= 1;
    if (n->key_tt == TV_FLT && n->key.n == 2.5 && n->tt == TV_TRUE) found |= 2;
  }
  return found == 3;
}

/* 1 when the string at -1 (short) and -2 (long) read back. */
static int strings_read_back(lua_State *L) {
  size_t n1, n2;
  const char *s1 = lua_tolstring(L, -1, &n1), *s2 = lua_tolstring(L, -2, &n2);
  const void *t1 = lua_topointer(L, -1), *t2 = lua_topointer(L, -2);
  return t1 && t2 && LMP_TS_STR(t1) == s1 && LMP_TS_STR(t2) == s2 &&
         lmp__ts_len(t1, TV_SHRSTR) == n1 && lmp__ts_len(t2, TV_LNGSTR) == n2 &&
         ((const unsigned char *)t1)[8] == (TV_SHRSTR & 0x3f) &&
         ((const unsigned char *)t2)[8] == (TV_LNGSTR & 0x3f);
}

/* 1 when values written through the mirror into a fresh table read back through the API,
** and a table pushed through a slot is the table itself. */
static int writes_back(lua_State *L) {
  lua_createtable(L, 3, 0);
  lmp_ltable *t = (lmp_ltable *)lua_topointer(L, -1);
  int ok = t->alimit == 3 && t->array != NULL;
  for (int i = 0; ok && i < 3; i++) ok = TV_ISNIL(t->array[i].tt);
  if (ok) {
    t->array[0].v.i = 5, t->array[0].tt = TV_INT;
    t->array[1].v.n = 1.5, t->array[1].tt = TV_FLT;
    t->array[2].v.i = -1, t->array[2].tt = TV_INT;
    ok = lua_rawlen(L, -1) == 3;
    ok = ok && lua_rawgeti(L, -1, 1) == LUA_TNUMBER && lua_isinteger(L, -1) &&
         lua_tointeger(L, -1) == 5;
    ok = ok && lua_rawgeti(L, -2, 2) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
         lua_tonumber(L, -1) == 1.5;
    ok = ok && lua_rawgeti(L, -3, 3) == LUA_TNUMBER && lua_tointeger(L, -1) == -1;
    lua_pop(L, 3);
  }
  if (ok) { /* a slot holding a table, copied and pushed, is that table */
    lua_createtable(L, 1, 0);
    lmp_tv v = {{.p = (void *)lua_topointer(L, -2)}, 0x45};
    lmp__push_slot(L, -1, ((const lmp_ltable *)lua_topointer(L, -1))->array, &v);
    ok = lua_rawequal(L, -1, -3) && lua_rawgeti(L, -2, 1) == LUA_TNIL;
    lua_pop(L, 3);
  }
  lua_pop(L, 1);
  return ok;
}

/* 1 when short-string keys placed by lmp__shortkey_node lay a table out exactly as the API
** does (same nodes, chains and free pointer, keys set in the same order) and read back. */
static int hash_writes_back(lua_State *L) {
  static const char *const keys[] = {"id", "name", "score", "tags", "a", "b", "c", "total",
                                     "x", "y", "z", "w"};
  enum { NKEYS = sizeof keys / sizeof keys[0] };
  lua_createtable(L, 0, NKEYS);
  lua_createtable(L, 0, NKEYS);
  lmp_ltable *api = (lmp_ltable *)lua_topointer(L, -2), *mine = (lmp_ltable *)lua_topointer(L, -1);
  int ok = api->lsizenode == mine->lsizenode && api->lastfree != NULL;
  for (int i = 0; ok && i < NKEYS; i++) {
    lua_pushinteger(L, i);
    lua_setfield(L, -3, keys[i]);
    lua_pushstring(L, keys[i]); /* anchored on the stack until the table holds it */
    lmp_lnode *n = lmp__shortkey_node(mine, (void *)lua_topointer(L, -1));
    ok = n != NULL && TV_ISNIL(n->tt);
    if (ok) n->v.i = i, n->tt = TV_INT;
    lua_pop(L, 1);
  }
  size_t nodes = (size_t)1 << mine->lsizenode;
  for (size_t i = 0; ok && i < nodes; i++) {
    const lmp_lnode *a = &api->node[i], *b = &mine->node[i];
    ok = a->key_tt == b->key_tt && a->next == b->next && a->tt == b->tt &&
         (TV_ISNIL(a->tt) || (a->key.p == b->key.p && a->v.i == b->v.i));
  }
  ok = ok && (char *)api->lastfree - (char *)api->node == (char *)mine->lastfree - (char *)mine->node;
  for (int i = 0; ok && i < NKEYS; i++) {
    ok = lua_getfield(L, -1, keys[i]) == LUA_TNUMBER && lua_tointeger(L, -1) == i;
    lua_pop(L, 1);
    lua_pushstring(L, keys[i]); /* the node for a key already there is its own */
    ok = ok && lmp__shortkey_node(mine, (void *)lua_topointer(L, -1))->v.i == i;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return ok;
}

/* 1 when LMP_BLACK is the collector's mark for objects it traversed: in generational mode, a
** full collection leaves what survives black, and a new object is not. Asked of a state of
** its own. */
static int black_is_black(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return 0;
  lua_gc(L, LUA_GCGEN, 0, 0);
  lua_newtable(L);
  lua_gc(L, LUA_GCCOLLECT);
  lua_newtable(L);
  const lmp_ltable *old = lua_topointer(L, -2), *young = lua_topointer(L, -1);
  int ok = (old->marked & LMP_BLACK) && !(young->marked & LMP_BLACK) && (young->marked & 0x18);
  lua_close(L);
  return ok;
}

void lmp__array_init(lua_State *L) {
  if (checked) return;
  checked = 1;
#if LUA_VERSION_NUM == 504
  if (sizeof(lmp_tv) != 16 || sizeof(lmp_lnode) != 24 || !lua_checkstack(L, 8)) return;
  int top = lua_gettop(L);
  lua_createtable(L, 5, 0);
  lua_pushinteger(L, 7);
  lua_rawseti(L, -2, 1);
  lua_pushnumber(L, 2.5);
  lua_rawseti(L, -2, 2);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, 3);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 4);
  lua_pushliteral(L, "s");
  lua_rawseti(L, -2, 5);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setmetatable(L, -3);
  int ok = array_reads_back(L);
  lua_settop(L, top);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "s");
  lua_pushnumber(L, 2.5);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  ok = ok && nodes_read_back(L);
  lua_settop(L, top);
  char big[64];
  memset(big, 'x', sizeof big);
  lua_pushlstring(L, big, sizeof big); /* long: more than 40 bytes */
  lua_pushliteral(L, "short");
  ok = ok && strings_read_back(L);
  lua_settop(L, top);
  ok = ok && writes_back(L);
  lua_settop(L, top);
  lmp__array_direct = ok;
  lmp__hash_direct = ok && hash_writes_back(L) && black_is_black();
  lua_settop(L, top);
#endif
}
