/*
** mapio.c — the input side of `lmp --map`: a reader that cuts one or more files (or stdin)
** into blocks of whole lines without waiting for input that is not there yet, a wait for
** "input or a loop event", the scan and truncation of a results file for --resume, and the
** identity of a file (an output must not be one of the inputs).
** Caveats: a file's last line without a newline gets one; stdin is never closed; a line is
** kept whole however long it is (the only unbounded buffer, one line's worth).
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <uv.h>

#include "cli.h"
#include "loop.h"
#include "lmp_int.h"

#define READER "lmp.LineReader"
#define READ_SIZE (64 * 1024)

typedef struct reader {
  int npaths, cur;    /* inputs; cur: the next one to open */
  int fd;             /* the input being read, -1 between inputs */
  int regular;        /* fd is a regular file: a read never waits */
  int done;           /* every input is read */
  char *buf;
  size_t start, end, cap; /* unread bytes are buf[start..end) */
  size_t scan;        /* buf[start..scan) holds `lines` whole lines */
  lua_Integer lines;
  double bytes;       /* bytes read from the inputs so far */
  double total;       /* their size, or -1 when one is not a regular file */
  char *paths[];
} reader;

static reader *check_reader(lua_State *L) { return luaL_checkudata(L, 1, READER); }

static void close_input(reader *r) {
  if (r->fd > 0) close(r->fd);
  r->fd = -1;
}

/* Opens the next input ("-" is stdin). Returns 0 when there is none; raises when it cannot
** be opened. */
static int open_next(lua_State *L, reader *r) {
  if (r->cur >= r->npaths) return 0;
  const char *path = r->paths[r->cur++];
  int fd = strcmp(path, "-") == 0 ? 0 : open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return luaL_error(L, "cannot open %s: %s", path, strerror(errno));
  struct stat st;
  r->regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  r->fd = fd;
  return 1;
}

static int readable_now(int fd) {
  struct pollfd pf = {fd, POLLIN, 0};
  int n;
  do n = poll(&pf, 1, 0);
  while (n < 0 && errno == EINTR);
  return n != 0; /* an error counts: read() will say what it is */
}

/* Makes room for at least n more bytes after end (moving unread bytes to the front first). */
static int make_room(reader *r, size_t n) {
  if (r->start > 0) {
    memmove(r->buf, r->buf + r->start, r->end - r->start);
    r->end -= r->start;
    r->scan -= r->start;
    r->start = 0;
  }
  if (r->cap - r->end >= n) return 0;
  size_t cap = r->cap ? r->cap : READ_SIZE * 2;
  while (cap - r->end < n) cap *= 2;
  char *p = realloc(r->buf, cap);
  if (p == NULL) return -1;
  r->buf = p;
  r->cap = cap;
  return 0;
}

/* Counts whole lines from scan on, up to maxlines or maxbytes (at least one line). */
static void scan_lines(reader *r, lua_Integer maxlines, size_t maxbytes) {
  while (r->lines < maxlines && r->scan < r->end && r->scan - r->start < maxbytes) {
    char *nl = memchr(r->buf + r->scan, '\n', r->end - r->scan);
    if (nl == NULL) {
      r->scan = r->end;
      return;
    }
    r->scan = (size_t)(nl - r->buf) + 1;
    r->lines++;
  }
}

/* The scan ended on a partial line: back to the last newline seen, so it is rescanned. */
static void unscan_partial(reader *r) {
  while (r->scan > r->start && r->buf[r->scan - 1] != '\n') r->scan--;
}

/* Reads once from the current input; 1 got bytes or ended it, -1 error (errno). */
static int fill(reader *r) {
  if (make_room(r, READ_SIZE + 1) != 0) {
    errno = ENOMEM;
    return -1;
  }
  ssize_t n;
  do n = read(r->fd, r->buf + r->end, r->cap - r->end - 1);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -1;
  if (n > 0) {
    r->end += (size_t)n;
    r->bytes += (double)n;
    return 1;
  }
  /* end of this input: its last line gets its newline */
  if (r->end > r->start && r->buf[r->end - 1] != '\n') r->buf[r->end++] = '\n';
  close_input(r);
  return 1;
}

