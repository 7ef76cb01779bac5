/*
** json.c — Lua values as JSON text, object keys sorted, so the same value is always written
** the same bytes (Lua's table order changes from run to run): lmp.core.json_encode, and
** lmp__json_encode for jsonmap.c.
** Caveats: strings are written byte for byte (UTF-8 is assumed, never checked); tables are
** read raw (no __index, no __pairs); NaN and infinities have no JSON form and are errors.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "cli.h"
#include "lmp_int.h"

#define MAX_DEPTH 1000
#define HELD_PAIRS 64 /* an object this small is read in one pass, its pairs on the stack */

typedef struct enc {
  lmp_buf *out;
  const char *err; /* the first error; NULL while all is well */
  char errbuf[112];
} enc;

static void put_slow(enc *e, const char *s, size_t n) {
  if (e->err == NULL && lmp_buf_add(e->out, s, n) != 0) e->err = "not enough memory";
}

static inline void put(enc *e, const char *s, size_t n) {
  lmp_buf *b = e->out;
  if (b->cap - b->len >= n) {
    memcpy(b->p + b->len, s, n);
    b->len += n;
  } else {
    put_slow(e, s, n);
  }
}

static inline void putc1(enc *e, char c) {
  lmp_buf *b = e->out;
  if (b->len < b->cap) b->p[b->len++] = c;
  else put_slow(e, &c, 1);
}

static void fail(enc *e, const char *fmt, const char *what) {
  if (e->err != NULL) return;
  snprintf(e->errbuf, sizeof e->errbuf, fmt, what);
  e->err = e->errbuf;
}

/* Writes an integer in decimal into buf (at least 21 bytes); returns the length. */
static int format_int(char *buf, long long v) {
  char tmp[24];
  int n = 0;
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do tmp[n++] = (char)('0' + u % 10);
  while ((u /= 10) != 0);
  int len = 0;
  if (v < 0) buf[len++] = '-';
  while (n > 0) buf[len++] = tmp[--n];
  return len;
}

/* Formats a float the shortest way (15 to 17 digits) that reads back as the same number;
** integral values below 1e15 are written without a fraction (JSON has one number type).
** Returns the length, or -1 for NaN and infinities. */
static int format_float(char *buf, size_t n, double x) {
  if (isnan(x) || isinf(x)) return -1;
  if (x == floor(x) && fabs(x) < 1e15) {
    if (x == 0 && signbit(x)) return snprintf(buf, n, "-0");
    return format_int(buf, (long long)x);
  }
  int len = 0;
  for (int prec = 15; prec <= 17; prec++) {
    len = snprintf(buf, n, "%.*g", prec, x);
    if (prec == 17 || strtod(buf, NULL) == x) break;
  }
  return len;
}

static void put_number(enc *e, lua_State *L, int idx) {
  char buf[40];
  int len;
  if (lua_isinteger(L, idx)) {
    len = format_int(buf, (long long)lua_tointeger(L, idx));
  } else if ((len = format_float(buf, sizeof buf, (double)lua_tonumber(L, idx))) < 0) {
    fail(e, "cannot encode %s (JSON has no NaN or infinity)", "a non-finite number");
    return;
  }
  put(e, buf, (size_t)len);
}

/* Writes s as a JSON string: quotes, backslashes and control bytes escaped. */
static void put_string(enc *e, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  putc1(e, '"');
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    put(e, s + run, i - run);
    run = i + 1;
    char esc[6] = {'\\', 0, 0, 0, 0, 0};
    size_t len = 2;
    switch (c) {
    case '"': esc[1] = '"'; break;
    case '\\': esc[1] = '\\'; break;
    case '\n': esc[1] = 'n'; break;
    case '\r': esc[1] = 'r'; break;
    case '\t': esc[1] = 't'; break;
    case '\b': esc[1] = 'b'; break;
    case '\f': esc[1] = 'f'; break;
    default:
      esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
      len = 6;
    }
    put(e, esc, len);
  }
  put(e, s + run, n - run);
  putc1(e, '"');
}

