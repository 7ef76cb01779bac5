/*
** wire.c — frames with descriptors on stream sockets (format in wire.h): headers, sendmsg and
** recvmsg with SCM_RIGHTS, the frame reader and the non-blocking writer queue.
** Caveat: Linux never merges stream data across a message that carries descriptors, so one
** recvmsg brings the descriptors of at most one frame; more are closed (the frame then fails
** as a protocol error rather than leaking them).
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bytes.h"
#include "wire.h"

void lmp_frame_head(char h[LMP_FRAME_HEAD], int type, uint64_t len, int nfds) {
  lmp_put_le64(h, len);
  h[8] = (char)type;
  h[9] = (char)nfds;
}

ssize_t lmp_wire_sendmsg(int fd, const struct iovec *iov, int niov, const int *fds, int nfds,
                         int flags) {
  union {
    char buf[CMSG_SPACE(sizeof(int) * LMP_FRAME_MAXFDS)];
    struct cmsghdr align;
  } u;
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = (struct iovec *)iov;
  m.msg_iovlen = (size_t)niov;
  if (nfds > 0) {
    memset(u.buf, 0, sizeof u.buf);
    m.msg_control = u.buf;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &m, flags | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

/* ---- descriptors ---- */

void lmp_fdq_clear(lmp_fdq *q) {
  for (int i = 0; i < q->n; i++) close(q->fd[i]);
  q->n = 0;
}

/* Queues the descriptors of a received message (closing any beyond room). */
static void fdq_take(lmp_fdq *q, struct msghdr *m) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int fds[LMP_FRAME_MAXFDS * 4];
    if (k > (int)(sizeof fds / sizeof fds[0])) k = (int)(sizeof fds / sizeof fds[0]);
    memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)k);
    for (int i = 0; i < k; i++) {
      if (q->n < (int)(sizeof q->fd / sizeof q->fd[0])) q->fd[q->n++] = fds[i];
      else close(fds[i]);
    }
  }
}

/* ---- reading ---- */

/* Keeps only the unread bytes, at the start of the buffer. */
static void rin_compact(lmp_rin *r) {
  if (r->pos == 0) return;
  memmove(r->in.p, r->in.p + r->pos, r->in.len - r->pos);
  r->in.len -= r->pos;
  r->pos = 0;
}

