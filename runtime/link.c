/*
** link.c — the parent's end of a line to a worker (link.h): non-blocking socket I/O on the
** libuv loop, frames handed to the owner as they complete, the results ring drained.
** Caveats: the owner's callback runs in the middle of reading, so it must not close the link
** (it returns 1 to stop, and closes afterwards); memory is freed in the close callback only.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bytes.h"
#include "link.h"
#include "ring.h"

struct lmp_link {
  uv_poll_t poll;     /* first: the close callback gets the link from the handle */
  int fd;
  int events;         /* what the poll handle watches */
  int ended;          /* the callback was told (f == NULL) */
  int closing;
  lmp_rin in;
  lmp_wq out;
  lmp_ring *ring;
  lmp_buf ringcopy;   /* a ring frame that wraps around the end, made whole */
  const char *ringframe; /* the ring frame being handed over (for lmp_link_keep) */
  lmp_link_fn fn;
  void *owner;
  void (*closed)(void *ud);
  void *closed_ud;
};

/* ---- the ring ---- */

lmp_ring *lmp_ring_new(void) {
  void *p = mmap(NULL, LMP_RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  lmp_ring *r = p;
  r->size = LMP_RING_BYTES - sizeof(lmp_ring);
  return r;
}

void lmp_ring_free(lmp_ring *r) {
  if (r != NULL) munmap(r, LMP_RING_BYTES);
}

int lmp_ring_commit(lmp_ring *r, const char *p, size_t n) {
  uint64_t head = r->head, tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
  if (r->size - (head - tail) < n) return -1;
  lmp_ring_put(r->data, r->size, head, p, n);
  __atomic_store_n(&r->head, head + n, __ATOMIC_SEQ_CST);
  return __atomic_load_n(&r->parent_waiting, __ATOMIC_SEQ_CST) != 0;
}

/* ---- reading ---- */

static void on_poll(uv_poll_t *h, int status, int events);

static void set_events(lmp_link *k) {
  int ev = (k->ended ? 0 : UV_READABLE) | (k->out.bytes > 0 ? UV_WRITABLE : 0);
  if (k->closing || ev == k->events) return;
  k->events = ev;
  if (ev) uv_poll_start(&k->poll, ev, on_poll);
  else uv_poll_stop(&k->poll);
}

/* The line is over: the owner is told once. */
static void end(lmp_link *k) {
  if (k->ended) return;
  k->ended = 1;
  set_events(k);
  k->fn(k->owner, k, NULL);
}

/* Hands over the complete frames buffered; returns 1 when the owner said stop. */
static int deliver_buffered(lmp_link *k) {
  for (;;) {
    lmp_frame f;
    int r = lmp_rin_next(&k->in, &f, NULL);
    if (r < 0) { /* a protocol error: the line is no good any more */
      end(k);
      return 1;
    }
    if (r == 0) return 0;
    k->ringframe = NULL;
    int stop = k->fn(k->owner, k, &f);
    for (int i = 0; i < f.nfds; i++) close(f.fds[i]); /* workers send none; never leak them */
    if (stop) return 1;
  }
}

void lmp_link_read(lmp_link *k) {
  if (k->ended || k->closing) return;
  for (int rounds = 0; rounds < 64; rounds++) {
    ssize_t n = lmp_rin_recv(&k->in, k->fd, lmp_rin_need(&k->in), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      deliver_buffered(k);
      end(k);
      return;
    }
    if (deliver_buffered(k)) return;
    if (n < 0) break; /* drained */
  }
  lmp_rin_shrink(&k->in);
}

int lmp_link_drain_ring(lmp_link *k) {
  lmp_ring *r = k->ring;
  if (r == NULL || k->closing) return 0;
  int n = 0;
  for (;;) {
    uint64_t tail = r->tail, head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    if (head - tail < LMP_FRAME_HEAD) break;
    char h[LMP_FRAME_HEAD];
    lmp_ring_get(r->data, r->size, tail, h, sizeof h);
    uint64_t len = lmp_get_le64(h);
    if (len > r->size || LMP_FRAME_HEAD + len > head - tail || h[9] != 0) {
      /* the worker writes whole frames without descriptors: anything else is corruption */
      __atomic_store_n(&r->tail, head, __ATOMIC_RELEASE);
      end(k);
      break;
    }
    size_t total = LMP_FRAME_HEAD + (size_t)len, at = (size_t)(tail % r->size);
    const char *fr = r->data + at;
    if (at + total > r->size) { /* wraps around: make it whole */
      k->ringcopy.len = 0;
      if (lmp_buf_reserve(&k->ringcopy, total) != 0) break;
      lmp_ring_get(r->data, r->size, tail, k->ringcopy.p, total);
      fr = k->ringcopy.p;
    }
    lmp_frame f = {.type = (unsigned char)h[8], .p = fr + LMP_FRAME_HEAD, .n = (size_t)len};
    k->ringframe = f.p;
    int stop = k->fn(k->owner, k, &f);
    k->ringframe = NULL;
    n++;
    if (k->closing) return n; /* the owner closed the line: the ring is gone */
    __atomic_store_n(&r->tail, tail + total, __ATOMIC_RELEASE);
    if (stop) break;
  }
  if (k->ringcopy.cap > LMP_RIN_SMALL) lmp_buf_free(&k->ringcopy);
  return n;
}

int lmp_link_ring_ready(const lmp_link *k) {
  lmp_ring *r = k->ring;
  return r != NULL && __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) != r->tail;
}

