/*
** clusterkey.c — the shared key of a cluster (pools on Redis and the `lmp worker` processes that
** serve them) and the HMAC-SHA256 (libsodium) that authenticates every message between them.
** A message's MAC covers its fields in order, each as a u32 length and its bytes, under a label
** that says what the message is, so no field can be moved into another or another kind.
*/
#include <string.h>

#include <sodium.h>

#include "bytes.h"
#include "clusterkey.h"
#include "lmp_int.h"

void lmp_cluster_mac(const char *key, size_t keylen, const char *label, const char *const *parts,
                     const size_t *lens, int n, unsigned char out[LMP_CLUSTER_MAC_BYTES]) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, keylen);
  unsigned char len[4];
  lmp_put_le32(len, (uint32_t)strlen(label));
  crypto_auth_hmacsha256_update(&st, len, 4);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, strlen(label));
  for (int i = 0; i < n; i++) {
    lmp_put_le32(len, (uint32_t)lens[i]);
    crypto_auth_hmacsha256_update(&st, len, 4);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)parts[i], lens[i]);
  }
  crypto_auth_hmacsha256_final(&st, out);
}

int lmp_cluster_mac_ok(const char *key, size_t keylen, const char *label, const char *const *parts,
                       const size_t *lens, int n, const char *mac, size_t maclen) {
  unsigned char want[LMP_CLUSTER_MAC_BYTES];
  if (maclen != LMP_CLUSTER_MAC_BYTES) return 0;
  lmp_cluster_mac(key, keylen, label, parts, lens, n, want);
  return sodium_memcmp(want, mac, LMP_CLUSTER_MAC_BYTES) == 0;
}

/* Gathers the string arguments from index first on. */
static int gather(lua_State *L, int first, const char **parts, size_t *lens, int max) {
  int n = lua_gettop(L) - first + 1;
  if (n > max) return lmp_argerror(L, first + max, "ValueError", "too many parts (at most %d)", max);
  for (int i = 0; i < n; i++) parts[i] = lmp_checklstring(L, first + i, &lens[i]);
  return n;
}

#define MAX_PARTS 16

/* cluster_mac(key, label, part...) -> the 32-byte HMAC-SHA256 of the parts */
static int l_cluster_mac(lua_State *L) {
  size_t keylen;
  const char *key = lmp_checklstring(L, 1, &keylen);
  const char *label = lmp_checklstring(L, 2, NULL);
  const char *parts[MAX_PARTS];
  size_t lens[MAX_PARTS];
  int n = gather(L, 3, parts, lens, MAX_PARTS);
  unsigned char mac[LMP_CLUSTER_MAC_BYTES];
  lmp_cluster_mac(key, keylen, label, parts, lens, n, mac);
  lua_pushlstring(L, (const char *)mac, sizeof mac);
  return 1;
}

/* cluster_mac_ok(key, mac, label, part...) -> true when mac is theirs (constant time) */
static int l_cluster_mac_ok(lua_State *L) {
  size_t keylen, maclen;
  const char *key = lmp_checklstring(L, 1, &keylen);
  const char *mac = lmp_checklstring(L, 2, &maclen);
  const char *label = lmp_checklstring(L, 3, NULL);
  const char *parts[MAX_PARTS];
  size_t lens[MAX_PARTS];
  int n = gather(L, 4, parts, lens, MAX_PARTS);
  lua_pushboolean(L, lmp_cluster_mac_ok(key, keylen, label, parts, lens, n, mac, maclen));
  return 1;
}

void lmp_random_hex(char *out, size_t nbytes) {
  unsigned char b[64];
  if (nbytes > sizeof b) nbytes = sizeof b;
  randombytes_buf(b, nbytes);
  sodium_bin2hex(out, 2 * nbytes + 1, b, nbytes);
}

/* random_hex(nbytes) -> a hex string of nbytes random bytes (pool and worker names) */
static int l_random_hex(lua_State *L) {
  lua_Integer n = lmp_checkinteger(L, 1);
  if (n < 1 || n > 64) return lmp_argerror(L, 1, "ValueError", "1..64 bytes");
  unsigned char b[64];
  char hex[129];
  randombytes_buf(b, (size_t)n);
  sodium_bin2hex(hex, sizeof hex, b, (size_t)n);
  lua_pushstring(L, hex);
  return 1;
}

void lmp__open_clusterkey(lua_State *L) {
  if (sodium_init() < 0) luaL_error(L, "libsodium cannot start");
  lua_pushcfunction(L, l_cluster_mac);
  lua_setfield(L, -2, "cluster_mac");
  lua_pushcfunction(L, l_cluster_mac_ok);
  lua_setfield(L, -2, "cluster_mac_ok");
  lua_pushcfunction(L, l_random_hex);
  lua_setfield(L, -2, "random_hex");
}