ssize_t lmp_rin_recv(lmp_rin *r, int fd, size_t want, int flags) {
  if (r->pos == r->in.len) r->pos = r->in.len = 0;
  else if (r->pos > 0 && (want > LMP_RIN_SMALL || r->in.cap - r->in.len < want)) rin_compact(r);
  if (lmp_buf_reserve(&r->in, want > LMP_RIN_SMALL ? want : LMP_RIN_SMALL) != 0) {
    errno = ENOMEM;
    return -1;
  }
  union {
    char buf[CMSG_SPACE(sizeof(int) * LMP_FRAME_MAXFDS * 4)];
    struct cmsghdr align;
  } u;
  struct iovec iov = {r->in.p + r->in.len, r->in.cap - r->in.len};
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = u.buf;
  m.msg_controllen = sizeof u.buf;
  ssize_t n;
  do n = recvmsg(fd, &m, flags | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -1;
  fdq_take(&r->fds, &m);
  r->in.len += (size_t)n;
  return n;
}

int lmp_rin_next(lmp_rin *r, lmp_frame *f, size_t *need) {
  size_t avail = r->in.len - r->pos;
  if (avail < LMP_FRAME_HEAD) {
    if (need) *need = LMP_FRAME_HEAD - avail;
    return 0;
  }
  const char *h = r->in.p + r->pos;
  uint64_t len = lmp_get_le64(h);
  int nfds = (unsigned char)h[9];
  if (len > LMP_FRAME_MAX || nfds > LMP_FRAME_MAXFDS) return -1;
  if (avail - LMP_FRAME_HEAD < len) {
    if (need) *need = (size_t)(LMP_FRAME_HEAD + len - avail);
    return 0;
  }
  if (nfds > r->fds.n) return -1; /* they travel with the header: they would be here */
  f->type = (unsigned char)h[8];
  f->p = h + LMP_FRAME_HEAD;
  f->n = (size_t)len;
  f->nfds = nfds;
  memcpy(f->fds, r->fds.fd, sizeof(int) * (size_t)nfds);
  r->fds.n -= nfds;
  memmove(r->fds.fd, r->fds.fd + nfds, sizeof(int) * (size_t)r->fds.n);
  r->pos += LMP_FRAME_HEAD + (size_t)len;
  return 1;
}

size_t lmp_rin_pending(const lmp_rin *r) { return r->in.len - r->pos; }

size_t lmp_rin_need(const lmp_rin *r) {
  size_t avail = r->in.len - r->pos;
  if (avail < LMP_FRAME_HEAD) return LMP_FRAME_HEAD - avail;
  uint64_t len = lmp_get_le64(r->in.p + r->pos);
  if (len > LMP_FRAME_MAX) return 0;
  return avail - LMP_FRAME_HEAD >= len ? 0 : (size_t)(LMP_FRAME_HEAD + len - avail);
}

void lmp_rin_shrink(lmp_rin *r) {
  if (r->in.cap <= LMP_RIN_SMALL) return;
  if (r->pos == r->in.len) {
    lmp_buf_free(&r->in);
    r->pos = 0;
    return;
  }
  size_t left = r->in.len - r->pos;
  if (left > LMP_RIN_SMALL / 2) return; /* a partial frame that may well be big: keep room */
  char *p = malloc(LMP_RIN_SMALL);
  if (p == NULL) return;
  memcpy(p, r->in.p + r->pos, left);
  free(r->in.p);
  r->in = (lmp_buf){p, left, LMP_RIN_SMALL};
  r->pos = 0;
}

char *lmp_rin_keep(lmp_rin *r, const lmp_frame *f, const char **payload) {
  char *base = r->in.p;
  if (f->n >= LMP_RIN_SMALL && f->p == base + LMP_FRAME_HEAD) {
    /* the frame owns the start of the buffer: hand the whole block over, keeping what follows */
    size_t left = r->in.len - r->pos;
    lmp_buf rest = {0};
    if (lmp_buf_reserve(&rest, left > LMP_RIN_SMALL ? left : LMP_RIN_SMALL) == 0) {
      memcpy(rest.p, base + r->pos, left);
      rest.len = left;
      r->in = rest;
      r->pos = 0;
      *payload = base + LMP_FRAME_HEAD;
      return base;
    }
  }
  char *copy = malloc(f->n ? f->n : 1);
  if (copy == NULL) return NULL;
  memcpy(copy, f->p, f->n);
  *payload = copy;
  return copy;
}

void lmp_rin_free(lmp_rin *r) {
  lmp_buf_free(&r->in);
  r->pos = 0;
  lmp_fdq_clear(&r->fds);
}

/* ---- the writer queue ---- */

#define PIECE_COALESCE (256u << 10) /* small frames share a piece up to this size */
#define MAX_IOV 64

struct lmp_wpiece {
  lmp_wpiece *next;
  lmp_buf own;        /* copied bytes */
  const char *lent;   /* then these lent bytes; a piece with a lent part takes no more frames */
  size_t nlent;
  size_t sent;        /* bytes of own, then lent, already written */
  lmp_wq_done done;   /* at most one: a frame with fds, a lent part or done starts a piece */
  void *ud;
  int sealed;
  int nfds;
  int fds[LMP_FRAME_MAXFDS];
};

static size_t piece_len(const lmp_wpiece *w) { return w->own.len + w->nlent; }

static void piece_free(lmp_wpiece *w) {
  if (w->done) w->done(w->ud);
  lmp_buf_free(&w->own);
  free(w);
}

/* The piece a new frame goes into: the tail when it can take it, else a new one. */
static lmp_wpiece *piece_for(lmp_wq *q, int fresh, size_t n) {
  lmp_wpiece *t = q->tail;
  if (!fresh && t != NULL && !t->sealed && t->sent == 0 && t->own.len + n <= PIECE_COALESCE)
    return t;
  lmp_wpiece *w = calloc(1, sizeof *w);
  if (w == NULL) return NULL;
  if (q->tail) q->tail->next = w;
  else q->head = w;
  q->tail = w;
  return w;
}

/* Drops an empty piece just made at the tail (after an allocation failure). */
static void piece_unmake(lmp_wq *q, lmp_wpiece *w) {
  if (w->own.len != 0 || q->tail != w) return;
  lmp_wpiece **pp = &q->head, *prev = NULL;
  while (*pp != w) prev = *pp, pp = &(*pp)->next;
  *pp = NULL;
  q->tail = prev;
  lmp_buf_free(&w->own);
  free(w);
}

int lmp_wq_frame_lend(lmp_wq *q, int type, const struct iovec *parts, int nparts,
                      const char *lent, size_t nlent, const int *fds, int nfds, lmp_wq_done done,
                      void *ud) {
  size_t len = nlent;
  for (int i = 0; i < nparts; i++) len += parts[i].iov_len;
  size_t copied = LMP_FRAME_HEAD + len - nlent;
  int fresh = nfds > 0 || lent != NULL || done != NULL;
  lmp_wpiece *w = piece_for(q, fresh, copied);
  if (w == NULL) return -1;
  if (lmp_buf_reserve(&w->own, copied) != 0) {
    piece_unmake(q, w);
    return -1;
  }
  char h[LMP_FRAME_HEAD];
  lmp_frame_head(h, type, len, nfds);
  lmp_buf_add(&w->own, h, sizeof h);
  for (int i = 0; i < nparts; i++) lmp_buf_add(&w->own, parts[i].iov_base, parts[i].iov_len);
  if (lent != NULL) {
    w->lent = lent;
    w->nlent = nlent;
    w->sealed = 1;
  }
  if (nfds > 0) memcpy(w->fds, fds, sizeof(int) * (size_t)nfds);
  w->nfds = nfds;
  w->done = done;
  w->ud = ud;
  q->bytes += copied + nlent;
  return 0;
}

int lmp_wq_frame(lmp_wq *q, int type, const struct iovec *parts, int nparts, const int *fds,
                 int nfds, lmp_wq_done done, void *ud) {
  return lmp_wq_frame_lend(q, type, parts, nparts, NULL, 0, fds, nfds, done, ud);
}

/* Fills iov with what the pieces from the head still have to send, stopping before a piece
** whose descriptors must go with its own first byte. Returns the number of entries. */
static int gather(lmp_wq *q, struct iovec *iov) {
  int n = 0;
  for (lmp_wpiece *w = q->head; w != NULL && n < MAX_IOV - 1; w = w->next) {
    if (w != q->head && w->nfds > 0) break;
    size_t at = w->sent;
    if (at < w->own.len) {
      iov[n++] = (struct iovec){w->own.p + at, w->own.len - at};
      at = w->own.len;
    }
    if (w->nlent > 0 && at - w->own.len < w->nlent)
      iov[n++] = (struct iovec){(char *)w->lent + (at - w->own.len), w->nlent - (at - w->own.len)};
  }
  return n;
}

/* Accounts for n bytes written: finished pieces are freed (their done functions run). */
static void advance(lmp_wq *q, size_t n) {
  q->bytes -= n;
  while (n > 0 && q->head != NULL) {
    lmp_wpiece *w = q->head;
    size_t left = piece_len(w) - w->sent;
    if (n < left) {
      w->sent += n;
      return;
    }
    n -= left;
    q->head = w->next;
    if (q->head == NULL) q->tail = NULL;
    piece_free(w);
  }
}

int lmp_wq_send(lmp_wq *q, int fd) {
  while (q->head != NULL) {
    struct iovec iov[MAX_IOV];
    int niov = gather(q, iov);
    lmp_wpiece *w = q->head;
    int nfds = w->sent == 0 ? w->nfds : 0;
    if (niov == 0) { /* an empty piece (nothing to write) */
      advance(q, 0);
      q->head = w->next;
      if (q->head == NULL) q->tail = NULL;
      piece_free(w);
      continue;
    }
    ssize_t k = lmp_wire_sendmsg(fd, iov, niov, w->fds, nfds, MSG_DONTWAIT);
    if (k < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
      int e = errno;
      lmp_wq_clear(q);
      errno = e;
      return -1;
    }
    advance(q, (size_t)k);
  }
  return 0;
}

void lmp_wq_clear(lmp_wq *q) {
  while (q->head != NULL) {
    lmp_wpiece *w = q->head;
    q->head = w->next;
    piece_free(w);
  }
  q->tail = NULL;
  q->bytes = 0;
}
