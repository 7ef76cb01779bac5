/*
** test_codec.c — unit tests of the value codec: round trips of every kind of value, error
** paths, the handle hook, and hostile input (truncation, corruption, huge lengths, depth),
** the MAC of function-carrying messages. Everything runs twice: with direct access to table
** layouts (codec_arr.h) and with it turned off, so the public-API paths are tested as well.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "codec.h"
#include "codec_arr.h"
#include "lmp.h"

static int failures;

#define CHECK(c)                                                        \
  do {                                                                  \
    if (!(c)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      failures++;                                                       \
    }                                                                   \
  } while (0)

/* Runs a Lua snippet; a Lua error counts as a failure. */
static void run(lua_State *L, const char *name, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", name, luaL_tolstring(L, -1, NULL));
    failures++;
  }
  lua_settop(L, 0);
}

/* ---- Lua-level round trips ---- */

static const char *prelude =
    "core = require 'lmp.core'\n"
    "function rt(v) return core.decode(core.encode(v)) end\n"
    "function fails(pat, f, ...)\n"
    "  local ok, e = pcall(f, ...)\n"
    "  assert(not ok, 'expected an error')\n"
    "  assert(type(e) == 'table' and e.type == 'SerializationError', tostring(e))\n"
    "  assert(e.message:find(pat, 1, true), e.message)\n"
    "  return e\n"
    "end\n";

static const char *scalars =
    "assert(rt(nil) == nil and rt(true) == true and rt(false) == false)\n"
    "assert(math.type(rt(3)) == 'integer' and math.type(rt(3.0)) == 'float')\n"
    "local n = rt(0/0); assert(n ~= n)\n"
    "assert(rt(1/0) == 1/0 and rt(-1/0) == -1/0 and 1/rt(-0.0) == -1/0)\n"
    "assert(rt(math.mininteger) == math.mininteger and rt(math.maxinteger) == math.maxinteger)\n"
    "assert(rt(-1) == -1 and rt(0) == 0 and rt(1.5) == 1.5 and rt(2^53) == 2^53)\n"
    "assert(rt('') == '' and rt('a\\0b\\255') == 'a\\0b\\255')\n";

static const char *tables =
    "local e = rt({}); assert(type(e) == 'table' and next(e) == nil)\n"
    "local s = rt({[1]=1, [3]=3, [1000]=true})\n"
    "assert(s[1]==1 and s[2]==nil and s[3]==3 and s[1000])\n"
    "local k = {}; local m = rt({1, 2, x='y', [2.5]='f', [true]=false, [k]=k, ['a b']={}})\n"
    "assert(m[1]==1 and m[2]==2 and m.x=='y' and m[2.5]=='f' and m[true]==false and m['a b'])\n"
    "local tk = next({})\n"
    "for key, v in pairs(m) do if type(key)=='table' then assert(key==v) tk=key end end\n"
    "assert(tk)\n"
    "local t = {}; t.self = t; local r = rt(t); assert(r.self == r)\n"
    "local a = {}; local b = rt({x=a, y=a}); assert(b.x == b.y and b.x ~= a)\n"
    "local mt = {__index=function(t, k) return k .. '!' end}\n"
    "local p = rt({setmetatable({}, mt), setmetatable({}, mt)})\n"
    "assert(getmetatable(p[1]) == getmetatable(p[2]) and p[1].hi == 'hi!')\n"
    "local nest = rt({a={b={c={d='deep'}}}}); assert(nest.a.b.c.d == 'deep')\n";

