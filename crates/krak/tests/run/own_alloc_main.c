/* Linked with libownalloc.so (own_alloc.c): 1000-byte blocks from the program's own
 * allocator, written, partly freed and reallocated from four threads, then all checked.
 * Prints "ownalloc: ok" and the allocator's counts. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define BLOCKS_PER_THREAD 40000
#define BLOCK 1000

void ownalloc_counts(size_t *chunks_mapped, uint64_t *blocks);

static void fill(unsigned char *p, size_t n, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

static int check(const unsigned char *p, size_t n, uint64_t seed) {
    unsigned char want[2 * BLOCK];
    fill(want, n, seed);
    return memcmp(p, want, n) == 0;
}

static void *worker(void *arg) {
    uint64_t t = (uint64_t)(uintptr_t)arg;
    unsigned char **blocks = calloc(BLOCKS_PER_THREAD, sizeof *blocks);
    for (uint64_t i = 0; i < BLOCKS_PER_THREAD; i++) {
        blocks[i] = malloc(BLOCK);
        fill(blocks[i], BLOCK, t << 32 | i);
    }
    /* Every third block freed, every fifth grown (moved, contents kept). */
    for (uint64_t i = 0; i < BLOCKS_PER_THREAD; i++) {
        if (i % 3 == 0) {
            free(blocks[i]);
            blocks[i] = NULL;
        } else if (i % 5 == 0) {
            blocks[i] = realloc(blocks[i], 2 * BLOCK);
            fill(blocks[i] + BLOCK, BLOCK, ~(t << 32 | i));
        }
    }
    uint64_t bad = 0;
    for (uint64_t i = 0; i < BLOCKS_PER_THREAD; i++) {
        if (!blocks[i]) continue;
        bad += !check(blocks[i], BLOCK, t << 32 | i);
        if (i % 5 == 0) bad += !check(blocks[i] + BLOCK, BLOCK, ~(t << 32 | i));
    }
    return (void *)(uintptr_t)bad;
}

int main(void) {
    pthread_t th[THREADS];
    for (uintptr_t t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    uint64_t bad = 0;
    for (int t = 0; t < THREADS; t++) {
        void *r;
        pthread_join(th[t], &r);
        bad += (uintptr_t)r;
    }
    void *aligned = NULL;
    if (posix_memalign(&aligned, 256, 100) || (uintptr_t)aligned % 256) bad++;
    free(aligned);
    size_t chunks;
    uint64_t live;
    ownalloc_counts(&chunks, &live);
    printf("ownalloc: %s, %llu bad blocks, %zu chunks, %llu live blocks\n", bad ? "FAILED" : "ok",
           (unsigned long long)bad, chunks, (unsigned long long)live);
    return bad != 0;
}
