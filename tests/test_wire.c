/*
** test_wire.c — C unit tests of the framing every line uses (wire.c): 64-bit lengths that are
** told but never trusted, frames carried with descriptors, small frames coalesced and big
** payloads lent through a socket too small to take them at once, and big frames handed over
** without a copy.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "wire.h"

static int failures;

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
      failures++;                                                                \
    }                                                                            \
  } while (0)

/* Puts raw bytes into a reader as if they had been received. */
static void feed(lmp_rin *r, const void *p, size_t n) {
  lmp_buf_reserve(&r->in, n);
  memcpy(r->in.p + r->in.len, p, n);
  r->in.len += n;
}

/* Lengths above 4 GiB are told exactly; above LMP_FRAME_MAX they are a protocol error; nothing
** is allocated for a length that has not arrived. */
static void test_lengths(void) {
  lmp_rin r = {0};
  char h[LMP_FRAME_HEAD];
  uint64_t five_gib = (uint64_t)5 << 30;
  lmp_frame_head(h, 7, five_gib, 0);
  CHECK(lmp_get_le64(h) == five_gib);
  feed(&r, h, sizeof h);
  feed(&r, "abc", 3);
  lmp_frame f;
  size_t need = 0;
  CHECK(lmp_rin_next(&r, &f, &need) == 0);
  CHECK(need == five_gib - 3);
  CHECK(lmp_rin_need(&r) == five_gib - 3);
  CHECK(r.in.cap < (1u << 20)); /* only what arrived */
  lmp_rin_free(&r);

  lmp_frame_head(h, 7, LMP_FRAME_MAX + 1, 0);
  feed(&r, h, sizeof h);
  CHECK(lmp_rin_next(&r, &f, &need) == -1);
  lmp_rin_free(&r);

  lmp_frame_head(h, 7, 4, 3); /* says it carries descriptors that never came */
  feed(&r, h, sizeof h);
  feed(&r, "abcd", 4);
  CHECK(lmp_rin_next(&r, &f, &need) == -1);
  lmp_rin_free(&r);
}

static int same_file(int a, int b) {
  struct stat x, y;
  return fstat(a, &x) == 0 && fstat(b, &y) == 0 && x.st_ino == y.st_ino && x.st_dev == y.st_dev;
}

static int dones;
static void count_done(void *ud) { (void)ud; dones++; }

/* What the reader saw, checked as each frame arrives (its memory is the reader's). */
typedef struct seen {
  int frames, ordered, bigok, fdsok;
} seen;

static void check_frame(lmp_rin *r, const lmp_frame *f, seen *s, const char *lent, size_t big,
                        int pfd[2]) {
  char word[16];
  if (s->frames < 1000) {
    snprintf(word, sizeof word, "%d", s->frames);
    s->ordered &= f->type == 1 && f->n == strlen(word) && memcmp(f->p, word, f->n) == 0;
  } else if (s->frames == 1000) {
    const char *payload;
    char *block = lmp_rin_keep(r, f, &payload); /* handed over: still valid after more reads */
    s->bigok = block != NULL && f->type == 2 && f->n == 4 + big && payload != NULL;
    if (s->bigok) s->bigok = memcmp(payload, "HEAD", 4) == 0 && memcmp(payload + 4, lent, big) == 0;
    free(block);
  } else {
    s->fdsok = f->type == 3 && f->nfds == 2 && same_file(f->fds[0], pfd[0]) &&
               same_file(f->fds[1], pfd[1]);
    for (int i = 0; i < f->nfds; i++) close(f->fds[i]);
  }
  s->frames++;
}

/* Reads and checks frames until count have come (the writer fills the socket meanwhile). */
static void read_frames(int rd, int wr, lmp_wq *q, lmp_rin *r, seen *s, int count,
                        const char *lent, size_t big, int pfd[2]) {
  while (s->frames < count) {
    if (q->bytes > 0) lmp_wq_send(q, wr);
    ssize_t n = lmp_rin_recv(r, rd, lmp_rin_need(r), MSG_DONTWAIT);
    if (n == 0) return;
    lmp_frame f;
    while (s->frames < count && lmp_rin_next(r, &f, NULL) == 1) check_frame(r, &f, s, lent, big, pfd);
    if (n < 0 && errno == EAGAIN) {
      struct pollfd p = {rd, POLLIN, 0};
      poll(&p, 1, 10);
    }
  }
}

/* Many small frames, one lent 3 MiB payload and one frame with descriptors, through a socket
** whose buffer holds a fraction of that: all arrive whole and in order. */
static void test_queue(void) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  int small = 16384;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  lmp_wq q = {0};
  char word[16];
  for (int i = 0; i < 1000; i++) {
    snprintf(word, sizeof word, "%d", i);
    struct iovec part = {word, strlen(word)};
    CHECK(lmp_wq_frame(&q, 1, &part, 1, NULL, 0, NULL, NULL) == 0);
  }
  size_t big = 3u << 20;
  char *lent = malloc(big);
  for (size_t i = 0; i < big; i++) lent[i] = (char)(i * 7);
  struct iovec head = {"HEAD", 4};
  CHECK(lmp_wq_frame_lend(&q, 2, &head, 1, lent, big, NULL, 0, count_done, NULL) == 0);
  int pfd[2];
  CHECK(pipe(pfd) == 0);
  int fds[2] = {pfd[0], pfd[1]};
  struct iovec tail = {"fds", 3};
  CHECK(lmp_wq_frame(&q, 3, &tail, 1, fds, 2, count_done, NULL) == 0);
  CHECK(lmp_wq_send(&q, sv[0]) == 1); /* the socket is full long before the end */
  lmp_rin r = {0};
  seen s = {0, 1, 0, 0};
  read_frames(sv[1], sv[0], &q, &r, &s, 1002, lent, big, pfd);
  CHECK(s.frames == 1002);
  CHECK(s.ordered);
  CHECK(s.bigok);
  CHECK(s.fdsok);
  CHECK(q.bytes == 0 && q.head == NULL);
  CHECK(dones == 2); /* the lent payload and the descriptors were let go once sent */
  lmp_rin_shrink(&r);
  CHECK(r.in.cap <= LMP_RIN_SMALL); /* back to small after the big frame */
  lmp_rin_free(&r);
  free(lent);
  close(pfd[0]);
  close(pfd[1]);
  close(sv[0]);
  close(sv[1]);
}

/* A queue whose socket fails is dropped whole, its done functions run. */
static void test_dead_peer(void) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  close(sv[1]);
  lmp_wq q = {0};
  dones = 0;
  struct iovec part = {"x", 1};
  CHECK(lmp_wq_frame(&q, 1, &part, 1, NULL, 0, count_done, NULL) == 0);
  CHECK(lmp_wq_send(&q, sv[0]) == -1 && errno == EPIPE);
  CHECK(q.bytes == 0 && q.head == NULL && dones == 1);
  close(sv[0]);
}

int main(void) {
  test_lengths();
  test_queue();
  test_dead_peer();
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures != 0;
}
