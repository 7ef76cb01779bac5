/*
** codec_enc.c — the encoder: Lua values to lmp messages (format in codec.h; tables in
** codec_tab.c, functions in codec_fn.c). Errors are raised as SerializationError objects
** naming the path of the offending value; the path is rebuilt from a small frame stack only
** when an error happens.
** Design notes:
**  - Object identity (shared references, cycles) and the memo of short strings are C-side
**    maps keyed by address and scoped to one message: small arrays first, then the maps of a
**    scratch (codec_pmap.h) — the state's own, kept between messages, for a message that
**    starts with a big array (and for mp.encode); else a temporary one, freed at the end.
**  - The reverse module map is consulted only for objects whose address is in its key set.
** Caveat: addresses are identities only while the objects live; a __lmp_encode hook that
** drops parts of the value being encoded breaks that (short strings are checked anyway).
*/
#include <stdlib.h>
#include <string.h>

#include "codec_arr.h"
#include "codec_enc.h"

/* ---- errors ---- */

static int is_identifier(const char *s, size_t n) {
  if (n == 0 || n > 64 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!(c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z'))) return 0;
  }
  return 1;
}

/* Pushes the path component for a table key at idx. */
static void push_key_component(lua_State *L, int idx) {
  size_t n;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      const char *s = lua_tolstring(L, idx, &n);
      if (is_identifier(s, n)) lua_pushfstring(L, ".%s", s);
      else lua_pushfstring(L, "[\"%s\"]", s);
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) lua_pushfstring(L, "[%I]", (LUAI_UACINT)lua_tointeger(L, idx));
      else lua_pushfstring(L, "[%f]", (LUAI_UACNUMBER)lua_tonumber(L, idx));
      break;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, idx) ? "[true]" : "[false]");
      break;
    default:
      lua_pushfstring(L, "[<%s>]", luaL_typename(L, idx));
  }
}