/* Pushes the block of whole lines counted so far and its line count. */
static int emit(lua_State *L, reader *r) {
  lua_pushlstring(L, r->buf + r->start, r->scan - r->start);
  lua_pushinteger(L, r->lines);
  r->start = r->scan;
  r->lines = 0;
  if (r->start == r->end) r->start = r->end = r->scan = 0;
  return 2;
}

/* read(maxlines, maxbytes [, block]) -> block, n | false (nothing whole yet, and the input
** would make us wait) | nil (all read). A block is whole lines, each ending in "\n", at most
** maxlines of them and not many more than maxbytes bytes (one line is never cut). With block
** true it waits for input in the loop (Ctrl-C raises InterruptedError). */
static int l_read(lua_State *L) {
  reader *r = check_reader(L);
  lua_Integer maxlines = luaL_checkinteger(L, 2);
  size_t maxbytes = (size_t)luaL_checkinteger(L, 3);
  int block = lua_toboolean(L, 4);
  if (maxlines < 1) maxlines = 1;
  for (;;) {
    scan_lines(r, maxlines, maxbytes);
    if (r->lines > 0 && (r->lines >= maxlines || r->scan - r->start >= maxbytes))
      return emit(L, r);
    unscan_partial(r);
    if (r->fd < 0 && !r->done && !open_next(L, r)) r->done = 1;
    if (r->done) {
      if (r->lines > 0) return emit(L, r);
      lua_pushnil(L);
      return 1;
    }
    if (!r->regular && !readable_now(r->fd)) {
      if (r->lines > 0) return emit(L, r);
      if (!block) {
        lua_pushboolean(L, 0);
        return 1;
      }
      lmp_wait_fd(L, r->fd, 0, LMP_FOREVER);
    }
    if (fill(r) < 0) return luaL_error(L, "cannot read the input: %s", strerror(errno));
  }
}

/* progress() -> bytes read so far, total bytes (nil when an input is not a regular file). */
static int l_progress(lua_State *L) {
  reader *r = check_reader(L);
  lua_pushnumber(L, r->bytes);
  if (r->total < 0) lua_pushnil(L);
  else lua_pushnumber(L, r->total);
  return 2;
}

/* ---- waiting for input or anything else the loop does ---- */

typedef struct inwait {
  uv_poll_t poll;
  int readable;
  unsigned long events; /* the loop's event count when the wait began */
  lmp_loop *lp;
} inwait;

static void on_input(uv_poll_t *h, int status, int events) {
  inwait *w = h->data;
  w->readable = 1;
  uv_poll_stop(h);
  lmp_loop_notify(w->lp);
}

static int input_or_event(lua_State *L, void *ud) {
  inwait *w = ud;
  return w->readable || w->lp->events != w->events;
}

static void free_wait(uv_handle_t *h) { free(h->data); }

/* The wait itself, protected (so the poll handle is closed on Ctrl-C's error too). */
static int protected_wait(lua_State *L) {
  inwait *w = lua_touserdata(L, 1);
  lmp_loop_wait(L, input_or_event, w, lua_tonumber(L, 2));
  return 0;
}

/* wait([timeout]) -> true: waits in the loop until the current input has data or something
** happens in the loop (a result...), or timeout seconds pass. Raises InterruptedError. */
static int l_wait(lua_State *L) {
  reader *r = check_reader(L);
  double timeout = lmp_checktimeout(L, 2);
  lmp_loop *lp = lmp_loop_get(L);
  lua_pushboolean(L, 1);
  if (r->fd < 0 || r->regular || readable_now(r->fd)) return 1;
  inwait *w = calloc(1, sizeof *w);
  if (w == NULL) return luaL_error(L, "not enough memory");
  w->lp = lp;
  w->events = lp->events;
  if (uv_poll_init(&lp->uv, &w->poll, r->fd) != 0) {
    free(w);
    return 1;
  }
  w->poll.data = w;
  uv_poll_start(&w->poll, UV_READABLE, on_input);
  lua_pushcfunction(L, protected_wait);
  lua_pushlightuserdata(L, w);
  lua_pushnumber(L, timeout);
  int status = lua_pcall(L, 2, 0, 0);
  uv_close((uv_handle_t *)&w->poll, free_wait); /* freed in its close callback */
  if (status != LUA_OK) return lua_error(L);
  return 1;
}

