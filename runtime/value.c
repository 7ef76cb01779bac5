/*
** value.c — Value and Array (and their lock-less Raw forms): typed scalars and arrays in shared
** memory with Python's array typecodes, 1-based from Lua.
** Caveat: a single element read or write is atomic for the numeric types (aligned loads and
** stores) and takes no lock; compound updates (v.value = v.value + 1) need get_lock()/with().
*/
#include <errno.h>
#include <math.h>
#include <string.h>

#include "lmp_shm.h"

/* In shared memory: the header, then the elements (8-byte aligned). */
typedef struct shm_value {
  uint32_t tc, is_array;
  uint64_t n;
  uint64_t data[];
} shm_value;

/* User value 1: the lock (Lock/RLock) or nil. */
typedef struct valobj {
  lmp_shm_obj o;
  const struct tcinfo *t; /* cached from the shared header */
} valobj;

typedef struct tcinfo {
  char tc;
  uint8_t size, is_signed, is_float;
  lua_Integer lo, hi;
} tcinfo;

static const tcinfo tcs[] = {
    {'b', 1, 1, 0, -128, 127},
    {'B', 1, 0, 0, 0, 255},
    {'h', 2, 1, 0, -32768, 32767},
    {'H', 2, 0, 0, 0, 65535},
    {'i', 4, 1, 0, -2147483648LL, 2147483647LL},
    {'I', 4, 0, 0, 0, 4294967295LL},
    {'l', 8, 1, 0, LUA_MININTEGER, LUA_MAXINTEGER},
    {'L', 8, 0, 0, 0, LUA_MAXINTEGER},
    {'q', 8, 1, 0, LUA_MININTEGER, LUA_MAXINTEGER},
    {'Q', 8, 0, 0, 0, LUA_MAXINTEGER},
    {'f', 4, 1, 1, 0, 0},
    {'d', 8, 1, 1, 0, 0},
    {'c', 1, 0, 0, 0, 255},
};

static const tcinfo *find_tc(int c) {
  for (size_t i = 0; i < sizeof tcs / sizeof tcs[0]; i++)
    if (tcs[i].tc == c) return &tcs[i];
  return NULL;
}

/* The typecode at idx: TypeError for a non-string, ValueError for an unknown code. */
static const tcinfo *check_tc(lua_State *L, int idx) {
  size_t len;
  const char *s = lmp_checklstring(L, idx, &len);
  const tcinfo *t = len == 1 ? find_tc(s[0]) : NULL;
  if (t == NULL)
    lmp_argerror(L, idx, "ValueError", "bad typecode %s (expected one of bBhHiIlLqQfdc)",
                 lmp_pushdescribe(L, idx));
  return t;
}

static valobj *check_val(lua_State *L, int idx, const char *name) {
  valobj *v = lmp_checkudata(L, idx, name);
  if (v->o.arena == NULL) lmp_raise(L, "ValueError", "%s is closed", name);
  return v;
}

static const tcinfo *info_of(valobj *v) { return v->t; }

static char *elem(valobj *v, uint64_t i) {
  shm_value *s = v->o.p;
  return (char *)s->data + i * info_of(v)->size;
}

/* Pushes element p of type t. */
static void push_elem(lua_State *L, const tcinfo *t, const char *p) {
  switch (t->tc) {
    case 'b': lua_pushinteger(L, __atomic_load_n((const int8_t *)p, __ATOMIC_RELAXED)); break;
    case 'B': lua_pushinteger(L, __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED)); break;
    case 'h': lua_pushinteger(L, __atomic_load_n((const int16_t *)p, __ATOMIC_RELAXED)); break;
    case 'H': lua_pushinteger(L, __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED)); break;
    case 'i': lua_pushinteger(L, __atomic_load_n((const int32_t *)p, __ATOMIC_RELAXED)); break;
    case 'I': lua_pushinteger(L, __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED)); break;
    case 'l': case 'q':
      lua_pushinteger(L, __atomic_load_n((const int64_t *)p, __ATOMIC_RELAXED));
      break;
    case 'L': case 'Q': {
      uint64_t u = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
      if (u <= (uint64_t)LUA_MAXINTEGER) lua_pushinteger(L, (lua_Integer)u);
      else lua_pushnumber(L, (lua_Number)u);
      break;
    }
    case 'f': {
      float f;
      memcpy(&f, p, sizeof f);
      lua_pushnumber(L, f);
      break;
    }
    case 'd': {
      double d;
      memcpy(&d, p, sizeof d);
      lua_pushnumber(L, d);
      break;
    }
    case 'c': lua_pushlstring(L, p, 1); break;
  }
}

