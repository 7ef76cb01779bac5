/*
** codec_dec.c — the decoder: lmp messages to Lua values (format in codec.h).
** Every byte is untrusted: each declared length is checked against the bytes that remain
** before anything is allocated, nesting is bounded, back references only point backwards,
** and a message that carries functions is decoded only when its MAC matches this process
** tree's key — checked before anything else is read — so corrupted or foreign bytes never
** reach lua_load.
** Caveat: a message may name any module (T_MODREF); decoding it runs require(name).
*/
#include <math.h>
#include <string.h>

#include <sodium.h>

#include "bytes.h"
#include "codec.h"
#include "codec_arr.h"

#define STR_CACHE 32      /* strings pushed for T_SREF, kept by offset in stack slots */
#define STR_CACHE_MIN 256 /* the smallest message that gets the cache */

typedef struct dec {
  lua_State *L;
  const unsigned char *base, *p, *end; /* base: the message's first byte */
  const int *fds;
  int nfds, fdindex;
  int authentic; /* the MAC matched: function records may be loaded */
  int refs;      /* stack slot of the kept objects: offset -> object (nil until needed) */
  int G;   /* the receiver's globals */
  int env; /* the per-message environment (nil until first needed) */
  int depth;
  int strs; /* the first of the STR_CACHE stack slots of the string cache (0: none) */
  size_t stroff[STR_CACHE]; /* the offset of the T_STR each slot holds (SIZE_MAX: none) */
  const void *strts[STR_CACHE]; /* and its string, for direct stores */
  /* the value decode_value pushed last, as a table slot holds it, when it is a number, a
  ** boolean, a string or a table (last.tt == 0 otherwise): stored in place when it can be */
  lmp_tv last;
} dec;

static void decode_value(dec *d);

/* Raises a SerializationError about malformed input. Never returns. */
static void bad(dec *d, const char *what) {
  lmp_raise(d->L, "SerializationError", "malformed message: %s", what);
}

static size_t remaining(dec *d) {
  return (size_t)(d->end - d->p);
}

static inline int get_byte(dec *d) {
  if (d->p >= d->end) bad(d, "truncated");
  return *d->p++;
}

/* Reads a little-endian base-128 varint of at most 64 bits. */
static inline uint64_t get_varint(dec *d) {
  if (d->p < d->end && *d->p < 0x80) return *d->p++;
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    int b = get_byte(d);
    if (shift == 63 && b > 1) break;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  bad(d, "bad varint");
  return 0;
}

static inline uint64_t le64(const unsigned char *p) { return lmp_get_le64(p); }

/* The integer of a T_INT's zigzag varint. */
static inline lua_Integer unzigzag(uint64_t u) {
  return (lua_Integer)((u >> 1) ^ (uint64_t)(-(int64_t)(u & 1)));
}

/* Reads a length-prefixed byte string; the length is checked against the input first. */
static const char *get_str(dec *d, size_t *n) {
  uint64_t len = get_varint(d);
  if (len > remaining(d)) bad(d, "length beyond the end of the message");
  const char *s = (const char *)d->p;
  d->p += len;
  *n = (size_t)len;
  return s;
}

/* Enters a nested table or function: depth limit and stack room. */
static void enter(dec *d) {
  if (++d->depth > CODEC_MAX_DEPTH) bad(d, "nesting deeper than 200");
  if (!lua_checkstack(d->L, 16)) bad(d, "Lua stack overflow");
}

/* ---- references ---- */

/* Objects whose tag carries T_KEPT are kept by the offset of their record, from the moment
** they exist (before their contents, so cycles resolve); T_REF and UV_SHARED find them.
** Objects nothing refers to again — most of them — cost nothing here. keep() records the
** value on top of the stack when at is the offset of a kept record (at < 0: not kept). */
static void keep(dec *d, lua_Integer at) {
  lua_State *L = d->L;
  if (at < 0) return;
  if (lua_isnil(L, d->refs)) {
    lua_createtable(L, 0, 8);
    lua_replace(L, d->refs);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, at);
}

