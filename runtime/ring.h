/*
** ring.h — the wrap-around copies of byte rings in shared memory: data of size bytes used
** modulo size, positions counted in bytes since the start. Shared by the results ring of a
** pool's line (link.c, worker.c) and the queues (queue.c).
*/
#ifndef LMP_RING_H
#define LMP_RING_H

#include <stdint.h>
#include <string.h>

/* Copies n bytes from src into the ring at position pos. */
static inline void lmp_ring_put(char *data, uint64_t size, uint64_t pos, const void *src, size_t n) {
  if (n == 0) return;
  size_t at = (size_t)(pos % size), first = (size_t)size - at;
  if (first > n) first = n;
  memcpy(data + at, src, first);
  memcpy(data, (const char *)src + first, n - first);
}

/* Copies n bytes at position pos out of the ring into dst. */
static inline void lmp_ring_get(const char *data, uint64_t size, uint64_t pos, void *dst, size_t n) {
  if (n == 0) return;
  size_t at = (size_t)(pos % size), first = (size_t)size - at;
  if (first > n) first = n;
  memcpy(dst, data + at, first);
  memcpy((char *)dst + first, data, n - first);
}

#endif
