/*
** child.h — the child side of a new process (child.c), shared by the fork path (process.c)
** and the spawn start method (spawn.c).
*/
#ifndef LMP_CHILD_H
#define LMP_CHILD_H

#include <sys/types.h>
#include "lmp_int.h"

/* The pid a new child must see as its parent (set in the parent before each fork, and in a
** spawned program from its command line); 0 in a process no lmp parent started. */
pid_t lmp__parent_pid(void);
void lmp__set_parent_pid(pid_t pid);

/* A new child's signals and parent death: default dispositions but SIGINT and SIGPIPE
** ignored, nothing blocked, SIGKILL when the parent dies (exits at once when it already has).
** Exec keeps all of it. */
void lmp__child_signals(void);

/* The host's fork hooks (lmp_atfork): phase 0 prepare, 1 parent, 2 child. */
void lmp__run_fork_hooks(int phase);

/* Never returns: puts the new child in order, runs `lmp.process`'s bootstrap on payload in a
** fresh Lua state and leaves with _exit (after waiting for its own non-daemon children). */
_Noreturn void lmp__child_main(const char *payload, size_t n, const char *mode, const char *path,
                               const char *cpath);

#endif
