/*
** main.c — the lmp executable: `lmp script.lua [args]`, `-e`, `-l`, `-i`, `-v`, `-E`, `--`,
** `-`, with `arg` set as the stock `lua` sets it, a REPL (lmp.repl) when run alone, and
** `lmp --map SCRIPT [INPUT...]` (lmp.mapcli). Everything runs inside one protected call;
** Ctrl-C interrupts the running chunk (InterruptedError), never the process while a script or
** statement can catch it.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lualib.h>

#include "lmp.h"
#include "lmp_int.h"

static const char *progname = "lmp";
static int exit_status = -1; /* set by a mode that chooses its own status (--map) */

static void usage(void) {
  fprintf(stderr,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod' (-l g=mod: into global 'g')\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables (LUA_INIT, LUA_PATH, LUA_CPATH)\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n"
          "  --map SCRIPT [INPUT...]  run SCRIPT's function over JSON lines (--map --help)\n",
          progname);
}

/* Prints msg (an error message) to stderr; returns the failure status. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error object is not a string)");
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

/* Message handler: a string message (via __tostring for error objects) plus a traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function below its nargs arguments through lmp.core.icall (Ctrl-C aware). */
static int docall(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs; /* the function */
  lua_getfield(L, LUA_REGISTRYINDEX, "lmp.icall");
  lua_insert(L, base);
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base + 2);
  lua_call(L, nargs + 2, LUA_MULTRET); /* icall(f, msgh, args...) -> ok, results... */
  int ok = lua_toboolean(L, base);
  lua_remove(L, base);
  if (!ok) {
    lua_settop(L, base); /* keep the message */
    return LUA_ERRRUN;
  }
  if (nres != LUA_MULTRET) lua_settop(L, base - 1 + nres);
  return LUA_OK;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l mod or -l g=mod */
static int dolibrary(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) {
    if (eq) lua_pushlstring(L, spec, (size_t)(eq - spec));
    else lua_pushstring(L, mod);
    lua_insert(L, -2);
    lua_setglobal(L, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  return report(L, status);
}

/* Builds `arg`: arg[0] the script, negatives the interpreter and options, positives the
** script's arguments. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  if (script == argc) script = 0; /* no script: arg[0] is the interpreter */
  lua_createtable(L, argc - script - 1, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL; /* stdin */
  int status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = docall(L, n, LUA_MULTRET);
  }
  return report(L, status);
}

enum { HAS_E = 1, HAS_I = 2, HAS_V = 4, HAS_BIG_E = 8, BAD = 16 };

/* Scans options; *script gets the index of the script (argc when none). */
static int collectargs(char **argv, int *script) {
  int flags = 0, i;
  for (i = 1; argv[i] != NULL; i++) {
    const char *a = argv[i];
    *script = i;
    if (a[0] != '-') return flags;
    switch (a[1]) {
    case '-':
      if (a[2] != '\0') return BAD;
      *script = i + 1;
      return flags;
    case '\0': return flags;
    case 'E': if (a[2]) return BAD; flags |= HAS_BIG_E; break;
    case 'W': if (a[2]) return BAD; break;
    case 'i': if (a[2]) return BAD; flags |= HAS_I; break; /* the REPL prints the banner */
    case 'v': if (a[2]) return BAD; flags |= HAS_V; break;
    case 'e': flags |= HAS_E; /* fallthrough */
    case 'l':
      if (a[2] == '\0') {
        i++;
        if (argv[i] == NULL || argv[i][0] == '-') return BAD;
      }
      break;
    default: return BAD;
    }
  }
  *script = i;
  return flags;
}

static int runargs(lua_State *L, char **argv, int n) {
  for (int i = 1; i < n; i++) {
    char opt = argv[i][1];
    if (opt == 'e' || opt == 'l') {
      const char *extra = argv[i] + 2;
      if (*extra == '\0') extra = argv[++i];
      int status = (opt == 'e') ? dostring(L, extra, "=(command line)") : dolibrary(L, extra);
      if (status != LUA_OK) return 0;
    } else if (opt == 'W') {
      lua_warning(L, "@on", 0);
    }
  }
  return 1;
}