static const char *functions =
    "local n = 0; local function counter() n = n + 1; return n end\n"
    "local c = rt(counter); assert(c() == 1 and c() == 2 and n == 0)\n"
    "local s = 0; local inc = function() s = s + 1 end; local get = function() return s end\n"
    "local p = rt({inc, get}); p[1](); p[1](); assert(p[2]() == 2 and s == 0)\n"
    "local function fib(k) if k < 2 then return k end return fib(k-1) + fib(k-2) end\n"
    "assert(rt(fib)(15) == 610)\n"
    "function helper_g(x) return x * 2 end\n"
    "function helper_h(x) return helper_g(x) + 1 end\n"
    "local f = rt(function(x) return helper_h(x) end)\n"
    "helper_g, helper_h = nil, nil\n"
    "assert(f(10) == 21)\n"
    "local fm = rt(function(x) return string.format('%d', math.floor(x)) end)\n"
    "assert(fm(2.5) == '2')\n"
    "local cjson = require 'cjson'\n"
    "local fj = rt(function() return cjson.encode({1, 2}) end); assert(fj() == '[1,2]')\n"
    "local outer = function(a) return function(b) return function() return a + b end end end\n"
    "assert(rt(outer)(1)(2)() == 3 and rt(outer(5))(6)() == 11)\n"
    "local wg = rt(function() written_global = 42 end); wg(); assert(written_global == 42)\n"
    "local tb = rt(function() error('boom') end)\n"
    "local ok, msg = pcall(tb); assert(not ok and msg:find(':%d+: boom'), msg)\n"
    "local x = rt({print, io.stdout, string, string.format, _G, cjson, cjson.encode, math})\n"
    "assert(x[1]==print and x[2]==io.stdout and x[3]==string and x[4]==string.format)\n"
    "assert(x[5]==_G and x[6]==cjson and x[7]==cjson.encode and x[8]==math)\n"
    "function gfact(k) if k <= 1 then return 1 end return k * gfact(k - 1) end\n"
    "local gf = rt(gfact); gfact = nil; assert(gf(5) == 120)\n"
    "local sandbox = setmetatable({answer = 41}, {__index = _G})\n"
    "local sf = rt(load('return answer + math.floor(1.5)', 'sb', 't', sandbox))\n"
    "assert(sf() == 42 and answer == nil)\n"
    "local same = function() return 1 end\n"
    "assert(core.encode(same) == core.encode(same))\n";

static const char *errors =
    "fails('value.a.co: cannot send a thread', core.encode, {a={co=coroutine.create(print)}})\n"
    "fails('args[2]: cannot send a thread', core.encode, {1, coroutine.create(print)}, 'args')\n"
    "fails('value[\"a b\"]', core.encode, {['a b']=coroutine.create(print)})\n"
    "fails('cannot send a C function', core.encode, {f=core.encode_unreachable or "
    "    select(2, pcall(function() return coroutine.wrap(print) end))})\n"
    "local co = coroutine.create(print)\n"
    "fails('value.upvalue(co): cannot send a thread', core.encode, function() return co end)\n"
    "fails('value.<metatable>.x', core.encode, setmetatable({}, {x=co}))\n"
    "local deep = {}; local t = deep; for i = 1, 199 do t.n = {}; t = t.n end\n"
    "assert(rt(deep))\n"
    "t.n = {}; fails('nesting deeper than 200', core.encode, deep)\n"
    "local cyc = {}; local c = cyc; for i = 1, 150 do c.n = {}; c = c.n end; c.n = cyc\n"
    "assert(rt(cyc))\n"
    "fails('malformed message', core.decode, 'LMP\\2\\0\\99')\n"
    "fails('unsupported message version 1', core.decode, 'LMP\\1\\0\\0')\n"
    "fails('not an lmp message', core.decode, 'xyz')\n";