static int l_gc(lua_State *L) {
  reader *r = check_reader(L);
  close_input(r);
  free(r->buf);
  r->buf = NULL;
  r->start = r->end = r->scan = r->cap = 0;
  r->done = 1;
  for (int i = 0; i < r->npaths; i++) {
    free(r->paths[i]);
    r->paths[i] = NULL;
  }
  r->npaths = 0;
  return 0;
}

/* lines_open(paths) -> reader over the files in order ("-": standard input). */
static int l_lines_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)luaL_len(L, 1);
  reader *r = lua_newuserdatauv(L, sizeof *r + (size_t)n * sizeof(char *), 0);
  memset(r, 0, sizeof *r);
  r->fd = -1;
  luaL_setmetatable(L, READER); /* closed first: __gc copes with a half-built reader */
  r->total = 0;
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    const char *p = luaL_checkstring(L, -1);
    r->paths[i] = strdup(p);
    if (r->paths[i] == NULL) return luaL_error(L, "not enough memory");
    r->npaths = i + 1;
    struct stat st;
    if (strcmp(p, "-") != 0 && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
      if (r->total >= 0) r->total += (double)st.st_size;
    } else {
      r->total = -1;
    }
    lua_pop(L, 1);
  }
  return 1;
}

/* ---- --resume: what a results file already holds ---- */

static const char ERROR_PREFIX[] = "{\"error\":{\"type\":\"";

/* scan_results(path) -> lines, error_lines, bytes: the whole lines of the file (what follows
** the last newline is a line cut short), how many of them begin as lmp's error objects do,
** and the length of those whole lines. nil, message when it cannot be read. */
static int l_scan_results(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  static const size_t plen = sizeof ERROR_PREFIX - 1;
  char buf[1 << 16];
  char head[sizeof ERROR_PREFIX];
  size_t hlen = 0;      /* bytes of the current line's start kept in head */
  double lines = 0, errors = 0, off = 0, whole = 0;
  ssize_t n;
  for (;;) {
    do n = read(fd, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; i++) {
      char c = buf[i];
      if (c == '\n') {
        lines++;
        if (hlen == plen && memcmp(head, ERROR_PREFIX, plen) == 0) errors++;
        hlen = 0;
        whole = off + (double)i + 1;
      } else if (hlen < plen) {
        head[hlen++] = c;
      }
    }
    off += (double)n;
  }
  int saved = errno;
  close(fd);
  if (n < 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(saved));
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)lines);
  lua_pushinteger(L, (lua_Integer)errors);
  lua_pushinteger(L, (lua_Integer)whole);
  return 3;
}

/* truncate(path, size) -> true | nil, message */
static int l_truncate(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer size = luaL_checkinteger(L, 2);
  if (truncate(path, (off_t)size) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* file_id(path | fd) -> "dev:ino" when it is a regular file, else nil (it does not exist, it
** is a terminal, a pipe, /dev/null...): what tells that an output would overwrite an input. */
static int l_file_id(lua_State *L) {
  struct stat st;
  int rc = lua_type(L, 1) == LUA_TNUMBER ? fstat((int)luaL_checkinteger(L, 1), &st)
                                         : stat(luaL_checkstring(L, 1), &st);
  if (rc != 0 || !S_ISREG(st.st_mode)) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushfstring(L, "%I:%I", (LUAI_UACINT)st.st_dev, (LUAI_UACINT)st.st_ino);
  return 1;
}

void lmp__open_mapio(lua_State *L) {
  if (luaL_newmetatable(L, READER)) {
    static const luaL_Reg methods[] = {
        {"read", l_read}, {"progress", l_progress}, {"wait", l_wait}, {"close", l_gc}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"lines_open", l_lines_open},
                                 {"scan_results", l_scan_results},
                                 {"truncate", l_truncate},
                                 {"file_id", l_file_id},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
