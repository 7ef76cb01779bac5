/*
** codec_dec.c — the decoder: lmp messages to Lua values (format in codec.h).
** Every byte is untrusted: each declared length is checked against the bytes that remain
** before anything is allocated, nesting is bounded, and bytecode is only loaded from function
** records that carry this process's secret (so arbitrary bytes never reach lua_load).
** Caveat: a message may name any module (T_MODREF); decoding it runs require(name).
*/
#include <math.h>
#include <string.h>

#include "codec.h"

#define FEW_REFS 8

typedef struct dec {
  lua_State *L;
  const unsigned char *p, *end;
  const int *fds;
  int nfds, fdindex;
  int refs;     /* ref id -> object beyond FEW_REFS (0 until needed) */
  int refslot;  /* the stack slot kept for refs */
  int few0;     /* the first of FEW_REFS stack slots for the first objects */
  lua_Integer nref;
  int G;        /* the receiver's globals */
  int env;      /* the per-message environment (nil until first needed) */
  int depth;
} dec;

static void decode_value(dec *d);

/* Raises a SerializationError about malformed input. Never returns. */
static void bad(dec *d, const char *what) {
  lmp_raise(d->L, "SerializationError", "malformed message: %s", what);
}

static size_t remaining(dec *d) {
  return (size_t)(d->end - d->p);
}

static int get_byte(dec *d) {
  if (d->p >= d->end) bad(d, "truncated");
  return *d->p++;
}

/* Reads a little-endian base-128 varint of at most 64 bits. */
static uint64_t get_varint(dec *d) {
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

/* Reads an n-byte little-endian unsigned integer. */
static uint64_t get_fixed(dec *d, int n) {
  if (remaining(d) < (size_t)n) bad(d, "truncated");
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)d->p[i] << (8 * i);
  d->p += n;
  return v;
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

/* Records the value on top of the stack as the next ref id. */
/* Objects are numbered as they are made; T_REF finds them. The first FEW_REFS live in stack
** slots (most messages have a handful of tables), the rest in a table made when needed. */
static void set_ref(dec *d, lua_Integer id) {
  lua_State *L = d->L;
  if (id <= FEW_REFS) {
    lua_copy(L, -1, d->few0 + (int)id - 1);
    return;
  }
  if (!d->refs) {
    lua_createtable(L, 16, 0);
    lua_replace(L, d->refslot);
    d->refs = d->refslot;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, id);
}

static void add_ref(dec *d) { set_ref(d, ++d->nref); }

/* Pushes the object with ref id id (encoder ids start at 0). */
static void push_ref(dec *d, uint64_t id) {
  if (id >= (uint64_t)d->nref) bad(d, "reference to an unknown object");
  if (id < FEW_REFS) lua_pushvalue(d->L, d->few0 + (int)id);
  else lua_rawgeti(d->L, d->refs, (lua_Integer)id + 1);
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

/* Reads a table record: numbered before its contents, so references to it inside resolve;
** the metatable is set last so filling the table triggers no metamethod. */
/* Reads narr raw 8-byte numbers into t[1..narr] (T_TABLE_I / T_TABLE_F). */
static void get_number_array(dec *d, int t, uint64_t narr, int kind, lua_Integer offset) {
  lua_State *L = d->L;
  if (narr > remaining(d) / 8) bad(d, "array larger than the message");
  const unsigned char *p = (const unsigned char *)d->p;
  if (!lua_checkstack(L, 2)) bad(d, "Lua stack overflow");
  for (uint64_t i = 1; i <= narr; i++, p += 8) {
    uint64_t u;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&u, p, 8);
#else
    u = 0;
    for (int b = 0; b < 8; b++) u |= (uint64_t)p[b] << (8 * b);
#endif
    if (kind == T_TABLE_I) {
      lua_pushinteger(L, (lua_Integer)u);
    } else {
      lua_Number x;
      memcpy(&x, &u, 8);
      lua_pushnumber(L, x);
    }
    lua_rawseti(L, t, offset + (lua_Integer)i);
  }
  d->p += narr * 8;
}

static void decode_table(dec *d, int kind) {
  lua_State *L = d->L;
  enter(d);
  uint64_t narr = get_varint(d);
  if (narr > remaining(d)) bad(d, "array larger than the message");
  /* preallocation is bounded by the input (each element takes a byte) and capped */
  lua_createtable(L, narr > (1u << 24) ? (1 << 24) : (int)narr, 0);
  int t = lua_gettop(L);
  add_ref(d);
  if (kind != T_TABLE) {
    get_number_array(d, t, narr, kind, 0);
  } else {
    for (uint64_t i = 1; i <= narr; i++) {
      decode_value(d);
      lua_rawseti(L, t, (lua_Integer)i);
    }
  }
  uint64_t nhash = get_fixed(d, 4);
  if (nhash > remaining(d) / 2) bad(d, "table larger than the message");
  for (uint64_t i = 0; i < nhash; i++) {
    decode_value(d);
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
                             isnan(lua_tonumber(L, -1))))
      bad(d, "nil or NaN table key");
    decode_value(d);
    lua_rawset(L, t);
  }
  decode_value(d);
  if (lua_istable(L, -1)) lua_setmetatable(L, t);
  else if (lua_isnil(L, -1)) lua_pop(L, 1);
  else bad(d, "metatable is not a table");
  d->depth--;
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
  uint64_t id = get_varint(d);
  int n = get_byte(d);
  push_ref(d, id);
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