/* Random values of every shape (arrays with holes, numbers in bulk, mixed arrays, big hash
** parts, shared subtables, cycles, metatables, repeated strings) round-trip with their shape
** and identity; `same` follows identity both ways. */
static const char *random_shapes =
    "local function same(a, b, seen)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then\n"
    "    if math.type(a) ~= math.type(b) then return false end\n"
    "    if a ~= a then return b ~= b end\n"
    "    return a == b and (a ~= 0 or 1 / a == 1 / b)\n"
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if seen[a] ~= nil then return seen[a] == b end\n"
    "  seen[a] = b\n"
    "  local n, tkeys = 0, {}\n"
    "  for k, v in pairs(a) do\n"
    "    n = n + 1\n"
    "    if type(k) == 'table' then tkeys[#tkeys + 1] = k\n"
    "    elseif not same(v, rawget(b, k), seen) then return false end\n"
    "  end\n"
    "  for _, k in ipairs(tkeys) do -- after the values, which made most keys seen\n"
    "    local kb = seen[k]\n"
    "    if kb == nil then\n"
    "      for k2 in pairs(b) do\n"
    "        if type(k2) == 'table' and kb == nil and same(k, k2, seen) then kb = k2 end\n"
    "      end\n"
    "    end\n"
    "    if kb == nil or not same(a[k], rawget(b, kb), seen) then return false end\n"
    "  end\n"
    "  for _ in pairs(b) do n = n - 1 end\n"
    "  local ma, mb = getmetatable(a), getmetatable(b)\n"
    "  if (ma == nil) ~= (mb == nil) then return false end\n"
    "  return n == 0 and (ma == nil or same(ma, mb, seen))\n"
    "end\n"
    "for seed = 1, 40 do\n"
    "  local x = seed\n"
    "  local function rnd(n) x = (x * 1103515245 + 12345) % 2147483648; return x % n end\n"
    "  local words, pool, mts, budget = {}, {}, {{}, {__index = {}}}, 3000\n"
    "  for i = 1, 30 do words[i] = ('w'):rep(rnd(45)) .. i end\n"
    "  local sc = {0, -1, 1.5, -0.0, 1/0, 0/0, math.mininteger, 2^53, true, false, '', 'x'}\n"
    "  local function value(d)\n"
    "    local r = rnd(20)\n"
    "    budget = budget - 1\n"
    "    if d > 6 or r < 8 or budget < 0 then\n"
    "      if r < 3 then return sc[rnd(#sc) + 1] end\n"
    "      if r < 6 then return words[rnd(#words) + 1] end\n"
    "      return rnd(2) == 0 and rnd(1000000) - 500000 or rnd(100000) / 7\n"
    "    end\n"
    "    if r < 10 and #pool > 0 then return pool[rnd(#pool) + 1] end\n"
    "    local t = {}; pool[#pool + 1] = t\n"
    "    local shape = rnd(6)\n"
    "    for i = 1, rnd(shape == 5 and 300 or 40) do\n"
    "      if shape == 0 then t[i] = i * (rnd(2) == 0 and 1 or 0.5)\n"
    "      elseif shape == 1 then t[i] = rnd(3) ~= 0 and rnd(100) or nil\n"
    "      elseif shape == 2 then t[words[rnd(#words) + 1]] = value(d + 1)\n"
    "      elseif shape == 3 then t[i] = value(d + 1)\n"
    "      elseif shape == 4 then t[rnd(1000) + 0.5] = value(d + 1)\n"
    "      else t['k' .. i] = i end\n"
    "    end\n"
    "    if rnd(4) == 0 then t.self = t end\n"
    "    if rnd(6) == 0 then setmetatable(t, mts[rnd(#mts) + 1]) end\n"
    "    if rnd(5) == 0 then t[pool[rnd(#pool) + 1]] = rnd(9) end\n"
    "    return t\n"
    "  end\n"
    "  local v = {}\n"
    "  for i = 1, 1 + rnd(8) do v[i] = value(0) end\n"
    "  assert(same(v, rt(v), {}), 'seed ' .. seed)\n"
    "end\n";

static const char *handles =
    "local mt = {}\n"
    "mt.__lmp_encode = function(o) return 'toy', o.name, 5, 7 end\n"
    "core.register_handle('toy', function(payload, a, b)\n"
    "  return setmetatable({name=payload, fds={a, b}}, mt) end)\n"
    "local h = setmetatable({name='q1'}, mt)\n"
    "local r = rt({h, h}); assert(r[1] == r[2] and r[1].name == 'q1')\n"
    "assert(r[1].fds[1] == 5 and r[1].fds[2] == 7 and getmetatable(r[1]) == mt)\n"
    "local bad = setmetatable({}, {__lmp_encode = function() return 'nope', '' end})\n"
    "fails(\"unknown handle type 'nope'\", core.decode, core.encode(bad))\n";

/* ---- a userdata type with the handle hook (fds travel in a vector) ---- */

static int toy_encode(lua_State *L) {
  int *v = luaL_checkudata(L, 1, "test.toy");
  lua_pushliteral(L, "test.toy");
  lua_pushfstring(L, "%d", *v);
  lua_pushinteger(L, 3);
  lua_pushinteger(L, 4);
  return 4;
}

