/*
** test_embed.c — a host with a frame loop, as a game or tool embeds lmp: it opens lmp,
** submits work with apply_async, and calls lmp_poll once a frame until the callbacks ran,
** never blocking; it also checks that lmp_backend_fd can be watched with poll(2).
*/
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lmp.h"

static int failures;
#define CHECK(c)                                                   \
  do {                                                             \
    if (!(c)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      failures++;                                                  \
    }                                                              \
  } while (0)

static void frame_sleep(void) {
  struct timespec ts = {0, 1000000}; /* a 1 ms "frame" */
  nanosleep(&ts, NULL);
}

static int run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  CHECK(lmp_poll(L) == -1); /* lmp not loaded yet */
  CHECK(lmp_backend_fd(L) == -1);
  luaL_requiref(L, "lmp", luaopen_lmp, 1);
  lua_pop(L, 1);
  CHECK(run(L, "pool = lmp.Pool(2); done = 0; sum = 0\n"
               "for i = 1, 20 do\n"
               "  pool:apply_async(function(x) return x * x end, {i},\n"
               "    function(v) done = done + 1; sum = sum + v end)\n"
               "end") == 0);
  int fd = lmp_backend_fd(L);
  CHECK(fd >= 0);
  int frames = 0, ran = 0, done = 0;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) { /* at most 60 s of frames (valgrind is slow): never forever */
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec > 60) break;
    int n = lmp_poll(L);
    CHECK(n >= 0);
    ran += n;
    lua_getglobal(L, "done");
    done = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (done == 20) break;
    struct pollfd p = {fd, POLLIN, 0};
    poll(&p, 1, 0); /* the host's own loop could watch this fd */
    frame_sleep();
    frames++;
  }
  CHECK(done == 20);
  CHECK(ran == 20);
  lua_getglobal(L, "sum");
  CHECK(lua_tointeger(L, -1) == 2870); /* 1^2 + ... + 20^2 */
  lua_pop(L, 1);
  /* a host that sleeps on the backend fd between frames is woken when a result lands */
  CHECK(run(L, "late = nil; pool:apply_async(function() lmp.sleep(0.2) return 'late' end, {},\n"
               "  function(v) late = v end)") == 0);
  CHECK(lmp_poll(L) == 0);
  int woke = 0, by_fd = 0;
  for (int i = 0; i < 30 && !woke; i++) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, 2000); /* sleeps: only an event of lmp's ends it early */
    CHECK(r >= 0);
    lmp_poll(L);
    lua_getglobal(L, "late");
    woke = lua_isstring(L, -1);
    lua_pop(L, 1);
    if (woke) by_fd = r > 0; /* the result itself made the fd readable, no timeout did */
  }
  CHECK(woke);
  CHECK(by_fd);
  CHECK(run(L, "pool:close(); assert(pool:join(10))") == 0);
  lua_close(L);
  if (failures) return 1;
  printf("test_embed: all passed (%d frames)\n", frames);
  return 0;
}
