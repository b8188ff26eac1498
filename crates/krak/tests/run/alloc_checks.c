/* Memory calls a program makes on large memory, each checked by contents. Run under
 * `krak run` with a local budget well below what it touches, so that pages go to the
 * memory servers and come back. Prints one line per check; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define FAIL(...) do { printf("FAIL: " __VA_ARGS__); printf("\n"); exit(1); } while (0)

static uint64_t word(uint64_t seed, size_t i) { uint64_t x = seed * 0x9E3779B97F4A7C15ULL + i; x ^= x >> 29; return x * 0xBF58476D1CE4E5B9ULL; }

static void fill(void *p, size_t bytes, uint64_t seed) {
    uint64_t *w = p;
    for (size_t i = 0; i < bytes / 8; i++) w[i] = word(seed, i);
}

/* Checks bytes filled by fill(base, ..., seed), from `offset` bytes into them. */
static void check_at(const void *p, size_t bytes, uint64_t seed, size_t offset, const char *what) {
    const uint64_t *w = p;
    for (size_t i = 0; i < bytes / 8; i++)
        if (w[i] != word(seed, offset / 8 + i)) FAIL("%s: word %zu of %zu differs", what, i, bytes / 8);
}

static void check(const void *p, size_t bytes, uint64_t seed, const char *what) { check_at(p, bytes, seed, 0, what); }

static void check_zero(const void *p, size_t bytes, const char *what) {
    const unsigned char *c = p;
    for (size_t i = 0; i < bytes; i++)
        if (c[i]) FAIL("%s: byte %zu is %d, not 0", what, i, c[i]);
}

static void *thread_main(void *arg) {
    uint64_t seed = (uintptr_t)arg;
    size_t n = 48 * MIB;
    char *p = malloc(n);
    if (!p) FAIL("thread malloc");
    fill(p, n, seed);
    for (int round = 0; round < 2; round++) check(p, n, seed, "thread buffer");
    free(p);
    return NULL;
}

