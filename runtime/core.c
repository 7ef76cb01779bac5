/*
** core.c — the library's entry points: the `lmp.core` module table, lmp's preloads, and the
** spawned worker's main; everything else sits below them.
*/
#include <stdlib.h>
#include <string.h>

#include "lmp.h"
#include "lmp_int.h"
#include "fncache.h"
#include "redis.h"
#include "clusterkey.h"
#include "manager.h"
#include "spawn.h"
#include "sync.h"

int luaopen_lmp_core(lua_State *L) {
  lmp__std_fds_open(); /* before the loop, the arena or any other descriptor of lmp */
  lmp__set_state_setup(lmp_preload); /* the states of children and workers get lmp too */
  lua_newtable(L);
  lmp__open_util(L);
  lmp__open_codec(L);
  lmp__open_loop(L);
  lmp__open_process(L);
  lmp__open_worker(L);
  lmp__open_pool(L);
  lmp__open_fncache(L);
  lmp__open_redis(L);
  lmp__open_clusterkey(L);
  lmp__open_shm(L);
  lmp__open_sync(L); /* the shared-memory objects and Pipe (after shm and the codec) */
  lmp__open_cond(L, lua_gettop(L));
  lmp__open_barrier(L, lua_gettop(L));
  lmp__open_value(L);
  lmp__open_queue(L);
  lmp__open_pipe(L);
  lmp__open_manager(L);
  lmp__open_manager_client(L);
  lmp__open_manager_server(L);
  lmp__open_console(L);
  lua_pushliteral(L, LMP_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

/* package.preload loader for an embedded Lua module; upvalue 1 is its index. Its compiled
** form first (a process's start loads three modules: undumping them takes a seventh of the
** time of compiling them); the source when this Lua cannot load that form (another 5.4.x). */
static int load_embedded(lua_State *L) {
  const lmp_embedded *e = &lmp_embedded_lua[lua_tointeger(L, lua_upvalueindex(1))];
  const char *chunkname = lua_pushfstring(L, "@%s", e->name);
  if (luaL_loadbufferx(L, e->bin, e->binlen, chunkname, "b") != LUA_OK) {
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, e->src, e->len, chunkname, "t") != LUA_OK) return lua_error(L);
  }
  lua_pushstring(L, lua_tostring(L, 1));
  lua_call(L, 1, 1);
  return 1;
}

void lmp_preload(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_lmp_core);
  lua_setfield(L, -2, "lmp.core");
  for (int i = 0; lmp_embedded_lua[i].name != NULL; i++) {
    /* the module name is the file name: lmp/init.lua -> lmp, lmp/pool.lua -> lmp.pool */
    char mod[128];
    const char *n = lmp_embedded_lua[i].name;
    size_t len = strlen(n);
    if (len >= sizeof mod || len < 4) continue;
    memcpy(mod, n, len - 4);
    mod[len - 4] = '\0';
    if (len > 9 && strcmp(mod + len - 9, "/init") == 0) mod[len - 9] = '\0';
    for (char *c = mod; *c; c++)
      if (*c == '/') *c = '.';
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, mod);
  }
  lua_pop(L, 1);
}

int luaopen_lmp(lua_State *L) {
  lmp_preload(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lmp");
  lua_call(L, 1, 1);
  return 1;
}

int lmp_worker_main(int argc, char **argv) {
  lmp__set_state_setup(lmp_preload);
  return lmp__spawn_serve(argc, argv);
}
