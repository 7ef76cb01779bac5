/*
** codec.h — the wire format of lmp messages, shared by the encoder (codec_enc.c), the decoder
** (codec_dec.c) and the module glue (codec.c). Not part of the public API.
*/
#ifndef LMP_CODEC_H
#define LMP_CODEC_H

#include <stdint.h>
#include "lmp_int.h"

/* Message header: 'L' 'M' 'P' version flags. */
#define CODEC_MAGIC0 'L'
#define CODEC_MAGIC1 'M'
#define CODEC_MAGIC2 'P'
#define CODEC_VERSION 1
#define CODEC_HEADER 5
#define CODEC_FLAG_FDINDEX 0x01 /* handle fds are indexes into the fd vector */

#define CODEC_MAX_DEPTH 200

/* Value tags (one byte each). */
enum {
  T_NIL = 0,
  T_FALSE = 1,
  T_TRUE = 2,
  T_INT = 3,     /* zigzag varint */
  T_FLOAT = 4,   /* 8 bytes, IEEE-754 bits little-endian */
  T_STR = 5,     /* varint length, bytes */
  T_TABLE = 6,   /* varint narr, narr values, u32 nhash, nhash key/value pairs, metatable value */
  T_REF = 7,     /* varint id of a table/function/handle seen earlier in this message */
  T_FUNC = 8,    /* secret[8], varint len, bytecode, varint nups, upvalues, globals */
  T_GLOBALS = 9, /* the sender's globals table: the receiver's */
  T_MODREF = 10, /* varint len, "module" or "module\0field" */
  T_HANDLE = 11, /* str typename, str payload, varint nfds, varint fd (raw or index) each */
  T_TABLE_I = 12, /* a table whose array part is all integers: as T_TABLE, but the narr
                  ** array values are 8-byte little-endian integers (no tags) */
  T_TABLE_F = 13, /* likewise, all floats: 8-byte IEEE-754 bits */
  T_LAST = T_TABLE_F
};

/* Upvalue record kinds inside T_FUNC. */
enum {
  UV_ENV = 0,    /* the per-message environment of captured globals */
  UV_VALUE = 1,  /* followed by a value */
  UV_SHARED = 2  /* varint function id, byte upvalue index: join with that upvalue */
};

/* Registry keys. */
#define CODEC_HANDLES "lmp.codec.handles"   /* typename -> decoder function */
#define CODEC_FCACHE "lmp.codec.fcache"     /* closure -> {bytecode, global names...} (weak) */
#define CODEC_ENVMT "lmp.codec.envmt"       /* {__index = _G, __newindex = _G}, shared */
#define CODEC_REVMAP "lmp.codec.revmap"     /* value -> "module" / "module\0field" */

/* Signs a message that was authenticated by other means (a cluster HMAC) for this process: a
** message that carries functions then decodes here. */
void lmp__codec_resign(char *msg, size_t n);

/* The per-process secret that function records must carry. */
uint64_t lmp__codec_secret(void);
void lmp__codec_set_secret(uint64_t s);

/* Encodes the value at idx like lmp_encode_buf, naming the root `root` in error paths. */
void lmp__encode_named(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds, const char *root);

/* Encodes t[first..first+count-1] (t at idx) as the message of an array table with
** n = count, as if that slice had been copied into a table: no copy is made. Error paths
** name elements root[i] with their index in t. */
void lmp__encode_range(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                       lmp_buf *out, lmp_fdvec *fds, const char *root);

/* Decodes a message holding an array table (what lmp__encode_range makes) straight into
** t[offset..offset+narr-1] (t at stack index t), without making the table; returns narr.
** Raises SerializationError for anything else. */
lua_Integer lmp__decode_into(lua_State *L, const char *s, size_t n, int t, lua_Integer offset);

/* Pushes the reverse map of package.loaded (value -> module reference), rebuilt when
** package.loaded changed since the last call. */
void lmp__codec_revmap(lua_State *L);

#endif
