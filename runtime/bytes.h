/*
** bytes.h — fixed-width integers in byte buffers, little-endian: the one byte order of every
** lmp frame, codec message and shared-memory record, whatever the machine.
*/
#ifndef LMP_BYTES_H
#define LMP_BYTES_H

#include <stdint.h>
#include <string.h>

static inline void lmp_put_le16(void *p, uint16_t v) {
  unsigned char *b = p;
  b[0] = (unsigned char)v;
  b[1] = (unsigned char)(v >> 8);
}

static inline void lmp_put_le32(void *p, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 4);
#else
  unsigned char *b = p;
  for (int i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
#endif
}

static inline void lmp_put_le64(void *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  unsigned char *b = p;
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
#endif
}

static inline uint16_t lmp_get_le16(const void *p) {
  const unsigned char *b = p;
  return (uint16_t)(b[0] | b[1] << 8);
}

static inline uint32_t lmp_get_le32(const void *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
#else
  const unsigned char *b = p;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint32_t)b[i] << (8 * i);
  return v;
#endif
}

static inline uint64_t lmp_get_le64(const void *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
#else
  const unsigned char *b = p;
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)b[i] << (8 * i);
  return v;
#endif
}

#endif
