/*
** codec_enc.c — the encoder: Lua values to lmp messages (format in codec.h).
** Errors are raised as SerializationError objects naming the path of the offending value; the
** path is rebuilt from a small frame stack only when an error happens, so the hot path pays
** nothing for it. Caveat: functions read their globals through GETTABUP on an `_ENV` upvalue;
** a function that reaches globals another way (a local `_ENV`) has none captured.
*/
#include <string.h>

#include "codec.h"

enum { F_INDEX, F_KEY, F_KEYOF, F_UPVAL, F_MT, F_GLOBAL };

typedef struct frame {
  int kind;
  int idx;            /* F_KEY: stack index of the key */
  lua_Integer i;      /* F_INDEX */
  const char *name;   /* F_UPVAL, F_GLOBAL */
} frame;

#define MAX_FRAMES (CODEC_MAX_DEPTH + 8)

typedef struct enc {
  lua_State *L;
  lmp_buf *out;
  lmp_fdvec *fds;
  const char *root;
  int seen;   /* light userdata (object address) -> ref id, made when `few` is full */
  int nfew;   /* objects numbered so far while they fit in `few` */
  int seenslot; /* the stack slot kept for `seen` */
  const void *few[8];
  int upv;    /* upvalue id (light userdata) -> function id * 256 + upvalue index */
  int caps;   /* global name -> true once captured in this message */
  int G;      /* the globals table */
  int fcache; /* closure -> {bytecode, global names...} */
  int rev;    /* reverse module map, loaded on first need */
  int have_rev;
  lua_Integer nref;
  int depth, nframe;
  frame frames[MAX_FRAMES];
} enc;

static void encode_value(enc *e, int idx);

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
      case F_KEYOF: lua_pushliteral(L, ".<key>"); break;
      case F_UPVAL: lua_pushfstring(L, ".upvalue(%s)", f->name); break;
      case F_MT: lua_pushliteral(L, ".<metatable>"); break;
      default: lua_pushfstring(L, ".global(%s)", f->name); break;
    }
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/* Raises a SerializationError "<path>: <what>". Never returns. */
static void fail(enc *e, const char *what) {
  lua_checkstack(e->L, 8);
  push_path(e);
  lmp_raise(e->L, "SerializationError", "%s: %s", lua_tostring(e->L, -1), what);
}

static void push_frame(enc *e, int kind, int idx, lua_Integer i, const char *name) {
  if (e->nframe >= MAX_FRAMES) fail(e, "nesting deeper than 200");
  frame *f = &e->frames[e->nframe++];
  f->kind = kind;
  f->idx = idx;
  f->i = i;
  f->name = name;
}

#define pop_frame(e) ((e)->nframe--)

/* Enters a nested container: checks the depth limit and the Lua stack. */
static void enter(enc *e) {
  if (++e->depth > CODEC_MAX_DEPTH) fail(e, "nesting deeper than 200");
  if (!lua_checkstack(e->L, 16)) fail(e, "Lua stack overflow");
}

/* ---- output ---- */

static unsigned char *room(enc *e, size_t n) {
  if (lmp_buf_reserve(e->out, n) != 0) fail(e, "out of memory");
  return (unsigned char *)e->out->p + e->out->len;
}

static void put_byte(enc *e, int b) {
  *room(e, 1) = (unsigned char)b;
  e->out->len++;
}

/* Writes v as a little-endian base-128 varint (7 bits per byte, high bit = more). */
static void put_varint(enc *e, uint64_t v) {
  unsigned char *p = room(e, 10), *q = p;
  while (v >= 0x80) {
    *q++ = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  *q++ = (unsigned char)v;
  e->out->len += (size_t)(q - p);
}

static void put_bytes(enc *e, const void *s, size_t n) {
  memcpy(room(e, n), s, n);
  e->out->len += n;
}

static void put_u64(enc *e, uint64_t v) {
  unsigned char *p = room(e, 8);
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
  e->out->len += 8;
}

static void put_str(enc *e, const char *s, size_t n) {
  put_varint(e, n);
  put_bytes(e, s, n);
}

/* ---- references ---- */

/* Objects already numbered are found by address: the first few in a small array (most
** messages have a handful of tables), the rest in a Lua table made when the array is full.
** Addresses are stable because every object stays reachable while it is encoded. */

/* Writes a T_REF when the object at idx was already sent; returns 1 then. */
static int put_seen_ref(enc *e, int idx) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  lua_Integer id = -1;
  for (int i = 0; i < e->nfew; i++)
    if (e->few[i] == p) {
      id = i;
      break;
    }
  if (id < 0 && e->seen) {
    lua_pushlightuserdata(L, (void *)p);
    if (lua_rawget(L, e->seen) != LUA_TNIL) id = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  if (id < 0) return 0;
  put_byte(e, T_REF);
  put_varint(e, (uint64_t)id);
  return 1;
}

/* Gives the object at idx the next ref id (the decoder numbers objects in the same order). */
static lua_Integer mark(enc *e, int idx) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, idx);
  if (e->nfew < 8 && e->nref == e->nfew) {
    e->few[e->nfew++] = p;
    return e->nref++;
  }
  if (!e->seen) {
    lua_createtable(L, 0, 32);
    lua_replace(L, e->seenslot);
    e->seen = e->seenslot;
  }
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, e->nref);
  lua_rawset(L, e->seen);
  return e->nref++;
}