/* Pushes the path of the value being encoded, e.g. `args[2].conf.cb`. */
static void push_path(enc *e) {
  lua_State *L = e->L;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, e->root);
  for (int i = 0; i < e->nframe; i++) {
    frame *f = &e->frames[i];
    switch (f->kind) {
      case F_INDEX: lua_pushfstring(L, "[%I]", (LUAI_UACINT)f->i); break;
      case F_KEY: push_key_component(L, f->idx); break;
      case F_KEYSLOT: /* the key is alive in its table: push it through the one-slot table */
        if (e->pushslot == NULL) {
          lua_createtable(L, 1, 0);
          e->pushslot = lmp__table(L, -1)->array;
          lua_replace(L, e->pusherslot);
        }
        lmp__push_slot(L, e->pusherslot, e->pushslot, &f->key);
        push_key_component(L, -1);
        lua_remove(L, -2);
        break;
      case F_KEYOF: lua_pushliteral(L, ".<key>"); break;
      case F_UPVAL: lua_pushfstring(L, ".upvalue(%s)", f->name); break;
      case F_MT: lua_pushliteral(L, ".<metatable>"); break;
      default: lua_pushfstring(L, ".global(%s)", f->name); break;
    }
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

void lmp__enc_fail(enc *e, const char *what) {
  lua_checkstack(e->L, 8);
  push_path(e);
  lmp_raise(e->L, "SerializationError", "%s: %s", lua_tostring(e->L, -1), what);
}

void lmp__enc_grow(enc *e, size_t n) {
  if (lmp_buf_reserve(e->out, n) != 0) fail(e, "out of memory");
}

/* ---- identity ---- */

/* The scratch memory: the state's when the message looked big from the start, else a
** temporary one made on first need (in its reserved stack slot, freed at the end). */
static lmp_scratch *scratch(enc *e) {
  if (e->scratch == NULL) {
    e->scratch = lmp__scratch_push(e->L);
    lua_replace(e->L, e->scratchslot);
  }
  return e->scratch;
}

/* Moves the objects sent so far into the identity map. */
static void objs_to_map(enc *e) {
  lmp_pmap *m = &scratch(e)->objs;
  for (int i = 0; i < e->nfew; i++) {
    int isnew;
    lmp_pment *x = lmp__pmap_put(m, e->few[i], &isnew);
    if (x == NULL) fail(e, "out of memory");
    x->v = e->fewoff[i];
  }
  e->nfew = -1;
}

lua_Integer lmp__enc_number(enc *e, const void *p, int *isnew) {
  uint64_t here = e->out->len - e->start;
  if (here > 0xffffffffu) fail(e, "message larger than 4 GiB");
  if (e->nfew >= 0) {
    for (int i = 0; i < e->nfew; i++)
      if (e->few[i] == p) {
        *isnew = 0;
        return e->fewoff[i];
      }
    if (e->nfew < FEW_OBJS) {
      e->few[e->nfew] = p;
      e->fewoff[e->nfew++] = (uint32_t)here;
      *isnew = 1;
      e->nobj++;
      return (lua_Integer)here;
    }
    objs_to_map(e);
  }
  lmp_pment *x = lmp__pmap_put(&e->scratch->objs, p, isnew);
  if (x == NULL) fail(e, "out of memory");
  if (*isnew) x->v = (uint32_t)here, e->nobj++;
  return (lua_Integer)x->v;
}

void lmp__enc_ref(enc *e, lua_Integer off, int ref) {
  e->out->p[e->start + (size_t)off] |= T_KEPT;
  if (!ref) return;
  put_byte(e, T_REF);
  put_varint(e, (uint64_t)off);
}

/* ---- strings ---- */


/* Writes a short string as a back reference to the copy at offset *off when there is one
** (*off != NOCOPY) and that is smaller, and returns that offset; else in full, making that copy
** the remembered one, and returns NOCOPY. */
#define NOCOPY 0xffffffffu
static uint32_t put_memo_string(enc *e, uint32_t *off, const char *s, size_t n) {
  unsigned char *p = room(e, 2 + CODEC_MEMO_MAX); /* either form fits */
  if (*off != NOCOPY && lmp__enc_holds(e, *off, s, n)) {
    uint32_t v = *off;
    int len = v < (1u << 7) ? 1 : v < (1u << 14) ? 2 : v < (1u << 21) ? 3 : v < (1u << 28) ? 4 : 5;
    if (1 + len < 2 + (int)n) {
      *p++ = T_SREF;
      for (; v >= 0x80; v >>= 7) *p++ = (unsigned char)(v | 0x80);
      *p = (unsigned char)v;
      e->out->len += 1 + (size_t)len;
      return *off;
    }
  } else {
    uint64_t here = e->out->len - e->start;
    *off = here < NOCOPY ? (uint32_t)here : NOCOPY;
  }
  e->nobj++;
  p[0] = T_STR;
  p[1] = (unsigned char)n;
  for (size_t i = 0; i < n; i++) p[2 + i] = (unsigned char)s[i];
  e->out->len += 2 + n;
  return NOCOPY;
}

/* The memo's offset slot for the string at s: its own when it is there; else a slot given to
** it — the least recently used of its set that is not kept — or NULL when both are kept. */
static uint32_t *memo_slot(enc *e, const char *s) {
  lmp_scratch *sc = scratch(e);
  if (sc->strs == NULL) {
    sc->strs = calloc(LMP_STRMEMO, sizeof *sc->strs);
    if (sc->strs == NULL) fail(e, "out of memory");
  }
  lmp_strmemo *m = lmp__memo_set(sc->strs, s); /* m[0]: used last */
  uint32_t gen = sc->strgen;
  if (m[0].s == s && m[0].gen == gen) return &m[0].off;
  if (m[1].s == s && m[1].gen == gen) {
    lmp_strmemo t = m[0];
    m[0] = m[1];
    m[1] = t;
    return &m[0].off;
  }
  int keep0 = m[0].s != NULL && m[0].gen == gen && m[0].off < LMP_STRKEEP;
  int keep1 = m[1].s != NULL && m[1].gen == gen && m[1].off < LMP_STRKEEP;
  if (keep0 && keep1) return NULL;
  if (!keep1) m[1] = m[0]; /* the older one, m[1], is dropped; else m[0] is (m[1] is kept) */
  m[0].s = s;
  m[0].off = NOCOPY;
  m[0].gen = gen;
  return &m[0].off;
}

/* Moves the strings remembered in the small array into the memo. */
static void strs_to_memo(enc *e) {
  int n = e->nsfew;
  e->nsfew = -1;
  for (int i = 0; i < n; i++) {
    uint32_t *off = memo_slot(e, e->sfew[i]);
    if (off) *off = e->sfewoff[i];
  }
}

/* Writes a string; short ones go through the memo. */
uint32_t lmp__enc_string(enc *e, const char *s, size_t n) {
  if (n - 1 >= CODEC_MEMO_MAX) {
    put_byte(e, T_STR);
    put_str(e, s, n);
    e->nobj++;
    return NOCOPY;
  }
  if (e->nsfew >= 0) {
    for (int i = 0; i < e->nsfew; i++)
      if (e->sfew[i] == s) return put_memo_string(e, &e->sfewoff[i], s, n);
    if (e->nsfew < FEW_STRS) {
      uint32_t off = NOCOPY;
      e->sfew[e->nsfew] = s;
      put_memo_string(e, &off, s, n);
      e->sfewoff[e->nsfew++] = off;
      return NOCOPY; /* the first of this string: in full */
    }
    strs_to_memo(e);
  }
  uint32_t *off = memo_slot(e, s), none = NOCOPY;
  return put_memo_string(e, off ? off : &none, s, n);
}

void lmp__enc_key(enc *e, keyref *k, const void *ts) {
  size_t at = e->out->len;
  uint32_t off = lmp__enc_string(e, LMP_TS_STR(ts), lmp__ts_len(ts, TV_SHRSTR));
  size_t len = e->out->len - at;
  k->ts = NULL;
  if (off == NOCOPY || len > sizeof k->ref) return; /* a copy in full is written once */
  k->ts = ts;
  k->off = off;
  k->n = (unsigned char)len;
  memcpy(k->ref, e->out->p + at, len);
}

/* ---- by reference ---- */

int lmp__enc_modref(enc *e, int idx, const void *p) {
  lua_State *L = e->L;
  if (!e->have_rev) {
    lmp__codec_revmap(L);
    lua_replace(L, e->rev);
    e->revset = lmp__codec_revmap_set(L, e->rev);
    e->have_rev = 1;
  }
  if (lmp__pmap_find(e->revset, p) == NULL) return 0;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->rev) != LUA_TSTRING) {
    lua_pop(L, 1);
    return 0;
  }
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  put_byte(e, T_MODREF);
  put_str(e, s, n);
  lua_pop(L, 1);
  return 1;
}