int lmp_link_announce(lmp_link *k, int on) {
  lmp_ring *r = k->ring;
  if (r == NULL) return 0;
  __atomic_store_n(&r->parent_waiting, on ? 1u : 0u, __ATOMIC_SEQ_CST);
  return on && __atomic_load_n(&r->head, __ATOMIC_SEQ_CST) != r->tail;
}

char *lmp_link_keep(lmp_link *k, const lmp_frame *f, const char **payload) {
  if (k->ringframe == f->p) { /* ring memory is given back right after the callback: copy */
    char *copy = malloc(f->n ? f->n : 1);
    if (copy == NULL) return NULL;
    memcpy(copy, f->p, f->n);
    *payload = copy;
    return copy;
  }
  return lmp_rin_keep(&k->in, f, payload);
}

/* ---- writing ---- */

lmp_wq *lmp_link_out(lmp_link *k) { return &k->out; }

size_t lmp_link_queued(const lmp_link *k) { return k->out.bytes; }

void lmp_link_flush(lmp_link *k) {
  if (k->closing) return;
  if (k->out.bytes > 0 && lmp_wq_send(&k->out, k->fd) < 0) {
    /* the worker is gone: what it was sent is dealt with when its exit is seen */
  }
  set_events(k);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  lmp_link *k = (lmp_link *)h;
  if (status < 0) events = UV_READABLE; /* find out by reading */
  if (events & UV_READABLE) lmp_link_read(k);
  if ((events & UV_WRITABLE) && !k->closing) lmp_link_flush(k);
}

/* ---- life ---- */

lmp_link *lmp_link_open(uv_loop_t *loop, int fd, lmp_ring *ring, lmp_link_fn fn, void *owner) {
  lmp_link *k = calloc(1, sizeof *k);
  if (k == NULL) return NULL;
  if (uv_poll_init(loop, &k->poll, fd) != 0) {
    free(k);
    return NULL;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  lmp_fd_own(fd); /* children forked later must not hold it */
  k->fd = fd;
  k->ring = ring;
  k->fn = fn;
  k->owner = owner;
  set_events(k);
  return k;
}

lmp_ring *lmp_link_ring(lmp_link *k) { return k->ring; }

int lmp_link_ended(const lmp_link *k) { return k->ended; }

static void on_closed(uv_handle_t *h) {
  lmp_link *k = (lmp_link *)h;
  void (*closed)(void *) = k->closed;
  void *ud = k->closed_ud;
  lmp_rin_free(&k->in);
  lmp_buf_free(&k->ringcopy);
  free(k);
  if (closed) closed(ud);
}

void lmp_link_close(lmp_link *k, void (*closed)(void *ud), void *ud) {
  if (k->closing) return;
  k->closing = 1;
  k->closed = closed;
  k->closed_ud = ud;
  lmp_wq_clear(&k->out);
  uv_poll_stop(&k->poll);
  lmp_fd_disown(k->fd);
  close(k->fd);
  lmp_ring_free(k->ring);
  k->ring = NULL;
  uv_close((uv_handle_t *)&k->poll, on_closed);
}
