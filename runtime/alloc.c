/*
** alloc.c — the allocator of the Lua states lmp makes (the executable's and every child's):
** Lua's small blocks (strings, tables, nodes, closures) come from size classes carved out of
** 64 KiB slabs with free lists, big ones straight from malloc, so big payloads go back to the
** system as soon as Lua frees them.
** Design notes:
**  - Lua tells the size of every block it frees or resizes, so no block carries a header: the
**    size class follows from the size, and the slab from the address (slabs are aligned).
**  - A slab that has no block in use any more is kept for reuse (a few, per state) or unmapped,
**    so a state that made and dropped much garbage shrinks back; lmp__alloc_trim drops the
**    kept ones (and the slabs mapped ahead, RESERVE at a time) too.
**  - Under AddressSanitizer every block outside use is poisoned (a free block but for the word
**    that links it), and a block in use past the size Lua asked for, so ASan reports a use after
**    free or an overflow inside a slab as it does for malloc's blocks; its leak checker scans
**    the slabs as roots, so the big blocks they point to count as in use.
** Who uses it: children's states (pool workers, Process children, the Manager's server), which
** build what a task brings, run it and drop it, message after message, and reuse that memory
** at once from the slabs (a map over records: 2.3x CPython on malloc, 3-3.9x on slabs). The
** executable's own state keeps malloc: it holds the user's data, and the encoder walks data
** made by malloc faster (mp.encode of 100k records: 2.9-3.2 M/s against 2.0-2.2 M/s).
** LMP_ALLOC=system (for valgrind, which does not see inside the slabs) or =slabs overrides.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "lmp_int.h"

#if defined(__SANITIZE_ADDRESS__)
#define LMP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LMP_ASAN 1
#endif
#endif
#ifdef LMP_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
/* the leak checker scans slabs as it scans the heap: malloc's blocks they point to are in use */
#define ROOT(p, n) __lsan_register_root_region((p), (n))
#define UNROOT(p, n) __lsan_unregister_root_region((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#define ROOT(p, n) ((void)(p), (void)(n))
#define UNROOT(p, n) ((void)(p), (void)(n))
#endif

#define SLAB_SHIFT 16
#define SLAB ((size_t)1 << SLAB_SHIFT)
#define GRAIN 16                     /* block sizes are multiples of this */
#define SMALL_MAX 512                /* bigger blocks come from malloc */
#define NCLASS (SMALL_MAX / GRAIN)   /* classes 1..NCLASS: blocks of class * GRAIN bytes */
#define HEAD 64                      /* the slab's header, before its first block */
#define SPARE_MAX 16                 /* empty slabs kept for reuse */
#define RESERVE 16                   /* slabs mapped at a time */

typedef struct slab {
  struct slab *next, *prev; /* in its class's list of slabs with room */
  void *free;               /* freed blocks, linked through their first word */
  char *bump, *end;         /* blocks never handed out yet: [bump, end) */
  uint32_t live;            /* blocks in use */
  uint16_t cls;
  uint8_t listed;           /* in its class's list (it has room) */
} slab;

struct lmp_alloc {
  slab *room[NCLASS + 1]; /* per class: slabs with a free block, most recently freed into first */
  slab *spare;            /* empty slabs kept, linked by next */
  int nspare;
  char *reserve;          /* slabs mapped, never used yet: nreserve of them from here */
  int nreserve;
};

static inline unsigned class_of(size_t n) { return (unsigned)((n + GRAIN - 1) / GRAIN); }

static inline slab *slab_of(const void *p) {
  return (slab *)((uintptr_t)p & ~(uintptr_t)(SLAB - 1));
}

/* ---- slabs ---- */