/* Stores the Lua value at idx into element p of type t; raises ValueError naming what. */
static void store_elem(lua_State *L, const tcinfo *t, char *p, int idx, const char *what) {
  if (t->is_float) {
    int ok;
    lua_Number n = lua_tonumberx(L, idx, &ok);
    if (!ok || lua_type(L, idx) != LUA_TNUMBER)
      lmp_raise(L, "TypeError", "%s: number expected, got %s", what, lmp_pushdescribe(L, idx));
    if (t->tc == 'f') {
      float f = (float)n;
      memcpy(p, &f, sizeof f);
    } else {
      memcpy(p, &n, sizeof n);
    }
    return;
  }
  lua_Integer v;
  if (t->tc == 'c') {
    size_t len;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
    if (s != NULL && len == 1) {
      *p = s[0];
      return;
    }
    if (lua_type(L, idx) != LUA_TNUMBER)
      lmp_raise(L, lua_type(L, idx) == LUA_TSTRING ? "ValueError" : "TypeError",
                "%s: one-byte string expected, got %s", what, lmp_pushdescribe(L, idx));
  }
  int ok;
  v = lua_tointegerx(L, idx, &ok);
  if (!ok || lua_type(L, idx) != LUA_TNUMBER) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      lmp_raise(L, "ValueError", "%s: integer expected, got non-integer %s", what,
                lua_tostring(L, idx));
    lmp_raise(L, "TypeError", "%s: integer expected, got %s", what, lmp_pushdescribe(L, idx));
  }
  if (v < t->lo || v > t->hi)
    lmp_raise(L, "ValueError", "%s: %I out of range for typecode '%c' (%I..%I)", what, v, t->tc,
              t->lo, t->hi);
  switch (t->size) {
    case 1: __atomic_store_n((uint8_t *)p, (uint8_t)v, __ATOMIC_RELAXED); break;
    case 2: __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED); break;
    case 4: __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED); break;
    case 8: __atomic_store_n((uint64_t *)p, (uint64_t)v, __ATOMIC_RELAXED); break;
  }
}

/* Reads opts at idx ({lock = true|false|lock}) and leaves the lock (or nil) on the stack. */
static void push_lock_opt(lua_State *L, int idx, int raw) {
  static const char *const names[] = {"lock", NULL};
  if (!lua_isnoneornil(L, idx)) {
    if (raw) lmp_argerror(L, idx, "ValueError", "Raw objects take no options (they have no lock)");
    lmp_checktype(L, idx, LUA_TTABLE);
    lmp_checkoptions(L, idx, names);
    lua_getfield(L, idx, "lock");
    if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && lua_toboolean(L, -1))) {
      lua_pop(L, 1);
    } else if (lua_isboolean(L, -1)) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return;
    } else {
      if (!lmp__is_lock(L, -1))
        lmp_argerror(L, idx, "TypeError", "lock must be a boolean, lmp.Lock or lmp.RLock, got %s",
                     lmp_pushdescribe(L, -1));
      return;
    }
  } else if (raw) {
    lua_pushnil(L);
    return;
  }
  lmp__new_rlock(L);
}

/* Creates the object (L: ... lock) -> (L: ... obj) with n elements of t. */
static valobj *new_value(lua_State *L, const tcinfo *t, uint64_t n, int is_array) {
  const char *name = is_array ? "lmp.Array" : "lmp.Value";
  valobj *v = lua_newuserdatauv(L, sizeof *v, 1);
  v->o.arena = NULL;
  v->t = NULL;
  luaL_setmetatable(L, name);
  if (n > ((uint64_t)1 << 40) / t->size)
    lmp_raise(L, "ValueError", "%s too large (%I elements)", name, (LUAI_UACINT)n);
  if (lmp_shm_alloc(sizeof(shm_value) + (size_t)(n * t->size), &v->o) != 0)
    lmp_raise(L, "ProcessError", "cannot allocate shared memory for an %s: %s", name + 4,
              strerror(errno));
  shm_value *s = v->o.p;
  v->t = t;
  s->tc = (uint32_t)t->tc;
  s->is_array = (uint32_t)is_array;
  s->n = n;
  lua_rotate(L, -2, 1); /* L: obj lock */
  lua_setiuservalue(L, -2, 1);
  return v;
}

