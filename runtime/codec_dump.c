/*
** codec_dump.c — reading the binary chunks lua_dump makes (Lua 5.4's format): the global names
** a function reads (for the encoder's captured globals), and a structural check the decoder
** runs before lua_load.
** Caveat: the check is no bytecode verifier. Chunks come only from authenticated messages,
** made by lmp's own encoder; the check makes sure that even a corrupted one that somehow
** passed could not make lua_load allocate beyond its size, recurse without bound, or build a
** closure whose upvalue count disagrees with its prototype's. Nothing decoded is ever run.
*/
#include <string.h>

#include "codec.h"

/* Reader over a dumped chunk: every read is bounds-checked; ok drops to 0 on any fault. */
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

/* lua_dump's sizes: 7 bits a byte, most significant first, the last byte marked 0x80. */
static size_t rd_size(rd *r) {
  size_t x = 0;
  int b, guard = 0;
  do {
    b = rd_byte(r);
    if (x > ((size_t)-1 >> 7)) r->ok = 0;
    x = (x << 7) | (size_t)(b & 0x7f);
    if (++guard > 10) r->ok = 0;
  } while (r->ok && (b & 0x80) == 0);
  return r->ok ? x : 0;
}

static size_t remaining(const rd *r) {
  return (size_t)(r->end - r->p);
}

static void rd_skip(rd *r, size_t n) {
  if (!r->ok || remaining(r) < n) {
    r->ok = 0;
    r->p = r->end;
  } else {
    r->p += n;
  }
}

/* A count of items of at least `each` bytes that the rest of the chunk can hold. */
static size_t rd_count(rd *r, size_t each) {
  size_t n = rd_size(r);
  if (n > remaining(r) / each || n > 0x7fffffff) r->ok = 0;
  return r->ok ? n : 0;
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

/* The header of this Lua's chunks, up to the main closure's upvalue count. */
static const unsigned char header[] = "\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08";
#define HEADER_LEN (sizeof header - 1 + 16) /* + LUAC_INT, LUAC_NUM */

typedef struct kstr {
  const char *s;
  size_t n;
} kstr;

#define OP_GETTABUP_54 11
#define MAX_LEVEL 200

/* Walks one prototype (and its children) to its end, checking every count; returns its
** number of upvalues. With names (a table index, else 0), adds the names of the globals it
** reads (GETTABUP on its `_ENV` upvalue with a constant string key) to that set. */
static size_t walk_proto(lua_State *L, rd *r, int names, int level) {
  size_t len;
  if (level > MAX_LEVEL || (names && !lua_checkstack(L, 4))) {
    r->ok = 0;
    return 0;
  }
  rd_string(r, &len);     /* source */
  rd_size(r), rd_size(r); /* linedefined, lastlinedefined */
  rd_skip(r, 3);          /* numparams, is_vararg, maxstacksize */
  size_t ncode = rd_count(r, 4);
  const unsigned char *code = r->p;
  rd_skip(r, ncode * 4);
  size_t nk = rd_count(r, 1);
  kstr *k = names ? lua_newuserdatauv(L, (nk ? nk : 1) * sizeof *k, 0) : NULL; /* GC'd */
  for (size_t i = 0; i < nk && r->ok; i++) {
    int t = rd_byte(r);
    if (k) k[i].s = NULL;
    if (t == 0x03 || t == 0x13) rd_skip(r, 8);
    else if (t == 0x04 || t == 0x14) {
      const char *s = rd_string(r, &len);
      if (k) k[i].s = s, k[i].n = len;
    } else if (t != 0x00 && t != 0x01 && t != 0x11) r->ok = 0;
  }
  size_t nup = rd_count(r, 3);
  rd_skip(r, nup * 3);
  size_t nproto = rd_count(r, 1);
  for (size_t i = 0; i < nproto && r->ok; i++) walk_proto(L, r, names, level + 1);
  size_t nline = rd_count(r, 1);
  rd_skip(r, nline);
  size_t nabs = rd_count(r, 2);
  for (size_t i = 0; i < nabs && r->ok; i++) rd_size(r), rd_size(r);
  size_t nloc = rd_count(r, 3);
  for (size_t i = 0; i < nloc && r->ok; i++) rd_string(r, &len), rd_size(r), rd_size(r);
  size_t nupname = rd_count(r, 1);
  if (nupname != 0 && nupname != nup) r->ok = 0; /* lua_load reads nup names then */
  int env = -1;
  for (size_t i = 0; i < nupname && r->ok; i++) {
    const char *s = rd_string(r, &len);
    if (s && len == 4 && memcmp(s, "_ENV", 4) == 0 && env < 0) env = (int)i;
  }
  if (!names) return nup;
  for (size_t pc = 0; r->ok && env >= 0 && pc < ncode; pc++) {
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
  return nup;
}

/* Starts a reader after the header of chunk; ok is 0 when the header is not this Lua's. */
static rd open_chunk(const char *chunk, size_t n) {
  rd r = {(const unsigned char *)chunk, (const unsigned char *)chunk + n, 1};
  if (n < HEADER_LEN + 1 || memcmp(chunk, header, sizeof header - 1) != 0) r.ok = 0;
  rd_skip(&r, HEADER_LEN);
  return r;
}

int lmp__dump_check(const char *chunk, size_t n) {
  rd r = open_chunk(chunk, n);
  int nup = rd_byte(&r);
  size_t protonup = walk_proto(NULL, &r, 0, 0);
  return r.ok && r.p == r.end && (size_t)nup == protonup;
}

void lmp__dump_globals(lua_State *L, int entry, const char *chunk, size_t n) {
  rd r = open_chunk(chunk, n);
  if (!r.ok) return;
  rd_byte(&r); /* the number of upvalues */
  lua_newtable(L);
  int names = lua_gettop(L);
  walk_proto(L, &r, names, 0);
  lua_Integer i = 2;
  lua_pushnil(L);
  while (lua_next(L, names) != 0) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, entry, i++);
  }
  lua_pop(L, 1);
}
