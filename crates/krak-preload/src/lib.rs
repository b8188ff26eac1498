//! `libkrak_preload.so`: runs an unmodified program's large anonymous memory on krak far
//! memory. `krak run` preloads it (LD_PRELOAD) and configures it through the environment
//! (`krak_arena::contract`). It interposes the malloc family and `mmap`/`munmap`/`mremap`/`madvise`/
//! `mprotect`: allocations at or above the threshold (1 MiB by default) are served from one
//! far-memory arena, a `FarMemory` region whose pager runs inside the process, in handler
//! threads; everything smaller goes to glibc. A program that brings its own allocator
//! (jemalloc) keeps it, and that allocator's large mappings land in the arena (`forward.rs`). The mechanism and its limits are in
//! `docs/design.md` ("Unmodified programs: krak run").

// The interposed symbols (`interpose`, `threads`), the global allocator and the
// constructor are left out of the test build: a test binary must keep its own malloc. The
// rest is built, and tested, as it is.
#[cfg_attr(test, allow(dead_code))]
mod alloc;
#[cfg_attr(test, allow(dead_code))]
mod fallback;
#[cfg_attr(test, allow(dead_code))]
mod far;
#[cfg_attr(test, allow(dead_code))]
mod forward;
#[cfg(not(test))]
mod interpose;
#[cfg_attr(test, allow(dead_code))]
mod protect;
#[cfg_attr(test, allow(dead_code))]
mod retained;
mod runs;
mod small;
mod spans;
#[cfg(not(test))]
mod threads;

#[cfg(not(test))]
#[global_allocator]
static HEAP: alloc::LibcHeap = alloc::LibcHeap;

#[cfg(not(test))]
extern "C" fn init() {
    let allocator = far::load_config();
    threads::resolve();
    forward::resolve(allocator);
}

/// Reads the configuration when the library loads, before the program's `main`.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
