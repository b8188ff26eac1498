/* A program's own allocator, strict: blocks are carved from 8 MiB chunks it maps with
 * mmap (through the PLT, as jemalloc does), and free/realloc/malloc_usable_size abort on
 * any pointer it did not hand out. Built as libownalloc.so; tests/run/own_alloc_main.c
 * links it. Under krak run every malloc-family call must reach it, never a glibc block. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK_BYTES (8u << 20)
#define MAX_CHUNKS 256
#define MAGIC 0x6f776e616c6c6f63ull /* "ownalloc" */

struct header {
    uint64_t magic;
    uint64_t size;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *chunks[MAX_CHUNKS];
static size_t nchunks, used; /* bytes used in the last chunk */
static uint64_t live_blocks;

static void die(const char *why, const void *p) {
    char msg[160];
    int n = snprintf(msg, sizeof msg, "ownalloc: %s %p\n", why, p);
    (void)!write(2, msg, (size_t)n);
    abort();
}

static int ours(const void *p) {
    for (size_t i = 0; i < nchunks; i++)
        if ((const char *)p >= chunks[i] && (const char *)p < chunks[i] + CHUNK_BYTES) return 1;
    return 0;
}

static struct header *header_of(void *p, const char *what) {
    pthread_mutex_lock(&lock);
    int mine = ours(p);
    pthread_mutex_unlock(&lock);
    if (!mine) die(what, p);
    struct header *h = (struct header *)p - 1;
    if (h->magic != MAGIC) die(what, p);
    return h;
}

static void *carve(size_t size, size_t align) {
    if (size > CHUNK_BYTES / 2 || align > 4096) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_lock(&lock);
    size_t at = 0;
    for (int fresh = 0; fresh < 2; fresh++) {
        at = (used + sizeof(struct header) + align - 1) & ~(align - 1);
        if (nchunks > 0 && at + size <= CHUNK_BYTES) break;
        if (nchunks == MAX_CHUNKS) {
            pthread_mutex_unlock(&lock);
            errno = ENOMEM;
            return NULL;
        }
        void *c = mmap(NULL, CHUNK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (c == MAP_FAILED) die("mmap failed", NULL);
        chunks[nchunks++] = c;
        used = 0;
    }
    char *p = chunks[nchunks - 1] + at;
    used = at + size;
    live_blocks++;
    pthread_mutex_unlock(&lock);
    struct header *h = (struct header *)p - 1;
    h->magic = MAGIC;
    h->size = size;
    return p;
}

void *malloc(size_t size) { return carve(size, 16); }

void free(void *p) {
    if (!p) return;
    struct header *h = header_of(p, "free of a block not mine:");
    h->magic = 0;
    pthread_mutex_lock(&lock);
    live_blocks--;
    pthread_mutex_unlock(&lock);
}

void *calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = carve(n * size, 16);
    if (p) memset(p, 0, n * size);
    return p;
}

void *realloc(void *p, size_t size) {
    if (!p) return malloc(size);
    struct header *h = header_of(p, "realloc of a block not mine:");
    void *q = malloc(size);
    if (q) {
        memcpy(q, p, h->size < size ? h->size : size);
        free(p);
    }
    return q;
}

#ifndef OWNALLOC_NO_POSIX_MEMALIGN /* built without it: krak run must refuse to forward */
int posix_memalign(void **out, size_t align, size_t size) {
    if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
    void *p = carve(size, align < 16 ? 16 : align);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
#endif

size_t malloc_usable_size(void *p) { return p ? header_of(p, "malloc_usable_size of a block not mine:")->size : 0; }

/* For the test program: the chunks mapped and the blocks live. */
void ownalloc_counts(size_t *chunks_mapped, uint64_t *blocks) {
    pthread_mutex_lock(&lock);
    *chunks_mapped = nchunks;
    *blocks = live_blocks;
    pthread_mutex_unlock(&lock);
}