/* Reads a function record; its bytecode is loaded (binary mode) only when the record carries
** this process's secret. */
static void decode_function(dec *d) {
  lua_State *L = d->L;
  enter(d);
  if (get_fixed(d, 8) != lmp__codec_secret())
    lmp_raise(L, "SerializationError", "function from an untrusted source");
  chunk c;
  c.s = get_str(d, &c.n);
  if (lua_load(L, chunk_reader, &c, "=(lmp)", "b") != LUA_OK)
    lmp_raise(L, "SerializationError", "cannot load function: %s", lua_tostring(L, -1));
  int f = lua_gettop(L);
  add_ref(d);
  decode_upvalues(d, f);
  decode_globals(d);
  d->depth--;
}

/* ---- by-reference values and handles ---- */

/* Pushes require(name)[field] (field optional) for a T_MODREF. */
static void decode_modref(dec *d) {
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
  if (!nul) return;
  if (!lua_istable(L, -1)) bad(d, "module reference into something that is not a table");
  lua_pushlstring(L, nul + 1, n - mlen - 1);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    const char *field = lua_pushlstring(L, nul + 1, n - mlen - 1);
    lmp_raise(L, "SerializationError", "module '%s' has no field '%s'",
              lua_pushlstring(L, s, mlen), field);
  }
  lua_remove(L, -2);
}

/* Rebuilds a handle through the decoder registered for its type name. */
static void decode_handle(dec *d) {
  lua_State *L = d->L;
  size_t tn, pn;
  const char *type = get_str(d, &tn);
  const char *payload = get_str(d, &pn);
  uint64_t nfds = get_varint(d);
  if (nfds > remaining(d) || !lua_checkstack(L, (int)nfds + 8)) bad(d, "too many descriptors");
  lua_Integer id = ++d->nref; /* the encoder numbered the handle before its contents */
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
  set_ref(d, id);
}

/* ---- dispatch ---- */

/* Reads one value and pushes it. */
static void decode_value(dec *d) {
  lua_State *L = d->L;
  uint64_t u;
  size_t n;
  const char *s;
  lua_Number x;
  int tag = get_byte(d);
  switch (tag) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT:
      u = get_varint(d);
      lua_pushinteger(L, (lua_Integer)((u >> 1) ^ (uint64_t)(-(int64_t)(u & 1))));
      break;
    case T_FLOAT:
      u = get_fixed(d, 8);
      memcpy(&x, &u, 8);
      lua_pushnumber(L, x);
      break;
    case T_STR:
      s = get_str(d, &n);
      lua_pushlstring(L, s, n);
      break;
    case T_TABLE:
    case T_TABLE_I:
    case T_TABLE_F: decode_table(d, tag); break;
    case T_REF: push_ref(d, get_varint(d)); break;
    case T_FUNC: decode_function(d); break;
    case T_GLOBALS: lua_pushvalue(L, d->G); break;
    case T_MODREF: decode_modref(d); break;
    case T_HANDLE: decode_handle(d); break;
    default: bad(d, "unknown tag");
  }
}

/* Checks the header, decodes the single value it frames, and insists nothing follows. */
/* Checks the header and sets up a decoder: the per-message slots on the stack. */
static void dec_init(dec *d, lua_State *L, const char *s, size_t n, const int *fds, int nfds) {
  const unsigned char *p = (const unsigned char *)s;
  d->L = L;
  if (n < CODEC_HEADER || p[0] != CODEC_MAGIC0 || p[1] != CODEC_MAGIC1 || p[2] != CODEC_MAGIC2)
    bad(d, "not an lmp message");
  if (p[3] != CODEC_VERSION) bad(d, "unsupported version");
  if (p[4] & ~CODEC_FLAG_FDINDEX) bad(d, "unknown flags");
  d->p = p + CODEC_HEADER;
  d->end = p + n;
  d->fds = fds;
  d->nfds = nfds;
  d->fdindex = p[4] & CODEC_FLAG_FDINDEX;
  d->nref = 0;
  d->depth = 0;
  if (!lua_checkstack(L, 24)) bad(d, "Lua stack overflow");
  lua_pushnil(L);
  d->refslot = lua_gettop(L);
  d->refs = 0;
  d->few0 = d->refslot + 1;
  for (int i = 0; i < FEW_REFS; i++) lua_pushnil(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  d->G = lua_gettop(L);
  lua_pushnil(L);
  d->env = lua_gettop(L);
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
  int kind = get_byte(&d);
  if (kind != T_TABLE && kind != T_TABLE_I && kind != T_TABLE_F) bad(&d, "not an array");
  enter(&d);
  uint64_t narr = get_varint(&d);
  if (narr > remaining(&d)) bad(&d, "array larger than the message");
  lua_pushnil(L); /* ref 0 is the array itself, which is never made */
  add_ref(&d);
  lua_pop(L, 1);
  if (kind != T_TABLE) {
    get_number_array(&d, t, narr, kind, offset - 1);
  } else {
    for (uint64_t i = 1; i <= narr; i++) {
      decode_value(&d);
      lua_rawseti(L, t, offset - 1 + (lua_Integer)i);
    }
  }
  uint64_t nhash = get_fixed(&d, 4);
  if (nhash > remaining(&d) / 2) bad(&d, "table larger than the message");
  for (uint64_t i = 0; i < 2 * nhash + 1; i++) { /* the pairs (n = narr) and the metatable */
    decode_value(&d);
    lua_pop(L, 1);
  }
  if (d.p != d.end) bad(&d, "trailing bytes");
  lua_settop(L, base);
  return (lua_Integer)narr;
}
