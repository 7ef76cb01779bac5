/*
** manager_wire.c — what both ends of a Manager connection share: HMAC-SHA256 (libsodium),
** listening and dialling sockets (Unix in a fresh 0700 directory, or TCP), the server's start
** (fork, the descriptors it must not inherit, removal of its socket), and the proxy handle.
** Caveats: the socket files of the managers this process started are removed by an atexit
** handler too, for exits that skip the Lua finalizers (os.exit, a server killed by SIGKILL).
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <dirent.h>
#include <unistd.h>

#include <sodium.h>

#include "bytes.h"
#include "lmp_int.h"
#include "loop.h"
#include "manager.h"

/* ---- HMAC and randomness ---- */

void lmp__mgr_mac(unsigned char *mac, const char *key, size_t keylen, const char *tag,
                  const unsigned char *nonce) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, keylen);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)tag, strlen(tag));
  crypto_auth_hmacsha256_update(&st, nonce, MGR_NONCE);
  crypto_auth_hmacsha256_final(&st, mac);
  sodium_memzero(&st, sizeof st);
}

int lmp__mgr_mac_ok(const unsigned char *mac, const char *key, size_t keylen, const char *tag,
                    const unsigned char *nonce) {
  unsigned char want[MGR_MAC];
  lmp__mgr_mac(want, key, keylen, tag, nonce);
  return sodium_memcmp(want, mac, MGR_MAC) == 0;
}

void lmp__mgr_random(void *buf, size_t n) {
  if (sodium_init() < 0) abort(); /* no entropy source: nothing safe can be done */
  randombytes_buf(buf, n);
}

int lmp__mgr_frame(lmp_buf *b, const void *body, size_t n) {
  if (n > MGR_MAX_FRAME || lmp_buf_reserve(b, MGR_LEN + n) != 0) return -1;
  unsigned char *p = (unsigned char *)b->p + b->len;
  lmp_put_le32(p, (uint32_t)n);
  memcpy(p + MGR_LEN, body, n);
  b->len += MGR_LEN + n;
  return 0;
}

/* ---- addresses ---- */

/* Splits "host:port" (host may be "[v6]"); 0 when address is not of that form. */
static int split_hostport(const char *address, char *host, size_t hostlen, char *port,
                          size_t portlen) {
  const char *colon = strrchr(address, ':');
  if (colon == NULL || strchr(address, '/') != NULL || colon[1] == '\0') return 0;
  for (const char *c = colon + 1; *c; c++)
    if (*c < '0' || *c > '9') return 0;
  const char *h = address;
  size_t hl = (size_t)(colon - address);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
  if (hl == 0 || hl >= hostlen || strlen(colon + 1) >= portlen) return 0;
  memcpy(host, h, hl);
  host[hl] = '\0';
  strcpy(port, colon + 1);
  return 1;
}

static int set_unix_path(struct sockaddr_un *sa, const char *path) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa->sun_path) return -1;
  strcpy(sa->sun_path, path);
  return 0;
}