/* ---- handles ---- */

int lmp__enc_hook(lua_State *L, int mt) {
  lua_pushliteral(L, "__lmp_encode");
  if (lua_rawget(L, mt) == LUA_TFUNCTION) return 1;
  lua_pop(L, 1);
  return 0;
}

void lmp__enc_handle(enc *e, int idx) {
  lua_State *L = e->L;
  int base = lua_gettop(L) - 1;
  lua_pushvalue(L, idx);
  lua_call(L, 1, LUA_MULTRET);
  int nres = lua_gettop(L) - base;
  if (nres < 1 || lua_type(L, base + 1) != LUA_TSTRING) fail(e, "__lmp_encode gave no type name");
  if (nres >= 2 && !lua_isnil(L, base + 2) && lua_type(L, base + 2) != LUA_TSTRING)
    fail(e, "__lmp_encode gave a payload that is not a string");
  size_t n;
  const char *s = lua_tolstring(L, base + 1, &n);
  put_byte(e, T_HANDLE);
  put_str(e, s, n);
  s = nres >= 2 && !lua_isnil(L, base + 2) ? lua_tolstring(L, base + 2, &n) : (n = 0, "");
  put_str(e, s, n);
  put_varint(e, (uint64_t)(nres > 2 ? nres - 2 : 0));
  for (int i = base + 3; i <= base + nres; i++) {
    int isnum;
    lua_Integer fd = lua_tointegerx(L, i, &isnum);
    if (!isnum || fd < 0 || fd > 0x7fffffff) fail(e, "__lmp_encode gave a bad file descriptor");
    if (e->fds == NULL) {
      put_varint(e, (uint64_t)fd);
    } else {
      if (lmp_fdvec_push(e->fds, (int)fd) != 0) fail(e, "out of memory");
      put_varint(e, (uint64_t)(e->fds->n - 1));
    }
  }
  lua_settop(L, base);
}

/* ---- functions and userdata ---- */

/* Writes the function at idx: a back reference, a module reference, or its record. Unnamed
** C functions are an error. */
static void encode_function(enc *e, int idx) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  lua_Integer id;
  if (lmp__enc_sent(e, p, &id)) return;
  if (lmp__enc_modref(e, idx, p)) return;
  if (lua_iscfunction(L, idx))
    fail(e, "cannot send a C function that is not reachable from package.loaded");
  lmp__enc_function(e, idx, id);
}

/* Writes the userdata at idx as a module reference or through its __lmp_encode hook. */
static void encode_userdata(enc *e, int idx) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  lua_Integer id;
  if (lmp__enc_sent(e, p, &id)) return;
  if (lmp__enc_modref(e, idx, p)) return;
  enter(e);
  if (!lua_getmetatable(L, idx) || !lmp__enc_hook(L, lua_gettop(L))) {
    const char *what = "cannot send a userdata";
    if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING)
      what = lua_pushfstring(L, "cannot send a userdata (%s)", lua_tostring(L, -1));
    fail(e, what);
  }
  lmp__enc_handle(e, idx);
  lua_pop(L, 1);
  e->depth--;
}

/* ---- dispatch ---- */

