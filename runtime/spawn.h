/*
** spawn.h — the "spawn" start method (spawn.c): what process.c calls around its fork.
*/
#ifndef LMP_SPAWN_H
#define LMP_SPAWN_H

#include "lmp_int.h"

/* Writes what a spawned child needs into a memfd: the codec key, the package paths, the
** mode and the payload. Returns the fd (close-on-exec until the child clears it), or -1. */
int lmp__spawn_payload(const char *payload, size_t n, const char *mode, const char *path,
                       const char *cpath);

/* In the forked child: signals and parent death, the descriptors the new program needs, exec
** of the worker executable. Never returns. */
_Noreturn void lmp__spawn_exec(int memfd, int keep_fd);

/* lmp_worker_main's work (core.c sets up worker states first): serves as the spawned worker
** when argv says so (never returns then), else returns 0. */
int lmp__spawn_serve(int argc, char **argv);

/* Adds set_start_method and get_start_method to the table on top of the stack. */
void lmp__open_spawn(lua_State *L);

#endif
