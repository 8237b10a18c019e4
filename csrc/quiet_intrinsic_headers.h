// Force-included first into every C++ translation unit (setup.py and CMakeLists.txt pass
// -include): GCC's AVX-512 headers fill an intrinsic's unused pass-through operand with a
// deliberately undefined value, and once inlined into our kernels GCC 12 reports each use as
// -Wuninitialized / -Wmaybe-uninitialized (about 640 warnings a build). A pragma holds for the
// text that follows it, so including <immintrin.h> here first, and so only here, with those two
// warnings off silences them inside the intrinsic headers and nowhere else.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
