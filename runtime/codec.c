/*
** codec.c — module glue of the value codec: the key of the process tree and the MAC, the
** reverse map of package.loaded (values sent by reference), lmp_encode and the core.encode/
** decode functions. The format itself is described in codec.h; the encoder and decoder live
** in codec_enc.c, codec_fn.c and codec_dec.c.
** Design notes:
**  - A message that carries a function ends with a MAC: SipHash-2-4 with a 128-bit output
**    (libsodium's crypto_shorthash_siphashx24) under a random 128-bit key made once per process
**    before any fork, so children share it (spawned ones get it from process.c). The decoder
**    checks it before reading anything, so bytecode reaches lua_load only from lmp's own
**    channels, never from random, corrupted or foreign bytes. SipHash rather than keyed
**    BLAKE2b: it is a PRF made for keyed hashing, and on this machine it runs at 2.4 GB/s
**    against 0.7 GB/s (0.04 us against 0.37 us for 64 bytes).
**  - The encoder caches, per closure (weak keys), the dumped bytecode and the global names it
**    reads, so sending the same closure again costs no lua_dump. There is no decoder-side cache.
**  - The reverse map (value -> module name/field) is cached in the registry and rebuilt when a
**    fingerprint of package.loaded (entry count and identities) changes; a C-side set of its
**    keys lets the encoder skip the Lua lookup for the plain data that is most of any message.
**  - A function's `_ENV` upvalue holding a table (the globals, or a custom environment such as
**    a sandbox or a test runner's) becomes the per-message environment on decode; the globals
**    the function reads are captured from that table.
** Caveat: fields added to an already-loaded module after the map was built are only seen when
** package.loaded itself changes.
*/
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "codec.h"
#include "codec_arr.h"

/* ---- the key ---- */

static unsigned char key[LMP_CODEC_KEY_BYTES];
static int have_key;

/* Makes the key from the kernel's random source, once; -1 when libsodium cannot start (no
** random source at all). */
static int init_key(void) {
  if (have_key) return 0;
  if (sodium_init() < 0) return -1;
  randombytes_buf(key, sizeof key);
  have_key = 1;
  return 0;
}

/* The codec module is opened (and its key made) before anything can be encoded, so the key
** is there whenever these run; a process that could not make it never got that far. */
const unsigned char *lmp__codec_key(void) {
  if (init_key() != 0) abort();
  return key;
}

void lmp__codec_set_key(const unsigned char *k) {
  if (sodium_init() < 0) abort(); /* a spawned child, before its state exists */
  memcpy(key, k, sizeof key);
  have_key = 1;
}

void lmp__codec_mac(const void *msg, size_t n, unsigned char mac[CODEC_MAC_BYTES]) {
  if (init_key() != 0) abort();
  crypto_shorthash_siphashx24(mac, msg, (unsigned long long)n, key);
}

void lmp__codec_resign(char *msg, size_t n) {
  const unsigned char *p = (const unsigned char *)msg;
  if (n < CODEC_HEADER + CODEC_MAC_BYTES || p[0] != CODEC_MAGIC0 || p[1] != CODEC_MAGIC1 ||
      p[2] != CODEC_MAGIC2 || p[3] != CODEC_VERSION || !(p[4] & CODEC_FLAG_MAC))
    return;
  lmp__codec_mac(msg, n - CODEC_MAC_BYTES, (unsigned char *)msg + n - CODEC_MAC_BYTES);
}

/* ---- reverse map of package.loaded ---- */

static int is_ref_type(int t) {
  return t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TUSERDATA;
}

/* Returns a cheap fingerprint of package.loaded (at idx): entry count and identities. */
static lua_Integer loaded_fingerprint(lua_State *L, int idx, lua_Integer *count) {
  uint64_t h = 1469598103934665603ULL;
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    h = (h ^ (uint64_t)(uintptr_t)lua_topointer(L, -2)) * 1099511628211ULL;
    h = (h ^ (uint64_t)(uintptr_t)lua_topointer(L, -1)) * 1099511628211ULL;
    n++;
    lua_pop(L, 1);
  }
  *count = n;
  return (lua_Integer)h;
}

