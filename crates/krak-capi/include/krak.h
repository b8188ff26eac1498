/* krak.h: far-memory regions for C and C++ programs (libkrak.so).
 *
 * A region is an address range of any size of which at most a local budget is resident on
 * this machine; the rest lives on krak memory servers and is paged in on touch by a pager
 * running in threads of this process (userfaultfd). Any load, store or system call on the
 * region works; as an unprivileged user (user-mode-only userfaultfd) system calls on pages
 * that are not resident fail with EFAULT.
 *
 * Every function returning int returns KRAK_OK (0) or a negative KRAK_E* code; then
 * krak_last_error() describes the failure (per thread, until the next failing call). */
#ifndef KRAK_H
#define KRAK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KRAK_OK 0
#define KRAK_EINVAL (-1) /* a bad argument (null pointer, zero size, unparsable address) */
#define KRAK_EPAGER (-2) /* the pager or the rack failed (unreachable servers, rack full, userfaultfd) */
#define KRAK_EPANIC (-3) /* a bug in libkrak, caught at the boundary (in builds with panic=unwind;
                            the workspace release profile aborts the process instead) */

typedef struct krak_region krak_region;

typedef struct krak_stats {
    uint64_t missing_faults;   /* faults on pages that were not resident */
    uint64_t zero_fills;       /* pages never written, served as zeros */
    uint64_t remote_reads;     /* pages read from memory servers */
    uint64_t remote_writes;    /* pages written back to memory servers */
    uint64_t evictions_clean;  /* clean pages dropped */
    uint64_t evictions_dirty;  /* dirty pages written back and dropped */
    uint64_t failed_faults;    /* faults that could not be served (the thread got SIGBUS) */
    uint64_t resident_bytes;   /* bytes of the region resident now */
    uint64_t local_budget_bytes;
} krak_stats;

/* Makes a region of size_bytes (rounded up to 4 KiB pages), at most local_budget_bytes of it
 * resident. Its remote memory is reserved up front on `servers` ("HOST:PORT,HOST:PORT")
 * or, when servers is NULL, where the rack controller at `controller` ("http://HOST:PORT")
 * places it. `secret_file` is the rack secret's file (as `krak secret new` writes it); NULL
 * only for a rack run without one (`--insecure`). Its pages read as zeros until written. */
int krak_region_create(uint64_t size_bytes, uint64_t local_budget_bytes, const char *servers,
                       const char *controller, const char *secret_file, krak_region **out);

/* Start and length of the region. */
void *krak_region_ptr(const krak_region *region);
uint64_t krak_region_len(const krak_region *region);

/* Changes the local budget while the region is in use (shrinking evicts at once). */
int krak_region_set_local_budget(krak_region *region, uint64_t bytes);

/* Forgets [offset, offset+len) (4 KiB-aligned): the pages read as zeros next. */
int krak_region_discard(krak_region *region, uint64_t offset, uint64_t len);

int krak_region_stats(const krak_region *region, krak_stats *out);

/* Stops the pager and gives back all local and remote memory. No thread may touch the
 * region afterwards. NULL is ignored. */
void krak_region_destroy(krak_region *region);

/* The message of this thread's last failed call ("" if none). Valid until its next call. */
const char *krak_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* KRAK_H */
