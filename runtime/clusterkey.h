/*
** clusterkey.h — HMAC-SHA256 of the messages between a pool on Redis and its remote workers
** (clusterkey.c), under the cluster's shared key.
*/
#ifndef LMP_CLUSTERKEY_H
#define LMP_CLUSTERKEY_H

#include <stddef.h>

#define LMP_CLUSTER_MAC_BYTES 32
#define LMP_CLUSTER_KEY_MIN 16 /* bytes a cluster key must have at least */

struct lua_State;

/* Writes into out the MAC of parts[0..n) (each with its length) under key, for a message of the
** kind label ("task", "fn", "result"...). */
void lmp_cluster_mac(const char *key, size_t keylen, const char *label, const char *const *parts,
                     const size_t *lens, int n, unsigned char out[LMP_CLUSTER_MAC_BYTES]);

/* 1 when mac (maclen bytes) is the MAC of those parts under key, compared in constant time. */
int lmp_cluster_mac_ok(const char *key, size_t keylen, const char *label, const char *const *parts,
                       const size_t *lens, int n, const char *mac, size_t maclen);

/* Fills out with 2 * nbytes random hex digits and a NUL (out holds 2 * nbytes + 1). */
void lmp_random_hex(char *out, size_t nbytes);

void lmp__open_clusterkey(struct lua_State *L);

#endif