/* Adds the fields of module `name` (table at -1) to the map at rev; of _G only C functions,
** because the other globals are the script's own values, sent by value. */
static void add_fields(lua_State *L, int rev, const char *name, size_t nlen, int isG) {
  int mod = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, mod) != 0) {
    int ok = lua_type(L, -2) == LUA_TSTRING && is_ref_type(lua_type(L, -1)) &&
             (!isG || lua_iscfunction(L, -1));
    if (ok) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, rev) == LUA_TNIL) {
        lua_pushvalue(L, -2);
        lua_pushlstring(L, name, nlen);
        lua_pushlstring(L, "", 1); /* a NUL between module and field */
        lua_pushvalue(L, -6);      /* the field name */
        lua_concat(L, 3);
        lua_rawset(L, rev);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/* Stores at map[3] (map at idx) a scratch userdata whose object map holds the address of
** every key of the map: the set lmp__codec_revmap_set returns. */
static void add_key_set(lua_State *L, int idx) {
  lmp_scratch *s = lmp__scratch_push(L);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    int isnew;
    if (is_ref_type(lua_type(L, -1)) &&
        lmp__pmap_put(&s->objs, lua_topointer(L, -1), &isnew) == NULL)
      luaL_error(L, "not enough memory");
  }
  lua_rawseti(L, idx, 3);
}

const lmp_pmap *lmp__codec_revmap_set(lua_State *L, int idx) {
  lua_rawgeti(L, idx, 3);
  lmp_scratch *s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return &s->objs;
}

/* Builds the map (pushed) from package.loaded at idx; the globals table is left out. */
static void build_revmap(lua_State *L, int loaded) {
  lua_newtable(L);
  int rev = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  int G = lua_gettop(L);
  for (int pass = 0; pass < 2; pass++) {
    lua_pushnil(L);
    while (lua_next(L, loaded) != 0) {
      if (lua_type(L, -2) == LUA_TSTRING && is_ref_type(lua_type(L, -1)) &&
          !lua_rawequal(L, -1, G)) {
        if (pass == 0) {
          lua_pushvalue(L, -1);
          if (lua_rawget(L, rev) == LUA_TNIL) {
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -4);
            lua_rawset(L, rev);
          }
          lua_pop(L, 1);
        }
      }
      if (pass == 1 && lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
        size_t nlen;
        const char *name = lua_tolstring(L, -2, &nlen);
        add_fields(L, rev, name, nlen, lua_rawequal(L, -1, G));
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1); /* G */
  add_key_set(L, rev);
}

/* package.loaded gets a __newindex that counts additions (require adds modules that way), so
** the map is checked with two comparisons instead of a walk over package.loaded. When some
** other metatable is there, the walk (a fingerprint of entries and identities) is the check. */
static unsigned long loaded_generation; /* its address keys our metatable in the registry */
static const char revmap_key;            /* its address keys the map in the registry */
#define CODEC_LOADED_MT "lmp.codec.loaded_mt"

static int loaded_newindex(lua_State *L) {
  lua_rawset(L, 1);
  loaded_generation++;
  return 0;
}

/* Pushes our metatable for package.loaded, creating it once. */
static void push_loaded_mt(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_generation) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, loaded_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &loaded_generation);
}

/* 1 when package.loaded (at idx) carries our counting metatable (installing it if it has
** none). */
static int loaded_counted(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) {
    push_loaded_mt(L);
    lua_setmetatable(L, idx);
    loaded_generation++;
    return 1;
  }
  push_loaded_mt(L);
  int ours = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return ours;
}

/* The state whose map was last found current, and the generation it was current for: the
** common case (nothing required since) costs one registry lookup. */
static const void *fresh_state;
static unsigned long fresh_generation;

