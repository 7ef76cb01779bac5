/*
** console.c — the REPL's terminal: Ctrl-C-aware calls (icall), reading a line while the loop
** runs (libedit's callback reader on a uv_poll of stdin, or plain reads when stdin is not a
** terminal), persistent history, completion through a Lua function, and output from callbacks
** drawn above the prompt. Also opens the command line's other C parts (cli.h).
** Caveats: libedit is referenced weakly: it is linked into the lmp executable only, so
** lmp.core loaded by stock Lua (core.so) reads plain lines. One console per process.
*/
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <uv.h>

#include "cli.h"
#include "lmp.h"
#include "lmp_int.h"
#include "loop.h"

/* Weak: present in the executable, NULL elsewhere (see the caveats above). */
#pragma weak rl_initialize
#pragma weak rl_callback_handler_install
#pragma weak rl_callback_read_char
#pragma weak rl_callback_handler_remove
#pragma weak rl_forced_update_display
#pragma weak rl_completion_matches
#pragma weak rl_get_screen_size
#pragma weak add_history
#pragma weak stifle_history
#pragma weak rl_catch_signals
#pragma weak rl_readline_name
#pragma weak rl_attempted_completion_function
#pragma weak rl_attempted_completion_over
#pragma weak rl_completion_append_character
#pragma weak rl_basic_word_break_characters
#pragma weak rl_completer_word_break_characters
#pragma weak rl_line_buffer
#pragma weak rl_point

/* ---- running Lua code that Ctrl-C may interrupt (the executable, the REPL) ---- */

static lua_State *volatile hook_L; /* the state running an interruptible call */

/* Raises InterruptedError in the running code; inside a loop turn, whose callbacks and
** deliveries run under lmp's own protected calls, an error raised here would be caught there
** and lost, so the interrupt is left to the wait around the turn instead. */
static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (lmp_loop_busy(L)) {
    lmp_loop_interrupt_later();
    return;
  }
  lmp_raise(L, "InterruptedError", "interrupted by Ctrl-C (SIGINT)");
}

/* Outside lmp waits, Ctrl-C sets a hook that raises in the running Lua code. Only a hook
** is set here: a signal handler never touches a Lua state otherwise. */
static void on_sigint_call(int sig) {
  lua_State *L = hook_L;
  if (L == NULL) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  lua_sethook(L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* icall(f, msgh, ...) -> like xpcall(f, msgh, ...), with Ctrl-C raising InterruptedError. */
static int l_icall(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 2;
  lua_State *saved_L = hook_L;
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint_call;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, NULL, &old);
  int ignored = !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN;
  hook_L = L;
  if (!ignored) sigaction(SIGINT, &sa, NULL);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 1); /* msgh f args... -> f after msgh */
  int status = lua_pcall(L, nargs, LUA_MULTRET, 2);
  if (!ignored) sigaction(SIGINT, &old, NULL);
  hook_L = saved_L;
  lua_sethook(L, NULL, 0, 0);
  lua_pushboolean(L, status == LUA_OK);
  lua_replace(L, 2); /* the status takes msgh's slot: ok, results... */
  return lua_gettop(L) - 1;
}

/* ---- plain reading (stdin is not a terminal, or there is no libedit) ---- */

/* Reads a line from stdin after writing the prompt; waits in the loop, so callbacks run
** while it waits. Pushes the line, or returns 0 at end of input. */
static int plain_readline(lua_State *L, const char *prompt) {
  static int unbuffered;
  if (!unbuffered) { /* stdio must not hold input that the fd wait cannot see */
    setvbuf(stdin, NULL, _IONBF, 0);
    unbuffered = 1;
  }
  fputs(prompt, stdout);
  fflush(stdout);
  lmp_wait_fd(L, 0, 0, -1);
  char *line = NULL;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, stdin); /* a line may hold any byte, NUL included */
  clearerr(stdin);
  if (n < 0) {
    free(line);
    return 0;
  }
  if (n > 0 && line[n - 1] == '\n') n--;
  lua_pushlstring(L, line, (size_t)n);
  free(line);
  return 1;
}

/* ---- the line editor ---- */

static struct {
  int ready;           /* libedit is initialized */
  lua_State *L;        /* the state reading a line now (completion runs in it) */
  int done;            /* the line (or the end of input) came */
  char *line;          /* it, malloc'd by libedit; NULL at end of input */
  int shown;           /* the prompt and the line being typed are on the screen */
  int hidden;          /* output went above them: draw them again */
  int tail_nl;         /* that output ended with a newline */
  size_t prompt_len;
  uv_poll_t *poll;     /* stdin, in the loop of the state reading lines */
  uv_loop_t *loop;     /* that loop */
  int completer;       /* registry ref of the Lua completion function */
} con = {.completer = LUA_NOREF};

static int edit_available(void) {
  return &rl_callback_read_char != NULL && isatty(0) && isatty(1);
}

