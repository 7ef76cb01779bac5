/*
** manager.h — the Manager's transport, shared by manager_wire.c (frames, sockets, the HMAC
** handshake), manager_client.c (a process's connection to a server) and manager_server.c
** (the server's event loop). Not part of the public API; the protocol is described in
** docs/api/manager.md ("How it works").
*/
#ifndef LMP_MANAGER_H
#define LMP_MANAGER_H

#include <stddef.h>
#include <stdint.h>
#include "lmp_int.h"

/* Frames: u32 little-endian length of what follows, then the body.
** Request body: u32 seq, u8 flags, u32 object id, u8 method length, method, codec message.
** Reply body:   u32 seq, u8 status, codec message. */
#define MGR_LEN 4
#define MGR_REQ_HEAD 10  /* seq, flags, id, method length */
#define MGR_REP_HEAD 5   /* seq, status */
#define MGR_MAX_FRAME 0x7fffffffu
#define MGR_AUTH_MAX 256 /* largest frame accepted before authentication */

/* Request flags. */
#define MGR_F_PARK 1    /* the server may park the request (a blocking call) */
#define MGR_F_ONEWAY 2  /* no reply (reference counting messages) */
#define MGR_F_CANCEL 4  /* cancel the parked request whose seq is in the id field */

/* Reply statuses. */
#define MGR_OK 0        /* the message is the packed results {n=, ...} */
#define MGR_ERROR 1     /* the message is an error object {type=, message=, ...} */
#define MGR_CANCELLED 2 /* the request was parked and has been cancelled */

/* The handshake: the server sends MAGIC + a 32-byte challenge; the client answers with
** HMAC(key, "client" || challenge) and its own challenge; the server answers "OK" +
** HMAC(key, "server" || client challenge) + its address, or "NO" and closes. */
#define MGR_MAGIC "LMPM\x01"
#define MGR_MAGIC_LEN 5
#define MGR_NONCE 32
#define MGR_MAC 32

/* HMAC-SHA256 of tag || nonce under key, into mac (MGR_MAC bytes). */
void lmp__mgr_mac(unsigned char *mac, const char *key, size_t keylen, const char *tag,
                  const unsigned char *nonce);
/* 1 when mac is the HMAC of tag || nonce under key (constant time). */
int lmp__mgr_mac_ok(const unsigned char *mac, const char *key, size_t keylen, const char *tag,
                    const unsigned char *nonce);
/* Fills buf with n random bytes (libsodium). */
void lmp__mgr_random(void *buf, size_t n);

/* Connects to address ("host:port" for TCP, anything else a Unix socket path): a
** non-blocking, close-on-exec socket. Returns the fd, or -1 with a message in err. */
int lmp__mgr_dial(const char *address, char *err, size_t errlen);

/* Appends a frame (length prefix + n bytes) to b; -1 when memory is exhausted. */
int lmp__mgr_frame(lmp_buf *b, const void *body, size_t n);

void lmp__open_manager_client(lua_State *L);
void lmp__open_manager_server(lua_State *L);

#endif
