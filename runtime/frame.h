/*
** frame.h — the frames between a pool's parent and its workers on their socketpair.
** A frame is: u32 length of what follows (little-endian), u8 type, payload.
**   TASK    u64 id, u8 kind, u32 fnid, u32 fnlen, u8 nfds, fn message (fnlen bytes, 0 when
**           the worker has fnid already), args message (the rest); nfds descriptors for the
**           args (lmp handles such as Pipe ends) travel with the frame's first byte
**           (SCM_RIGHTS), and the args message refers to them by index
**   QUIT    the worker leaves after what it has read
**   FORGET  the worker drops its function cache
**   RESULT  u64 id, u8 status, u32 index (the failing item of a chunk), message
**   READY   the worker's initializer ran: it serves tasks from now on
**   WAKE    nothing but a wake-up: results are waiting in the ring
**
** Results usually travel through a ring in shared memory instead of the socket (lmp_ring):
** the worker copies its result frames there before it starts the next task — memory that
** outlives a crash of that task — and writes a WAKE frame to the socket only when the parent
** said it is about to sleep. A batch that does not fit in the ring goes through the socket.
** Values are codec messages (codec.h), so frames are machine-independent like the codec.
*/
#ifndef LMP_FRAME_H
#define LMP_FRAME_H

#include <stdint.h>
#include <string.h>

enum { F_TASK = 1, F_QUIT = 2, F_FORGET = 3, F_RESULT = 10, F_READY = 11, F_WAKE = 12 };
enum { K_APPLY = 0, K_MAP = 1, K_STARMAP = 2 };
enum { RES_OK = 0, RES_ERROR = 1, RES_UNENCODABLE = 2 };

/* The results ring of one worker (shared memory, written by the worker, read by the parent).
** head and tail count bytes since the start; data is used modulo size (a power of two).
** parent_waiting and head form a Dekker pair: the parent sets the flag then looks at head; the
** worker moves head then looks at the flag (both sequentially consistent), so a result is
** never left unannounced while the parent sleeps. */
typedef struct lmp_ring {
  uint64_t head;           /* bytes committed by the worker */
  char pad1[56];
  uint64_t tail;           /* bytes consumed by the parent */
  char pad2[56];
  uint32_t parent_waiting; /* the parent may block: announce new results with a WAKE */
  char pad3[60];
  uint64_t size;           /* bytes of data */
  char pad4[56];
  char data[];
} lmp_ring;

#define RING_BYTES (256 * 1024) /* the whole mapping, header included */
#define RING_DATA (RING_BYTES - (int)sizeof(lmp_ring))

#define FRAME_HEAD 5           /* u32 length + u8 type */
#define TASK_HEAD (8 + 1 + 4 + 4 + 1)
#define TASK_MAXFDS 64 /* descriptors one task may carry */
#define RESULT_HEAD (8 + 1 + 4)
#define FRAME_MAX (1u << 31)   /* a frame longer than this is a protocol error */

static inline void put_u32(char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (char)(v >> (8 * i));
}
static inline void put_u64(char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (char)(v >> (8 * i));
}
static inline uint32_t get_u32(const char *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint32_t)(unsigned char)p[i] << (8 * i);
  return v;
}
static inline uint64_t get_u64(const char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)(unsigned char)p[i] << (8 * i);
  return v;
}

#endif
