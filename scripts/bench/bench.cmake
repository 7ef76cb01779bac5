# Benchmark helpers (`make bench` runs scripts/bench/bench.lua with build/lmp).
# pingpong: the raw socketpair round trip the apply_async row is compared with; it is put
# next to the lmp executable, where the harness looks for it.
add_executable(pingpong ${CMAKE_CURRENT_LIST_DIR}/pingpong.c)
set_target_properties(pingpong PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_compile_definitions(pingpong PRIVATE _GNU_SOURCE)