/* Writes a T_MODREF when the value at idx is a module or a module's field; returns 1 then. */
static int put_modref(enc *e, int idx) {
  lua_State *L = e->L;
  if (!e->have_rev) {
    lmp__codec_revmap(L);
    lua_replace(L, e->rev);
    e->have_rev = 1;
  }
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

/* Pushes the __lmp_encode hook of the object at idx; returns 0 (nothing pushed) if none. */
static int get_hook(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  lua_pushliteral(L, "__lmp_encode");
  if (lua_rawget(L, -2) != LUA_TFUNCTION) {
    lua_pop(L, 2);
    return 0;
  }
  lua_remove(L, -2);
  return 1;
}

/* Encodes the object at idx through its hook (on the stack top, consumed). */
static void encode_handle(enc *e, int idx) {
  lua_State *L = e->L;
  int base = lua_gettop(L) - 1;
  mark(e, idx);
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

/* ---- tables ---- */

/* Stores an 8-byte value little-endian. */
static inline void put_le64(unsigned char *p, uint64_t u) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &u, 8);
#else
  for (int b = 0; b < 8; b++) p[b] = (unsigned char)(u >> (8 * b));
#endif
}

/* Writes t[first..first+narr-1] (t at idx) as T_TABLE_I (all integers) or T_TABLE_F (all
** floats) with its length, in one pass; when an element breaks the pattern, the output is
** rewound and 0 returned, and the caller writes a T_TABLE. Arrays of numbers are the bulk of
** map-like traffic: they go as raw 8-byte values. */
static int put_number_array(enc *e, int idx, lua_Integer first, lua_Integer narr) {
  lua_State *L = e->L;
  if (narr < 4) return 0;
  if ((uint64_t)narr > ((size_t)-1) / 16) fail(e, "table too large");
  int t = lua_rawgeti(L, idx, first);
  int isint = lua_isinteger(L, -1);
  lua_pop(L, 1);
  if (t != LUA_TNUMBER) return 0;
  size_t mark = e->out->len;
  put_byte(e, isint ? T_TABLE_I : T_TABLE_F);
  put_varint(e, (uint64_t)narr);
  unsigned char *p = room(e, (size_t)narr * 8);
  for (lua_Integer i = first; i < first + narr; i++, p += 8) {
    uint64_t u;
    t = lua_rawgeti(L, idx, i);
    if (isint) {
      if (!lua_isinteger(L, -1)) goto mixed;
      u = (uint64_t)lua_tointeger(L, -1);
    } else {
      if (t != LUA_TNUMBER || lua_isinteger(L, -1)) goto mixed;
      lua_Number d = lua_tonumber(L, -1);
      memcpy(&u, &d, 8);
    }
    lua_pop(L, 1);
    put_le64(p, u);
  }
  e->out->len += (size_t)narr * 8;
  return 1;
mixed:
  lua_pop(L, 1);
  e->out->len = mark;
  return 0;
}