static void put_value(enc *e, lua_State *L, int idx, int depth);

/* 1 when the table's metatable says it is an array (__json = "array"), even when empty. */
static int marked_array(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  lua_getfield(L, -1, "__json");
  const char *s = lua_tostring(L, -1);
  int yes = s != NULL && strcmp(s, "array") == 0;
  lua_pop(L, 2);
  return yes;
}

static void put_array(enc *e, lua_State *L, int idx, lua_Integer n, int depth) {
  putc1(e, '[');
  for (lua_Integer i = 1; i <= n && e->err == NULL; i++) {
    if (i > 1) putc1(e, ',');
    lua_rawgeti(L, idx, i);
    put_value(e, L, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  putc1(e, ']');
}

typedef struct key {
  const char *s; /* the text: the table's own string, or a number written in nums */
  size_t len;
  int at;        /* stack index of the key (its value is at + 1), 0 when not held */
} key;

static int key_cmp(const key *x, const key *y) {
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->s, y->s, n);
  if (c != 0) return c;
  return (x->len > y->len) - (x->len < y->len);
}

static int key_qcmp(const void *a, const void *b) { return key_cmp(a, b); }

static void sort_keys(key *k, size_t n) {
  if (n > 16) {
    qsort(k, n, sizeof *k, key_qcmp);
    return;
  }
  for (size_t i = 1; i < n; i++) { /* insertion sort: records have few keys */
    key t = k[i];
    size_t j = i;
    while (j > 0 && key_cmp(&k[j - 1], &t) > 0) {
      k[j] = k[j - 1];
      j--;
    }
    k[j] = t;
  }
}

/* The text of the key at stack index at: a string as it is, a number written into num
** (32 bytes). NULL (and an error) for other key types. */
static const char *key_of(enc *e, lua_State *L, int at, char *num, size_t *len) {
  int t = lua_type(L, at);
  if (t == LUA_TSTRING) return lua_tolstring(L, at, len);
  if (t == LUA_TNUMBER) {
    int n = lua_isinteger(L, at) ? format_int(num, (long long)lua_tointeger(L, at))
                                 : format_float(num, 32, (double)lua_tonumber(L, at));
    *len = n < 0 ? 0 : (size_t)n;
    return num;
  }
  fail(e, "cannot encode a table key of type %s", luaL_typename(L, at));
  return NULL;
}

/* Writes an object whose keys are given (sorted here); values are read from the stack when
** held there, else from the table. */
static void put_members(enc *e, lua_State *L, int idx, key *keys, size_t n, int depth) {
  sort_keys(keys, n);
  putc1(e, '{');
  for (size_t i = 0; i < n && e->err == NULL; i++) {
    if (i > 0) putc1(e, ',');
    put_string(e, keys[i].s, keys[i].len);
    putc1(e, ':');
    put_value(e, L, keys[i].at + 1, depth + 1);
  }
  putc1(e, '}');
}

/* A large object: its keys and values are collected in a second pass (key, value pairs on
** the stack, which grows by two slots a key). */
static void put_big_object(enc *e, lua_State *L, int idx, size_t count, int depth) {
  int base = lua_gettop(L);
  key *keys = malloc(count * (sizeof(key) + 32));
  if (keys == NULL || !lua_checkstack(L, (int)(2 * count + 4))) {
    free(keys);
    e->err = "not enough memory";
    return;
  }
  char *nums = (char *)(keys + count);
  size_t n = 0;
  lua_pushnil(L);
  while (n < count && lua_next(L, idx) != 0) {
    keys[n].at = lua_gettop(L) - 1;
    keys[n].s = key_of(e, L, keys[n].at, nums + 32 * n, &keys[n].len);
    n++;
    lua_pushvalue(L, -2);
  }
  if (e->err == NULL) put_members(e, L, idx, keys, n, depth);
  lua_settop(L, base);
  free(keys);
}

/* Writes a table: an array when every key is an integer 1..n (a few holes become null), an
** object otherwise. One pass over the table finds out, keeping the pairs of a small one. */
static void put_table(enc *e, lua_State *L, int idx, int depth) {
  if (depth > MAX_DEPTH) {
    fail(e, "cannot encode %s", "a table nested deeper than 1000 levels (a cycle?)");
    return;
  }
  if (!lua_checkstack(L, 2 * HELD_PAIRS + 8)) {
    e->err = "not enough stack";
    return;
  }
  int base = lua_gettop(L);
  size_t count = 0;
  lua_Integer max = 0;
  int ints = 1;
  key keys[HELD_PAIRS];
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) { /* ... [held pairs] key value */
    count++;
    if (ints && lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
      if (lua_tointeger(L, -2) > max) max = lua_tointeger(L, -2);
    } else {
      ints = 0;
    }
    if (count <= HELD_PAIRS) {
      keys[count - 1].at = lua_gettop(L) - 1;
      lua_pushvalue(L, -2); /* keep the pair; go on from a copy of the key */
    } else {
      lua_pop(L, 1);
    }
  }
  if (ints && (count > 0 || marked_array(L, idx)) && (lua_Unsigned)max <= 2 * count + 10) {
    lua_settop(L, base);
    put_array(e, L, idx, max, depth);
  } else if (count == 0) {
    put(e, "{}", 2);
  } else if (count > HELD_PAIRS) {
    lua_settop(L, base);
    put_big_object(e, L, idx, count, depth);
  } else {
    char nums[HELD_PAIRS][32];
    for (size_t i = 0; i < count && e->err == NULL; i++)
      keys[i].s = key_of(e, L, keys[i].at, nums[i], &keys[i].len);
    if (e->err == NULL) put_members(e, L, idx, keys, count, depth);
    lua_settop(L, base);
  }
}

