/*
** children.h — the table of the children lmp started in this process (children.c), and the
** child-process entries of process.c and spawn.c that the loop and the pool use.
*/
#ifndef LMP_CHILDREN_H
#define LMP_CHILDREN_H

#include <sys/types.h>
#include "lmp_int.h"

/* Converts a waitpid status: the exit code, or -signum when a signal killed the child. */
int lmp_exitcode(int status);

/* Called (from the loop, or a status query) when a watched child has been reaped. */
typedef void (*lmp_child_exit_fn)(void *ud, pid_t pid, int exitcode);
/* Hands the child's exit to fn (NULL: to no one): its entry goes once it is reaped.
** Returns -1 when pid is not in the table. */
int lmp_child_watch(pid_t pid, lmp_child_exit_fn fn, void *ud);

/* Reaps every exited child lmp started (never other children). */
void lmp_children_reap(void);
/* At exit: terminates daemon children, waits for the others. */
void lmp_children_at_exit(void);

/* Reserves the entry of a child about to be forked; -1 when memory is exhausted. */
int lmp__child_reserve(int daemon);
/* Fills the reserved entry with the new child's pid, or drops it when the fork failed. */
void lmp__child_commit(pid_t pid);
/* Empties the table in a new child (its parent's children are not its own). */
void lmp__children_clear(void);

/* The state of child pid: -1 when it is not in the table, 0 while it runs, 1 when it has
** exited; then *code is its exit code and the entry is dropped (the caller keeps the code:
** the table never grows with children that are over). */
int lmp__child_take_status(pid_t pid, int *code);
/* 1 when child pid has exited (or is not in the table), without dropping its entry. */
int lmp__child_exited(pid_t pid);
/* Entries in the table (for the specs: it must not grow with children that are over). */
int lmp__children_count(void);
/* Sends sig to child pid unless it has exited; 1 sent, 0 already exited, -1 not in the table. */
int lmp__child_signal(pid_t pid, int sig);

/* Forks a child that runs `lmp.process`'s bootstrap on payload in a fresh Lua state.
** mode tells the bootstrap what the payload is ("process", "worker"...). keep_fd (or -1) is a
** descriptor the child must keep even with the "spawn" method. Returns the pid, or -1 with
** errno set. */
pid_t lmp_fork_child(lua_State *L, const char *payload, size_t n, const char *mode,
                     int daemon, int keep_fd);

/* Like lmp_fork_child, with the package paths given (NULL: Lua's defaults) and no Lua state
** touched: for code that must not run Lua (a pool replacing a worker in the middle of its I/O).
** The caller's loop must exist already (SIGCHLD is watched). */
pid_t lmp_fork_with(const char *path, const char *cpath, const char *payload, size_t n,
                    const char *mode, int daemon, int keep_fd);

/* 1 when children are started with the "spawn" method (fork + exec of lmp): they then keep
** only keep_fd of this process's descriptors and no memory mapping. */
int lmp_start_method_spawn(void);

#endif