/* Writes the table at idx: a back reference, the globals, a module reference, a handle, or
** its contents (array part, other pairs, metatable) numbered before them so cycles resolve. */
static void encode_table(enc *e, int idx) {
  lua_State *L = e->L;
  if (put_seen_ref(e, idx)) return;
  if (lua_rawequal(L, idx, e->G)) {
    put_byte(e, T_GLOBALS);
    return;
  }
  if (put_modref(e, idx)) return;
  enter(e);
  if (get_hook(L, idx)) {
    encode_handle(e, idx);
    e->depth--;
    return;
  }
  mark(e, idx);
  lua_Integer narr = (lua_Integer)lua_rawlen(L, idx);
  if (!put_number_array(e, idx, 1, narr)) {
    put_byte(e, T_TABLE);
    put_varint(e, (uint64_t)narr);
    push_frame(e, F_INDEX, 0, 0, NULL);
    frame *f = &e->frames[e->nframe - 1];
    for (lua_Integer i = 1; i <= narr; i++) {
      f->i = i;
      lua_rawgeti(L, idx, i);
      encode_value(e, lua_gettop(L));
      lua_pop(L, 1);
    }
    pop_frame(e);
  }
  size_t countpos = e->out->len;
  put_bytes(e, "\0\0\0\0", 4);
  uint64_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int top = lua_gettop(L);
    if (lua_isinteger(L, -2)) {
      lua_Integer k = lua_tointeger(L, -2);
      if (k >= 1 && k <= narr) {
        lua_pop(L, 1);
        continue;
      }
    }
    push_frame(e, F_KEYOF, 0, 0, NULL);
    encode_value(e, top - 1);
    pop_frame(e);
    push_frame(e, F_KEY, top - 1, 0, NULL);
    encode_value(e, top);
    pop_frame(e);
    count++;
    lua_pop(L, 1);
  }
  if (count > 0xffffffffu) fail(e, "table too large");
  unsigned char *p = (unsigned char *)e->out->p + countpos;
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(count >> (8 * i));
  if (lua_getmetatable(L, idx)) {
    push_frame(e, F_MT, 0, 0, NULL);
    if (lua_type(L, -1) != LUA_TTABLE) fail(e, "cannot send a metatable that is not a table");
    encode_value(e, lua_gettop(L));
    pop_frame(e);
    lua_pop(L, 1);
  } else {
    put_byte(e, T_NIL);
  }
  e->depth--;
}

/* ---- functions ---- */

typedef struct dumpstate {
  int init;
  luaL_Buffer b;
} dumpstate;

/* lua_dump writer into a luaL_Buffer started lazily above the dumped function. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  dumpstate *d = ud;
  if (!d->init) {
    d->init = 1;
    luaL_buffinit(L, &d->b);
  }
  luaL_addlstring(&d->b, p, n);
  return 0;
}

/* Reader over a dumped chunk (trusted, our own lua_dump, but still bounds-checked). */
typedef struct rd {
  const unsigned char *p, *end;
  int ok;
} rd;

static int rd_byte(rd *r) {
  if (r->p >= r->end) {
    r->ok = 0;
    return 0;
  }
  return *r->p++;
}

static size_t rd_size(rd *r) {
  size_t x = 0;
  int b;
  int guard = 0;
  do {
    b = rd_byte(r);
    x = (x << 7) | (size_t)(b & 0x7f);
    if (++guard > 10) r->ok = 0;
  } while (r->ok && (b & 0x80) == 0);
  return x;
}

static void rd_skip(rd *r, size_t n) {
  if (!r->ok || (size_t)(r->end - r->p) < n) {
    r->ok = 0;
    r->p = r->end;
  } else {
    r->p += n;
  }
}

/* Reads a dumped string; returns its bytes (NULL for a missing string). */
static const char *rd_string(rd *r, size_t *len) {
  size_t n = rd_size(r);
  *len = 0;
  if (!r->ok || n == 0) return NULL;
  const char *s = (const char *)r->p;
  rd_skip(r, n - 1);
  *len = n - 1;
  return r->ok ? s : NULL;
}

typedef struct kstr {
  const char *s;
  size_t n;
} kstr;

#define OP_GETTABUP_54 11

