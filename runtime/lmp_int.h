/*
** lmp_int.h — declarations shared by the runtime's C files (not part of the public API).
** Each C file opens its part of the `lmp.core` table through an lmp__open_* function.
*/
#ifndef LMP_INT_H
#define LMP_INT_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>

/* ---- growable byte buffer (malloc'd, outside the Lua heap) ---- */
typedef struct lmp_buf {
  char *p;
  size_t len, cap;
} lmp_buf;

/* Makes room for n more bytes; returns 0, or -1 when memory is exhausted. */
int lmp_buf_reserve(lmp_buf *b, size_t n);
/* Appends n bytes; -1 when memory is exhausted (nothing appended). */
int lmp_buf_add(lmp_buf *b, const void *s, size_t n);
void lmp_buf_free(lmp_buf *b);

/* ---- file descriptors carried next to a message ---- */
typedef struct lmp_fdvec {
  int *fd;
  int n, cap;
} lmp_fdvec;

int lmp_fdvec_push(lmp_fdvec *v, int fd);
void lmp_fdvec_free(lmp_fdvec *v);

/* ---- error objects (errors.c: tables with metatable mp.Error, registry key "lmp.Error") ---- */
/* Pushes the shared error metatable, creating it on first use. */
void lmp__error_metatable(lua_State *L);
/* Pushes a new error object {type=type, message=msg}. */
void lmp_error_push(lua_State *L, const char *type, const char *msg);
/* 1 when the value at idx is an lmp error object (metatable mp.Error). */
int lmp_iserror_value(lua_State *L, int idx);
/* 1 when the value at idx is an mp.Error of the given type. */
int lmp_iserror_type(lua_State *L, int idx, const char *type);
/* Raises an error object; the message is formatted like lua_pushfstring. Never returns. */
int lmp_raise(lua_State *L, const char *type, const char *fmt, ...);

/* ---- argument checks (args.c): misuse raises mp.Error, never a plain string ---- */
/* Raises an error object of `type` ("TypeError", "ValueError") about argument arg of the C
** function running now: "bad argument #arg to 'name' (what)"; a method does not count self.
** Never returns. */
int lmp_argerror(lua_State *L, int arg, const char *type, const char *fmt, ...);
/* TypeError "bad argument #arg to 'name' (expected expected, got <description>)". */
int lmp_typeerror(lua_State *L, int arg, const char *expected);
/* Pushes and returns a short description of the value at idx: `string "4"`, `nil`... */
const char *lmp_pushdescribe(lua_State *L, int idx);
lua_Integer lmp_checkinteger(lua_State *L, int arg);
lua_Integer lmp_optinteger(lua_State *L, int arg, lua_Integer def);
lua_Number lmp_checknumber(lua_State *L, int arg);
const char *lmp_checklstring(lua_State *L, int arg, size_t *len);
void lmp_checktype(lua_State *L, int arg, int t);
void *lmp_checkudata(lua_State *L, int arg, const char *tname);
/* Classes looked up by address rather than by name (the hot paths: no string hashing).
** lmp_class_register keeps the metatable on top under key (a static address); lmp_setclass
** gives it to the value on top; lmp_toclass / lmp_checkclass are luaL_testudata /
** lmp_checkudata by that key (tname names the type in the TypeError). */
void lmp_class_register(lua_State *L, const void *key);
void lmp_setclass(lua_State *L, const void *key);
void *lmp_toclass(lua_State *L, int arg, const void *key);
void *lmp_checkclass(lua_State *L, int arg, const void *key, const char *tname);

/* Raises ValueError naming the first key of the option table at arg that is not in names
** (NULL-terminated), with the accepted ones. */
void lmp_checkoptions(lua_State *L, int arg, const char *const names[]);
/* Raises ValueError when the C function got more than max arguments. */
void lmp_checknargs(lua_State *L, int max);

/* ---- the one timeout rule of every blocking call (DESIGN §4) ----
** nil, math.huge or anything >= LMP_TIMEOUT_HUGE: no limit (LMP_FOREVER); 0 or negative: look
** once; positive: up to that long; NaN or a non-number: ValueError naming the argument. */
#define LMP_FOREVER (-1.0)
#define LMP_TIMEOUT_HUGE 1e9 /* seconds (31 years): at or above it there is no limit */
double lmp_checktimeout(lua_State *L, int arg);
/* The rule for a number already read (not NaN). */
double lmp_timeout_of(double t);

