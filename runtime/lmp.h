/*
** lmp.h — the embedding API of the lmp runtime.
** A host that embeds Lua links liblmp and calls these; a script only needs `require "lmp"`.
*/
#ifndef LMP_H
#define LMP_H

#include <lua.h>

#define LMP_VERSION "0.1.0"

/* What liblmp and lmp.core export: this header's functions, nothing else. */
#if defined(__GNUC__)
#define LMP_API __attribute__((visibility("default")))
#else
#define LMP_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the core module (the table `require "lmp.core"` returns). */
LMP_API int luaopen_lmp_core(lua_State *L);

/* Registers lmp's Lua modules in package.preload and returns `require "lmp"`. */
LMP_API int luaopen_lmp(lua_State *L);

/* Puts lmp's built-in Lua modules into package.preload of L (used by hosts and workers). */
LMP_API void lmp_preload(lua_State *L);

/* Runs lmp's event loop without blocking: delivers results and callbacks. Returns how many
** callbacks ran, or -1 when lmp is not loaded in L. Same as `mp.poll()`. */
LMP_API int lmp_poll(lua_State *L);

/* A file descriptor that becomes readable when lmp has work for lmp_poll, or -1. */
LMP_API int lmp_backend_fd(lua_State *L);

/* A function called in every worker's fresh Lua state before it runs anything: the host's
** own C libraries go here (luaL_requiref, package.preload...). Several may be registered. */
typedef void (*lmp_state_init)(lua_State *L, void *ud);
LMP_API int lmp_on_worker_state(lmp_state_init fn, void *ud);

/* Hooks around fork: prepare in the parent before fork, parent after, child after (before
** the child's Lua state exists). Any may be NULL. */
typedef void (*lmp_fork_hook)(void *ud);
LMP_API int lmp_atfork(lmp_fork_hook prepare, lmp_fork_hook parent, lmp_fork_hook child, void *ud);

/* For the "spawn" start method: a host's main() calls this first; when the process was
** started as an lmp worker it serves and never returns, otherwise it returns 0. */
LMP_API int lmp_worker_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