/* Scans one dumped function prototype (and its children), adding the names of the globals
** it reads (GETTABUP on its `_ENV` upvalue with a constant string key) to the set at names. */
static void scan_proto(lua_State *L, rd *r, int names, int level) {
  size_t len;
  if (level > 250 || !lua_checkstack(L, 4)) {
    r->ok = 0;
    return;
  }
  rd_string(r, &len);            /* source */
  rd_size(r), rd_size(r);        /* linedefined, lastlinedefined */
  rd_skip(r, 3);                 /* numparams, is_vararg, maxstacksize */
  size_t ncode = rd_size(r);
  const unsigned char *code = r->p;
  if (ncode > (size_t)(r->end - r->p) / 4) r->ok = 0;
  rd_skip(r, ncode * 4);
  size_t nk = rd_size(r);
  if (!r->ok || nk > (size_t)(r->end - r->p)) {
    r->ok = 0;
    return;
  }
  kstr *k = lua_newuserdatauv(L, (nk ? nk : 1) * sizeof *k, 0); /* freed by the GC */
  for (size_t i = 0; i < nk && r->ok; i++) {
    int t = rd_byte(r);
    k[i].s = NULL;
    if (t == 0x03 || t == 0x13) rd_skip(r, 8);
    else if (t == 0x04 || t == 0x14) k[i].s = rd_string(r, &k[i].n);
  }
  size_t nup = rd_size(r);
  rd_skip(r, nup * 3);
  size_t nproto = rd_size(r);
  for (size_t i = 0; i < nproto && r->ok; i++) scan_proto(L, r, names, level + 1);
  size_t nline = rd_size(r);
  rd_skip(r, nline);
  size_t nabs = rd_size(r);
  for (size_t i = 0; i < nabs && r->ok; i++) rd_size(r), rd_size(r);
  size_t nloc = rd_size(r);
  for (size_t i = 0; i < nloc && r->ok; i++) rd_string(r, &len), rd_size(r), rd_size(r);
  size_t nupname = rd_size(r);
  int env = -1;
  for (size_t i = 0; i < nupname && r->ok; i++) {
    const char *s = rd_string(r, &len);
    if (s && len == 4 && memcmp(s, "_ENV", 4) == 0 && env < 0) env = (int)i;
  }
  if (!r->ok || env < 0) {
    lua_pop(L, 1);
    return;
  }
  for (size_t pc = 0; pc < ncode; pc++) {
    uint32_t ins;
    memcpy(&ins, code + pc * 4, 4);
    if ((ins & 0x7f) != OP_GETTABUP_54 || (int)((ins >> 16) & 0xff) != env) continue;
    size_t c = (ins >> 24) & 0xff;
    if (c < nk && k[c].s != NULL) {
      lua_pushlstring(L, k[c].s, k[c].n);
      lua_pushboolean(L, 1);
      lua_rawset(L, names);
    }
  }
  lua_pop(L, 1);
}

/* Adds the global names read by a dumped chunk (string at -2) to the entry table at -1. */
static void scan_globals(lua_State *L, int entry, const char *chunk, size_t n) {
  static const unsigned char hdr[] = "\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08";
  rd r = {(const unsigned char *)chunk, (const unsigned char *)chunk + n, 1};
  if (n < sizeof hdr - 1 + 17 || memcmp(chunk, hdr, sizeof hdr - 1) != 0) return;
  rd_skip(&r, sizeof hdr - 1 + 16 + 1); /* LUAC_INT, LUAC_NUM, number of upvalues */
  lua_newtable(L);
  int names = lua_gettop(L);
  scan_proto(L, &r, names, 0);
  lua_Integer i = 2;
  lua_pushnil(L);
  while (lua_next(L, names) != 0) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, entry, i++);
  }
  lua_pop(L, 1);
}

/* Pushes the weak-keyed closure cache, creating it on first use. */
static void push_fcache(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CODEC_FCACHE) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, CODEC_FCACHE);
}

/* Pushes the cache entry {bytecode, global names...} of the Lua function at idx. */
static void push_fentry(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->fcache)) {
    push_fcache(L);
    lua_replace(L, e->fcache);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->fcache) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 4, 0);
  int entry = lua_gettop(L);
  lua_pushvalue(L, idx);
  dumpstate d = {0};
  lua_dump(L, dump_writer, &d, 0);
  if (!d.init) lua_pushliteral(L, "");
  else luaL_pushresult(&d.b);
  lua_remove(L, -2);
  size_t n;
  const char *chunk = lua_tolstring(L, -1, &n);
  lua_rawseti(L, entry, 1); /* the entry keeps the string alive */
  scan_globals(L, entry, chunk, n);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, entry);
  lua_rawset(L, e->fcache);
}

