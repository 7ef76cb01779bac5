/*
** codec_enc.h — the encoder's state and its output primitives, shared by codec_enc.c (values
** and tables) and codec_fn.c (functions). Not part of the public API.
*/
#ifndef LMP_CODEC_ENC_H
#define LMP_CODEC_ENC_H

#include <string.h>

#include "codec.h"
#include "codec_arr.h"
#include "codec_pmap.h"

/* Path components, kept as a small stack and turned into text only when an error happens. */
enum { F_INDEX, F_KEY, F_KEYSLOT, F_KEYOF, F_UPVAL, F_MT, F_GLOBAL };

typedef struct frame {
  int kind;
  int idx;          /* F_KEY: stack index of the key */
  lua_Integer i;    /* F_INDEX */
  const char *name; /* F_UPVAL, F_GLOBAL */
  lmp_tv key;       /* F_KEYSLOT: the key, read in place from a table's node */
} frame;

#define MAX_FRAMES (CODEC_MAX_DEPTH + 8)
#define FEW_OBJS 16 /* objects numbered before the identity map is made */
#define FEW_STRS 16 /* memoised strings before the string map is made */
#define KEY_SLOTS 16 /* hash nodes and array slots whose string's reference is remembered */

/* The short string last written from hash node i of a table (a key) or from its array slot i
** (a value), i < KEY_SLOTS, when it went as a back reference: tables of one shape hold the
** same keys at the same nodes (and records often the same strings at the same slots), and
** write the same bytes for them. */
typedef struct keyref {
  const void *ts;           /* the key, or NULL */
  uint32_t off;             /* the offset of its T_STR */
  unsigned char n, ref[8];  /* the n bytes of its T_SREF */
} keyref;

typedef struct enc {
  lua_State *L;
  lmp_buf *out;
  size_t start; /* where this message begins in out */
  lmp_fdvec *fds;
  const char *root;
  int has_func; /* a function record was written: the message gets a MAC */
  size_t nobj;  /* tables, functions, userdata and strings written in full so far */
  /* identity: addresses of objects sent, with the offsets of their records, in `few` while
  ** they fit, then in the scratch's map */
  int nfew;
  const void *few[FEW_OBJS];
  uint32_t fewoff[FEW_OBJS];
  /* the string memo: address of a short string -> offset of its T_STR in the message */
  int nsfew;
  const char *sfew[FEW_STRS];
  uint32_t sfewoff[FEW_STRS];
  lmp_scratch *scratch; /* the state's (cached), or a temporary one made when needed */
  int scratchslot;
  int cached;           /* scratch is the state's, given back when its slot is removed */
  int upv;    /* upvalue id (light userdata) -> function id * 256 + upvalue index */
  int caps;   /* global name -> true once captured in this message */
  int G;      /* the globals table */
  const void *Gp;
  int fcache; /* closure -> {bytecode, global names...} */
  int rev;    /* reverse module map, loaded on first need */
  const lmp_pmap *revset; /* its keys, for a lookup without the Lua API */
  int have_rev;
  int pusherslot;  /* a one-slot table that pushes values read in place (codec_tab.c) */
  void *pushslot;  /* its slot; NULL until it is made */
  int depth, nframe;
  keyref keys[KEY_SLOTS], slots[KEY_SLOTS];
  frame frames[MAX_FRAMES];
} enc;

/* ---- errors and paths (codec_enc.c) ---- */
/* Raises a SerializationError "<path>: <what>". Never returns. */
void lmp__enc_fail(enc *e, const char *what);
#define fail lmp__enc_fail

static inline void push_frame(enc *e, int kind, int idx, lua_Integer i, const char *name) {
  if (e->nframe >= MAX_FRAMES) fail(e, "nesting deeper than 200");
  frame *f = &e->frames[e->nframe++];
  f->kind = kind;
  f->idx = idx;
  f->i = i;
  f->name = name;
}

#define pop_frame(e) ((e)->nframe--)

/* Enters a nested container: checks the depth limit and the Lua stack. */
static inline void enter(enc *e) {
  if (++e->depth > CODEC_MAX_DEPTH) fail(e, "nesting deeper than 200");
  if (!lua_checkstack(e->L, 16)) fail(e, "Lua stack overflow");
}

/* ---- output ---- */

void lmp__enc_grow(enc *e, size_t n);


/* Room for n more bytes at the end of the output. */
static inline unsigned char *room(enc *e, size_t n) {
  lmp_buf *b = e->out;
  if (b->cap - b->len < n) lmp__enc_grow(e, n);
  return (unsigned char *)b->p + b->len;
}

static inline void put_byte(enc *e, int b) {
  *room(e, 1) = (unsigned char)b;
  e->out->len++;
}

