# tests.cmake — C unit tests (tests/test_*.c), the test-only helper module, and one ctest
# test per busted spec file.

# A test-only C module (real faults for the crash specs): build/tests/lmp_testhelper.so.
add_library(lmp_testhelper MODULE ${CMAKE_SOURCE_DIR}/tests/testhelper.c)
target_link_libraries(lmp_testhelper PRIVATE PkgConfig::LUA)
set_target_properties(lmp_testhelper PROPERTIES PREFIX ""
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)

file(GLOB LMP_C_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/test_*.c)
foreach(src ${LMP_C_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src} $<TARGET_OBJECTS:lmpobj>)
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/runtime ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE PkgConfig::LUA PkgConfig::UV PkgConfig::SODIUM PkgConfig::HIREDIS m)
  add_test(NAME c_${name} COMMAND ${name})
  set_tests_properties(c_${name} PROPERTIES TIMEOUT 300 LABELS c)
endforeach()

set(LMP_TEST_ENV
  "LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;${CMAKE_SOURCE_DIR}/spec/?.lua\;\;"
  "LUA_CPATH=${CMAKE_BINARY_DIR}/lua/?.so\;${CMAKE_BINARY_DIR}/tests/?.so\;\;"
  "LMP_EXE=$<TARGET_FILE:lmp_exe>"
  "LMP_EXECUTABLE=$<TARGET_FILE:lmp_exe>"
  "LMP_SOURCE_DIR=${CMAKE_SOURCE_DIR}")

# Specs run under stock lua5.4 in the normal build and under the lmp executable (itself
# instrumented) in the sanitizer build.
if(LMP_SANITIZE)
  set(LMP_SPEC_INTERP $<TARGET_FILE:lmp_exe>)
  list(APPEND LMP_TEST_ENV "LMP_SANITIZED=1")
else()
  set(LMP_SPEC_INTERP ${LUA_EXE})
endif()

if(BUSTED_EXE)
  file(GLOB LMP_SPECS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/*_spec.lua)
  foreach(spec ${LMP_SPECS})
    get_filename_component(name ${spec} NAME_WE)
    add_test(NAME ${name}
      COMMAND ${LMP_SPEC_INTERP} ${BUSTED_EXE} --no-auto-insulate -o utfTerminal ${spec}
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES ENVIRONMENT "${LMP_TEST_ENV}" TIMEOUT 600 LABELS spec)
  endforeach()
endif()

# No call cycle among the runtime's files (but inside the codec), read from the object files.
find_program(NM_EXE nm)
if(NM_EXE)
  add_test(NAME c_call_cycles
    COMMAND ${LUA_EXE} ${CMAKE_SOURCE_DIR}/tests/check_cycles.lua $<TARGET_OBJECTS:lmpobj>
    COMMAND_EXPAND_LISTS)
  set_tests_properties(c_call_cycles PROPERTIES TIMEOUT 60 LABELS c)
endif()

# Memory checking with valgrind as well (the sanitizer build covers the rest): the embedding
# test starts a pool, runs tasks and closes everything, so leaks of a whole cycle show up.
find_program(VALGRIND_EXE valgrind)
if(VALGRIND_EXE AND NOT LMP_SANITIZE)
  add_test(NAME valgrind_test_embed
    COMMAND ${VALGRIND_EXE} --quiet --error-exitcode=1 --leak-check=full --child-silent-after-fork=yes
            --errors-for-leak-kinds=definite $<TARGET_FILE:test_embed>)
  set_tests_properties(valgrind_test_embed PROPERTIES TIMEOUT 300 LABELS c RUN_SERIAL TRUE)
endif()
