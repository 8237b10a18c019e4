// Include first, before any ATen header, in files that use ATen's SIMD types (at::vec).
//
// ATen's SIMD types pick their instruction set from CPU_CAPABILITY_* (set per file inside torch's
// own build), not from the compiler's target: select the widest one -march allows. The namespace
// name (CPU_CAPABILITY) keeps these inline definitions apart from other translation units'.
#pragma once

#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#endif
