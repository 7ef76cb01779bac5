/* codec.c — placeholder until the codec lands. */
#include "lmp_int.h"

void lmp_encode_buf(lua_State *L, int idx, lmp_buf *out, lmp_fdvec *fds) {
  lmp_raise(L, "SerializationError", "codec not built");
}
void lmp_encode(lua_State *L, int idx) { lmp_raise(L, "SerializationError", "codec not built"); }
void lmp_decode(lua_State *L, const char *s, size_t n, const int *fds, int nfds) {
  lmp_raise(L, "SerializationError", "codec not built");
}
void lmp__open_codec(lua_State *L) {}
