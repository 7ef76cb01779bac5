/*
** codec_pmap.c — pointer-keyed hash maps (codec_pmap.h) and the encoder's scratch memory.
** The maps keep their load at most one half, so probes stay short; they grow by doubling.
** The scratch of a state is kept in a weak registry table: it lives from message to message
** and goes back to the system at the next garbage collection after the last one.
*/
#include <stdlib.h>
#include <string.h>

#include "codec_pmap.h"

/* Moves the live entries of m into a table of capacity cap (a power of 2); -1 on no memory. */
static int rehash(lmp_pmap *m, size_t cap) {
  lmp_pment *e = calloc(cap, sizeof *e);
  if (e == NULL) return -1;
  lmp_pmap to = {e, cap - 1, m->n, m->gen, 64};
  for (size_t c = cap; c > 1; c >>= 1) to.shift--;
  for (size_t i = 0; m->e != NULL && i <= m->mask; i++) {
    const lmp_pment *x = &m->e[i];
    if (x->k == NULL || x->gen != m->gen) continue;
    size_t j = lmp__pmap_hash(&to, x->k);
    while (e[j].k != NULL) j = (j + 1) & to.mask;
    e[j] = *x;
  }
  free(m->e);
  *m = to;
  return 0;
}

lmp_pment *lmp__pmap_put(lmp_pmap *m, const void *p, int *isnew) {
  *isnew = 0;
  if (m->e == NULL || 2 * (m->n + 1) > m->mask + 1) {
    size_t cap = m->e == NULL ? 64 : 2 * (m->mask + 1);
    if (cap > ((size_t)-1) / (2 * sizeof(lmp_pment)) || rehash(m, cap) != 0)
      return NULL;
  }
  size_t i = lmp__pmap_hash(m, p);
  while (m->e[i].k != NULL && m->e[i].gen == m->gen) {
    if (m->e[i].k == p) return &m->e[i];
    i = (i + 1) & m->mask;
  }
  m->e[i].k = p;
  m->e[i].v = 0;
  m->e[i].gen = m->gen;
  m->n++;
  *isnew = 1;
  return &m->e[i];
}

void lmp__pmap_clear(lmp_pmap *m) {
  m->n = 0;
  if (++m->gen == 0 && m->e != NULL) memset(m->e, 0, (m->mask + 1) * sizeof *m->e);
}

void lmp__pmap_free(lmp_pmap *m) {
  free(m->e);
  memset(m, 0, sizeof *m);
}

/* ---- scratch ---- */

static const char cache_key; /* its address keys the weak table holding the state's scratch */

void lmp__scratch_free(lmp_scratch *s) {
  lmp__pmap_free(&s->objs);
  free(s->strs);
  s->strs = NULL;
  lmp_buf_free(&s->buf);
}

static int scratch_gc(lua_State *L) {
  lmp__scratch_free(lua_touserdata(L, 1));
  return 0;
}

/* __close: the message is done (or failed). What it used is emptied; memory beyond what a
** large message needs again is given back. */
static int scratch_close(lua_State *L) {
  lmp_scratch *s = lua_touserdata(L, 1);
  s->busy = 0;
  lmp__pmap_clear(&s->objs);
  if (++s->strgen == 0 && s->strs) memset(s->strs, 0, LMP_STRMEMO * sizeof *s->strs);
  s->buf.len = 0;
  return 0;
}

lmp_scratch *lmp__scratch_push(lua_State *L) {
  lmp_scratch *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  if (luaL_newmetatable(L, "lmp.codec.scratch")) {
    lua_pushcfunction(L, scratch_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, scratch_close);
    lua_setfield(L, -2, "__close");
  }
  lua_setmetatable(L, -2);
  return s;
}

lmp_scratch *lmp__scratch_acquire(lua_State *L) {
  luaL_checkstack(L, 8, "cannot encode");
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &cache_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 1, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_pushvalue(L, -1);
    lua_setmetatable(L, -2); /* its own metatable: weak values */
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &cache_key);
  }
  lmp_scratch *s = NULL;
  if (lua_rawgeti(L, -1, 1) == LUA_TUSERDATA) s = lua_touserdata(L, -1);
  if (s == NULL || s->busy) { /* none yet, or an outer message has it (or lost it) */
    lua_pop(L, 1);
    s = lmp__scratch_push(L);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 1);
  }
  lua_remove(L, -2);
  s->busy = 1;
  lua_toclose(L, -1);
  return s;
}
