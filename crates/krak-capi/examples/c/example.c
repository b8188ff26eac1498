/* A far-memory region from C: 256 MiB with a 32 MiB local budget on the memory servers
 * given as argv[1] ("HOST:PORT,..."), with the rack secret in the file argv[2]. Writes every
 * page, reads every page back (most come from the servers), checks them, prints the pager's
 * counters.
 *   cc -Iinclude example.c -Ltarget/release -lkrak -o example && ./example 127.0.0.1:7070 secret */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "krak.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST:PORT[,HOST:PORT...] SECRET_FILE\n", argv[0]);
        return 2;
    }
    krak_region *region;
    if (krak_region_create(256u << 20, 32u << 20, argv[1], NULL, argv[2], &region) != KRAK_OK) {
        fprintf(stderr, "krak_region_create: %s\n", krak_last_error());
        return 1;
    }
    uint64_t *words = krak_region_ptr(region);
    size_t n = krak_region_len(region) / sizeof *words;
    for (size_t i = 0; i < n; i++) words[i] = i * 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < n; i++) {
        if (words[i] != i * 0x9E3779B97F4A7C15ULL) {
            fprintf(stderr, "word %zu differs\n", i);
            return 1;
        }
    }
    /* Forgotten pages read as zeros. */
    if (krak_region_discard(region, 4096, 8192) != KRAK_OK || words[512] != 0 || words[1535] != 0 || words[1536] == 0) {
        fprintf(stderr, "discard: %s\n", krak_last_error());
        return 1;
    }
    if (krak_region_discard(region, 1, 4096) != KRAK_EINVAL) return 1;
    krak_stats s;
    krak_region_stats(region, &s);
    printf("verified %zu words; remote_reads %llu remote_writes %llu resident %llu of %llu bytes\n", n,
           (unsigned long long)s.remote_reads, (unsigned long long)s.remote_writes,
           (unsigned long long)s.resident_bytes, (unsigned long long)s.local_budget_bytes);
    if (s.remote_reads == 0 || s.resident_bytes > s.local_budget_bytes || s.failed_faults) return 1;
    krak_region_destroy(region);
    if (krak_region_create(1 << 20, 1 << 20, "not-an-address", NULL, argv[2], &region) != KRAK_EINVAL) return 1;
    printf("bad address refused: %s\n", krak_last_error());
    return 0;
}
