/* The guest's workload: writes MIB MiB with a pattern derived from each word's index, reads
 * it back twice, counts the words that differ and prints a checksum of everything read. The
 * host runs the same program to know the right line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t word(size_t i) { return i * 0x9E3779B97F4A7C15ull ^ (i >> 7); }

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    size_t words = mib << 17;
    uint64_t *p = malloc(words * 8);
    if (!p) {
        printf("memcheck: no memory for %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < words; i++) p[i] = word(i);
    uint64_t sum = 0, bad = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < words; i++) {
            uint64_t v = p[i];
            bad += v != word(i);
            sum ^= v + 0x9E3779B97F4A7C15ull + (sum << 6) + (sum >> 2);
        }
    printf("memcheck %zu MiB bad=%llu sum=%016llx\n", mib, (unsigned long long)bad, (unsigned long long)sum);
    return bad != 0;
}
