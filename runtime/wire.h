/*
** wire.h — frames on a stream socket, with descriptors: the one framing of lmp's lines (a pool's
** parent and its workers, Pipe ends). A frame is a 10-byte header — u64 payload length, u8 type,
** u8 number of descriptors — then the payload; its descriptors travel (SCM_RIGHTS) with the
** header's first byte. Integers are little-endian (bytes.h), whatever the machine.
** Caveat: the reader (lmp_rin) and the writer queue (lmp_wq) own no socket; callers pass the fd.
*/
#ifndef LMP_WIRE_H
#define LMP_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "lmp_int.h"

#define LMP_FRAME_HEAD 10
#define LMP_FRAME_MAXFDS 64                 /* descriptors one frame may carry */
#define LMP_FRAME_MAX ((uint64_t)1 << 40)   /* a longer frame is refused (1 TiB) */
#define LMP_RIN_SMALL (64u << 10)           /* a reader keeps at most this much between frames */

/* Writes a frame header for a payload of len bytes carrying nfds descriptors. */
void lmp_frame_head(char h[LMP_FRAME_HEAD], int type, uint64_t len, int nfds);

/* sendmsg of iov with nfds descriptors attached to the first byte, MSG_NOSIGNAL added to
** flags. Returns what sendmsg returns. */
ssize_t lmp_wire_sendmsg(int fd, const struct iovec *iov, int niov, const int *fds, int nfds,
                         int flags);

/* ---- descriptors received and not yet claimed by a frame, in arrival order ---- */
typedef struct lmp_fdq {
  int fd[LMP_FRAME_MAXFDS * 4];
  int n;
} lmp_fdq;

/* Closes every descriptor still queued. */
void lmp_fdq_clear(lmp_fdq *q);

/* ---- reading frames ---- */
typedef struct lmp_rin {
  lmp_buf in;  /* bytes received; the next frame starts at pos */
  size_t pos;
  lmp_fdq fds;
} lmp_rin;

/* A complete frame, valid until the reader is used again. fds are the frame's own descriptors,
** now the caller's (close what you do not keep). */
typedef struct lmp_frame {
  int type;
  const char *p;
  size_t n;
  int nfds;
  int fds[LMP_FRAME_MAXFDS];
} lmp_frame;

/* Receives what the socket has (recvmsg with flags, e.g. MSG_DONTWAIT), at least room for want
** more bytes. Returns the bytes read, 0 at end of stream, -1 with errno on error (EAGAIN...).
** Descriptors that came along are queued. */
ssize_t lmp_rin_recv(lmp_rin *r, int fd, size_t want, int flags);

/* Takes the next complete frame: 1 when there is one, 0 when more bytes are needed (*need, if
** not NULL, gets how many), -1 on a protocol error (a length over LMP_FRAME_MAX, descriptors that
** did not come). */
int lmp_rin_next(lmp_rin *r, lmp_frame *f, size_t *need);

/* Bytes still missing for the next frame to be complete (0 when it is, or cannot be told). */
size_t lmp_rin_need(const lmp_rin *r);

/* Bytes buffered after the frames taken so far. */
size_t lmp_rin_pending(const lmp_rin *r);

/* Makes the reader's memory small again once it holds no partial frame (after a big frame). */
void lmp_rin_shrink(lmp_rin *r);

/* Hands over the memory of the frame just taken (f) instead of copying it: returns a block the
** caller frees with free(), with the payload at *payload. NULL when out of memory. */
char *lmp_rin_keep(lmp_rin *r, const lmp_frame *f, const char **payload);

void lmp_rin_free(lmp_rin *r);

/* ---- a queue of outgoing frames (non-blocking writers) ----
** Small frames are copied and coalesced into one write; a big payload can be lent instead
** (sent from the caller's memory, which must stay valid until its done function runs). */
typedef void (*lmp_wq_done)(void *ud);

typedef struct lmp_wpiece lmp_wpiece;
typedef struct lmp_wq {
  lmp_wpiece *head, *tail;
  size_t bytes;  /* not yet sent */
} lmp_wq;

/* Queues a frame whose payload is the concatenation of parts (copied). fds (may be NULL) are
** sent with it; done(ud), when given, runs once the frame is sent or dropped. Returns 0, or -1
** when out of memory (nothing queued). */
int lmp_wq_frame(lmp_wq *q, int type, const struct iovec *parts, int nparts, const int *fds,
                 int nfds, lmp_wq_done done, void *ud);

/* Like lmp_wq_frame, the last part lent rather than copied. */
int lmp_wq_frame_lend(lmp_wq *q, int type, const struct iovec *parts, int nparts,
                      const char *lent, size_t nlent, const int *fds, int nfds, lmp_wq_done done,
                      void *ud);

/* Writes what it can without blocking: 0 when everything is sent, 1 when the socket is full,
** -1 with errno when the socket failed (the queue is then dropped). */
int lmp_wq_send(lmp_wq *q, int fd);

/* Drops what is queued (done functions run). */
void lmp_wq_clear(lmp_wq *q);

#endif