/* Pushes the kept object whose record starts at offset off, before the reference at `at`. */
static void push_ref(dec *d, uint64_t off, size_t at) {
  lua_State *L = d->L;
  if (off >= at || lua_isnil(L, d->refs) || lua_rawgeti(L, d->refs, (lua_Integer)off) == LUA_TNIL)
    bad(d, "reference to an unknown object");
}

/* Pushes the string a T_SREF (its tag at offset at) points to: an earlier T_STR of
** 1..CODEC_MEMO_MAX bytes, wholly before the reference. */
static void push_sref(dec *d, size_t at) {
  lua_State *L = d->L;
  uint64_t off = get_varint(d);
  if (off >= at || at - off < 3) bad(d, "bad string reference");
  const unsigned char *q = d->base + off;
  size_t n = q[1];
  if (q[0] != T_STR || n < 1 || n > CODEC_MEMO_MAX || off + 2 + n > at)
    bad(d, "bad string reference");
  if (d->strs == 0) { /* a small message: made again each time */
    d->last.v.p = lmp__ts_of(lua_pushlstring(L, (const char *)q + 2, n));
    d->last.tt = TV_SHRSTR;
    return;
  }
  int slot = (int)(off % STR_CACHE); /* the cache: slot -> string, by offset */
  if (d->stroff[slot] == off) {
    lua_pushvalue(L, d->strs + slot);
  } else {
    const char *s = lua_pushlstring(L, (const char *)q + 2, n);
    lua_copy(L, -1, d->strs + slot);
    d->stroff[slot] = (size_t)off;
    d->strts[slot] = lmp__ts_of(s);
  }
  d->last.v.p = (void *)d->strts[slot];
  d->last.tt = TV_SHRSTR;
}

/* Pushes the per-message environment: captured globals over the receiver's globals. */
static void push_env(dec *d) {
  lua_State *L = d->L;
  if (lua_type(L, d->env) != LUA_TTABLE) {
    lua_newtable(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, CODEC_ENVMT) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_createtable(L, 0, 2);
      lua_pushvalue(L, d->G);
      lua_setfield(L, -2, "__index");
      lua_pushvalue(L, d->G);
      lua_setfield(L, -2, "__newindex");
      lua_pushvalue(L, -1);
      lua_setfield(L, LUA_REGISTRYINDEX, CODEC_ENVMT);
    }
    lua_setmetatable(L, -2);
    lua_replace(L, d->env);
  }
  lua_pushvalue(L, d->env);
}

/* ---- tables ---- */

/* Reads narr raw 8-byte numbers into t[offset+1..offset+narr] (T_TABLE_I / T_TABLE_F):
** straight into the array part when it covers them, else through the API. */
static void get_number_array(dec *d, int t, uint64_t narr, int kind, lua_Integer offset) {
  lua_State *L = d->L;
  if (narr > remaining(d) / 8) bad(d, "array larger than the message");
  if (narr == 0) return;
  const unsigned char *p = d->p;
  lua_Unsigned asize;
  lmp_tv *a = lmp__array(L, t, &asize);
  if (offset >= 0 && (lua_Unsigned)offset + narr <= asize) {
    unsigned char tt = kind == T_TABLE_I ? TV_INT : TV_FLT;
    lmp_tv *v = a + offset;
    for (uint64_t i = 0; i < narr; i++, p += 8) {
      uint64_t u = le64(p);
      memcpy(&v[i].v, &u, 8);
      v[i].tt = tt;
    }
  } else {
    for (uint64_t i = 1; i <= narr; i++, p += 8) {
      uint64_t u = le64(p);
      if (kind == T_TABLE_I) {
        lua_pushinteger(L, (lua_Integer)u);
      } else {
        lua_Number x;
        memcpy(&x, &u, 8);
        lua_pushnumber(L, x);
      }
      lua_rawseti(L, t, offset + (lua_Integer)i);
    }
  }
  d->p += narr * 8;
}