/* Value(typecode [, init [, opts]]); RawValue(typecode [, init]). */
static int value_new(lua_State *L, int raw) {
  lmp_checknargs(L, raw ? 2 : 3);
  const tcinfo *t = check_tc(L, 1);
  lua_settop(L, 3);
  push_lock_opt(L, 3, raw);
  valobj *v = new_value(L, t, 1, 0);
  if (!lua_isnoneornil(L, 2)) store_elem(L, t, elem(v, 0), 2, "initial value");
  return 1;
}

static int l_Value(lua_State *L) { return value_new(L, 0); }
static int l_RawValue(lua_State *L) { return value_new(L, 1); }

/* Array(typecode, size_or_table [, opts]); RawArray(typecode, size_or_table). */
static int array_new(lua_State *L, int raw) {
  lmp_checknargs(L, raw ? 2 : 3);
  const tcinfo *t = check_tc(L, 1);
  uint64_t n;
  int kind = lua_type(L, 2);
  if (kind == LUA_TNUMBER) {
    lua_Integer k = lmp_checkinteger(L, 2);
    if (k < 0) return lmp_argerror(L, 2, "ValueError", "size must be >= 0, got %I", (LUAI_UACINT)k);
    n = (uint64_t)k;
  } else if (kind == LUA_TTABLE) {
    lua_Integer k = luaL_len(L, 2);
    n = k > 0 ? (uint64_t)k : 0;
  } else if (kind == LUA_TSTRING && t->tc == 'c') {
    n = (uint64_t)lua_rawlen(L, 2);
  } else {
    return lmp_typeerror(L, 2, t->tc == 'c' ? "size, table or string" : "size or table");
  }
  lua_settop(L, 3);
  push_lock_opt(L, 3, raw);
  valobj *v = new_value(L, t, n, 1);
  if (kind == LUA_TTABLE) {
    for (uint64_t i = 0; i < n; i++) {
      lua_geti(L, 2, (lua_Integer)i + 1);
      int vi = lua_gettop(L);
      store_elem(L, t, elem(v, i), vi, lua_pushfstring(L, "element %I", (lua_Integer)i + 1));
      lua_pop(L, 2);
    }
  } else if (kind == LUA_TSTRING) {
    memcpy(elem(v, 0), lua_tostring(L, 2), (size_t)n);
  }
  return 1;
}

void *lmp__array_elements(lua_State *L, int idx, int tc, uint64_t *n) {
  valobj *v = luaL_testudata(L, idx, "lmp.Array");
  if (v == NULL || v->o.arena == NULL || v->t->tc != tc) return NULL;
  shm_value *s = v->o.p;
  *n = s->n;
  return s->data;
}

static int l_Array(lua_State *L) { return array_new(L, 0); }
static int l_RawArray(lua_State *L) { return array_new(L, 1); }

/* ---- shared methods (user value 1 = lock) ---- */

/* Pushes the lock at idx's object, raising ValueError when it has none. */
static void push_lock(lua_State *L, int idx) {
  if (lua_getiuservalue(L, idx, 1) != LUA_TUSERDATA)
    lmp_raise(L, "ValueError", "this object has no lock (lock=false or Raw)");
}

static valobj *check_any(lua_State *L, int idx) {
  valobj *v = luaL_testudata(L, idx, "lmp.Value");
  if (v == NULL) v = luaL_testudata(L, idx, "lmp.Array");
  if (v == NULL) lmp_typeerror(L, idx, "lmp.Value or lmp.Array");
  if (v->o.arena == NULL) lmp_raise(L, "ValueError", "shared object is closed");
  return v;
}

static int l_get_lock(lua_State *L) {
  check_any(L, 1);
  lmp_checknargs(L, 1);
  push_lock(L, 1);
  return 1;
}

