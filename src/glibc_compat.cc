// What glibc 2.28 lacks and the statically linked libstdc++ uses, for the link against glibc
// 2.28's symbols (cmake/glibc_2_28.cmake). Hidden: each definition serves this module only.

// glibc 2.32's "no other thread exists yet" flag, read by libstdc++'s reference counts
// (shared_ptr, locale, ...) to skip atomic instructions. Never true here: the counts stay
// atomic, which is always correct.
extern "C" __attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