/* ---- values stored in place ---- */

/* Reads the next value without pushing it when reading it allocates nothing: a number, a
** boolean, or a back reference to a string the cache holds (its cache slot in *slot). 1 with
** *v as a table slot holds it; else 0, with nothing read. */
static inline int peek_plain(dec *d, lmp_tv *v, int *slot) {
  const unsigned char *p = d->p;
  if (p >= d->end) return 0;
  uint64_t u;
  switch (*p) {
    case T_INT:
      d->p = p + 1;
      v->v.i = unzigzag(get_varint(d));
      v->tt = TV_INT;
      return 1;
    case T_FLOAT:
      if (d->end - p < 9) return 0;
      u = le64(p + 1);
      memcpy(&v->v.n, &u, 8);
      v->tt = TV_FLT;
      d->p = p + 9;
      return 1;
    case T_TRUE:
    case T_FALSE:
      v->v.i = 0;
      v->tt = *p == T_TRUE ? TV_TRUE : TV_FALSE;
      d->p = p + 1;
      return 1;
    case T_SREF: {
      d->p = p + 1;
      uint64_t off = get_varint(d);
      int s = (int)(off % STR_CACHE);
      if (off >= (uint64_t)(p - d->base) || d->stroff[s] != off) { /* not one it holds */
        d->p = p;
        return 0;
      }
      v->v.p = (void *)d->strts[s];
      v->tt = TV_SHRSTR;
      *slot = s;
      return 1;
    }
    default: return 0;
  }
}

/* Pushes a value peek_plain read. */
static void push_plain(dec *d, const lmp_tv *v, int slot) {
  lua_State *L = d->L;
  switch (v->tt) {
    case TV_INT: lua_pushinteger(L, v->v.i); break;
    case TV_FLT: lua_pushnumber(L, v->v.n); break;
    case TV_TRUE: lua_pushboolean(L, 1); break;
    case TV_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushvalue(L, d->strs + slot);
  }
}

/* Reads the array values of a table record into t[offset+1..offset+narr] (tp: t through the
** mirror, or NULL): values that a slot holds as they are go straight into the array part
** while the collector has not traversed the table (else through the API, whose write barrier
** tells it); those that need no allocation are not even pushed. */
static void get_array(dec *d, int t, lmp_ltable *tp, uint64_t narr, int kind,
                      lua_Integer offset) {
  lua_State *L = d->L;
  if (kind != T_TABLE) {
    get_number_array(d, t, narr, kind, offset);
    return;
  }
  lua_Unsigned asize = tp && offset >= 0 ? tp->alimit : 0;
  for (uint64_t i = 1; i <= narr; i++) {
    lua_Unsigned k = (lua_Unsigned)offset + i; /* the slot's key */
    lmp_tv v = {{0}, 0};
    int slot = 0;
    int held = k <= asize && peek_plain(d, &v, &slot); /* read, not pushed */
    if (!held) {
      decode_value(d);
      v = d->last;
    }
    if (v.tt && k <= asize && !(tp->marked & LMP_BLACK)) {
      tp->array[k - 1] = v;
      if (!held) lua_pop(L, 1);
      continue;
    }
    if (held) push_plain(d, &v, slot);
    lua_rawseti(L, t, offset + (lua_Integer)i);
  }
}

/* Reads the counts of a table record, checked against what the message can hold. */
static void get_counts(dec *d, int kind, uint64_t *narr, uint64_t *nhash) {
  *narr = get_varint(d);
  *nhash = get_varint(d);
  uint64_t each = kind == T_TABLE ? 1 : 8;
  if (*narr > remaining(d) / each || *nhash > (remaining(d) - *narr * each) / 2)
    bad(d, "table larger than the message");
}