static int toy_decode(lua_State *L) {
  int *v = lua_newuserdatauv(L, sizeof *v, 0);
  *v = atoi(luaL_checkstring(L, 1)) + 1000 * (int)luaL_checkinteger(L, 2) +
       100000 * (int)luaL_checkinteger(L, 3);
  luaL_setmetatable(L, "test.toy");
  return 1;
}

static void test_fd_vector(lua_State *L) {
  luaL_newmetatable(L, "test.toy");
  lua_pushcfunction(L, toy_encode);
  lua_setfield(L, -2, "__lmp_encode");
  lua_pop(L, 1);
  run(L, "toy reg", "return nil");
  lua_getglobal(L, "core");
  lua_getfield(L, -1, "register_handle");
  lua_pushliteral(L, "test.toy");
  lua_pushcfunction(L, toy_decode);
  lua_call(L, 2, 0);
  lua_settop(L, 0);
  lua_createtable(L, 2, 0);
  int *v = lua_newuserdatauv(L, sizeof *v, 0);
  *v = 7;
  luaL_setmetatable(L, "test.toy");
  lua_pushvalue(L, -1);
  lua_rawseti(L, 1, 1);
  lua_rawseti(L, 1, 2);
  lmp_buf b = {0};
  lmp_fdvec fv = {0};
  lmp_encode_buf(L, 1, &b, &fv);
  CHECK(fv.n == 2 && fv.fd[0] == 3 && fv.fd[1] == 4);
  CHECK(b.len > CODEC_HEADER && (b.p[4] & CODEC_FLAG_FDINDEX));
  int fds[2] = {8, 9};
  lmp_decode(L, b.p, b.len, fds, 2);
  lua_rawgeti(L, -1, 1);
  lua_rawgeti(L, -2, 2);
  CHECK(lua_rawequal(L, -1, -2));
  CHECK(*(int *)luaL_checkudata(L, -1, "test.toy") == 7 + 8000 + 900000);
  lmp_buf_free(&b);
  lmp_fdvec_free(&fv);
  lua_settop(L, 0);
}

/* ---- hostile input ---- */

typedef struct msg {
  const char *p;
  size_t n;
} msg;

static int decode_cb(lua_State *L) {
  msg *m = lua_touserdata(L, 1);
  lmp_decode(L, m->p, m->n, NULL, 0);
  return 1;
}

/* Decodes n bytes in protected mode; returns 1 on success, 0 on a SerializationError, -1 on
** any other error. */
static int try_decode(lua_State *L, const char *p, size_t n) {
  msg m = {p, n};
  lua_pushcfunction(L, decode_cb);
  lua_pushlightuserdata(L, &m);
  int st = lua_pcall(L, 1, 1, 0);
  int r = 1;
  if (st != LUA_OK) {
    r = -1;
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "type");
      if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "SerializationError") == 0) r = 0;
    }
  }
  lua_settop(L, 0);
  return r;
}

/* Encodes the value of a Lua expression into a malloc'd buffer. */
static msg encode_expr(lua_State *L, const char *expr) {
  char code[4096];
  snprintf(code, sizeof code, "return core.encode(%s)", expr);
  msg m = {NULL, 0};
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "encode_expr: %s\n", lua_tostring(L, -1));
    failures++;
  } else {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    char *p = malloc(n);
    memcpy(p, s, n);
    m.p = p;
    m.n = n;
  }
  lua_settop(L, 0);
  return m;
}

static const char *samples[] = {
    "{1, 2.5, 'str', true, false, {x = {y = 'z'}}, [10] = -7, [2.5] = 'f'}",
    ("(function() local t = {1}; t.self = t\n"
     "  t.mt = setmetatable({}, {__index = t}); return t end)()"),
    "{print, string.format, io.stdout, _G, math, h = setmetatable({name = 'n'}, toy_mt)}",
    "string.rep('abc', 50)",
    "{math.mininteger, math.maxinteger, 0/0, -0.0, 1/0}",
};