static void put_value(enc *e, lua_State *L, int idx, int depth) {
  switch (lua_type(L, idx)) {
  case LUA_TNIL: put(e, "null", 4); break;
  case LUA_TBOOLEAN: lua_toboolean(L, idx) ? put(e, "true", 4) : put(e, "false", 5); break;
  case LUA_TNUMBER: put_number(e, L, idx); break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    put_string(e, s, n);
    break;
  }
  case LUA_TTABLE: put_table(e, L, idx, depth); break;
  case LUA_TLIGHTUSERDATA: /* lua-cjson's null is a NULL light userdata */
    if (lua_touserdata(L, idx) == NULL) {
      put(e, "null", 4);
      break;
    }
    /* fallthrough */
  default: fail(e, "cannot encode a %s", luaL_typename(L, idx));
  }
}

const char *lmp__json_encode(lua_State *L, int idx, lmp_buf *out, char errbuf[112]) {
  size_t len = out->len;
  enc e = {.out = out, .err = NULL};
  put_value(&e, L, lua_absindex(L, idx), 1);
  if (e.err == NULL) return NULL;
  out->len = len;
  if (e.err == e.errbuf) {
    memcpy(errbuf, e.errbuf, sizeof e.errbuf);
    return errbuf;
  }
  return e.err;
}

void lmp__json_put_string(lmp_buf *out, const char *s, size_t n) {
  enc e = {.out = out, .err = NULL};
  put_string(&e, s, n);
}

/* The buffer every encoding of this thread reuses (kept small after a large one). */
static _Thread_local lmp_buf scratch;

/* json_encode(v) -> string | nil, message. Never raises for a value it cannot encode. */
static int l_json_encode(lua_State *L) {
  lua_settop(L, 1);
  char errbuf[112];
  scratch.len = 0;
  const char *err = lmp__json_encode(L, 1, &scratch, errbuf);
  int nres = 1;
  if (err != NULL) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    nres = 2;
  } else {
    lua_pushlstring(L, scratch.p ? scratch.p : "", scratch.len);
  }
  if (scratch.cap > (1u << 20)) lmp_buf_free(&scratch);
  return nres;
}

void lmp__open_json(lua_State *L) {
  lua_pushcfunction(L, l_json_encode);
  lua_setfield(L, -2, "json_encode");
}