/* Reads nhash key/value pairs into the table at t, which this decoder made. While every key
** is a short string, the pairs go straight into its hash nodes, placed as Lua places them
** (lmp__shortkey_node), as long as the collector has not traversed the table; from the first
** other key on, through the API. tp: t through the mirror, or NULL for the API only. */
static void get_pairs(dec *d, int t, lmp_ltable *tp, uint64_t nhash) {
  lua_State *L = d->L;
  for (uint64_t i = 0; i < nhash; i++) {
    lmp_tv key = {{0}, 0}, val = {{0}, 0};
    int kslot = 0, vslot = 0, kheld = 0;
    if (tp && peek_plain(d, &key, &kslot)) {
      kheld = key.tt == TV_SHRSTR; /* a string key read, not pushed */
      if (!kheld) push_plain(d, &key, kslot);
    } else {
      decode_value(d);
      key = d->last;
    }
    if (!kheld && key.tt != TV_SHRSTR) {
      int kt = lua_type(L, -1);
      if (kt == LUA_TNIL ||
          (kt == LUA_TNUMBER && !lua_isinteger(L, -1) && isnan(lua_tonumber(L, -1))))
        bad(d, "nil or NaN table key");
    }
    /* held: key and value read and neither pushed (nothing allocated since) */
    int held = kheld && peek_plain(d, &val, &vslot);
    if (!held) {
      if (kheld) push_plain(d, &key, kslot);
      decode_value(d);
      val = d->last;
    }
    if (tp && key.tt == TV_SHRSTR && val.tt && !(tp->marked & LMP_BLACK)) {
      lmp_lnode *n = lmp__shortkey_node(tp, key.v.p);
      if (n != NULL) {
        n->v = val.v;
        n->tt = val.tt;
        if (!held) lua_settop(L, -3);
        continue;
      }
    }
    if (held) {
      push_plain(d, &key, kslot);
      push_plain(d, &val, vslot);
    }
    tp = NULL; /* the API may move the nodes */
    lua_rawset(L, t);
  }
}

/* Reads a table record: sized from its counts, numbered before its contents (so references
** to it inside resolve); the metatable is set last, so filling the table runs no
** metamethod. */
static void decode_table(dec *d, int tag, lua_Integer at) {
  lua_State *L = d->L;
  int kind = tag & ~T_WITH_MT;
  enter(d);
  uint64_t narr, nhash;
  get_counts(d, kind, &narr, &nhash);
  /* each tagged element takes a byte of input: cap what that lets a message allocate */
  uint64_t cap = kind == T_TABLE ? (1u << 24) : (1u << 30);
  uint64_t hcap = 1u << 24;
  lua_createtable(L, (int)(narr < cap ? narr : cap), (int)(nhash < hcap ? nhash : hcap));
  int t = lua_gettop(L);
  lmp_ltable *tp = (lmp_ltable *)lmp__table(L, t);
  keep(d, at);
  get_array(d, t, tp, narr, kind, 0);
  /* the pairs go in place only when the array values all went to the array part */
  get_pairs(d, t, narr < cap && lmp__hash_direct ? tp : NULL, nhash);
  if (tag & T_WITH_MT) {
    decode_value(d);
    if (!lua_istable(L, -1)) bad(d, "metatable is not a table");
    lua_setmetatable(L, t);
  }
  d->depth--;
  d->last.v.p = tp; /* what decode_value pushed: t */
  d->last.tt = tp ? TV_TABLE : 0;
}

/* ---- functions ---- */

typedef struct chunk {
  const char *s;
  size_t n;
} chunk;

/* lua_load reader handing over the whole chunk at once. */
static const char *chunk_reader(lua_State *L, void *ud, size_t *size) {
  chunk *c = ud;
  const char *s = c->s;
  *size = c->n;
  c->s = NULL;
  c->n = 0;
  return s;
}

