/*
** children.c — the table of the children lmp started in this process: reaping, exit codes,
** watchers (the pool's workers) and the wait for children at exit.
** Caveats: only children in the table are ever reaped (waitpid on their pids, never -1), so
** io.popen and os.execute keep working. An entry lives until its exit has been handed over
** (a watcher told, or the status taken by the Lua Process object): the table holds only
** children that run or whose end nobody has asked about yet.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "children.h"

typedef struct child {
  pid_t pid;
  int status;      /* waitpid status, valid when reaped */
  int reaped;
  int daemon;
  lmp_child_exit_fn on_exit;
  void *ud;
  int forget;      /* drop the entry once reaped (a watched child: its owner is told) */
} child;

static child *children;
static int n_children, cap_children;

static child *find_child(pid_t pid) {
  for (int i = 0; i < n_children; i++)
    if (children[i].pid == pid) return &children[i];
  return NULL;
}

static void drop_child(child *c) { *c = children[--n_children]; }

int lmp__child_reserve(int daemon) {
  if (n_children == cap_children) {
    int cap = cap_children ? cap_children * 2 : 16;
    child *p = realloc(children, (size_t)cap * sizeof *p);
    if (p == NULL) return -1;
    children = p;
    cap_children = cap;
  }
  children[n_children++] = (child){.pid = 0, .daemon = daemon};
  return 0;
}

void lmp__child_commit(pid_t pid) {
  child *c = find_child(0);
  if (c == NULL) return;
  if (pid > 0) c->pid = pid;
  else drop_child(c);
}

void lmp__children_clear(void) { n_children = 0; }

int lmp__children_count(void) { return n_children; }

/* Reaps c if it has exited; returns 1 when it is (now or already) reaped. */
static int reap_one(child *c) {
  if (c->reaped) return 1;
  if (c->pid <= 0) return 0; /* reserved, not forked yet */
  int st;
  pid_t r;
  do r = waitpid(c->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return 0;
  c->status = (r == c->pid) ? st : 0; /* ECHILD: someone else reaped it; call it success */
  c->reaped = 1;
  return 1;
}

/* Reaps what has exited, then tells the watchers. The table is settled before any
** callback runs, since a callback may start a replacement child. */
void lmp_children_reap(void) {
  struct note { lmp_child_exit_fn fn; void *ud; pid_t pid; int code; } notes[64];
  int more = 1;
  while (more) {
    int nn = 0, j = 0;
    more = 0;
    for (int i = 0; i < n_children; i++) {
      child *c = &children[i];
      reap_one(c);
      if (c->reaped && c->forget) {
        if (c->on_exit != NULL) {
          if (nn == 64) { /* tell these first, come back for the rest */
            more = 1;
            children[j++] = *c;
            continue;
          }
          notes[nn++] = (struct note){c->on_exit, c->ud, c->pid, lmp_exitcode(c->status)};
        }
        continue;
      }
      children[j++] = *c;
    }
    n_children = j;
    for (int i = 0; i < nn; i++) notes[i].fn(notes[i].ud, notes[i].pid, notes[i].code);
  }
}

int lmp_exitcode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 0;
}

int lmp_child_watch(pid_t pid, lmp_child_exit_fn fn, void *ud) {
  child *c = find_child(pid);
  if (c == NULL) return -1;
  c->on_exit = fn;
  c->ud = ud;
  c->forget = 1;
  return 0;
}

int lmp__child_take_status(pid_t pid, int *code) {
  child *c = find_child(pid);
  if (c == NULL) return -1;
  if (!reap_one(c)) return 0;
  *code = lmp_exitcode(c->status);
  drop_child(c);
  return 1;
}

int lmp__child_exited(pid_t pid) {
  child *c = find_child(pid);
  return c == NULL || reap_one(c);
}

int lmp__child_signal(pid_t pid, int sig) {
  child *c = find_child(pid);
  if (c == NULL) return -1;
  if (reap_one(c)) return 0;
  return kill(c->pid, sig) == 0;
}

void lmp_children_at_exit(void) {
  for (int i = 0; i < n_children; i++) {
    child *c = &children[i];
    c->on_exit = NULL;
    if (c->pid > 0 && !c->reaped && c->daemon) kill(c->pid, SIGTERM);
  }
  for (int i = 0; i < n_children; i++) {
    child *c = &children[i];
    if (c->reaped || c->pid <= 0) continue;
    int st;
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR) {}
    c->reaped = 1;
  }
  n_children = 0;
}