/* Maps n SLAB-aligned slabs (n + 1 slabs' worth, the ends trimmed) into a's reserve; 0 when
** the system refuses. */
static int map_reserve(lmp_alloc *a, size_t n) {
  char *p = mmap(NULL, (n + 1) * SLAB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 0;
  uintptr_t at = ((uintptr_t)p + SLAB - 1) & ~(uintptr_t)(SLAB - 1);
  size_t head = at - (uintptr_t)p;
  if (head > 0) munmap(p, head);
  munmap((char *)at + n * SLAB, SLAB - head);
  a->reserve = (char *)at;
  a->nreserve = (int)n;
  return 1;
}

/* A fresh slab from the reserve, which is mapped RESERVE slabs at a time (a state's start
** uses a score of classes: one system call, not three per slab), or one at a time when memory
** is short. NULL when there is none. */
static slab *map_slab(lmp_alloc *a) {
  if (a->nreserve == 0 && !map_reserve(a, RESERVE) && !map_reserve(a, 1)) return NULL;
  slab *s = (slab *)a->reserve;
  a->reserve += SLAB;
  a->nreserve--;
  ROOT((void *)s, SLAB);
  return s;
}

static void unmap_slab(slab *s) {
  UNROOT(s, SLAB);
  munmap(s, SLAB);
}

static void link_room(lmp_alloc *a, slab *s) {
  s->prev = NULL;
  s->next = a->room[s->cls];
  if (s->next) s->next->prev = s;
  a->room[s->cls] = s;
  s->listed = 1;
}

static void unlink_room(lmp_alloc *a, slab *s) {
  if (s->prev) s->prev->next = s->next;
  else a->room[s->cls] = s->next;
  if (s->next) s->next->prev = s->prev;
  s->listed = 0;
}

/* A slab for class cls, listed as having room; NULL when memory is exhausted. */
static slab *new_slab(lmp_alloc *a, unsigned cls) {
  slab *s = a->spare;
  if (s != NULL) {
    a->spare = s->next;
    a->nspare--;
  } else if ((s = map_slab(a)) == NULL) {
    return NULL;
  }
  size_t size = (size_t)cls * GRAIN;
  s->free = NULL;
  s->bump = (char *)s + HEAD;
  s->end = s->bump + (SLAB - HEAD) / size * size;
  s->live = 0;
  s->cls = (uint16_t)cls;
  POISON(s->bump, (size_t)(s->end - s->bump));
  link_room(a, s);
  return s;
}

/* The slab s has no block in use: kept for reuse, or given back. */
static void drop_slab(lmp_alloc *a, slab *s) {
  if (s->listed) unlink_room(a, s);
  UNPOISON((char *)s + HEAD, SLAB - HEAD); /* whatever class it serves next */
  if (a->nspare < SPARE_MAX) {
    s->next = a->spare;
    a->spare = s;
    a->nspare++;
  } else {
    unmap_slab(s);
  }
}

/* ---- blocks ---- */

/* A block of class cls for n bytes. */
static void *small_alloc(lmp_alloc *a, unsigned cls, size_t n) {
  slab *s = a->room[cls];
  if (s == NULL && (s = new_slab(a, cls)) == NULL) return NULL;
  void *p = s->free;
  if (p != NULL) {
    s->free = *(void **)p;
  } else {
    p = s->bump;
    s->bump += (size_t)cls * GRAIN;
  }
  s->live++;
  if (s->free == NULL && s->bump >= s->end) unlink_room(a, s); /* full */
  UNPOISON(p, n);
  return p;
}

static void small_free(lmp_alloc *a, void *p) {
  slab *s = slab_of(p);
  POISON(p, (size_t)s->cls * GRAIN);
  UNPOISON(p, sizeof(void *)); /* the link */
  *(void **)p = s->free;
  s->free = p;
  if (--s->live == 0) drop_slab(a, s);
  else if (!s->listed) link_room(a, s);
}

/* Moves a block to a new one of nsize bytes (small or not), as realloc does. */
static void *move_block(lmp_alloc *a, void *p, size_t osize, size_t nsize) {
  void *q = nsize <= SMALL_MAX ? small_alloc(a, class_of(nsize), nsize) : malloc(nsize);
  if (q == NULL || p == NULL) return q;
  memcpy(q, p, osize < nsize ? osize : nsize);
  if (osize <= SMALL_MAX) small_free(a, p);
  else free(p);
  return q;
}

/* The lua_Alloc of lmp's states (ud: the lmp_alloc). */
static void *slab_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  lmp_alloc *a = ud;
  if (p == NULL) osize = 0; /* it tells the kind of object then, not a size */
  if (nsize == 0) {
    if (p == NULL) return NULL;
    if (osize <= SMALL_MAX) small_free(a, p);
    else free(p);
    return NULL;
  }
  if (osize <= SMALL_MAX && nsize <= SMALL_MAX) {
    unsigned cls = class_of(nsize);
    if (p == NULL) return small_alloc(a, cls, nsize);
    if (class_of(osize) == cls) {
      POISON(p, (size_t)cls * GRAIN);
      UNPOISON(p, nsize);
      return p;
    }
    return move_block(a, p, osize, nsize);
  }
  if (osize > SMALL_MAX && nsize > SMALL_MAX) return realloc(p, nsize);
  return move_block(a, p, osize, nsize);
}

static void *system_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  return p == NULL ? malloc(nsize) : realloc(p, nsize);
}

/* ---- states ---- */

static int panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object is not a string";
  fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n", msg);
  fflush(stderr);
  return 0; /* Lua aborts */
}

/* Warnings as the stand-alone lua prints them: off until "@on", pieces joined on one line. */
typedef struct warner {
  int on, midline;
} warner;

static void warn(void *ud, const char *msg, int tocont) {
  warner *w = ud;
  if (!w->midline && msg[0] == '@') { /* a control message */
    if (strcmp(msg, "@on") == 0) w->on = 1;
    else if (strcmp(msg, "@off") == 0) w->on = 0;
    return;
  }
  if (!w->on) return;
  if (!w->midline) fputs("Lua warning: ", stderr);
  fputs(msg, stderr);
  w->midline = tocont;
  if (!tocont) fputc('\n', stderr);
  fflush(stderr);
}

/* Slabs or not: as asked, unless LMP_ALLOC says "system" or "slabs". */
static int use_slabs(int slabs) {
  const char *e = getenv("LMP_ALLOC");
  if (e != NULL && strcmp(e, "system") == 0) return 0;
  if (e != NULL && strcmp(e, "slabs") == 0) return 1;
  return slabs;
}

lua_State *lmp__state_new(int slabs) {
  static warner w; /* one per process: a process runs one state of its own */
  lmp_alloc *a = NULL;
  if (use_slabs(slabs) && (a = calloc(1, sizeof *a)) == NULL) return NULL;
  lua_State *L = lua_newstate(a ? slab_alloc : system_alloc, a);
  if (L == NULL) {
    free(a);
    return NULL;
  }
  lua_atpanic(L, panic);
  lua_setwarnf(L, warn, &w);
  return L;
}

void lmp__state_close(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  lua_close(L);
  if (f != slab_alloc) return;
  lmp__alloc_trim(ud);
  free(ud);
}

void lmp__alloc_trim(lmp_alloc *a) {
  if (a == NULL) return;
  while (a->spare != NULL) {
    slab *s = a->spare;
    a->spare = s->next;
    unmap_slab(s);
  }
  a->nspare = 0;
  if (a->nreserve > 0) munmap(a->reserve, (size_t)a->nreserve * SLAB);
  a->nreserve = 0;
}

lmp_alloc *lmp__alloc_of(lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == slab_alloc ? ud : NULL;
}
