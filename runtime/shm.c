/*
** shm.c — shared-memory arenas (memfd + MAP_SHARED) and the objects carved from them, plus the
** handle format that lets any process map the same object.
** Caveats: an arena fd is O_CLOEXEC but stays open across fork (children need it); an object
** that was ever sent as a handle is pinned (never returned to its arena) because a copy of the
** handle may still be in flight; a handle without an fd is mapped through /proc/<creator>/fd,
** which works only while the creator still holds the arena.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "lmp_shm.h"

#define ARENA_MAGIC 0x6c6d7061726e6131ULL /* "lmparna1" */
#define BLOCK_MAGIC 0x6c6d6f62u
#define ARENA_SIZE (1u << 20)
#define NCLASS 14                 /* blocks of 32 B .. 256 KiB */
#define MIN_BLOCK 32
#define BLOCK_HDR 16
#define DEDICATED 0xffu
#define PIN_FLAG 1u

/* The head of every arena, at offset 0 of the memfd. */
typedef struct arena_hdr {
  uint64_t magic, id, size;
  lmp_mutex lock; /* guards bump and free lists */
  uint32_t dedicated;
  uint64_t bump;
  uint64_t free_head[NCLASS];
} arena_hdr;

/* The head of every block; the object follows it. */
typedef struct block_hdr {
  uint32_t refs;  /* Lua handles alive in all processes */
  uint8_t cls;    /* size class, or DEDICATED */
  uint8_t flags;  /* PIN_FLAG */
  uint16_t pad;
  uint32_t magic;
  uint32_t pad2;
} block_hdr;

/* This process's mapping of an arena. */
struct lmp_arena {
  uint64_t id;
  char *base;
  size_t size;
  int fd;
  int32_t creator_pid, creator_fd;
  int dedicated;
  long local; /* handles alive in this process (dedicated arenas are unmapped at 0) */
};

static lmp_arena **arenas;
static int n_arenas, cap_arenas;

static arena_hdr *hdr_of(lmp_arena *a) { return (arena_hdr *)a->base; }

static block_hdr *block_of(lmp_arena *a, uint64_t off) {
  return (block_hdr *)(a->base + off - BLOCK_HDR);
}

static int table_add(lmp_arena *a) {
  if (n_arenas == cap_arenas) {
    int cap = cap_arenas ? cap_arenas * 2 : 8;
    lmp_arena **p = realloc(arenas, (size_t)cap * sizeof *p);
    if (p == NULL) return -1;
    arenas = p;
    cap_arenas = cap;
  }
  arenas[n_arenas++] = a;
  return 0;
}

static void table_remove(lmp_arena *a) {
  for (int i = 0; i < n_arenas; i++)
    if (arenas[i] == a) {
      arenas[i] = arenas[--n_arenas];
      return;
    }
}

static lmp_arena *table_find(uint64_t id) {
  for (int i = n_arenas - 1; i >= 0; i--)
    if (arenas[i]->id == id) return arenas[i];
  return NULL;
}

/* Creates and maps a new arena of size bytes; NULL with errno set on failure. */
static lmp_arena *arena_create(size_t size, int dedicated) {
  lmp_arena *a = calloc(1, sizeof *a);
  if (a == NULL) return NULL;
  int fd = memfd_create("lmp-arena", MFD_CLOEXEC);
  if (fd < 0) goto error;
  if (ftruncate(fd, (off_t)size) != 0) goto error_fd;
  char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) goto error_fd;
  uint64_t id;
  if (getrandom(&id, sizeof id, 0) != sizeof id) id = ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)a;
  *a = (lmp_arena){id, base, size, fd, getpid(), fd, dedicated, 0};
  arena_hdr *h = (arena_hdr *)base;
  h->id = id;
  h->size = size;
  h->dedicated = (uint32_t)dedicated;
  h->bump = (sizeof(arena_hdr) + 63) & ~(uint64_t)63;
  __atomic_store_n(&h->magic, ARENA_MAGIC, __ATOMIC_RELEASE);
  if (table_add(a) != 0) {
    munmap(base, size);
    errno = ENOMEM;
    goto error_fd;
  }
  return a;
error_fd:
  close(fd);
error:
  free(a);
  return NULL;
}

static void arena_unmap(lmp_arena *a) {
  table_remove(a);
  munmap(a->base, a->size);
  close(a->fd);
  free(a);
}

static int size_class(size_t total) {
  size_t c = MIN_BLOCK;
  for (int i = 0; i < NCLASS; i++, c <<= 1)
    if (total <= c) return i;
  return -1;
}