/* Writes v as a little-endian base-128 varint (7 bits per byte, high bit = more). */
static inline void put_varint(enc *e, uint64_t v) {
  unsigned char *p = room(e, 10), *q = p;
  while (v >= 0x80) {
    *q++ = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  *q++ = (unsigned char)v;
  e->out->len += (size_t)(q - p);
}

static inline void put_bytes(enc *e, const void *s, size_t n) {
  memcpy(room(e, n), s, n);
  e->out->len += n;
}

/* Stores an 8-byte value little-endian. */
static inline void put_le64(unsigned char *p, uint64_t u) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &u, 8);
#else
  for (int b = 0; b < 8; b++) p[b] = (unsigned char)(u >> (8 * b));
#endif
}

static inline void put_str(enc *e, const char *s, size_t n) {
  put_varint(e, n);
  put_bytes(e, s, n);
}

/* Writes an integer (zigzag varint) or a float (raw IEEE bits), keeping the subtype. */
static inline void put_int(enc *e, lua_Integer i) {
  uint64_t u = (uint64_t)i;
  unsigned char *p = room(e, 11);
  *p = T_INT;
  e->out->len++;
  put_varint(e, (u << 1) ^ (uint64_t)(-(int64_t)(u >> 63)));
}

static inline void put_float(enc *e, lua_Number d) {
  uint64_t bits;
  memcpy(&bits, &d, 8);
  unsigned char *p = room(e, 9);
  *p = T_FLOAT;
  put_le64(p + 1, bits);
  e->out->len += 9;
}

/* 1 when the message holds at offset off a T_STR of the n bytes at s (n <= 40: compared
** here rather than through a memcmp call). */
static inline int lmp__enc_holds(enc *e, uint64_t off, const char *s, size_t n) {
  const unsigned char *q = (const unsigned char *)e->out->p + e->start + off;
  if (q[0] != T_STR || q[1] != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (q[2 + i] != (unsigned char)s[i]) return 0;
  return 1;
}

/* Writes the short string ts as any string (lmp__enc_string), remembering in k the back
** reference it went as, if it did (codec_enc.c). */
void lmp__enc_key(enc *e, keyref *k, const void *ts);

/* Writes the short string ts read from the node or slot whose record is k: the bytes of k
** when they refer to that string, else through lmp__enc_key. */
static inline void put_keyed(enc *e, keyref *k, const void *ts) {
  if (k->ts == ts && lmp__enc_holds(e, k->off, LMP_TS_STR(ts), lmp__ts_len(ts, TV_SHRSTR))) {
    unsigned char *p = room(e, sizeof k->ref);
    memcpy(p, k->ref, sizeof k->ref);
    e->out->len += k->n;
    return;
  }
  lmp__enc_key(e, k, ts);
}

/* ---- shared by values, tables and functions ---- */

/* Writes the value at idx (an absolute index) by its type. */
void lmp__enc_value(enc *e, int idx);
/* The offset of the record of the object at address p; when it is new (*isnew = 1), that is
** where the caller writes it now. */
lua_Integer lmp__enc_number(enc *e, const void *p, int *isnew);
/* Writes a T_MODREF when the value at idx (at address p) is a module or a module's field;
** returns 1 then. */
int lmp__enc_modref(enc *e, int idx, const void *p);
/* Marks the record at offset off as referred to (T_KEPT); writes a T_REF to it when ref. */
void lmp__enc_ref(enc *e, lua_Integer off, int ref);
/* Writes a string (short ones through the memo: maybe as a T_SREF). Returns the offset of
** the copy a T_SREF was written for, or 0xffffffff when the string went in full. */
uint32_t lmp__enc_string(enc *e, const char *s, size_t n);

/* The prologue of every object's record: 1 when the object at address p was sent already in
** this message (a back reference is written), else 0 with *id the offset of its record. */
static inline int lmp__enc_sent(enc *e, const void *p, lua_Integer *id) {
  int isnew;
  *id = lmp__enc_number(e, p, &isnew);
  if (isnew) return 0;
  lmp__enc_ref(e, *id, 1);
  return 1;
}
/* Pushes the __lmp_encode hook of the metatable at mt; returns 0 (nothing pushed) if none. */
int lmp__enc_hook(lua_State *L, int mt);
/* Encodes the object at idx (already numbered) through its hook (on the stack top,
** consumed). */
void lmp__enc_handle(enc *e, int idx);

/* Writes the table at idx (codec_tab.c). */
void lmp__enc_table(enc *e, int idx);
/* Writes the array values t[first..first+narr-1] of the table at idx; returns the table tag
** they need (T_TABLE, or T_TABLE_I / T_TABLE_F for numbers in bulk). */
int lmp__enc_array(enc *e, int idx, lua_Integer first, lua_Integer narr);

/* Writes the Lua function at idx (codec_fn.c), its record at offset fid. */
void lmp__enc_function(enc *e, int idx, lua_Integer fid);

#endif
