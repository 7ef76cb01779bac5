/*
** fncache.c — the task functions a pool has sent. A closure is encoded at each submit and
** looked up by the content of its message (FNV-1a), so the same code with the same upvalues
** and captured globals is one id, loaded once per worker, even as a new closure object; a
** changed upvalue makes a new entry. A snapshot lets an unchanged closure skip the encoding.
*/
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fncache.h"

void lmp_fnent_release(lmp_fnent *f) {
  if (f && --f->refs == 0) free(f);
}

/* FNV-1a over a function's message: the cache key. */
static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
  return h;
}

/* A fresh weak-keyed table (for the closure snapshots). */
static int new_weak_table(lua_State *L) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Drops every entry the cache holds (entries in use by tasks live on). */
static void fncache_reset(lmp_fncache *c) {
  for (int i = 0; i < FNHASH; i++) {
    lmp_fnent_release(c->slot[i]);
    c->slot[i] = NULL;
  }
  c->n = 0;
}

/* Forgets every cached function (and the snapshots and last entries, which point into the
** cache). */
static void fncache_clear(lua_State *L, lmp_fncache *c) {
  fncache_reset(c);
  luaL_unref(L, LUA_REGISTRYINDEX, c->snaps);
  luaL_unref(L, LUA_REGISTRYINDEX, c->lasts);
  c->snaps = new_weak_table(L);
  c->lasts = new_weak_table(L);
}

void lmp_fncache_init(lua_State *L, lmp_fncache *c) {
  memset(c, 0, sizeof *c);
  c->snaps = new_weak_table(L);
  c->lasts = new_weak_table(L);
}

void lmp_fncache_unref(lua_State *L, lmp_fncache *c) {
  luaL_unref(L, LUA_REGISTRYINDEX, c->snaps);
  luaL_unref(L, LUA_REGISTRYINDEX, c->lasts);
  c->snaps = c->lasts = LUA_NOREF;
}

/* ---- constants ---- */

#define CONSTANTS_KEY "lmp.constants" /* weak keys: tables the user promised not to change */

int lmp_is_constant(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, LUA_REGISTRYINDEX, CONSTANTS_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushvalue(L, idx);
  int is = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return is;
}

/* constant(t) -> t, which lmp may now send as the copy it made the first time. */
static int l_constant(lua_State *L) {
  lmp_checktype(L, 1, LUA_TTABLE);
  lmp_checknargs(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, CONSTANTS_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, new_weak_table(L)); /* a ref kept for the process */
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, CONSTANTS_KEY);
  }
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_settop(L, 1);
  return 1;
}

void lmp__open_fncache(lua_State *L) {
  lua_pushcfunction(L, l_constant);
  lua_setfield(L, -2, "constant");
}

/* The entry this closure had at its last submit if its message is the same again (a memcmp is
** much cheaper than hashing a big message), else NULL. */
static lmp_fnent *last_if_same(lua_State *L, lmp_fncache *c, int idx, const lmp_buf *box) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->lasts);
  lua_pushvalue(L, idx);
  lmp_fnent *f = lua_rawget(L, -2) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
  lua_pop(L, 2);
  if (f != NULL && (f->len != box->len || memcmp(f->msg, box->p, box->len) != 0)) f = NULL;
  return f;
}

static void last_set(lua_State *L, lmp_fncache *c, int idx, lmp_fnent *f) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->lasts);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, f);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void lmp_fncache_free(lmp_fncache *c) {
  fncache_reset(c);
  lmp_buf_free(&c->scratch);
}

/* A snapshot lets a closure skip encoding when it is submitted again unchanged:
**   {fnent, nup, upvalue 1..nup, name1, value1, name2, value2...}
** It is made only when every upvalue and captured global is a value whose identity says it
** all: nil, a boolean, number or string, the globals table as _ENV, or a module (sent by
** reference). A table or a function sent by value may have changed inside, so a closure
** holding one is encoded at every submit. */
static int snap_value_ok(lua_State *L, int v, int rev) {
  int t = lua_type(L, v);
  if (t == LUA_TNIL || t == LUA_TBOOLEAN || t == LUA_TNUMBER || t == LUA_TSTRING) return 1;
  if (t == LUA_TTABLE && lmp_is_constant(L, v)) return 1; /* the user promised it stays */
  lua_pushvalue(L, v);
  int is_module = lua_rawget(L, rev) != LUA_TNIL;
  lua_pop(L, 1);
  return is_module;
}