/* Takes a block of class cls from arena a, or returns 0 when a has no room. */
static uint64_t arena_take(lmp_arena *a, int cls) {
  arena_hdr *h = hdr_of(a);
  uint64_t off = 0, bsize = (uint64_t)MIN_BLOCK << cls;
  if (lmp_mutex_lock(NULL, &h->lock, -1) == LMP_LOCK_ABANDONED) {
    /* the dead holder was inside a few word writes; the lists stay well-formed because every
    ** update below is a single store after the block is fully prepared */
  }
  if (h->free_head[cls] != 0) {
    off = h->free_head[cls];
    h->free_head[cls] = *(uint64_t *)(a->base + off);
  } else if (h->bump + bsize <= h->size) {
    off = h->bump + BLOCK_HDR;
    h->bump += bsize;
  }
  lmp_mutex_unlock(&h->lock);
  if (off != 0) {
    memset(a->base + off - BLOCK_HDR, 0, bsize);
    block_hdr *b = block_of(a, off);
    b->cls = (uint8_t)cls;
    b->magic = BLOCK_MAGIC;
    b->refs = 1;
  }
  return off;
}

int lmp_shm_alloc(size_t size, lmp_shm_obj *o) {
  int cls = size_class(size + BLOCK_HDR);
  lmp_arena *a = NULL;
  uint64_t off = 0;
  if (cls >= 0) {
    for (int i = 0; i < n_arenas && off == 0; i++)
      if (!arenas[i]->dedicated) off = arena_take(a = arenas[i], cls);
    if (off == 0) {
      if ((a = arena_create(ARENA_SIZE, 0)) == NULL) return -1;
      off = arena_take(a, cls);
    }
  } else {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t first = (sizeof(arena_hdr) + 63) & ~(size_t)63;
    size_t total = (first + BLOCK_HDR + size + page - 1) & ~(page - 1);
    if ((a = arena_create(total, 1)) == NULL) return -1;
    off = first + BLOCK_HDR;
    block_hdr *b = block_of(a, off);
    b->cls = DEDICATED;
    b->magic = BLOCK_MAGIC;
    b->refs = 1;
  }
  if (off == 0) {
    errno = ENOMEM;
    return -1;
  }
  a->local++;
  *o = (lmp_shm_obj){a, off, a->base + off};
  return 0;
}

void lmp_shm_release(lmp_shm_obj *o) {
  lmp_arena *a = o->arena;
  if (a == NULL) return;
  o->arena = NULL;
  o->p = NULL;
  block_hdr *b = block_of(a, o->off);
  uint32_t left = __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL);
  int pinned = __atomic_load_n(&b->flags, __ATOMIC_ACQUIRE) & PIN_FLAG;
  if (left == 0 && !pinned && b->cls != DEDICATED) {
    arena_hdr *h = hdr_of(a);
    lmp_mutex_lock(NULL, &h->lock, -1);
    *(uint64_t *)(a->base + o->off) = h->free_head[b->cls];
    h->free_head[b->cls] = o->off;
    lmp_mutex_unlock(&h->lock);
  }
  if (--a->local == 0 && a->dedicated) arena_unmap(a);
}

int lmp_shm_fd(const lmp_shm_obj *o) { return o->arena->fd; }

size_t lmp_shm_capacity(const lmp_shm_obj *o) {
  block_hdr *b = block_of(o->arena, o->off);
  if (b->cls == DEDICATED) return o->arena->size - o->off;
  return ((size_t)MIN_BLOCK << b->cls) - BLOCK_HDR;
}

/* ---- handles ---- */

static void put64(char *p, uint64_t v) { lmp_put_le64(p, v); }
static uint64_t get64(const char *p) { return lmp_get_le64(p); }

void lmp_shm_ref_write(lmp_shm_obj *o, luaL_Buffer *b) {
  char rec[LMP_REF_SIZE];
  lmp_arena *a = o->arena;
  __atomic_or_fetch(&block_of(a, o->off)->flags, PIN_FLAG, __ATOMIC_ACQ_REL);
  put64(rec, a->id);
  put64(rec + 8, a->size);
  put64(rec + 16, o->off);
  put64(rec + 24, (uint64_t)(uint32_t)a->creator_pid | (uint64_t)(uint32_t)a->creator_fd << 32);
  luaL_addlstring(b, rec, sizeof rec);
}

/* Maps the arena behind fd (dup'ed: the caller keeps its fd) and checks it is arena id.
** Returns the new table entry, or NULL with *why set. */
static lmp_arena *arena_map(int fd, uint64_t id, uint64_t size, int32_t cpid, int32_t cfd,
                            const char **why) {
  struct stat st;
  if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != size) {
    *why = "descriptor is not the object's arena";
    return NULL;
  }
  char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    *why = strerror(errno);
    return NULL;
  }
  arena_hdr *h = (arena_hdr *)base;
  if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != ARENA_MAGIC || h->id != id) {
    munmap(base, size);
    *why = "descriptor is not the object's arena";
    return NULL;
  }
  lmp_arena *a = calloc(1, sizeof *a);
  int mine = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (a == NULL || mine < 0 || table_add(a) != 0) {
    if (mine >= 0) close(mine);
    free(a);
    munmap(base, size);
    *why = "out of memory";
    return NULL;
  }
  *a = (lmp_arena){id, base, size, mine, cpid, cfd, (int)h->dedicated, 0};
  return a;
}

