/*
** pingpong.c — the floor for a request/response between two processes on this machine:
** fork, then parent and child exchange a 16-byte message over a socketpair with blocking
** read/write, N round trips. Prints "pingpong <us> us/rt".
**
** usage: pingpong [round_trips=20000]
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 16

static int full_io(int fd, char *buf, size_t n, int writing) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = writing ? write(fd, buf + done, n - done) : read(fd, buf + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) return -1; /* the peer went away */
    done += (size_t)r;
  }
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? strtol(argv[1], NULL, 10) : 20000;
  if (n < 1) n = 1;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) { perror("socketpair"); return 1; }
  pid_t pid = fork();
  if (pid < 0) { perror("fork"); return 1; }
  char buf[MSG];
  if (pid == 0) { /* echo until the parent closes its end */
    close(sv[0]);
    for (;;) {
      if (full_io(sv[1], buf, MSG, 0) != 0) _exit(0);
      if (full_io(sv[1], buf, MSG, 1) != 0) _exit(1);
    }
  }
  close(sv[1]);
  memset(buf, 'x', MSG);
  /* a short warm-up, so both sides are scheduled and their pages touched */
  for (int i = 0; i < 100; i++) {
    if (full_io(sv[0], buf, MSG, 1) || full_io(sv[0], buf, MSG, 0)) { perror("warm-up"); return 1; }
  }
  double t0 = now();
  for (long i = 0; i < n; i++) {
    memcpy(buf, &i, sizeof i);
    if (full_io(sv[0], buf, MSG, 1) || full_io(sv[0], buf, MSG, 0)) { perror("ping"); return 1; }
  }
  double dt = now() - t0;
  close(sv[0]);
  int status;
  waitpid(pid, &status, 0);
  printf("pingpong %.3f us/rt\n", dt / (double)n * 1e6);
  return 0;
}