/* Writes the upvalue records of the Lua function at idx (ref id fid). An `_ENV` upvalue that
** holds a table (the globals, or a custom environment such as a test runner's) becomes the
** message environment; the first such table is left on the stack and its index returned
** (0 when there is none), so the globals can be read from it. */
static int put_upvalues(enc *e, int idx, lua_Integer fid) {
  lua_State *L = e->L;
  int n = 0, env = 0;
  while (lua_getupvalue(L, idx, n + 1) != NULL) {
    lua_pop(L, 1);
    n++;
  }
  put_varint(e, (uint64_t)n);
  for (int i = 1; i <= n; i++) {
    const char *name = lua_getupvalue(L, idx, i);
    if (strcmp(name, "_ENV") == 0 && lua_istable(L, -1)) {
      put_byte(e, UV_ENV);
      if (env == 0) env = lua_gettop(L);
      else lua_pop(L, 1);
      continue;
    }
    lua_pushlightuserdata(L, lua_upvalueid(L, idx, i));
    if (lua_rawget(L, e->upv) != LUA_TNIL) {
      lua_Integer v = lua_tointeger(L, -1);
      put_byte(e, UV_SHARED);
      put_varint(e, (uint64_t)(v >> 8));
      put_byte(e, (int)(v & 0xff));
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, lua_upvalueid(L, idx, i));
    lua_pushinteger(L, fid * 256 + i);
    lua_rawset(L, e->upv);
    put_byte(e, UV_VALUE);
    push_frame(e, F_UPVAL, 0, 0, name);
    encode_value(e, lua_gettop(L));
    pop_frame(e);
    lua_pop(L, 1);
  }
  return env;
}

/* env[key] with metamethods, run under lua_pcall. */
static int env_get(lua_State *L) {
  lua_gettable(L, 1);
  return 1;
}

/* Pushes env[name] (name on top, consumed): raw for the globals table, else with metamethods
** (an environment that falls back to _G); an error there reads as nil. */
static void get_global(enc *e, int env) {
  lua_State *L = e->L;
  if (lua_rawequal(L, env, e->G)) {
    lua_rawget(L, env);
    return;
  }
  lua_pushcfunction(L, env_get);
  lua_pushvalue(L, env);
  lua_rotate(L, -3, 2);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* Writes the captured globals named in the entry at `entry` that this message lacks so far,
** reading them from the environment table at env. */
static void put_globals(enc *e, int entry, int env) {
  lua_State *L = e->L;
  for (lua_Integer i = 2; lua_rawgeti(L, entry, i) == LUA_TSTRING; i++) {
    int name = lua_gettop(L);
    lua_pushvalue(L, name);
    if (lua_rawget(L, e->caps) != LUA_TNIL) {
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, name);
    lua_pushboolean(L, 1);
    lua_rawset(L, e->caps);
    lua_pushvalue(L, name);
    get_global(e, env);
    if (!lua_isnil(L, -1)) {
      size_t n;
      const char *s = lua_tolstring(L, name, &n);
      put_byte(e, 1);
      put_str(e, s, n);
      push_frame(e, F_GLOBAL, 0, 0, s);
      encode_value(e, lua_gettop(L));
      pop_frame(e);
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  put_byte(e, 0);
}

/* Writes the function at idx: a back reference, a module reference, or its record (secret,
** bytecode with debug info, upvalues, captured globals). Unnamed C functions are an error. */
static void encode_function(enc *e, int idx) {
  lua_State *L = e->L;
  if (put_seen_ref(e, idx)) return;
  if (put_modref(e, idx)) return;
  if (lua_iscfunction(L, idx))
    fail(e, "cannot send a C function that is not reachable from package.loaded");
  enter(e);
  if (lua_isnil(L, e->upv)) {
    lua_newtable(L);
    lua_replace(L, e->upv);
    lua_newtable(L);
    lua_replace(L, e->caps);
  }
  lua_Integer fid = mark(e, idx);
  put_byte(e, T_FUNC);
  put_u64(e, lmp__codec_secret());
  push_fentry(e, idx);
  int entry = lua_gettop(L);
  size_t n;
  lua_rawgeti(L, entry, 1);
  const char *chunk = lua_tolstring(L, -1, &n);
  put_str(e, chunk, n);
  lua_pop(L, 1);
  int env = put_upvalues(e, idx, fid);
  if (env) put_globals(e, entry, env);
  else put_byte(e, 0);
  lua_settop(L, entry - 1);
  e->depth--;
}

/* ---- userdata and dispatch ---- */

/* Writes the userdata at idx as a module reference or through its __lmp_encode hook. */
static void encode_userdata(enc *e, int idx) {
  lua_State *L = e->L;
  if (put_seen_ref(e, idx)) return;
  if (put_modref(e, idx)) return;
  enter(e);
  if (!get_hook(L, idx)) {
    const char *what = "cannot send a userdata";
    if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING)
      what = lua_pushfstring(L, "cannot send a userdata (%s)", lua_tostring(L, -1));
    fail(e, what);
  }
  encode_handle(e, idx);
  e->depth--;
}

/* Writes an integer (zigzag varint) or a float (raw IEEE bits), keeping the subtype. */
static void encode_number(enc *e, int idx) {
  if (lua_isinteger(e->L, idx)) {
    uint64_t u = (uint64_t)lua_tointeger(e->L, idx);
    put_byte(e, T_INT);
    put_varint(e, (u << 1) ^ (uint64_t)(-(int64_t)(u >> 63)));
  } else {
    lua_Number d = lua_tonumber(e->L, idx);
    uint64_t bits;
    memcpy(&bits, &d, 8);
    put_byte(e, T_FLOAT);
    put_u64(e, bits);
  }
}

/* Writes the value at idx (an absolute index) by its type. */
static void encode_value(enc *e, int idx) {
  lua_State *L = e->L;
  size_t n;
  const char *s;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put_byte(e, T_NIL); break;
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER: encode_number(e, idx); break;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &n);
      put_byte(e, T_STR);
      put_str(e, s, n);
      break;
    case LUA_TTABLE: encode_table(e, idx); break;
    case LUA_TFUNCTION: encode_function(e, idx); break;
    case LUA_TUSERDATA: encode_userdata(e, idx); break;
    case LUA_TTHREAD: fail(e, "cannot send a thread"); break;
    case LUA_TLIGHTUSERDATA: fail(e, "cannot send a light userdata"); break;
    default: fail(e, "cannot send this value");
  }
}


