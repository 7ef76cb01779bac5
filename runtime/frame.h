/*
** frame.h — what the frames on the line between a pool's parent and a local worker mean
** (the framing itself is wire.h's; the line is link.h's). Shared by workers.c and worker.c.
**   TASK    u64 id, u8 kind, u32 fnid, u64 fnlen, u32 seq; then the function's message (fnlen
**           bytes, 0 when the worker has fnid already) and the arguments' message (the rest).
**           The frame's descriptors belong to the arguments (lmp handles such as Pipe ends),
**           which refer to them by index. seq numbers the task on this line: its claim slot.
**   QUIT    the worker leaves after what it has read
**   FORGET  the worker drops its function cache
**   RESULT  u64 id, u8 status (RES_*), u32 index (the failing item of a chunk), the message
**   READY   the worker's initializer ran: it serves tasks from now on
**   WAKE    nothing but a wake-up: results are waiting in the ring
** Results usually travel through the results ring (link.h): the worker copies its result
** frames there before it starts its next task — memory that outlives a crash of that task —
** and writes a WAKE frame only when the parent said it may sleep.
*/
#ifndef LMP_FRAME_H
#define LMP_FRAME_H

enum { F_TASK = 1, F_QUIT = 2, F_FORGET = 3, F_RESULT = 10, F_READY = 11, F_WAKE = 12 };

#define TASK_HEAD (8 + 1 + 4 + 8 + 4)
#define RESULT_HEAD (8 + 1 + 4)

/* The most arguments a task takes (errors.lua's MAX_ARGS: the parent refuses more). */
#define LMP_MAX_ARGS 250000

/* The start payload of a worker (what lmp.worker gets): u32 fd, u64 maxtasks, u64 ring address
** (0: none), u32 name length, the name, then the initializer's codec message. */
#define WORKER_PAYLOAD_HEAD (4 + 8 + 8 + 4)

#endif
