/* loop.c — placeholder */
#include "lmp_int.h"
void lmp__open_loop(lua_State *L) {}