/* Calls lock:<method>(...) with the arguments after self; returns its results. */
static int lock_method(lua_State *L, const char *method) {
  check_any(L, 1);
  push_lock(L, 1);
  lua_getfield(L, -1, method);
  lua_replace(L, 1); /* L: method args... lock */
  lua_insert(L, 2);  /* L: method lock args... */
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int l_acquire(lua_State *L) { return lock_method(L, "acquire"); }
static int l_release(lua_State *L) { return lock_method(L, "release"); }

/* with(fn, ...): fn(self, ...) holding the lock. */
static int l_with(lua_State *L) {
  check_any(L, 1);
  lmp_checktype(L, 2, LUA_TFUNCTION);
  push_lock(L, 1);
  lua_pushcfunction(L, lmp__with); /* L: self fn args... lock with */
  lua_insert(L, 1);
  lua_insert(L, 2); /* L: with lock self fn args... */
  lua_rotate(L, 3, -1); /* L: with lock fn args... self */
  lua_insert(L, 4);     /* L: with lock fn self args... */
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int obj_gc(lua_State *L) {
  valobj *v = lua_touserdata(L, 1);
  lmp_shm_release(&v->o);
  return 0;
}

static int l_encode(lua_State *L) {
  valobj *v = lua_touserdata(L, 1);
  if (v == NULL || v->o.arena == NULL)
    return lmp_raise(L, "SerializationError", "cannot send a closed shared object");
  shm_value *s = v->o.p;
  const char *type = s->is_array ? "lmp.Array" : "lmp.Value";
  lmp_shm_obj *objs[2] = {&v->o, NULL};
  char x[1] = {0};
  if (lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA) {
    objs[1] = lua_touserdata(L, -1); /* Lock/RLock userdata start with their lmp_shm_obj */
    x[0] = luaL_testudata(L, -1, "lmp.RLock") ? 'R' : 'L';
  }
  return lmp_shm_push_handle(L, type, objs, x[0] ? 2 : 1, x, 1);
}

static int malformed(lua_State *L, const char *name) {
  return lmp_raise(L, "SerializationError", "malformed %s handle", name);
}

/* Decodes a Value or Array handle: payload at 1 (1 or 2 records, then the lock's kind byte),
** fds at 2.. The lock is built by its own decoder from the second record. */
static int decode(lua_State *L, const char *name) {
  size_t len;
  const char *p = lua_tolstring(L, 1, &len);
  int nargs = lua_gettop(L);
  int n = p != NULL && len > 0 ? (unsigned char)p[0] : 0;
  if ((n != 1 && n != 2) || len != 1 + (size_t)n * LMP_REF_SIZE + 1 ||
      (n == 2 && p[len - 1] != 'R' && p[len - 1] != 'L'))
    return malformed(L, name);
  valobj *v = lua_newuserdatauv(L, sizeof *v, 1);
  v->o.arena = NULL;
  v->t = NULL;
  luaL_setmetatable(L, name);
  lmp_shm_obj *objs[1] = {&v->o};
  if (n == 2) {
    char rec[1 + LMP_REF_SIZE];
    rec[0] = 1;
    memcpy(rec + 1, p + 1 + LMP_REF_SIZE, LMP_REF_SIZE);
    lua_getfield(L, LUA_REGISTRYINDEX, "lmp.shm.decoders");
    lua_getfield(L, -1, p[len - 1] == 'R' ? "lmp.RLock" : "lmp.Lock");
    lua_pushlstring(L, rec, sizeof rec);
    if (nargs >= 3) lua_pushvalue(L, 3);
    else lua_pushnil(L);
    lua_call(L, 2, 1); /* L: ... v decoders lock */
    lua_setiuservalue(L, -3, 1);
    lua_pop(L, 1);
  }
  char one[1 + LMP_REF_SIZE]; /* the object's own record, as a one-record payload */
  one[0] = 1;
  memcpy(one + 1, p + 1, LMP_REF_SIZE);
  lua_pushlstring(L, one, sizeof one);
  lua_replace(L, 1);
  size_t xl;
  lmp_shm_read_handle(L, objs, 1, &xl);
  shm_value *s = v->o.p;
  size_t room = lmp_shm_capacity(&v->o);
  if (room < sizeof(shm_value) || (v->t = find_tc((int)s->tc)) == NULL ||
      s->is_array != (strcmp(name, "lmp.Array") == 0) ||
      s->n > (room - sizeof(shm_value)) / v->t->size)
    return malformed(L, name);
  return 1;
}

static int dec_value(lua_State *L) { return decode(L, "lmp.Value"); }
static int dec_array(lua_State *L) { return decode(L, "lmp.Array"); }

/* ---- Value: .value ---- */

/* The object at 1 when its metatable is upvalue 2 (the hot path), else the checked one. */
static valobj *fast_val(lua_State *L, const char *name) {
  valobj *v = lua_touserdata(L, 1);
  if (v != NULL && lua_getmetatable(L, 1)) {
    int ok = lua_rawequal(L, -1, lua_upvalueindex(2));
    lua_pop(L, 1);
    if (ok && v->o.arena != NULL) return v;
  }
  return check_val(L, 1, name);
}

/* The string key at 2, or NULL (numbers are not converted in place). */
static const char *key_of(lua_State *L) {
  return lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
}

static int no_field(lua_State *L, const char *name) {
  return lmp_raise(L, "ValueError", "cannot set field %s of %s", lmp_pushdescribe(L, 2), name);
}

static int value_index(lua_State *L) {
  valobj *v = fast_val(L, "lmp.Value");
  const char *k = key_of(L);
  if (k != NULL && strcmp(k, "value") == 0) {
    push_elem(L, info_of(v), elem(v, 0));
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int value_newindex(lua_State *L) {
  valobj *v = fast_val(L, "lmp.Value");
  const char *k = key_of(L);
  if (k == NULL || strcmp(k, "value") != 0) return no_field(L, "lmp.Value");
  store_elem(L, info_of(v), elem(v, 0), 3, "value");
  return 0;
}

/* ---- Array: a[i], #a, totable, pairs/ipairs, 'c' .value/.raw ---- */

/* ipairs's iterator (the function ipairs returns): a read just past the end from it ends the
** loop with nil instead of raising. */
static lua_CFunction ipairs_iter;

/* 1 when the __index call running now was made by ipairs's iterator. */
static int called_by_ipairs(lua_State *L) {
  lua_Debug ar;
  if (ipairs_iter == NULL || !lua_getstack(L, 1, &ar) || !lua_getinfo(L, "f", &ar)) return 0;
  int yes = lua_tocfunction(L, -1) == ipairs_iter;
  lua_pop(L, 1);
  return yes;
}

/* The 0-based element of the index at idx; ValueError outside 1..#a. */
static uint64_t check_index(lua_State *L, valobj *v, int idx) {
  int ok;
  lua_Integer i = lua_tointegerx(L, idx, &ok);
  uint64_t n = ((shm_value *)v->o.p)->n;
  if (!ok) lmp_raise(L, "ValueError", "array index must be an integer, got %s", lmp_pushdescribe(L, idx));
  if (i < 1 || (uint64_t)i > n)
    lmp_raise(L, "ValueError", "array index %I out of range (1..%I)", (LUAI_UACINT)i,
              (LUAI_UACINT)n);
  return (uint64_t)i - 1;
}

static int array_index(lua_State *L) {
  valobj *v = fast_val(L, "lmp.Array");
  const tcinfo *t = info_of(v);
  shm_value *s = v->o.p;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (lua_isinteger(L, 2) && (uint64_t)lua_tointeger(L, 2) == s->n + 1 && called_by_ipairs(L))
      return 0;
    push_elem(L, t, elem(v, check_index(L, v, 2)));
    return 1;
  }
  const char *k = key_of(L);
  if (k != NULL && t->tc == 'c' && strcmp(k, "raw") == 0) {
    lua_pushlstring(L, elem(v, 0), (size_t)s->n);
    return 1;
  }
  if (k != NULL && t->tc == 'c' && strcmp(k, "value") == 0) {
    lua_pushlstring(L, elem(v, 0), strnlen(elem(v, 0), (size_t)s->n));
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int array_newindex(lua_State *L) {
  valobj *v = fast_val(L, "lmp.Array");
  const tcinfo *t = info_of(v);
  shm_value *s = v->o.p;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    uint64_t i = check_index(L, v, 2);
    store_elem(L, t, elem(v, i), 3, lua_pushfstring(L, "element %I", (LUAI_UACINT)i + 1));
    return 0;
  }
  const char *k = key_of(L);
  if (k != NULL && t->tc == 'c' && (strcmp(k, "raw") == 0 || strcmp(k, "value") == 0)) {
    if (lua_type(L, 3) != LUA_TSTRING)
      return lmp_raise(L, "TypeError", "%s: string expected, got %s", k, lmp_pushdescribe(L, 3));
    size_t len;
    const char *str = lua_tolstring(L, 3, &len);
    if (len > s->n) return lmp_raise(L, "ValueError", "string too long (%I > %I bytes)",
                                     (LUAI_UACINT)len, (LUAI_UACINT)s->n);
    memcpy(elem(v, 0), str, len);
    if (k[0] == 'v' && len < s->n) elem(v, 0)[len] = '\0';
    return 0;
  }
  return no_field(L, "lmp.Array");
}

/* The iterator of pairs(a): (a, i) -> i + 1, a[i + 1] until the end. */
static int array_next(lua_State *L) {
  valobj *v = check_val(L, 1, "lmp.Array");
  lua_Integer i = lua_tointeger(L, 2) + 1;
  if (i < 1 || (uint64_t)i > ((shm_value *)v->o.p)->n) return 0;
  lua_pushinteger(L, i);
  push_elem(L, info_of(v), elem(v, (uint64_t)i - 1));
  return 2;
}

static int array_pairs(lua_State *L) {
  check_val(L, 1, "lmp.Array");
  lua_pushcfunction(L, array_next);
  lua_pushvalue(L, 1);
  lua_pushinteger(L, 0);
  return 3;
}

static int array_len(lua_State *L) {
  valobj *v = check_val(L, 1, "lmp.Array");
  lua_pushinteger(L, (lua_Integer)((shm_value *)v->o.p)->n);
  return 1;
}

static int array_totable(lua_State *L) {
  valobj *v = check_val(L, 1, "lmp.Array");
  lmp_checknargs(L, 1);
  const tcinfo *t = info_of(v);
  uint64_t n = ((shm_value *)v->o.p)->n;
  lua_createtable(L, n < INT32_MAX ? (int)n : 0, 0);
  for (uint64_t i = 0; i < n; i++) {
    push_elem(L, t, elem(v, i));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int obj_tostring(lua_State *L) {
  valobj *v = check_any(L, 1);
  shm_value *s = v->o.p;
  if (s->is_array)
    lua_pushfstring(L, "lmp.Array('%c', %I)", (int)s->tc, (lua_Integer)s->n);
  else {
    push_elem(L, info_of(v), elem(v, 0));
    lua_pushfstring(L, "lmp.Value('%c', %s)", (int)s->tc, luaL_tolstring(L, -1, NULL));
  }
  return 1;
}

static void make_class(lua_State *L, const char *name, lua_CFunction index,
                       lua_CFunction newindex, int is_array) {
  static const luaL_Reg methods[] = {{"get_lock", l_get_lock}, {"acquire", l_acquire},
                                     {"release", l_release},   {"with", l_with},
                                     {"totable", array_totable}, {NULL, NULL}};
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  if (!is_array) {
    lua_pushnil(L);
    lua_setfield(L, -2, "totable");
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__methods"); /* what REPL completion offers (it never calls __index) */
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, index, 2); /* upvalues: methods, metatable */
  lua_setfield(L, -2, "__index");
  lua_pushnil(L);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, newindex, 2);
  lua_setfield(L, -2, "__newindex");
  static const luaL_Reg meta[] = {{"__gc", obj_gc}, {"__close", obj_gc},
                                  {"__lmp_encode", l_encode}, {"__tostring", obj_tostring},
                                  {NULL, NULL}};
  luaL_setfuncs(L, meta, 0);
  if (is_array) {
    lua_pushcfunction(L, array_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, array_pairs);
    lua_setfield(L, -2, "__pairs");
  }
  lua_pop(L, 1);
}

/* Finds ipairs's iterator (called_by_ipairs), when the base library is there. */
static void find_ipairs_iter(lua_State *L) {
  if (lua_getglobal(L, "ipairs") == LUA_TFUNCTION) {
    lua_newtable(L);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_tocfunction(L, -1) != NULL)
      ipairs_iter = lua_tocfunction(L, -1);
  }
  lua_pop(L, 1);
}

void lmp__open_value(lua_State *L) {
  int core = lua_gettop(L);
  find_ipairs_iter(L);
  make_class(L, "lmp.Value", value_index, value_newindex, 0);
  make_class(L, "lmp.Array", array_index, array_newindex, 1);
  static const luaL_Reg ctors[] = {{"Value", l_Value},       {"RawValue", l_RawValue},
                                   {"Array", l_Array},       {"RawArray", l_RawArray},
                                   {NULL, NULL}};
  luaL_setfuncs(L, ctors, 0);
  lmp_shm_register(L, core, "lmp.Value", dec_value);
  lmp_shm_register(L, core, "lmp.Array", dec_array);
}