/* Sets up the per-message tables on the stack, writes the header and the value, and pops
** everything it pushed. */
/* Sets up an encoder: the per-message slots on the stack and the header. */
static void enc_init(enc *e, lua_State *L, lmp_buf *out, lmp_fdvec *fds, const char *root) {
  e->L = L;
  e->out = out;
  e->fds = fds;
  e->root = root ? root : "value";
  e->nref = 0;
  e->depth = e->nframe = 0;
  e->have_rev = 0;
  e->seen = 0;
  e->nfew = 0;
  if (!lua_checkstack(L, 24)) fail(e, "Lua stack overflow");
  lua_pushnil(L);
  e->seenslot = lua_gettop(L);
  lua_pushnil(L); /* upv and caps are made by the first function */
  e->upv = lua_gettop(L);
  lua_pushnil(L);
  e->caps = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->G = lua_gettop(L);
  lua_pushnil(L); /* the closure cache, fetched by the first function */
  e->fcache = lua_gettop(L);
  lua_pushnil(L);
  e->rev = lua_gettop(L);
  unsigned char hdr[CODEC_HEADER] = {CODEC_MAGIC0, CODEC_MAGIC1, CODEC_MAGIC2, CODEC_VERSION,
                                     fds ? CODEC_FLAG_FDINDEX : 0};
  put_bytes(e, hdr, sizeof hdr);
}

void lmp__encode_named(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds, const char *root) {
  enc e;
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc_init(&e, L, out, fds, root);
  encode_value(&e, idx);
  lua_settop(L, top);
}

void lmp__encode_range(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                       lmp_buf *out, lmp_fdvec *fds, const char *root) {
  enc e;
  idx = lua_absindex(L, idx);
  int top = lua_gettop(L);
  enc_init(&e, L, out, fds, root);
  e.few[e.nfew++] = NULL; /* ref id 0: the array table of the message, never referenced */
  e.nref++;
  if (!put_number_array(&e, idx, first, count)) {
    put_byte(&e, T_TABLE);
    put_varint(&e, (uint64_t)count);
    e.depth = 1;
    push_frame(&e, F_INDEX, 0, 0, NULL);
    frame *f = &e.frames[e.nframe - 1];
    for (lua_Integer i = first; i < first + count; i++) {
      f->i = i;
      lua_rawgeti(L, idx, i);
      encode_value(&e, lua_gettop(L));
      lua_pop(L, 1);
    }
    pop_frame(&e);
  }
  put_bytes(&e, "\1\0\0\0", 4); /* one pair: n = count */
  put_byte(&e, T_STR);
  put_str(&e, "n", 1);
  lua_pushinteger(L, count);
  encode_value(&e, lua_gettop(L));
  put_byte(&e, T_NIL); /* no metatable */
  lua_settop(L, top);
}