void lmp__codec_revmap(lua_State *L) {
  const void *state = lua_topointer(L, LUA_REGISTRYINDEX);
  if (state == fresh_state && fresh_generation == loaded_generation) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &revmap_key) == LUA_TTABLE) return;
    lua_pop(L, 1);
  }
  fresh_state = NULL;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = lua_gettop(L);
  int counted = loaded_counted(L, loaded);
  lua_Integer count = -1, fp = (lua_Integer)loaded_generation;
  if (!counted) fp = loaded_fingerprint(L, loaded, &count);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &revmap_key) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    int same = lua_tointeger(L, -2) == count && lua_tointeger(L, -1) == fp &&
               lua_isinteger(L, -1) && lua_isinteger(L, -2);
    lua_pop(L, 2);
    if (same) {
      lua_remove(L, loaded);
      if (counted) fresh_state = state, fresh_generation = loaded_generation;
      return;
    }
  }
  lua_pop(L, 1);
  build_revmap(L, loaded);
  lua_pushinteger(L, count);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, fp);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &revmap_key);
  lua_remove(L, loaded);
  if (counted) fresh_state = state, fresh_generation = loaded_generation;
}

/* ---- lmp_encode: the buffer lives in a userdata so a Lua error frees it ---- */

static int buf_gc(lua_State *L) {
  lmp_buf_free(lua_touserdata(L, 1));
  return 0;
}

/* Pushes a userdata owning an empty lmp_buf (freed by __gc). */
static lmp_buf *push_buf_box(lua_State *L) {
  lmp_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, "lmp.codec.buf")) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

/* Encodes the value at idx and pushes the message; root names the value in errors. */
static void encode_to_string(lua_State *L, int idx, const char *root) {
  idx = lua_absindex(L, idx);
  lmp_buf *b = push_buf_box(L);
  lmp__encode_named(L, idx, b, NULL, root);
  lua_pushlstring(L, b->p, b->len);
  lmp_buf_free(b);
  lua_remove(L, -2);
}

void lmp_encode(lua_State *L, int idx) {
  encode_to_string(L, idx, "value");
}

void lmp_encode_buf(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds) {
  lmp__encode_named(L, idx, out, fds, "value");
}

/* ---- Lua functions ---- */

/* mp.encode(v [, root]): through the state's scratch, whose buffer stays for the next call;
** the scratch is given back (its to-be-closed slot) as the function returns. */
static int l_encode(lua_State *L) {
  const char *root = luaL_optstring(L, 2, "value");
  luaL_checkany(L, 1);
  lua_settop(L, 2);
  lmp_scratch *sc = lmp__scratch_acquire(L);
  lmp__encode_scratch(L, 1, sc, root);
  lua_pushlstring(L, sc->buf.p, sc->buf.len);
  /* the buffer stays for the next call (until the scratch is collected), unless it is big:
  ** a big message costs a page-faulting copy anyway, and memory is not kept for it */
  if (sc->buf.cap > ((size_t)4 << 20)) lmp_buf_free(&sc->buf);
  return 1;
}

static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lmp_decode(L, s, n, NULL, 0);
  return 1;
}

/* core.codec_resign(msg) -> msg signed for this process (see lmp__codec_resign): for a
** message another process made, whose origin was checked another way. */
static int l_codec_resign(lua_State *L) {
  size_t n;
  const char *s = lmp_checklstring(L, 1, &n);
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n);
  memcpy(p, s, n);
  lmp__codec_resign(p, n);
  luaL_pushresultsize(&b, n);
  return 1;
}

/* core.register_handle(typename, fn): fn(payload, fd...) rebuilds a handle on decode. */
static int l_register_handle(lua_State *L) {
  luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, CODEC_HANDLES);
  lua_insert(L, 1);
  lua_rawset(L, 1);
  return 0;
}

void lmp__open_codec(lua_State *L) {
  static const luaL_Reg fns[] = {{"encode", l_encode},
                                 {"decode", l_decode},
                                 {"register_handle", l_register_handle},
                                 {"codec_resign", l_codec_resign},
                                 {NULL, NULL}};
  if (init_key() != 0) /* before any fork, so children share it */
    lmp_raise(L, "ProcessError", "libsodium cannot start (no random source): no key to sign "
              "messages with");
  lmp__array_init(L);
  luaL_setfuncs(L, fns, 0);
}