static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dochunk(L, luaL_loadfile(L, init + 1));
  return dostring(L, init, name);
}

static void print_version(void) {
  printf("lmp %s (%s)\n", LMP_VERSION, LUA_RELEASE);
  fflush(stdout);
}

static int repl(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lmp.repl");
  if (docall(L, 1, 1) != LUA_OK) return report(L, LUA_ERRRUN);
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  return report(L, docall(L, 0, 0));
}

/* Opens the standard libraries and lmp (lmp.core, with icall in the registry). */
static void openlibs(lua_State *L) {
  luaL_openlibs(L);
  lmp_preload(L);
  luaL_requiref(L, "lmp.core", luaopen_lmp_core, 0);
  lua_getfield(L, -1, "icall");
  lua_setfield(L, LUA_REGISTRYINDEX, "lmp.icall");
  lua_pop(L, 1);
}

/* Runs module.fn(args) for a subcommand (`lmp --map ...`, `lmp worker ...`, `lmp status ...`):
** args are argv[2..]; the function's result is the exit status. */
static int subcommand(lua_State *L, int argc, char **argv, const char *module, const char *fn) {
  openlibs(L);
  lua_gc(L, LUA_GCGEN, 0, 0);
  lua_getglobal(L, "require");
  lua_pushstring(L, module);
  if (report(L, docall(L, 1, 1)) != LUA_OK) return 0;
  lua_getfield(L, -1, fn);
  lua_createtable(L, argc, 0);
  for (int i = 2; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  if (report(L, docall(L, 1, 1)) != LUA_OK) return 0;
  exit_status = (int)luaL_optinteger(L, -1, 1);
  lua_pushboolean(L, exit_status == 0);
  return 1;
}

/* Everything runs here, protected. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  luaL_checkversion(L);
  if (argc > 1 && strcmp(argv[1], "--map") == 0) return subcommand(L, argc, argv, "lmp.mapcli", "main");
  if (argc > 1 && (strcmp(argv[1], "worker") == 0 || strcmp(argv[1], "status") == 0))
    return subcommand(L, argc, argv, "lmp.cluster", argv[1]);
  int script = argc;
  int flags = collectargs(argv, &script);
  if (flags == BAD) {
    usage();
    return 0;
  }
  if (flags & HAS_V) print_version();
  if (flags & HAS_BIG_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  openlibs(L);
  if (flags & HAS_BIG_E) { /* drop LUA_PATH/LUA_CPATH influence: Lua's defaults */
    lua_getglobal(L, "package");
    lua_pushstring(L, LUA_PATH_DEFAULT);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, LUA_CPATH_DEFAULT);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!(flags & HAS_BIG_E) && handle_luainit(L) != LUA_OK) return 0;
  if (!runargs(L, argv, script)) return 0;
  if (script < argc && handle_script(L, argv + script) != LUA_OK) return 0;
  if (flags & HAS_I) {
    if (repl(L) != LUA_OK) return 0;
  } else if (script == argc && !(flags & (HAS_E | HAS_V))) {
    if (isatty(0)) {
      if (repl(L) != LUA_OK) return 0;
    } else if (dochunk(L, luaL_loadfile(L, NULL)) != LUA_OK) {
      return 0;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  if (argv[0] && argv[0][0]) progname = argv[0];
  /* A strong reference: it keeps libedit linked in (console.c refers to it weakly). */
  rl_readline_name = "lmp";
  int served = lmp_worker_main(argc, argv);
  if (served != 0) return served;
  lua_State *L = lmp__state_new(0);
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return EXIT_FAILURE;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int ok = lua_toboolean(L, -1);
  report(L, status);
  lmp__state_close(L);
  if (status == LUA_OK && exit_status >= 0) return exit_status;
  return (ok && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