/* Makes the snapshot of the closure at idx, encoded as f, if it qualifies. */
static void snap_make(lua_State *L, lmp_fncache *c, int idx, lmp_fnent *f) {
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  int G = lua_gettop(L);
  lmp__codec_revmap(L);
  int rev = lua_gettop(L);
  /* the codec's {bytecode, names...}: missing when the function went as a module reference */
  if (lua_getfield(L, LUA_REGISTRYINDEX, CODEC_FCACHE) != LUA_TTABLE) goto out;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) != LUA_TTABLE) goto out;
  int entry = lua_gettop(L);
  lua_newtable(L);
  int snap = lua_gettop(L);
  lua_pushlightuserdata(L, f);
  lua_rawseti(L, snap, 1);
  int nup = 0, k = 3;
  const char *name;
  while ((name = lua_getupvalue(L, idx, nup + 1)) != NULL) {
    nup++;
    int ok = (strcmp(name, "_ENV") == 0) ? lua_rawequal(L, -1, G) : snap_value_ok(L, lua_gettop(L), rev);
    if (!ok) goto out;
    lua_rawseti(L, snap, k++);
  }
  lua_pushinteger(L, nup);
  lua_rawseti(L, snap, 2);
  for (lua_Integer i = 2; lua_rawgeti(L, entry, i) == LUA_TSTRING; i++) {
    lua_pushvalue(L, -1);
    lua_rawget(L, G);
    if (!snap_value_ok(L, lua_gettop(L), rev)) goto out;
    lua_rawseti(L, snap, k + 1);
    lua_rawseti(L, snap, k);
    k += 2;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->snaps);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, snap);
  lua_rawset(L, -3);
out:
  lua_settop(L, top);
}

/* The entry of the closure at idx if its snapshot still holds, else NULL. */
static lmp_fnent *snap_check(lua_State *L, lmp_fncache *c, int idx) {
  int top = lua_gettop(L);
  lmp_fnent *f = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->snaps);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) != LUA_TTABLE) goto out;
  int snap = lua_gettop(L);
  lua_rawgeti(L, snap, 2);
  int nup = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  for (int i = 1; i <= nup; i++) {
    if (lua_getupvalue(L, idx, i) == NULL) goto out;
    lua_rawgeti(L, snap, 2 + i);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!same) goto out;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  int G = lua_gettop(L);
  for (int k = 3 + nup; lua_rawgeti(L, snap, k) == LUA_TSTRING; k += 2) {
    lua_rawget(L, G);
    lua_rawgeti(L, snap, k + 1);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!same) goto out;
  }
  lua_rawgeti(L, snap, 1);
  f = lua_touserdata(L, -1);
out:
  lua_settop(L, top);
  return f;
}

lmp_fnent *lmp_fncache_raw(lua_State *L, lmp_fncache *c, const char *msg, size_t len, int *forgot) {
  uint64_t h = fnv1a(msg, len);
  size_t slot = (size_t)h & (FNHASH - 1);
  lmp_fnent *f;
  while ((f = c->slot[slot]) != NULL) {
    if (f->hash == h && f->len == len && memcmp(f->msg, msg, len) == 0) break;
    slot = (slot + 1) & (FNHASH - 1);
  }
  if (f == NULL) {
    if (c->n >= FNCACHE_MAX) {
      fncache_clear(L, c);
      *forgot = 1;
      slot = (size_t)h & (FNHASH - 1);
    }
    f = malloc(sizeof *f + len);
    if (f == NULL) luaL_error(L, "not enough memory");
    f->hash = h;
    f->id = ++c->next_id;
    f->refs = 1; /* the cache's */
    f->avg = 0;
    f->len = len;
    memcpy(f->msg, msg, len);
    c->slot[slot] = f;
    c->n++;
  }
  f->refs++;
  return f;
}

/* Unless its snapshot says nothing changed, the
** closure is encoded and looked up by content: the same code with the same upvalues and
** captured globals is the same entry (even as a new closure object), a changed upvalue makes
** a new one. */
lmp_fnent *lmp_fncache_get(lua_State *L, lmp_fncache *c, int idx, int *forgot) {
  lmp_fnent *f = snap_check(L, c, idx);
  if (f != NULL) {
    f->refs++;
    return f;
  }
  lmp_buf *box = &c->scratch; /* an encoding error leaves it partial: reset here */
  box->len = 0;
  lmp__encode_named(L, idx, box, NULL, "f");
  int closure = lua_type(L, idx) == LUA_TFUNCTION && !lua_iscfunction(L, idx);
  if (closure && (f = last_if_same(L, c, idx, box)) != NULL) {
    f->refs++;
    return f;
  }
  uint64_t h = fnv1a(box->p, box->len);
  size_t slot = (size_t)h & (FNHASH - 1);
  while ((f = c->slot[slot]) != NULL) {
    if (f->hash == h && f->len == box->len && memcmp(f->msg, box->p, box->len) == 0) break;
    slot = (slot + 1) & (FNHASH - 1);
  }
  if (f == NULL) {
    if (c->n >= FNCACHE_MAX) {
      fncache_clear(L, c);
      *forgot = 1;
      slot = (size_t)h & (FNHASH - 1);
    }
    f = malloc(sizeof *f + box->len);
    if (f == NULL) luaL_error(L, "not enough memory");
    f->hash = h;
    f->avg = 0;
    f->id = ++c->next_id;
    f->refs = 1; /* the cache's */
    f->len = box->len;
    memcpy(f->msg, box->p, box->len);
    c->slot[slot] = f;
    c->n++;
  }
  if (closure) {
    snap_make(L, c, idx, f);
    last_set(L, c, idx, f);
  }
  f->refs++;
  return f;
}