static void test_hostile(lua_State *L) {
  run(L, "toy", "toy_mt = {__lmp_encode = function(o) return 'toy', o.name, 3 end}");
  for (size_t s = 0; s < sizeof samples / sizeof *samples; s++) {
    msg m = encode_expr(L, samples[s]);
    if (m.p == NULL) continue;
    CHECK(try_decode(L, m.p, m.n) == 1);
    for (size_t cut = 0; cut < m.n; cut++) CHECK(try_decode(L, m.p, cut) == 0);
    char *c = malloc(m.n);
    for (size_t i = 0; i < m.n; i++) {
      static const unsigned char vals[] = {0x00, 0x01, 0x07, 0x7f, 0x80, 0xff};
      for (size_t v = 0; v < sizeof vals; v++) {
        memcpy(c, m.p, m.n);
        c[i] = (char)(c[i] ^ vals[v]);
        CHECK(try_decode(L, c, m.n) >= 0);
      }
    }
    free(c);
    free((void *)m.p);
  }
}

typedef struct raw {
  const char *p;
  size_t n;
} raw;
#define RAW(s) {s, sizeof(s) - 1}

static void test_huge_lengths(lua_State *L) {
  static const raw cases[] = {
      RAW("LMP\2\0\5\xff\xff\xff\xff\xff\xff\xff\xff\x7f"),        /* string of 2^63 bytes */
      RAW("LMP\2\0\6\xff\xff\xff\xff\x0f\0"),                        /* array of 2^32 */
      RAW("LMP\2\0\6\0\xff\xff\xff\xff\x0f"),                        /* hash of 2^32 */
      RAW("LMP\2\0\x0c\xff\xff\x3f\0\1\2\3"),                       /* 2^20 numbers */
      RAW("LMP\2\0\7\x80\x80\x80\x80\x01"),                          /* unknown ref */
      RAW("LMP\2\0\x0b\1t\0\xff\xff\xff\xff\x0f"),                   /* 2^32 fds */
      RAW("LMP\2\0\5\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), /* overlong varint */
      RAW("LMP\2\0\x0a\x04nope"),                                    /* missing module */
      RAW("LMP\2\0\x08\x04\x1bLua\0\0"),                              /* function, no MAC */
      RAW("LMP\2\2\x08\x04\x1bLua\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"), /* wrong MAC */
      RAW("LMP\2\2\0"),                                               /* MAC cut short */
      RAW("LMP\2\0\6\2\0\5\2ab\x0e\x0c"),                            /* ref to itself */
      RAW("LMP\2\0\6\2\0\5\2ab\x0e\x09"),                            /* ref into a string */
      RAW("LMP\2\0\6\2\0\5\2ab\x0e\5"),                              /* ref to a table */
      RAW("LMP\2\0\6\2\0\5\0\x0e\x08"),                              /* ref to "" */
      RAW("LMP\2\0\6\1\0\x0e\x80\x80\x80\x80\x80\x01"),             /* ref past the end */
      RAW("LMP\2\4\0"),                                               /* unknown flag */
      RAW("LMP\1\0\0"),                                               /* version 1 */
      RAW("LMP\3\0\0"),                                               /* version 3 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    int r = try_decode(L, cases[i].p, cases[i].n);
    if (r != 0) fprintf(stderr, "huge/malformed case %zu decoded as %d\n", i, r);
    CHECK(r == 0);
  }
  /* a back reference to a string at its right place decodes to that string */
  static const char ok[] = "LMP\2\0\6\2\0\5\2ab\x0e\x08";
  CHECK(try_decode(L, ok, sizeof ok - 1) == 1);
}

/* Builds a message of depth nested one-element tables. */
static int deep_ok(lua_State *L, int depth) {
  size_t n = CODEC_HEADER + (size_t)depth * 3 + 1;
  char *p = malloc(n), *q = p;
  memcpy(q, "LMP\2\0", 5);
  q += 5;
  for (int i = 0; i < depth; i++) *q++ = T_TABLE, *q++ = 1, *q++ = 0;
  *q++ = T_NIL;
  int r = try_decode(L, p, (size_t)(q - p));
  free(p);
  return r;
}

/* A function message decodes under the key it was made with and under no other; any byte of
** it changed, or its MAC taken off, it is refused before anything is loaded. */
static void test_mac(lua_State *L) {
  msg m = encode_expr(L, "{function() return 1 end, up = (function() local u = {1}; "
                         "return function() return u end end)()}");
  CHECK(m.n > CODEC_HEADER + CODEC_MAC_BYTES && (m.p[4] & CODEC_FLAG_MAC));
  CHECK(try_decode(L, m.p, m.n) == 1);
  unsigned char key[LMP_CODEC_KEY_BYTES], other[LMP_CODEC_KEY_BYTES];
  memcpy(key, lmp__codec_key(), sizeof key);
  memcpy(other, key, sizeof other);
  other[3] ^= 0x10;
  lmp__codec_set_key(other);
  CHECK(try_decode(L, m.p, m.n) == 0);
  char *r = malloc(m.n); /* signed again under this key (a cluster's checked message) */
  memcpy(r, m.p, m.n);
  lmp__codec_resign(r, m.n);
  CHECK(try_decode(L, r, m.n) == 1);
  lmp__codec_set_key(key);
  CHECK(try_decode(L, m.p, m.n) == 1);
  CHECK(try_decode(L, r, m.n) == 0);
  free(r);
  char *c = malloc(m.n);
  for (size_t i = 0; i < m.n; i++) {
    static const unsigned char flips[] = {0x01, 0x80, 0xff};
    for (size_t f = 0; f < sizeof flips; f++) {
      memcpy(c, m.p, m.n);
      c[i] ^= (char)flips[f];
      int r = try_decode(L, c, m.n);
      if (i >= 3 && i != 4) CHECK(r == 0); /* the version and every later byte */
      CHECK(r >= 0);
    }
  }
  memcpy(c, m.p, m.n);
  c[4] &= (char)~CODEC_FLAG_MAC;
  CHECK(try_decode(L, c, m.n - CODEC_MAC_BYTES) == 0);
  free(c);
  free((void *)m.p);
  /* a message without functions carries no MAC */
  msg d = encode_expr(L, "{1, 'two', {three = 3}}");
  CHECK(!(d.p[4] & CODEC_FLAG_MAC));
  free((void *)d.p);
}

static int encode_cb(lua_State *L) {
  lmp_encode(L, 1);
  return 1;
}

static void test_light_userdata(lua_State *L) {
  lua_pushcfunction(L, encode_cb);
  lua_createtable(L, 0, 1);
  lua_pushlightuserdata(L, L);
  lua_setfield(L, -2, "p");
  CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK);
  lua_getfield(L, -1, "message");
  CHECK(lua_isstring(L, -1) &&
        strcmp(lua_tostring(L, -1), "value.p: cannot send a light userdata") == 0);
  lua_settop(L, 0);
}

static void test_big_string(lua_State *L) {
  run(L, "100 MB string",
      "local s = string.rep('\\0ab', 35 * 1024 * 1024)\n"
      "local r = rt(s); assert(#r == #s and r == s)\n"
      "local big = {}; for i = 1, 1000000 do big[i] = i end\n"
      "local t0 = os.clock(); local m = core.encode(big); local r = core.decode(m)\n"
      "assert(#r == 1000000 and r[777777] == 777777)\n"
      "io.stderr:write(string.format('1e6 integers: %d bytes, %.3f s\\n', #m, os.clock() - t0))\n");
}

/* Runs every test in a fresh state, with direct table access on (when this Lua allows it)
** or off. */
static void run_all(int direct) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "lmp.core", luaopen_lmp_core, 0);
  lua_settop(L, 0);
  int was = lmp__array_direct;
  if (!direct) lmp__array_direct = 0;
  run(L, "prelude", prelude);
  run(L, "scalars", scalars);
  run(L, "tables", tables);
  run(L, "random shapes", random_shapes);
  run(L, "functions", functions);
  run(L, "errors", errors);
  run(L, "handles", handles);
  test_fd_vector(L);
  test_hostile(L);
  test_huge_lengths(L);
  CHECK(deep_ok(L, 200) == 1);
  CHECK(deep_ok(L, 201) == 0);
  test_mac(L);
  test_light_userdata(L);
  test_big_string(L);
  lua_close(L);
  lmp__array_direct = was;
}

int main(void) {
  run_all(1);
  CHECK(lmp__array_direct == 1); /* the layout check passed on this Lua 5.4 */
  run_all(0);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  else printf("test_codec: all passed\n");
  return failures != 0;
}
