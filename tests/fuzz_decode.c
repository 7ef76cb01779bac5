/*
** fuzz_decode.c — libFuzzer target for the decoder: any byte string must decode to a value or
** raise a SerializationError, never crash, hang or allocate without bound.
** An input is a mode byte and a message. Mode bit 0 clear: the message is decoded as it came,
** so a function-carrying one must pass the MAC (mutations never do). Bit 0 set: the harness
** first signs the message with this process's key, as if lmp's own encoder had made it, so the
** decoding of function records itself — bytecode check, lua_load, upvalues, shared upvalues,
** captured globals — is fuzzed too. Mode bit 1 set: the message is decoded the way a map's
** results are, straight into a table at an offset (lmp__decode_into). The state has no
** os/debug libraries and empty package
** paths, so decoded module references and metamethods cannot reach the process or the file
** system. At exit it reports how many inputs of each kind it ran and how they ended.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "codec.h"
#include "lmp.h"

static lua_State *L;
static unsigned char *buf;
static size_t cap;

/* runs / decoded / refused, for: raw inputs, raw with the MAC flag, signed with the flag */
static unsigned long counts[3][3];

static int decode_cb(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  static const int fds[2] = {0, 1};
  if (lua_toboolean(L, 3)) {
    lua_createtable(L, 8, 1);
    lmp__decode_into(L, p, n, -1, 3);
  } else {
    lmp_decode(L, p, n, fds, 2);
  }
  return 1;
}

static void report(void) {
  static const char *kind[] = {"as received, no MAC flag", "as received, MAC flag",
                               "signed by the harness"};
  fprintf(stderr, "fuzz_decode: runs, decoded, refused with a SerializationError, other errors\n");
  for (int k = 0; k < 3; k++)
    fprintf(stderr, "  %-26s %10lu runs %10lu decoded %10lu refused %6lu other\n", kind[k],
            counts[k][0], counts[k][1], counts[k][2], counts[k][0] - counts[k][1] - counts[k][2]);
}

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "lmp.core", luaopen_lmp_core, 0);
  lua_pop(L, 1);
  luaL_dostring(L,
                "package.path, package.cpath = '', ''\n"
                "os, debug, package.loaded.os, package.loaded.debug = nil, nil, nil, nil\n"
                "package.searchers = {package.searchers[1]}\n"
                "require('lmp.core').register_handle('toy', function(p, ...)\n"
                "  return {p, ...} end)\n");
  lua_settop(L, 0);
  atexit(report);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) setup();
  if (size < 1) return 0;
  int sign = data[0] & 1;
  size--;
  if (buf == NULL || size > cap) {
    free(buf);
    cap = size * 2 + 64;
    buf = malloc(cap);
    if (buf == NULL) abort();
  }
  if (size > 0) memcpy(buf, data + 1, size);
  int flagged = size >= CODEC_HEADER + CODEC_MAC_BYTES && (buf[4] & CODEC_FLAG_MAC);
  if (sign && flagged) lmp__codec_mac(buf, size - CODEC_MAC_BYTES, buf + size - CODEC_MAC_BYTES);
  int kind = sign && flagged ? 2 : flagged ? 1 : 0;
  lua_pushcfunction(L, decode_cb);
  lua_pushlightuserdata(L, buf);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pushboolean(L, data[0] & 2);
  int st = lua_pcall(L, 3, 1, 0);
  counts[kind][0]++;
  if (st == LUA_OK) {
    counts[kind][1]++;
  } else if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "type");
    if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "SerializationError") == 0)
      counts[kind][2]++;
  }
  lua_settop(L, 0);
  return 0;
}