void lmp_shm_ref_read(lua_State *L, const char *p, int fd, lmp_shm_obj *o) {
  uint64_t id = get64(p), size = get64(p + 8), off = get64(p + 16), cr = get64(p + 24);
  int32_t cpid = (int32_t)(uint32_t)cr, cfd = (int32_t)(uint32_t)(cr >> 32);
  lmp_arena *a = table_find(id);
  const char *why = "no descriptor came with the handle";
  if (a == NULL && fd >= 0) a = arena_map(fd, id, size, cpid, cfd, &why);
  if (a == NULL) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)cpid, (int)cfd);
    int pfd = open(path, O_RDWR | O_CLOEXEC);
    if (pfd >= 0) {
      a = arena_map(pfd, id, size, cpid, cfd, &why);
      close(pfd);
    } else if (lmp_owner_dead((uint32_t)cpid)) {
      why = "the process that created it has exited";
    } else {
      why = "its creator no longer holds it";
    }
  }
  if (a == NULL)
    lmp_raise(L, "SerializationError", "cannot map shared object (arena of process %d): %s",
              (int)cpid, why);
  if (off < sizeof(arena_hdr) + BLOCK_HDR || off >= a->size || (off & 15) != 0 ||
      block_of(a, off)->magic != BLOCK_MAGIC)
    lmp_raise(L, "SerializationError", "malformed shared object handle");
  block_hdr *bh = block_of(a, off);
  if (bh->cls != DEDICATED &&
      (bh->cls >= NCLASS || off - BLOCK_HDR + ((uint64_t)MIN_BLOCK << bh->cls) > a->size))
    lmp_raise(L, "SerializationError", "malformed shared object handle");
  __atomic_add_fetch(&block_of(a, off)->refs, 1, __ATOMIC_ACQ_REL);
  a->local++;
  *o = (lmp_shm_obj){a, off, a->base + off};
}

/* Handle payload: 1 byte n, n records, type data. The fds returned after it are the arena
** descriptors of this process, one per record, still owned by this process (the codec sends
** or records them; it must not close them). */
int lmp_shm_push_handle(lua_State *L, const char *type, lmp_shm_obj **objs, int n,
                        const char *extra, size_t extralen) {
  if (!lua_checkstack(L, n + 3)) lmp_raise(L, "SerializationError", "too many handles");
  lua_pushstring(L, type);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, (char)n);
  for (int i = 0; i < n; i++) lmp_shm_ref_write(objs[i], &b);
  luaL_addlstring(&b, extra, extralen);
  luaL_pushresult(&b);
  for (int i = 0; i < n; i++) lua_pushinteger(L, lmp_shm_fd(objs[i]));
  return n + 2;
}

/* Decoders receive (payload, fd1, ...). The fds belong to the codec's caller: arena_map dups
** the ones it keeps, so nothing here closes them. */
const char *lmp_shm_read_handle(lua_State *L, lmp_shm_obj **objs, int n, size_t *extralen) {
  size_t len;
  const char *p = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
  if (p == NULL || len < 1 || (unsigned char)p[0] != n || len < 1 + (size_t)n * LMP_REF_SIZE)
    lmp_raise(L, "SerializationError", "malformed shared object handle");
  for (int i = 0; i < n; i++) {
    int fd = lua_isinteger(L, 2 + i) ? (int)lua_tointeger(L, 2 + i) : -1;
    lmp_shm_ref_read(L, p + 1 + (size_t)i * LMP_REF_SIZE, fd, objs[i]);
  }
  *extralen = len - 1 - (size_t)n * LMP_REF_SIZE;
  return p + 1 + (size_t)n * LMP_REF_SIZE;
}

void lmp_shm_register(lua_State *L, int core, const char *type, lua_CFunction fn) {
  lua_getfield(L, core, "register_handle");
  if (lua_isfunction(L, -1)) {
    lua_pushstring(L, type);
    lua_pushcfunction(L, fn);
    lua_call(L, 2, 0);
  } else {
    lua_pop(L, 1);
  }
  /* also kept in the registry (and core._decoders) for decoders that build nested objects */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, "lmp.shm.decoders");
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, type);
  lua_setfield(L, core, "_decoders");
}

void lmp_shm_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                      const luaL_Reg *meta) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L); /* L: mt methods */
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

/* core.shm_stats() -> number of arenas mapped here, number of dedicated ones. */
static int l_shm_stats(lua_State *L) {
  int ded = 0;
  for (int i = 0; i < n_arenas; i++) ded += arenas[i]->dedicated;
  lua_pushinteger(L, n_arenas);
  lua_pushinteger(L, ded);
  return 2;
}

void lmp__open_shm(lua_State *L) {
  lua_pushcfunction(L, l_shm_stats);
  lua_setfield(L, -2, "shm_stats");
}