/* ---- calling user code (callback.c) ---- */
/* Message handler: the error as a string (error objects through __tostring) with a traceback. */
int lmp_msgh(lua_State *L);
/* lua_pcall of the function below its nargs arguments with lmp_msgh as the handler. */
int lmp_pcall_traceback(lua_State *L, int nargs, int nres);
/* Runs a user callback (the function below its nargs arguments) protected, discarding its
** results. On error the message (with traceback) is reported on stderr, naming what, and left
** on the stack: returns 0; returns 1 when it ran. Every call is counted (mp.poll). */
int lmp_callback(lua_State *L, int nargs, const char *what);
unsigned long lmp_callbacks_run(void);

/* ---- the codec (codec.c) ---- */
/* Encodes the value at idx, appending the message to out. With fds == NULL, lmp handles that
** carry file descriptors record their raw numbers (valid in this process and its forked
** children); otherwise the descriptors are appended to fds for SCM_RIGHTS. On failure raises
** a SerializationError naming the path (out may hold a partial message: truncate it). */
void lmp_encode_buf(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds);
/* Encodes the value at idx and pushes the message as a Lua string. */
void lmp_encode(lua_State *L, int idx);
/* Decodes a message and pushes the value. fds are the descriptors that came with it
** (NULL when the message carries raw numbers). Raises SerializationError on bad input. */
void lmp_decode(lua_State *L, const char *s, size_t n, const int *fds, int nfds);

/* ---- fds lmp owns in the parent, closed in every forked child ---- */
void lmp_fd_own(int fd);
void lmp_fd_disown(int fd);
void lmp_fd_close_owned_in_child(void);
/* Opens /dev/null onto any of the descriptors 0, 1, 2 that is closed (before lmp makes any). */
void lmp__std_fds_open(void);

/* ---- time ---- */
double lmp_now(void);        /* wall clock, seconds */
double lmp_monotonic(void);  /* monotonic clock, seconds */

/* ---- lmp's own Lua states (alloc.c) ---- */
typedef struct lmp_alloc lmp_alloc;
/* A new Lua state, with a panic and a warning function as luaL_newstate gives: on lmp's
** allocator (slabs for Lua's small blocks, malloc for the others) when slabs is 1, on
** realloc/free when 0 (LMP_ALLOC overrides, see alloc.c); NULL when out of memory. */
lua_State *lmp__state_new(int slabs);
/* Closes a state made by lmp__state_new and frees its allocator. */
void lmp__state_close(lua_State *L);
/* The allocator of L when it is lmp's, else NULL. */
lmp_alloc *lmp__alloc_of(lua_State *L);
/* Gives the system the empty slabs a kept for reuse (a may be NULL). */
void lmp__alloc_trim(lmp_alloc *a);

/* ---- worker states ---- */
/* Creates a fresh Lua state for a child: standard libraries, lmp preloaded, package paths
** as given. Returns NULL when memory is exhausted. */
lua_State *lmp_new_worker_state(const char *path, const char *cpath);
/* Sets what lmp_new_worker_state runs in a fresh state after the standard libraries. */
void lmp__set_state_setup(void (*setup)(lua_State *L));

/* ---- module parts: each adds its functions to the table on top of the stack ---- */
void lmp__open_util(lua_State *L);
void lmp__open_codec(lua_State *L);
void lmp__open_loop(lua_State *L);
void lmp__open_process(lua_State *L);
void lmp__open_worker(lua_State *L);
void lmp__open_pool(lua_State *L);
void lmp__open_shm(lua_State *L);
void lmp__open_sync(lua_State *L);
void lmp__open_value(lua_State *L);
void lmp__open_queue(lua_State *L);
void lmp__open_pipe(lua_State *L);
void lmp__open_manager(lua_State *L);
void lmp__open_console(lua_State *L);

/* Embedded Lua modules (generated by runtime/embed.lua): name, source, and the source compiled
** at build time (with its debug information), which loads several times faster; a NULL name
** ends the list. */
typedef struct lmp_embedded {
  const char *name;
  const char *src;
  size_t len;
  const char *bin;
  size_t binlen;
} lmp_embedded;
extern const lmp_embedded lmp_embedded_lua[];

#endif