/* Joins upvalue i of the function at f with upvalue n of an earlier function (by ref id). */
static void join_upvalue(dec *d, int f, int i) {
  lua_State *L = d->L;
  size_t at = (size_t)(d->p - d->base);
  uint64_t off = get_varint(d);
  int n = get_byte(d);
  push_ref(d, off, at);
  if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1))
    bad(d, "shared upvalue of something that is not a Lua function");
  if (n < 1 || lua_getupvalue(L, -1, n) == NULL) bad(d, "shared upvalue out of range");
  lua_pop(L, 1);
  lua_upvaluejoin(L, f, i, lua_gettop(L), n);
  lua_pop(L, 1);
}

/* Reads the upvalue records of the function at f, after checking their count matches. */
static void decode_upvalues(dec *d, int f) {
  lua_State *L = d->L;
  uint64_t nups = get_varint(d);
  if (nups > 255 || lua_getupvalue(L, f, (int)nups + 1) != NULL ||
      (nups > 0 && lua_getupvalue(L, f, (int)nups) == NULL))
    bad(d, "wrong number of upvalues");
  lua_pop(L, nups > 0 ? 1 : 0);
  for (int i = 1; i <= (int)nups; i++) {
    switch (get_byte(d)) {
      case UV_ENV: push_env(d); break;
      case UV_VALUE: decode_value(d); break;
      case UV_SHARED: join_upvalue(d, f, i); continue;
      default: bad(d, "bad upvalue kind");
    }
    lua_setupvalue(L, f, i);
  }
}

/* Reads the captured globals into the message environment. */
static void decode_globals(dec *d) {
  lua_State *L = d->L;
  int more;
  while ((more = get_byte(d)) == 1) {
    size_t n;
    const char *name = get_str(d, &n);
    push_env(d);
    lua_pushlstring(L, name, n);
    decode_value(d);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  if (more != 0) bad(d, "bad globals list");
}

/* Reads a function record; its bytecode is loaded (binary mode) only from an authenticated
** message. */
static void decode_function(dec *d, lua_Integer at) {
  lua_State *L = d->L;
  enter(d);
  if (!d->authentic) bad(d, "a function in a message without a MAC");
  chunk c;
  c.s = get_str(d, &c.n);
  if (!lmp__dump_check(c.s, c.n)) bad(d, "malformed bytecode");
  if (lua_load(L, chunk_reader, &c, "=(lmp)", "b") != LUA_OK)
    lmp_raise(L, "SerializationError", "cannot load function: %s", lua_tostring(L, -1));
  int f = lua_gettop(L);
  keep(d, at);
  decode_upvalues(d, f);
  decode_globals(d);
  d->depth--;
}

/* ---- by-reference values and handles ---- */

/* Pushes require(name)[field] (field optional) for a T_MODREF. */
static void decode_modref(dec *d, lua_Integer at) {
  lua_State *L = d->L;
  size_t n;
  const char *s = get_str(d, &n);
  const char *nul = memchr(s, '\0', n);
  size_t mlen = nul ? (size_t)(nul - s) : n;
  if (nul && memchr(nul + 1, '\0', n - mlen - 1)) bad(d, "bad module reference");
  lua_getfield(L, d->G, "require");
  lua_pushlstring(L, s, mlen);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    const char *msg = luaL_tolstring(L, -1, NULL);
    lmp_raise(L, "SerializationError", "cannot load module '%s': %s",
              lua_pushlstring(L, s, mlen), msg);
  }
  if (nul) {
    if (!lua_istable(L, -1)) bad(d, "module reference into something that is not a table");
    lua_pushlstring(L, nul + 1, n - mlen - 1);
    if (lua_rawget(L, -2) == LUA_TNIL) {
      const char *field = lua_pushlstring(L, nul + 1, n - mlen - 1);
      lmp_raise(L, "SerializationError", "module '%s' has no field '%s'",
                lua_pushlstring(L, s, mlen), field);
    }
    lua_remove(L, -2);
  }
  keep(d, at);
}

