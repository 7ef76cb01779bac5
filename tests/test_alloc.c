/*
** test_alloc.c — the allocator of lmp's Lua states (alloc.c), driven directly: random
** allocations, resizes across every size class and across the small/big boundary, and frees,
** each block filled with a pattern that is checked before it is resized or freed; then a Lua
** workload of churn on a state of its own. Under ASan the slabs are poisoned, so a stray access
** by the allocator shows up here too.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lmp_int.h"

#define SLOTS 4096
#define STEPS 400000

static int failures;

#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);      \
      fputc('\n', stderr);               \
      failures++;                        \
    }                                    \
  } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* Sizes: mostly small (every class), some around the boundary, a few big. */
static size_t pick_size(void) {
  uint64_t r = next_rand() % 100;
  if (r < 80) return 1 + next_rand() % 512;
  if (r < 95) return 480 + next_rand() % 80;
  return 513 + next_rand() % 70000;
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 31);
}

static int intact(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(seed + i * 31)) return 0;
  return 1;
}

static void test_blocks(void) {
  lua_State *L = lmp__state_new(1);
  CHECK(L != NULL, "no state");
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  static unsigned char *ptr[SLOTS];
  static size_t size[SLOTS];
  static unsigned seed[SLOTS];
  for (long step = 0; step < STEPS; step++) {
    int i = (int)(next_rand() % SLOTS);
    if (ptr[i] == NULL) {
      size_t n = pick_size();
      ptr[i] = f(ud, NULL, LUA_TTABLE, n); /* osize is a type tag for a new block */
      CHECK(ptr[i] != NULL, "allocation of %zu failed", n);
      CHECK(((uintptr_t)ptr[i] & 15) == 0, "block of %zu not 16-aligned", n);
      size[i] = n;
      seed[i] = (unsigned)next_rand();
      fill(ptr[i], n, seed[i]);
    } else if (next_rand() % 2) {
      CHECK(intact(ptr[i], size[i], seed[i]), "block of %zu changed before resize", size[i]);
      size_t n = pick_size();
      unsigned char *q = f(ud, ptr[i], size[i], n);
      CHECK(q != NULL, "resize %zu -> %zu failed", size[i], n);
      CHECK(intact(q, size[i] < n ? size[i] : n, seed[i]), "resize %zu -> %zu lost bytes", size[i], n);
      ptr[i] = q;
      size[i] = n;
      fill(q, n, seed[i]);
    } else {
      CHECK(intact(ptr[i], size[i], seed[i]), "block of %zu changed before free", size[i]);
      CHECK(f(ud, ptr[i], size[i], 0) == NULL, "free returned a block");
      ptr[i] = NULL;
    }
  }
  for (int i = 0; i < SLOTS; i++)
    if (ptr[i] != NULL) {
      CHECK(intact(ptr[i], size[i], seed[i]), "block of %zu changed at the end", size[i]);
      f(ud, ptr[i], size[i], 0);
    }
  lmp__state_close(L);
}

/* Tables, strings and closures made and dropped in waves, with full collections between. */
static void test_lua_churn(void) {
  lua_State *L = lmp__state_new(1);
  luaL_openlibs(L);
  const char *code =
      "local keep = {}\n"
      "for wave = 1, 20 do\n"
      "  local t = {}\n"
      "  for i = 1, 20000 do\n"
      "    t[i] = { id = i, name = 'n' .. i .. wave, f = function() return i end, s = ('x'):rep(i % 700) }\n"
      "  end\n"
      "  for i = 1, #t, 97 do keep[#keep + 1] = t[i] end\n"
      "  t = nil\n"
      "  collectgarbage()\n"
      "end\n"
      "local sum = 0\n"
      "for _, r in ipairs(keep) do sum = sum + r.f() + #r.s end\n"
      "return #keep, sum\n";
  int st = luaL_dostring(L, code);
  CHECK(st == LUA_OK, "churn failed: %s", lua_tostring(L, -1));
  if (st == LUA_OK) {
    lua_Integer n = lua_tointeger(L, -2);
    CHECK(n == 20 * ((20000 + 96) / 97), "kept %lld records", (long long)n);
  }
  lmp__state_close(L);
}

int main(void) {
  test_blocks();
  test_lua_churn();
  if (failures) {
    fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  puts("alloc: ok");
  return 0;
}