int lmp__mgr_dial(const char *address, char *err, size_t errlen) {
  char host[256], port[16];
  int fd = -1;
  if (split_hostport(address, host, sizeof host, port, sizeof port)) {
    struct addrinfo hints, *res = NULL, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
      snprintf(err, errlen, "cannot resolve %s: %s", address, gai_strerror(rc));
      return -1;
    }
    int e = 0;
    for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
      fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        e = errno;
        close(fd);
        fd = -1;
      }
    }
    freeaddrinfo(res);
    if (fd < 0) {
      snprintf(err, errlen, "cannot connect to %s (%s): is the manager running?", address, strerror(e));
      return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  } else {
    struct sockaddr_un sa;
    if (set_unix_path(&sa, address) != 0) {
      snprintf(err, errlen, "socket path too long: %s", address);
      return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      int e = errno;
      close(fd);
      fd = -1;
      errno = e;
    }
    if (fd < 0) {
      snprintf(err, errlen, "cannot connect to %s (%s): is the manager running?", address, strerror(errno));
      return -1;
    }
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/* ---- listening (the process that starts a manager) ---- */

/* Socket files and directories of the managers started here, removed at exit. */
typedef struct made {
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
  pid_t owner;
} made;
static made *mades;
static int n_mades, cap_mades;

static void remove_made(made *m) {
  if (m->path[0]) unlink(m->path);
  if (m->dir[0]) rmdir(m->dir);
}

/* At exit: removes the socket files and directories of the managers started here. */
static void at_exit_remove(void) {
  for (int i = 0; i < n_mades; i++)
    if (mades[i].owner == getpid()) remove_made(&mades[i]);
  n_mades = 0;
}

/* Records a socket file and its directory for the atexit handler. */
static void remember_made(const char *path, const char *dir) {
  if (n_mades == cap_mades) {
    int cap = cap_mades ? cap_mades * 2 : 8;
    made *p = realloc(mades, (size_t)cap * sizeof *p);
    if (p == NULL) return; /* then only the finalizer removes it */
    mades = p;
    cap_mades = cap;
  }
  static int registered;
  if (!registered) atexit(at_exit_remove), registered = 1;
  made *m = &mades[n_mades++];
  snprintf(m->path, sizeof m->path, "%s", path ? path : "");
  snprintf(m->dir, sizeof m->dir, "%s", dir ? dir : "");
  m->owner = getpid();
}

/* Binds a TCP listener; pushes the canonical "ip:port". Returns the fd or -1 (message pushed). */
static int listen_tcp(lua_State *L, const char *host, const char *port) {
  struct addrinfo hints, *res = NULL, *ai;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    lua_pushfstring(L, "cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int fd = -1, e = 0;
  for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      e = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) {
    lua_pushfstring(L, "cannot listen on %s:%s: %s", host, port, strerror(e));
    return -1;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  int p = 0;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
    p = ntohs(s6->sin6_port);
    lua_pushfstring(L, "[%s]:%d", ip, p);
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
    p = ntohs(s4->sin_port);
    lua_pushfstring(L, "%s:%d", ip, p);
  }
  return fd;
}

/* Binds a Unix listener at path, readable and writable by the owner only. Returns the fd or
** -1 (message pushed). */
static int listen_unix(lua_State *L, const char *path) {
  struct sockaddr_un sa;
  if (set_unix_path(&sa, path) != 0) {
    lua_pushfstring(L, "socket path too long (%d bytes at most): %s",
                    (int)sizeof sa.sun_path - 1, path);
    return -1;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  mode_t old = umask(077);
  int ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 128) == 0;
  int e = errno;
  umask(old);
  if (!ok) {
    if (fd >= 0) close(fd);
    lua_pushfstring(L, "cannot listen on %s: %s", path, strerror(e));
    return -1;
  }
  return fd;
}

/* mgr_listen([address]) -> fd, address, socket path | nil, directory | nil
** No address: a Unix socket in a new directory only the owner can enter ($TMPDIR or /tmp).
** Raises ProcessError when the socket cannot be made. */
static int l_listen(lua_State *L) {
  const char *address = luaL_optstring(L, 1, NULL);
  char host[256], port[16];
  if (address != NULL && split_hostport(address, host, sizeof host, port, sizeof port)) {
    int fd = listen_tcp(L, host, port);
    if (fd < 0) return lmp_raise(L, "ProcessError", "Manager: %s", lua_tostring(L, -1));
    lua_pushinteger(L, fd);
    lua_insert(L, -2);
    return 2;
  }
  char dir[PATH_MAX] = "", path[PATH_MAX];
  if (address == NULL) {
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0' || strlen(tmp) > 64) tmp = "/tmp";
    snprintf(dir, sizeof dir, "%s/lmp-manager-XXXXXX", tmp);
    if (mkdtemp(dir) == NULL) /* mode 0700 */
      return lmp_raise(L, "ProcessError", "Manager: cannot make a directory in %s: %s", tmp,
                       strerror(errno));
    snprintf(path, sizeof path, "%s/socket", dir);
  } else {
    snprintf(path, sizeof path, "%s", address);
  }
  int fd = listen_unix(L, path);
  if (fd < 0) {
    if (dir[0]) rmdir(dir);
    return lmp_raise(L, "ProcessError", "Manager: %s", lua_tostring(L, -1));
  }
  remember_made(path, dir);
  lua_pushinteger(L, fd);
  lua_pushstring(L, path);
  lua_pushstring(L, path);
  if (dir[0]) lua_pushstring(L, dir); else lua_pushnil(L);
  return 4;
}

/* mgr_unlink(path | nil, dir | nil): removes a manager's socket file and its directory. */
static int l_unlink(lua_State *L) {
  const char *path = luaL_optstring(L, 1, NULL);
  const char *dir = luaL_optstring(L, 2, NULL);
  if (path) unlink(path);
  if (dir) rmdir(dir);
  for (int i = 0; i < n_mades; i++)
    if (path && strcmp(mades[i].path, path) == 0) {
      mades[i] = mades[--n_mades];
      break;
    }
  return 0;
}

/* ---- starting the server ---- */

/* 1 when fd is an anonymous inode (eventfd, epoll, timerfd...): all of them share one inode,
** so device and inode cannot tell the parent's from the child's own. */
static int anon_inode(int fd) {
  char link[64], target[32];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  return n >= 11 && memcmp(target, "anon_inode:", 11) == 0;
}

/* mgr_fd_list() -> {fd, dev, ino, ...}: this process's descriptors above 2 (files, pipes,
** sockets, memfds), for the server to close what it inherited: it must not keep the pipes and
** sockets of others open. Anonymous inodes (event machinery) are left alone. */
static int l_fd_list(lua_State *L) {
  lua_newtable(L);
  DIR *d = opendir("/proc/self/fd");
  if (d == NULL) return 1;
  int dfd = dirfd(d), n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int fd = atoi(e->d_name);
    struct stat st;
    if (fd <= 2 || fd == dfd || fstat(fd, &st) != 0 || anon_inode(fd)) continue;
    lua_pushinteger(L, fd);
    lua_rawseti(L, -2, ++n);
    lua_pushinteger(L, (lua_Integer)st.st_dev);
    lua_rawseti(L, -2, ++n);
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  return 1;
}

/* mgr_close_inherited(list, keep): in the server, closes each listed descriptor that is still
** the same file (device and inode) as in the parent, except keep. Descriptors the child made
** since (its own loop) have other inodes and stay. */
static int l_close_inherited(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int keep = (int)luaL_checkinteger(L, 2);
  lua_Integer n = luaL_len(L, 1);
  for (lua_Integer i = 1; i + 2 <= n; i += 3) {
    lua_rawgeti(L, 1, i);
    lua_rawgeti(L, 1, i + 1);
    lua_rawgeti(L, 1, i + 2);
    int fd = (int)lua_tointeger(L, -3);
    lua_Integer dev = lua_tointeger(L, -2), ino = lua_tointeger(L, -1);
    lua_pop(L, 3);
    struct stat st;
    if (fd != keep && fstat(fd, &st) == 0 && (lua_Integer)st.st_dev == dev &&
        (lua_Integer)st.st_ino == ino && !anon_inode(fd))
      close(fd);
  }
  return 0;
}

/* mgr_fork(payload, listen_fd) -> pid: starts the server (mode "manager", a daemon child). */
static int l_fork(lua_State *L) {
  size_t n;
  const char *payload = luaL_checklstring(L, 1, &n);
  int fd = (int)luaL_checkinteger(L, 2);
  pid_t pid = lmp_fork_child(L, payload, n, "manager", 1, fd);
  if (pid < 0) return lmp_raise(L, "ProcessError", "Manager: cannot fork: %s", strerror(errno));
  lua_pushinteger(L, pid);
  return 1;
}

static void forget_on_exit(void *ud, pid_t pid, int code) { (void)ud, (void)pid, (void)code; }

/* mgr_forget(pid): the server is left to exit on its own (a collected manager): it is reaped
** and dropped from the children table by the loop. */
static int l_forget(lua_State *L) {
  lmp_child_watch((pid_t)luaL_checkinteger(L, 1), forget_on_exit, NULL);
  return 0;
}

/* mgr_close_fd(fd) */
static int l_close_fd(lua_State *L) {
  close((int)luaL_checkinteger(L, 1));
  return 0;
}

/* mgr_random(n) -> n random bytes */
static int l_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0 && n <= 4096, 1, "1..4096 expected");
  luaL_Buffer b;
  lmp__mgr_random(luaL_buffinitsize(L, &b, (size_t)n), (size_t)n);
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* ---- the proxy handle: decoded by lmp.manager_proxy, loaded on first use ---- */

/* The codec's decoder for "lmp.Proxy" handles: lmp.manager_proxy._decode(payload), the
** module being loaded on first use (a worker's fresh state has not loaded it). */
static int decode_proxy(lua_State *L) {
  lua_settop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lmp.manager_proxy_sync"); /* returns lmp.manager_proxy, all classes loaded */
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "_decode");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

/* Adds the Manager's functions to lmp.core (the table on top) and registers the proxy handle. */
void lmp__open_manager(lua_State *L) {
  static const luaL_Reg fns[] = {{"mgr_listen", l_listen},
                                 {"mgr_unlink", l_unlink},
                                 {"mgr_fd_list", l_fd_list},
                                 {"mgr_close_inherited", l_close_inherited},
                                 {"mgr_fork", l_fork},
                                 {"mgr_forget", l_forget},
                                 {"mgr_close_fd", l_close_fd},
                                 {"mgr_random", l_random},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lua_getfield(L, -1, "register_handle");
  lua_pushliteral(L, "lmp.Proxy");
  lua_pushcfunction(L, decode_proxy);
  lua_call(L, 2, 0);
}
