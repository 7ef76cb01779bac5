/*
** link.h — the line between a pool's parent and one worker: a socketpair carrying wire frames
** both ways (wire.h), and a results ring in shared memory that the worker fills and the parent
** drains. The parent's end runs on its libuv loop and hands every complete frame to its owner
** through a callback; it knows nothing of pools or tasks.
** Caveat: the ring needs memory shared across fork; a worker started by exec (the spawn method)
** has none, and its results all travel through the socket.
*/
#ifndef LMP_LINK_H
#define LMP_LINK_H

#include <stdint.h>
#include <uv.h>

#include "wire.h"

/* ---- the results ring (shared memory, written by the worker, read by the parent) ----
** head and tail count bytes since the start; data is used modulo size. parent_waiting and head
** form a Dekker pair: the parent sets the flag then looks at head; the worker moves head then
** looks at the flag (both sequentially consistent), so a result is never left unannounced
** while the parent sleeps. claim[] holds one word per task slot (the task's sequence number on
** this line modulo LMP_CLAIMS): the worker marks a task started, the parent marks one withdrawn,
** whichever comes first wins — so a task in a worker's window can be cancelled exactly. */
#define LMP_RING_BYTES (256 * 1024)
#define LMP_CLAIMS 1024 /* more than the widest dispatch window */

enum { LMP_CLAIM_SENT = 0, LMP_CLAIM_STARTED = 1, LMP_CLAIM_WITHDRAWN = 2 };

typedef struct lmp_ring {
  uint64_t head; /* bytes committed by the worker */
  char pad1[56];
  uint64_t tail; /* bytes consumed by the parent */
  char pad2[56];
  uint32_t parent_waiting; /* the parent may block: announce new results with a WAKE frame */
  char pad3[60];
  uint64_t size; /* bytes of data */
  char pad4[56];
  uint32_t claim[LMP_CLAIMS];
  char data[];
} lmp_ring;

/* Maps a fresh ring (shared, anonymous), or returns NULL. */
lmp_ring *lmp_ring_new(void);
void lmp_ring_free(lmp_ring *r);

/* Worker: copies n bytes of whole frames into the ring. Returns 1 when they are committed and
** the parent must be woken (it said it may sleep), 0 when committed and no wake-up is needed,
** -1 when they do not fit (send them through the socket). */
int lmp_ring_commit(lmp_ring *r, const char *p, size_t n);

/* Parent, before sending the task with sequence number seq: its slot is free again. */
static inline void lmp_claim_reset(lmp_ring *r, uint32_t seq) {
  __atomic_store_n(&r->claim[seq % LMP_CLAIMS], LMP_CLAIM_SENT, __ATOMIC_RELEASE);
}

/* Worker, before running task seq: 1 when it may run, 0 when the parent withdrew it. */
static inline int lmp_claim_start(lmp_ring *r, uint32_t seq) {
  uint32_t expect = LMP_CLAIM_SENT;
  return __atomic_compare_exchange_n(&r->claim[seq % LMP_CLAIMS], &expect, LMP_CLAIM_STARTED, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ||
         expect == LMP_CLAIM_STARTED;
}

/* Parent: 1 when task seq is withdrawn (it will never run), 0 when it has started. */
static inline int lmp_claim_withdraw(lmp_ring *r, uint32_t seq) {
  uint32_t expect = LMP_CLAIM_SENT;
  return __atomic_compare_exchange_n(&r->claim[seq % LMP_CLAIMS], &expect, LMP_CLAIM_WITHDRAWN, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ||
         expect == LMP_CLAIM_WITHDRAWN;
}

/* ---- the parent's end ---- */
typedef struct lmp_link lmp_link;

/* Called for every complete frame (f), and once with f == NULL when the line has ended (end of
** stream, an error, or a protocol error). Returns 0 to go on reading, 1 to stop for now. The
** frame's memory is valid during the call only (see lmp_link_keep). */
typedef int (*lmp_link_fn)(void *owner, lmp_link *k, const lmp_frame *f);

/* Takes over fd (made non-blocking) and ring (may be NULL) and watches fd for frames. Returns
** NULL when out of memory (nothing is taken over then). */
lmp_link *lmp_link_open(uv_loop_t *loop, int fd, lmp_ring *ring, lmp_link_fn fn, void *owner);

/* The outgoing queue: add frames with lmp_wq_frame*, then call lmp_link_flush. */
lmp_wq *lmp_link_out(lmp_link *k);

/* Writes what it can now; watches for writability while more is queued. */
void lmp_link_flush(lmp_link *k);

/* Bytes queued, not yet written. */
size_t lmp_link_queued(const lmp_link *k);

/* Hands every frame the worker committed to the ring to the callback; returns how many. */
int lmp_link_drain_ring(lmp_link *k);

/* 1 when the ring holds frames not yet drained. */
int lmp_link_ring_ready(const lmp_link *k);

/* Tells the worker whether to announce new results (the parent may sleep); when turning it on,
** returns 1 if results came in meanwhile (drain them before sleeping). */
int lmp_link_announce(lmp_link *k, int on);

/* Reads the socket now (without waiting for the loop) and hands complete frames over. */
void lmp_link_read(lmp_link *k);

/* The ring (NULL when there is none): the owner uses its claims. */
lmp_ring *lmp_link_ring(lmp_link *k);

/* 1 once the line has ended (the callback got f == NULL). */
int lmp_link_ended(const lmp_link *k);

/* Hands over the memory of frame f (during the callback): a block to free() with the payload at
** *payload. Big socket frames are handed over without a copy. NULL when out of memory. */
char *lmp_link_keep(lmp_link *k, const lmp_frame *f, const char **payload);

/* Closes the line: stops watching, drops what is queued, closes the fd and unmaps the ring;
** the memory goes in the loop's close callback, which then calls closed(ud) if given. The owner
** is never called again. */
void lmp_link_close(lmp_link *k, void (*closed)(void *ud), void *ud);

#endif