/* Rebuilds a handle through the decoder registered for its type name. */
static void decode_handle(dec *d, lua_Integer at) {
  lua_State *L = d->L;
  size_t tn, pn;
  const char *type = get_str(d, &tn);
  const char *payload = get_str(d, &pn);
  uint64_t nfds = get_varint(d);
  if (nfds > remaining(d) || !lua_checkstack(L, (int)nfds + 8)) bad(d, "too many descriptors");
  lua_getfield(L, LUA_REGISTRYINDEX, CODEC_HANDLES);
  lua_pushlstring(L, type, tn);
  if (!lua_istable(L, -2) || lua_rawget(L, -2) != LUA_TFUNCTION)
    lmp_raise(L, "SerializationError", "unknown handle type '%s'", lua_pushlstring(L, type, tn));
  lua_remove(L, -2);
  lua_pushlstring(L, payload, pn);
  for (uint64_t i = 0; i < nfds; i++) {
    uint64_t v = get_varint(d);
    if (d->fdindex) {
      if (v >= (uint64_t)d->nfds || d->fds == NULL) bad(d, "descriptor index out of range");
      lua_pushinteger(L, d->fds[v]);
    } else {
      if (v > 0x7fffffff) bad(d, "bad descriptor");
      lua_pushinteger(L, (lua_Integer)v);
    }
  }
  lua_call(L, 1 + (int)nfds, 1);
  keep(d, at);
}

/* ---- dispatch ---- */

/* Reads one value and pushes it. */
static void decode_value(dec *d) {
  lua_State *L = d->L;
  uint64_t u;
  size_t n;
  const char *s;
  lua_Number x;
  size_t here = (size_t)(d->p - d->base);
  int tag = get_byte(d);
  lua_Integer at = -1;
  d->last.tt = 0;
  if (tag & T_KEPT) { /* only objects are kept */
    tag &= ~T_KEPT;
    if ((tag & ~T_WITH_MT) != T_TABLE && (tag & ~T_WITH_MT) != T_TABLE_I &&
        (tag & ~T_WITH_MT) != T_TABLE_F && tag != T_FUNC && tag != T_GLOBALS &&
        tag != T_MODREF && tag != T_HANDLE)
      bad(d, "unknown tag");
    at = (lua_Integer)here;
  }
  switch (tag) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE:
      lua_pushboolean(L, 0);
      d->last.tt = TV_FALSE;
      break;
    case T_TRUE:
      lua_pushboolean(L, 1);
      d->last.tt = TV_TRUE;
      break;
    case T_INT:
      d->last.v.i = unzigzag(get_varint(d));
      d->last.tt = TV_INT;
      lua_pushinteger(L, d->last.v.i);
      break;
    case T_FLOAT:
      if (remaining(d) < 8) bad(d, "truncated");
      u = le64(d->p);
      d->p += 8;
      memcpy(&x, &u, 8);
      d->last.v.n = x;
      d->last.tt = TV_FLT;
      lua_pushnumber(L, x);
      break;
    case T_STR:
      s = get_str(d, &n);
      s = lua_pushlstring(L, s, n);
      if (lmp__array_direct) {
        d->last.v.p = lmp__ts_of(s);
        d->last.tt = lmp__ts_tag(d->last.v.p);
      }
      break;
    case T_SREF: push_sref(d, here); break;
    case T_TABLE:
    case T_TABLE_I:
    case T_TABLE_F:
    case T_TABLE | T_WITH_MT:
    case T_TABLE_I | T_WITH_MT:
    case T_TABLE_F | T_WITH_MT:
      decode_table(d, tag, at);
      break;
    case T_REF: push_ref(d, get_varint(d), here); break;
    case T_FUNC:
      decode_function(d, at);
      d->last.tt = 0; /* not what its upvalues left */
      break;
    case T_GLOBALS:
      lua_pushvalue(L, d->G);
      keep(d, at);
      break;
    case T_MODREF: decode_modref(d, at); break;
    case T_HANDLE:
      decode_handle(d, at);
      d->last.tt = 0;
      break;
    default: bad(d, "unknown tag");
  }
}