/* libedit's line handler: keeps the line (NULL at end of input) for edit_readline. */
static void on_line(char *line) {
  con.line = line;
  con.done = 1;
}

/* Erases the prompt and the half-typed line, leaving the cursor at the start of their first
** row, so output can take their place. */
static void erase_prompt(void) {
  int rows = 0, cols = 0;
  rl_get_screen_size(&rows, &cols);
  if (cols <= 0) cols = 80;
  int row = (int)((con.prompt_len + (size_t)rl_point) / (size_t)cols);
  fputs("\r", stdout);
  if (row > 0) fprintf(stdout, "\033[%dA", row);
  fputs("\033[J", stdout);
  fflush(stdout);
}

/* Draws the prompt and the line being typed again, below what was written meanwhile. */
static void redraw(void) {
  if (!con.tail_nl) fputs("\n", stdout);
  fflush(stdout);
  fflush(stderr);
  rl_forced_update_display();
  con.hidden = 0;
}

/* The loop's wait condition while a line is typed; redraws the prompt after callbacks
** wrote above it (it runs after every turn of the loop, and never raises). */
static int line_ready(lua_State *L, void *ud) {
  (void)L, (void)ud;
  if (con.hidden && !con.done) redraw();
  return con.done;
}

/* stdin is readable: feed libedit every byte there is, stopping at a finished line (what
** follows belongs to the next read). */
static void on_stdin(uv_poll_t *h, int status, int events) {
  (void)h, (void)status, (void)events;
  do rl_callback_read_char();
  while (!con.done && poll(&(struct pollfd){0, POLLIN, 0}, 1, 0) > 0);
}

static char **complete(const char *text, int start, int end);

/* Sets libedit up once: no signal handlers of its own, lmp's word breaks and completion. */
static void edit_init(lua_State *L) {
  (void)L;
  if (con.ready) return;
  rl_catch_signals = 0; /* Ctrl-C is lmp's: the loop's handler raises InterruptedError */
  rl_readline_name = "lmp";
  rl_initialize();
  static char breaks[] = " \t\n\"'`@$><=;|&{}()[],+-*/%^#~!";
  rl_basic_word_break_characters = breaks;
  rl_completer_word_break_characters = breaks;
  rl_attempted_completion_function = complete;
  rl_completion_append_character = '\0';
  con.ready = 1;
}

/* The watch of stdin in L's loop (made again for another loop: a closed loop has closed it,
** and the old handle is left to it). */
static void watch_stdin(lua_State *L) {
  uv_loop_t *loop = &lmp_loop_get(L)->uv;
  if (con.poll != NULL && con.loop == loop) return;
  con.poll = malloc(sizeof *con.poll);
  if (con.poll == NULL || uv_poll_init(loop, con.poll, 0) != 0) {
    free(con.poll);
    con.poll = NULL;
    luaL_error(L, "cannot watch standard input");
  }
  con.loop = loop;
}

/* 1 when the value at idx is an InterruptedError (Ctrl-C). */
static int is_interrupt(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return 0;
  lua_getfield(L, idx, "type");
  const char *t = lua_tostring(L, -1);
  int yes = t != NULL && strcmp(t, "InterruptedError") == 0;
  lua_pop(L, 1);
  return yes;
}

static int protected_wait(lua_State *L) {
  lmp_loop_wait(L, line_ready, NULL, LMP_FOREVER);
  return 0;
}

/* Reads a line with libedit while the loop runs. Pushes it, or returns 0 at end of input;
** Ctrl-C abandons the line and raises InterruptedError. */
static int edit_readline(lua_State *L, const char *prompt) {
  edit_init(L);
  watch_stdin(L);
  con.done = 0;
  con.line = NULL;
  con.L = L;
  con.prompt_len = strlen(prompt);
  fflush(stdout);
  rl_callback_handler_install(prompt, on_line); /* draws the prompt, raw mode */
  con.shown = 1;
  con.hidden = 0;
  uv_poll_start(con.poll, UV_READABLE, on_stdin);
  lua_pushcfunction(L, protected_wait);
  int status = lua_pcall(L, 0, 0, 0);
  uv_poll_stop(con.poll);
  con.shown = 0;
  con.L = NULL;
  rl_callback_handler_remove(); /* the terminal as it was */
  if (status != LUA_OK) {
    free(con.line); /* a line that came in the same turn as Ctrl-C is dropped too */
    con.line = NULL;
    if (con.hidden) redraw();
    if (is_interrupt(L, -1)) fputs("^C\n", stdout); /* a fresh prompt on a fresh line */
    else fputs("\n", stdout);
    fflush(stdout);
    return lua_error(L);
  }
  if (con.line == NULL) return 0;
  lua_pushstring(L, con.line);
  free(con.line);
  con.line = NULL;
  return 1;
}

