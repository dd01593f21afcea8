# Run by the build (see datatunnel_stage in CMakeLists.txt) for one stage
# folder: every `#include "<folder>/..."` of its files must name the stage
# itself or one of the stages it declares it depends on. The build fails
# otherwise, naming the file, the include and the allowed stages.
#
#   cmake -DSTAGE=capture -DDEPS="core|config|pg" -DFILES="a.cc|a.h" -DSTAMP=out -P check_layering.cmake
cmake_minimum_required(VERSION 3.22)
string(REPLACE "|" ";" DEPS "${DEPS}")
string(REPLACE "|" ";" FILES "${FILES}")
set(errors "")
foreach(file IN LISTS FILES)
  file(STRINGS "${file}" includes REGEX "^#include \"[a-z_]+/")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^#include \"([a-z_]+)/.*$" "\\1" stage "${line}")
    if(NOT stage STREQUAL STAGE AND NOT stage IN_LIST DEPS)
      string(APPEND errors "\n  ${file}: ${line}")
    endif()
  endforeach()
endforeach()
if(errors)
  string(REPLACE ";" ", " allowed "${DEPS}")
  message(FATAL_ERROR
    "stage ${STAGE}/ may include only ${allowed} (the stages before it in the data flow); "
    "these includes cross the boundary:${errors}\n"
    "Move the code to the stage that owns it, or, if the dependency is right, add it to "
    "${STAGE}'s DEPS in CMakeLists.txt (src/README.md shows the order).")
endif()
file(TOUCH "${STAMP}")