int main(void) {
    /* malloc, touched past the budget, read back */
    size_t n = 96 * MIB;
    char *a = malloc(n);
    if (!a) FAIL("malloc(96 MiB)");
    fill(a, n, 1);
    check(a, n, 1, "malloc");
    if (malloc_usable_size(a) < n) FAIL("malloc_usable_size %zu < %zu", malloc_usable_size(a), n);
    printf("malloc: ok\n");

    /* realloc: grow (in place or moved), contents kept, new part usable; shrink */
    char *b = malloc(40 * MIB);
    fill(b, 40 * MIB, 2);
    b = realloc(b, 100 * MIB);
    if (!b) FAIL("realloc grow");
    check(b, 40 * MIB, 2, "realloc grown, old part");
    fill(b + 40 * MIB, 60 * MIB, 3);
    char *blocker = malloc(8 * MIB); /* may sit right after b: the next growth then moves */
    b = realloc(b, 300 * MIB);
    check(b, 40 * MIB, 2, "realloc moved, first part");
    check(b + 40 * MIB, 60 * MIB, 3, "realloc moved, second part");
    b = realloc(b, 20 * MIB);
    check(b, 20 * MIB, 2, "realloc shrunk");
    free(blocker);
    printf("realloc: ok\n");

    /* free, then a new allocation over the same pages reads zeros (calloc) */
    free(a);
    char *z = calloc(1, n);
    check_zero(z, n, "calloc after free");
    free(z);
    printf("calloc: ok\n");

    /* aligned allocations */
    void *al = NULL;
    if (posix_memalign(&al, 2 * MIB, 5 * MIB) || ((uintptr_t)al & (2 * MIB - 1))) FAIL("posix_memalign 2 MiB");
    fill(al, 5 * MIB, 4);
    check(al, 5 * MIB, 4, "posix_memalign");
    free(al);
    void *aa = aligned_alloc(64 * 1024, 3 * MIB);
    if (!aa || ((uintptr_t)aa & 0xffff)) FAIL("aligned_alloc");
    free(aa);
    printf("aligned: ok\n");

    /* mmap, madvise(MADV_DONTNEED) of a part: zeros there, the rest kept */
    size_t m = 64 * MIB;
    char *mp = mmap(NULL, m, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mp == MAP_FAILED) FAIL("mmap");
    check_zero(mp, m, "fresh mmap");
    fill(mp, m, 5);
    if (madvise(mp + 8 * MIB, 8 * MIB, MADV_DONTNEED)) FAIL("madvise");
    check(mp, 8 * MIB, 5, "before the MADV_DONTNEED range");
    check_zero(mp + 8 * MIB, 8 * MIB, "MADV_DONTNEED range");
    check_at(mp + 16 * MIB, 48 * MIB, 5, 16 * MIB, "after the MADV_DONTNEED range");
    printf("madvise: ok\n");

    /* munmap of the middle, then of the rest */
    fill(mp, m, 6);
    if (munmap(mp + 16 * MIB, 16 * MIB)) FAIL("munmap middle");
    check(mp, 16 * MIB, 6, "head after munmap of the middle");
    check_at(mp + 32 * MIB, 32 * MIB, 6, 32 * MIB, "tail after munmap of the middle");
    if (munmap(mp, 16 * MIB) || munmap(mp + 32 * MIB, 32 * MIB)) FAIL("munmap rest");
    printf("munmap: ok\n");

    /* mremap: grow (kept), shrink */
    char *r = mmap(NULL, 16 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(r, 16 * MIB, 7);
    char *guard = mmap(NULL, 4 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r = mremap(r, 16 * MIB, 80 * MIB, MREMAP_MAYMOVE);
    if (r == MAP_FAILED) FAIL("mremap grow");
    check(r, 16 * MIB, 7, "mremap grown");
    check_zero(r + 16 * MIB, 64 * MIB, "mremap new part");
    fill(r, 80 * MIB, 11);
    check(r, 80 * MIB, 11, "mremap grown, rewritten");
    r = mremap(r, 80 * MIB, 8 * MIB, 0);
    if (r == MAP_FAILED) FAIL("mremap shrink");
    check(r, 8 * MIB, 11, "mremap shrunk");
    munmap(r, 8 * MIB);
    munmap(guard, 4 * MIB);
    printf("mremap: ok\n");

    /* MAP_FIXED fresh anonymous memory over a mapping we hold: zeros */
    char *f = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(f, 8 * MIB, 8);
    if (mmap(f + MIB, 2 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != f + MIB) FAIL("MAP_FIXED");
    check(f, MIB, 8, "before MAP_FIXED");
    check_at(f + 3 * MIB, 5 * MIB, 8, 3 * MIB, "after MAP_FIXED");
    check_zero(f + MIB, 2 * MIB, "MAP_FIXED range");
    munmap(f, 8 * MIB);
    printf("map_fixed: ok\n");

    /* system calls on far memory: write(2) from it, read(2) into it (kernel faults) */
    size_t io = 48 * MIB;
    char *src = malloc(io), *dst = malloc(io);
    fill(src, io, 9);
    char path[] = "/tmp/krak-run-io-XXXXXX";
    int fd = mkstemp(path);
    unlink(path);
    for (size_t done = 0; done < io;) { ssize_t w = write(fd, src + done, io - done); if (w <= 0) FAIL("write(2) from far memory"); done += w; }
    free(src);
    lseek(fd, 0, SEEK_SET);
    for (size_t done = 0; done < io;) { ssize_t got = read(fd, dst + done, io - done); if (got <= 0) FAIL("read(2) into far memory"); done += got; }
    close(fd);
    check(dst, io, 9, "read(2) into far memory");
    free(dst);
    printf("syscalls: ok\n");

    /* threads faulting at once */
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, thread_main, (void *)(100 + i));
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("threads: ok\n");

    /* fork: a child touching far memory crashes (never sees wrong bytes); its own new
     * large allocations work; fork + exec works */
    char *keep = malloc(8 * MIB);
    fill(keep, 8 * MIB, 10);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { volatile char c = keep[12345]; (void)c; _exit(0); }
    int status;
    waitpid(pid, &status, 0);
    if (getenv("KRAK_RUN_LOCAL_BYTES")) {
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSEGV) FAIL("fork child touching far memory: status %#x, not SIGSEGV", status);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        FAIL("fork child (plain run): status %#x", status);
    }
    pid = fork();
    if (pid == 0) {
        char *own = malloc(16 * MIB);
        memset(own, 7, 16 * MIB);
        for (size_t i = 0; i < 16 * MIB; i++) if (own[i] != 7) _exit(3);
        free(own);
        free(keep); /* the parent's far memory: nothing to do in the child */
        _exit(0);
    }
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) FAIL("fork child with its own memory: status %#x", status);
    char *argv[] = {"sh", "-c", "exit 3", NULL};
    extern char **environ;
    if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ)) FAIL("posix_spawn");
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) FAIL("posix_spawn child: status %#x", status);
    check(keep, 8 * MIB, 10, "parent memory after fork");
    free(keep);
    printf("fork: ok\n");
    return 0;
}