void lmp__enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  size_t n;
  const char *s;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put_byte(e, T_NIL); break;
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) put_int(e, lua_tointeger(L, idx));
      else put_float(e, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &n);
      lmp__enc_string(e, s, n);
      break;
    case LUA_TTABLE: lmp__enc_table(e, idx); break;
    case LUA_TFUNCTION: encode_function(e, idx); break;
    case LUA_TUSERDATA: encode_userdata(e, idx); break;
    case LUA_TTHREAD: fail(e, "cannot send a thread"); break;
    case LUA_TLIGHTUSERDATA: fail(e, "cannot send a light userdata"); break;
    default: fail(e, "cannot send this value");
  }
}

/* ---- messages ---- */

/* Sets up an encoder: the per-message slots on the stack and the header. */
static void enc_init(enc *e, lua_State *L, lmp_buf *out, lmp_fdvec *fds, const char *root,
                     lmp_scratch *sc) {
  e->L = L;
  e->out = out;
  e->start = out->len;
  e->fds = fds;
  e->root = root ? root : "value";
  e->has_func = 0;
  e->nobj = 0;
  e->nfew = e->nsfew = 0;
  e->scratch = sc;
  e->cached = sc != NULL;
  e->depth = e->nframe = 0;
  e->have_rev = 0;
  e->pushslot = NULL;
  for (int i = 0; i < KEY_SLOTS; i++) e->keys[i].ts = e->slots[i].ts = NULL;
  if (!lua_checkstack(L, 24)) fail(e, "Lua stack overflow");
  lua_pushnil(L);
  e->scratchslot = lua_gettop(L); /* a temporary scratch, if one is made */
  lua_pushnil(L); /* upv and caps are made by the first function */
  e->upv = lua_gettop(L);
  lua_pushnil(L);
  e->caps = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->G = lua_gettop(L);
  e->Gp = lua_topointer(L, e->G);
  lua_pushnil(L); /* the closure cache, fetched by the first function */
  e->fcache = lua_gettop(L);
  lua_pushnil(L);
  e->rev = lua_gettop(L);
  lua_pushnil(L);
  e->pusherslot = lua_gettop(L); /* a one-slot table that pushes values read in place */
  unsigned char hdr[CODEC_HEADER] = {CODEC_MAGIC0, CODEC_MAGIC1, CODEC_MAGIC2, CODEC_VERSION,
                                     fds ? CODEC_FLAG_FDINDEX : 0};
  put_bytes(e, hdr, sizeof hdr);
}

/* Ends the message: a function-carrying one gets its flag and its MAC. */
static void enc_finish(enc *e) {
  if (e->has_func) {
    unsigned char *p = room(e, CODEC_MAC_BYTES);
    e->out->p[e->start + 4] |= CODEC_FLAG_MAC;
    lmp__codec_mac(e->out->p + e->start, e->out->len - e->start, p);
    e->out->len += CODEC_MAC_BYTES;
  }
  if (e->scratch && !e->cached) lmp__scratch_free(e->scratch); /* now, not at the next GC */
}

/* A message that starts with a table of at least this many array items uses the state's
** scratch memory from the start (kept between messages); smaller ones make a temporary
** scratch only if they outgrow the small arrays, and cost nothing more otherwise. */
#define BIG_ARRAY 32

/* Pushes the state's scratch when the value at idx looks big; returns it (or NULL, with
** nothing pushed). */
static lmp_scratch *scratch_for(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE || lua_rawlen(L, idx) < BIG_ARRAY) return NULL;
  return lmp__scratch_acquire(L);
}

void lmp__encode_named(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds, const char *root) {
  enc e;
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc_init(&e, L, out, fds, root, scratch_for(L, idx));
  lmp__enc_value(&e, idx);
  enc_finish(&e);
  lua_settop(L, top);
}

void lmp__encode_scratch(lua_State *L, int idx, lmp_scratch *sc, const char *root) {
  enc e;
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc_init(&e, L, &sc->buf, NULL, root, sc);
  lmp__enc_value(&e, idx);
  enc_finish(&e);
  lua_settop(L, top);
}

size_t lmp__encode_range(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                         lmp_buf *out, lmp_fdvec *fds, const char *root) {
  enc e;
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc_init(&e, L, out, fds, root, count >= BIG_ARRAY ? lmp__scratch_acquire(L) : NULL);
  e.depth = 1;
  size_t tagpos = e.out->len;
  put_byte(&e, T_TABLE); /* the array of the message: not an object anything refers to */
  put_varint(&e, (uint64_t)count);
  put_byte(&e, 1); /* one pair: n = count */
  e.out->p[tagpos] = (char)lmp__enc_array(&e, idx, first, count);
  lmp__enc_string(&e, "n", 1);
  put_int(&e, count);
  enc_finish(&e);
  lua_settop(L, top);
  return e.nobj;
}