/* ---- messages ---- */

/* Checks the header and the MAC, and sets up a decoder: the per-message slots on the
** stack. */
static void dec_init(dec *d, lua_State *L, const char *s, size_t n, const int *fds, int nfds) {
  const unsigned char *p = (const unsigned char *)s;
  d->L = L;
  if (n < CODEC_HEADER || p[0] != CODEC_MAGIC0 || p[1] != CODEC_MAGIC1 || p[2] != CODEC_MAGIC2)
    bad(d, "not an lmp message");
  if (p[3] != CODEC_VERSION)
    lmp_raise(L, "SerializationError", "unsupported message version %d (this lmp reads %d)",
              (int)p[3], CODEC_VERSION);
  if (p[4] & ~CODEC_FLAGS) bad(d, "unknown flags");
  d->base = p;
  d->p = p + CODEC_HEADER;
  d->end = p + n;
  d->authentic = 0;
  if (p[4] & CODEC_FLAG_MAC) {
    unsigned char mac[CODEC_MAC_BYTES];
    if (n < CODEC_HEADER + CODEC_MAC_BYTES) bad(d, "truncated");
    lmp__codec_mac(p, n - CODEC_MAC_BYTES, mac);
    if (crypto_verify_16(mac, p + n - CODEC_MAC_BYTES) != 0)
      lmp_raise(L, "SerializationError",
                "message authentication failed: it carries functions and was not made by this "
                "process tree (corrupted, or from an untrusted source); nothing was loaded");
    d->end -= CODEC_MAC_BYTES;
    d->authentic = 1;
  }
  d->fds = fds;
  d->nfds = nfds;
  d->fdindex = p[4] & CODEC_FLAG_FDINDEX;
  d->depth = 0;
  if (!lua_checkstack(L, 24 + STR_CACHE)) bad(d, "Lua stack overflow");
  lua_pushnil(L);
  d->refs = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  d->G = lua_gettop(L);
  lua_pushnil(L);
  d->env = lua_gettop(L);
  memset(d->stroff, 0xff, sizeof d->stroff); /* no offset: the message is shorter */
  d->strs = 0;
  if (n >= STR_CACHE_MIN) {
    d->strs = lua_gettop(L) + 1;
    lua_settop(L, d->strs + STR_CACHE - 1);
  }
}

void lmp_decode(lua_State *L, const char *s, size_t n, const int *fds, int nfds) {
  dec d;
  int base = lua_gettop(L);
  dec_init(&d, L, s, n, fds, nfds);
  decode_value(&d);
  if (d.p != d.end) bad(&d, "trailing bytes");
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
}

lua_Integer lmp__decode_into(lua_State *L, const char *s, size_t n, int t, lua_Integer offset) {
  dec d;
  t = lua_absindex(L, t);
  int base = lua_gettop(L);
  dec_init(&d, L, s, n, NULL, 0);
  int tag = get_byte(&d);
  int kind = tag & ~T_WITH_MT;
  if (kind != T_TABLE && kind != T_TABLE_I && kind != T_TABLE_F) bad(&d, "not an array");
  enter(&d);
  uint64_t narr, nhash;
  get_counts(&d, kind, &narr, &nhash);
  get_array(&d, t, (lmp_ltable *)lmp__table(L, t), narr, kind, offset - 1);
  for (uint64_t i = 0; i < 2 * nhash + ((tag & T_WITH_MT) != 0); i++) {
    decode_value(&d); /* the pairs (n = narr) and the metatable */
    lua_pop(L, 1);
  }
  if (d.p != d.end) bad(&d, "trailing bytes");
  lua_settop(L, base);
  return (lua_Integer)narr;
}
