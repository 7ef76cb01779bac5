/*
** codec.h — the wire format of lmp messages, shared by the encoder (codec_enc.c, codec_fn.c),
** the decoder (codec_dec.c) and the module glue (codec.c). Not part of the public API.
** The format is described in docs/design.md ("The codec"); this file is its reference.
*/
#ifndef LMP_CODEC_H
#define LMP_CODEC_H

#include <stdint.h>
#include "lmp_int.h"
#include "codec_pmap.h"

/* Message header: 'L' 'M' 'P' version flags. */
#define CODEC_MAGIC0 'L'
#define CODEC_MAGIC1 'M'
#define CODEC_MAGIC2 'P'
#define CODEC_VERSION 2
#define CODEC_HEADER 5
#define CODEC_FLAG_FDINDEX 0x01 /* handle fds are indexes into the fd vector */
#define CODEC_FLAG_MAC 0x02     /* the message ends with a MAC (it carries functions) */
#define CODEC_FLAGS (CODEC_FLAG_FDINDEX | CODEC_FLAG_MAC)

/* The MAC of a function-carrying message: SipHash-2-4 with a 128-bit output
** (libsodium's crypto_shorthash_siphashx24) over every byte before it, header included,
** under the process tree's key. */
#define CODEC_MAC_BYTES 16
#define LMP_CODEC_KEY_BYTES 16

#define CODEC_MAX_DEPTH 200
/* Strings of 1..CODEC_MEMO_MAX bytes may be sent again as a T_SREF (Lua's short strings:
** pushing one that exists allocates nothing, so back references cannot amplify memory). */
#define CODEC_MEMO_MAX 40

/* Value tags (one byte each). */
enum {
  T_NIL = 0,
  T_FALSE = 1,
  T_TRUE = 2,
  T_INT = 3,      /* zigzag varint */
  T_FLOAT = 4,    /* 8 bytes, IEEE-754 bits little-endian */
  T_STR = 5,      /* varint length, bytes */
  T_TABLE = 6,    /* varint narr, varint nhash, narr values, nhash key/value pairs */
  T_REF = 7,      /* varint offset, from the message's first byte, of an earlier object (a
                  ** table, function, handle, module reference or the globals) tagged T_KEPT */
  T_FUNC = 8,     /* varint len, bytecode, varint nups, upvalues, globals */
  T_GLOBALS = 9,  /* the sender's globals table: the receiver's */
  T_MODREF = 10,  /* varint len, "module" or "module\0field" */
  T_HANDLE = 11,  /* str typename, str payload, varint nfds, varint fd (raw or index) each */
  T_TABLE_I = 12, /* as T_TABLE, but the narr array values are 8-byte little-endian integers
                  ** (no tags) */
  T_TABLE_F = 13, /* likewise, all floats: 8-byte IEEE-754 bits */
  T_SREF = 14,    /* varint offset, from the message's first byte, of an earlier T_STR of
                  ** 1..CODEC_MEMO_MAX bytes: the same string again */
  T_LAST = T_SREF
};
/* A table tag with this bit set is followed, after its pairs, by its metatable (a value). */
#define T_WITH_MT 0x20
/* An object's tag with this bit set: later records refer to it (T_REF, UV_SHARED), so the
** decoder keeps it by its offset; objects referred to once are not kept at all. */
#define T_KEPT 0x40

/* Upvalue record kinds inside T_FUNC. */
enum {
  UV_ENV = 0,    /* the per-message environment of captured globals */
  UV_VALUE = 1,  /* followed by a value */
  UV_SHARED = 2  /* varint function offset (as T_REF), byte upvalue index: join with it */
};

/* Registry keys. */
#define CODEC_HANDLES "lmp.codec.handles"   /* typename -> decoder function */
#define CODEC_FCACHE "lmp.codec.fcache"     /* closure -> {bytecode, global names...} (weak) */
#define CODEC_ENVMT "lmp.codec.envmt"       /* {__index = _G, __newindex = _G}, shared */

/* ---- the key of the process tree ----
** Generated once per process from the kernel's random source, inherited by forked children,
** handed to spawned ones (spawn.c). Messages that carry functions are authenticated with
** it; the decoder loads no bytecode from any other. */
const unsigned char *lmp__codec_key(void); /* LMP_CODEC_KEY_BYTES bytes */
void lmp__codec_set_key(const unsigned char *key);
/* Writes the MAC of msg[0..n) under the key into mac. */
void lmp__codec_mac(const void *msg, size_t n, unsigned char mac[CODEC_MAC_BYTES]);
/* Signs for this process a message that was authenticated by other means (a cluster HMAC):
** a function-carrying message (a well-formed header with the MAC flag) gets its MAC made
** again under this process's key, so it decodes here; anything else is left as it is. */
void lmp__codec_resign(char *msg, size_t n);

/* ---- the encoder ---- */
/* Encodes the value at idx like lmp_encode_buf, naming the root `root` in error paths. */
void lmp__encode_named(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds, const char *root);

/* Encodes the value at idx into sc->buf with the scratch sc (from lmp__scratch_acquire). */
void lmp__encode_scratch(lua_State *L, int idx, lmp_scratch *sc, const char *root);

/* Encodes t[first..first+count-1] (t at idx) as the message of an array table with
** n = count, as if that slice had been copied into a table: no copy is made. Error paths
** name elements root[i] with their index in t. Returns how many objects (tables, functions,
** userdata, strings sent in full) the message makes the receiver build. */
size_t lmp__encode_range(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                         lmp_buf *out, lmp_fdvec *fds, const char *root);

/* Decodes a message holding an array table (what lmp__encode_range makes) straight into
** t[offset..offset+narr-1] (t at stack index t), without making the table; returns narr.
** Raises SerializationError for anything else. */
lua_Integer lmp__decode_into(lua_State *L, const char *s, size_t n, int t, lua_Integer offset);

/* ---- binary chunks (codec_dump.c) ---- */
/* 1 when chunk is a well-formed binary chunk of this Lua (every count within its bytes,
** prototypes nested at most 200 deep, upvalue counts that agree, nothing left over). */
int lmp__dump_check(const char *chunk, size_t n);
/* Adds the names of the globals the dumped chunk reads to the entry table at entry, from
** index 2 on. */
void lmp__dump_globals(lua_State *L, int entry, const char *chunk, size_t n);

/* ---- the reverse map of package.loaded (codec.c) ---- */
/* Pushes the reverse map (value -> "module" / "module\0field"), rebuilt when package.loaded
** changed since the last call. */
void lmp__codec_revmap(lua_State *L);
/* The set of the addresses of the keys of the map at idx (valid while that map lives): values
** that are not module members are told apart without a Lua lookup. */
const lmp_pmap *lmp__codec_revmap_set(lua_State *L, int idx);

#endif
