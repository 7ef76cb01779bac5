/*
** cli.h — the command line's C parts inside lmp.core: the REPL's terminal (console.c), the
** line reader of `lmp --map` (mapio.c) and its JSON writer (json.c).
** core.c opens only the console; the console opens the other two.
*/
#ifndef LMP_CLI_H
#define LMP_CLI_H

#include <lua.h>

#include "lmp_int.h"

/* Each adds its functions to the table on top of the stack (lmp.core). */
void lmp__open_mapio(lua_State *L);
void lmp__open_json(lua_State *L);
void lmp__open_jsonmap(lua_State *L);

/* Appends the value at idx to out as JSON (object keys sorted). Returns NULL, or the reason
** it cannot (out is then as it was; the text may live in errbuf). Never raises. */
const char *lmp__json_encode(lua_State *L, int idx, lmp_buf *out, char errbuf[112]);
/* Appends s as a JSON string (quoted and escaped). */
void lmp__json_put_string(lmp_buf *out, const char *s, size_t n);

#endif
