/* process.c — placeholder */
#include "lmp_int.h"
void lmp__open_process(lua_State *L) {}
