/*
** jsonmap.c — lmp.core.json_map: a worker's loop over a block of JSON lines for `lmp --map`.
** Each line is decoded (by the decoder given: lua-cjson's, which raises on bad JSON), passed to the user's function
** and its result written as JSON, all protected: a line that fails becomes an error object
** and the block goes on. Caveats: output lines are built in a per-thread scratch buffer and
** gathered in a luaL_Buffer, so the stack is used in balanced steps only. The line being run is
** posted on a board in shared memory, so that the parent can tell which one a dead worker held.
*/
#include <string.h>

#include <lauxlib.h>

#include "cli.h"
#include "lmp_int.h"
#include "lmp_shm.h"

enum { ARG_BLOCK = 1, ARG_FIRST, ARG_F, ARG_DECODE, ARG_BOARD, ARG_SLOT, ERRS };

static _Thread_local lmp_buf line_out; /* one output line */

static int tostring_protected(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Replaces the error value on top with its text (a string, or what tostring makes of it). */
static void error_text(lua_State *L) {
  if (lua_type(L, -1) == LUA_TSTRING) return;
  lua_pushcfunction(L, tostring_protected);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushliteral(L, "(error object with no text)");
  }
}

/* Writes {"error":{"type":T,"message":M,"line":N}} into line_out (M is on top, popped). */
static void error_line(lua_State *L, const char *type, const char *prefix, lua_Integer lineno) {
  error_text(L);
  size_t n;
  const char *msg = lua_tolstring(L, -1, &n);
  line_out.len = 0;
  char head[96];
  int len = snprintf(head, sizeof head, "{\"error\":{\"type\":\"%s\",\"message\":", type);
  lmp_buf_add(&line_out, head, (size_t)len);
  if (prefix != NULL) {
    /* the prefix and the message make one JSON string: write them as one */
    lua_pushstring(L, prefix);
    lua_insert(L, -2);
    lua_concat(L, 2);
    msg = lua_tolstring(L, -1, &n);
  }
  lmp__json_put_string(&line_out, msg, n);
  len = snprintf(head, sizeof head, ",\"line\":" LUA_INTEGER_FMT "}}", (LUAI_UACINT)lineno);
  lmp_buf_add(&line_out, head, (size_t)len);
  lua_pop(L, 1);
}

/* Runs one line into line_out; returns 1 when it is an error object. Stack balanced. */
static int run_line(lua_State *L, const char *s, size_t len, lua_Integer lineno) {
  lua_pushvalue(L, ARG_DECODE);
  lua_pushlstring(L, s, len);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) { /* the decoder raises on what is not JSON */
    error_line(L, "JSONError", NULL, lineno);
    return 1;
  }
  lua_pushvalue(L, ARG_F);
  lua_insert(L, -2);
  lua_pushinteger(L, lineno);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    error_line(L, "RemoteError", NULL, lineno);
    return 1;
  }
  char errbuf[112];
  line_out.len = 0;
  const char *err = lmp__json_encode(L, -1, &line_out, errbuf);
  lua_pop(L, 1);
  if (err == NULL) return 0;
  lua_pushstring(L, err);
  error_line(L, "SerializationError", "the result cannot be written as JSON: ", lineno);
  return 1;
}

/* The two board cells of slot (1-based) of the 'd' Array at ARG_BOARD: the position in the
** block of the line being run (0: none) and when it began (monotonic seconds). NULL when
** there is no board or the slot is not on it. */
static volatile double *board_slot(lua_State *L) {
  if (lua_isnoneornil(L, ARG_BOARD)) return NULL;
  uint64_t n;
  double *cells = lmp__array_elements(L, ARG_BOARD, 'd', &n);
  if (cells == NULL) luaL_typeerror(L, ARG_BOARD, "lmp.Array of typecode 'd'");
  lua_Integer slot = luaL_checkinteger(L, ARG_SLOT);
  if (slot < 1 || (uint64_t)slot > n / 2) return NULL;
  return cells + 2 * (slot - 1);
}

/* json_map(block, first, f, decode [, board, slot]) -> out, errs | out: every line of block
** (each ending in "\n"; the first is input line `first`) run through decode and f, one output
** line each; errs lists the positions (within the block) of the lines that are error objects.
** With a board (a 'd' Array) each line's position and start are posted in cells of slot. */
static int l_json_map(lua_State *L) {
  size_t blen;
  const char *block = luaL_checklstring(L, ARG_BLOCK, &blen);
  lua_Integer lineno = luaL_checkinteger(L, ARG_FIRST);
  luaL_checktype(L, ARG_F, LUA_TFUNCTION);
  luaL_checktype(L, ARG_DECODE, LUA_TFUNCTION);
  volatile double *post = board_slot(L);
  lua_settop(L, ARG_SLOT);
  lua_newtable(L); /* ERRS */
  lua_Integer nerr = 0, n = 0;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t pos = 0;
  const char *nl;
  while (pos < blen && (nl = memchr(block + pos, '\n', blen - pos)) != NULL) {
    size_t len = (size_t)(nl - (block + pos));
    n++;
    if (post != NULL) {
      post[1] = lmp_monotonic();
      post[0] = (double)n;
    }
    if (run_line(L, block + pos, len, lineno)) {
      lua_pushinteger(L, n);
      lua_rawseti(L, ERRS, ++nerr);
    }
    luaL_addlstring(&b, line_out.p ? line_out.p : "", line_out.len);
    luaL_addchar(&b, '\n');
    pos = (size_t)(nl - block) + 1;
    lineno++;
  }
  if (post != NULL) post[0] = 0; /* every line ran: a death from now on is no line's doing */
  if (line_out.cap > (1u << 20)) lmp_buf_free(&line_out);
  luaL_pushresult(&b);
  if (nerr == 0) return 1;
  lua_pushvalue(L, ERRS);
  return 2;
}

void lmp__open_jsonmap(lua_State *L) {
  lua_pushcfunction(L, l_json_map);
  lua_setfield(L, -2, "json_map");
}