/* readline(prompt) -> line | nil at end of input. Waits in the loop, so callbacks run while
** the prompt waits; Ctrl-C raises InterruptedError. Line editing when stdin and stdout are a
** terminal (and libedit is there), plain reading otherwise. */
static int l_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "");
  return edit_available() ? edit_readline(L, prompt) : plain_readline(L, prompt);
}

/* editing() -> true when readline edits lines (a terminal, and libedit). */
static int l_editing(lua_State *L) {
  lua_pushboolean(L, edit_available());
  return 1;
}

/* ---- output from callbacks while a line is typed ---- */

/* before_output() -> true when the prompt was taken off the screen for output (the caller
** writes, then tells after_output whether it ended with a newline). */
static int l_before_output(lua_State *L) {
  int taken = con.shown && con.ready;
  if (taken && !con.hidden) {
    erase_prompt();
    con.hidden = 1;
  }
  lua_pushboolean(L, taken);
  return 1;
}

static int l_after_output(lua_State *L) {
  con.tail_nl = lua_toboolean(L, 1);
  return 0;
}

/* ---- completion ---- */

static char **cands;
static size_t ncands, next_cand;

static char *next_candidate(const char *text, int state) {
  (void)text;
  if (state == 0) next_cand = 0;
  return next_cand < ncands ? strdup(cands[next_cand++]) : NULL;
}

static void free_candidates(void) {
  for (size_t i = 0; i < ncands; i++) free(cands[i]);
  free(cands);
  cands = NULL;
  ncands = 0;
}

static int call_completer(lua_State *L) {
  const char *text = lua_touserdata(L, 1);
  const char *before = lua_touserdata(L, 2);
  size_t nbefore = (size_t)lua_tointeger(L, 3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, con.completer);
  lua_pushstring(L, text);
  lua_pushlstring(L, before, nbefore);
  lua_call(L, 2, 1);
  if (!lua_istable(L, -1)) return 0;
  size_t n = (size_t)lua_rawlen(L, -1);
  cands = calloc(n + 1, sizeof *cands);
  if (cands == NULL) return 0;
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    const char *s = lua_tostring(L, -1);
    if (s != NULL && (cands[ncands] = strdup(s)) != NULL) ncands++;
    lua_pop(L, 1);
  }
  return 0;
}

/* libedit's completion entry: the Lua completer gets the word and the text before it and
** returns the words that may replace it. */
static char **complete(const char *text, int start, int end) {
  (void)end;
  rl_attempted_completion_over = 1; /* never libedit's file names */
  lua_State *L = con.L;
  if (L == NULL || con.completer == LUA_NOREF) return NULL;
  free_candidates();
  lua_pushcfunction(L, call_completer);
  lua_pushlightuserdata(L, (void *)text);
  lua_pushlightuserdata(L, rl_line_buffer);
  lua_pushinteger(L, start);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) lua_pop(L, 1);
  if (ncands == 0) return NULL;
  char **m = rl_completion_matches(text, next_candidate);
  free_candidates();
  return m;
}

/* set_completer(fn): fn(word, before) -> {replacement...} */
static int l_set_completer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, con.completer);
  lua_pushvalue(L, 1);
  con.completer = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* listdir(path) -> {name...} | nil: the entries of a directory (for module names). */
static int l_listdir(lua_State *L) {
  DIR *d = opendir(luaL_checkstring(L, 1));
  if (d == NULL) return 0;
  lua_newtable(L);
  lua_Integer i = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++i);
  }
  closedir(d);
  return 1;
}

/* ---- history (the file is lmp.repl's; libedit keeps the entries Up and Down walk) ---- */

/* history_init(max): libedit keeps at most max entries. */
static int l_history_init(lua_State *L) {
  int max = (int)luaL_checkinteger(L, 1);
  if (!edit_available()) return 0;
  edit_init(L);
  stifle_history(max);
  return 0;
}

/* history_push(entry): the newest entry. */
static int l_history_push(lua_State *L) {
  const char *entry = luaL_checkstring(L, 1);
  if (con.ready) add_history(entry);
  return 0;
}

void lmp__open_console(lua_State *L) {
  static const luaL_Reg fns[] = {{"icall", l_icall}, {"readline", l_readline}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  static const luaL_Reg console[] = {{"readline", l_readline},
                                     {"editing", l_editing},
                                     {"before_output", l_before_output},
                                     {"after_output", l_after_output},
                                     {"set_completer", l_set_completer},
                                     {"listdir", l_listdir},
                                     {"history_init", l_history_init},
                                     {"history_push", l_history_push},
                                     {NULL, NULL}};
  luaL_newlib(L, console);
  lua_pushliteral(L, LUA_RELEASE);
  lua_setfield(L, -2, "lua_release");
  lua_setfield(L, -2, "console");
  lmp__open_mapio(L);
  lmp__open_json(L);
  lmp__open_jsonmap(L);
}
