/* How runtimes and VMs use memory (QEMU, the JVM, V8, Go), each checked by contents: address
 * space reserved PROT_NONE (with an address hint) and committed later by mprotect or by
 * MAP_FIXED, uncommitted by MAP_FIXED PROT_NONE, guard pages inside blocks, read-only and
 * inaccessible pages evicted and brought back, executable code written and run (a JIT),
 * a file mapped MAP_FIXED over far memory and unmapped again, read(2) into committed
 * memory, and a 16 GiB reservation touched sparsely. Run under `krak run` with a budget well
 * below what it touches. Prints one line per check; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define PAGE 4096UL
#define FAIL(...) do { printf("FAIL: " __VA_ARGS__); printf("\n"); exit(1); } while (0)

static uint64_t word(uint64_t seed, size_t i) { uint64_t x = seed * 0x9E3779B97F4A7C15ULL + i; x ^= x >> 29; return x * 0xBF58476D1CE4E5B9ULL; }

static void fill(void *p, size_t bytes, uint64_t seed) {
    uint64_t *w = p;
    for (size_t i = 0; i < bytes / 8; i++) w[i] = word(seed, i);
}

static void check(const void *p, size_t bytes, uint64_t seed, const char *what) {
    const uint64_t *w = p;
    for (size_t i = 0; i < bytes / 8; i++)
        if (w[i] != word(seed, i)) FAIL("%s: word %zu of %zu differs", what, i, bytes / 8);
}

static void check_zero(const void *p, size_t bytes, const char *what) {
    const unsigned char *c = p;
    for (size_t i = 0; i < bytes; i++)
        if (c[i]) FAIL("%s: byte %zu is %d, not 0", what, i, c[i]);
}

/* Touches 96 MiB of other memory, so that what was touched before is evicted. */
static void churn(void) {
    char *c = malloc(96 * MIB);
    if (!c) FAIL("churn malloc");
    fill(c, 96 * MIB, 99);
    free(c);
}

static sigjmp_buf jump;
static void on_segv(int sig) { (void)sig; siglongjmp(jump, 1); }

/* Whether touching p (a write, or a read) raises SIGSEGV. */
static int faults(volatile char *p, int write) {
    if (sigsetjmp(jump, 1) == 0) {
        if (write) *p = 1;
        else (void)*p;
        return 0;
    }
    return 1;
}

int main(void) {
    struct sigaction sa = { .sa_handler = on_segv };
    sigaction(SIGSEGV, &sa, NULL);

    /* A reservation with a hint (the JVM's heap, V8's cage), committed two ways. */
    size_t rn = 512 * MIB;
    char *r = mmap((void *)0x100000000000UL, rn, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) FAIL("reserve 512 MiB");
    if (!faults(r, 0)) FAIL("a reserved page is readable");
    if (mprotect(r, 64 * MIB, PROT_READ | PROT_WRITE)) FAIL("commit by mprotect");
    if (mmap(r + 64 * MIB, 64 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != r + 64 * MIB)
        FAIL("commit by MAP_FIXED");
    fill(r, 64 * MIB, 1);
    fill(r + 64 * MIB, 64 * MIB, 11);
    churn();
    check(r, 64 * MIB, 1, "committed reservation (mprotect)");
    check(r + 64 * MIB, 64 * MIB, 11, "committed reservation (MAP_FIXED)");
    if (!faults(r + 128 * MIB, 1)) FAIL("the uncommitted rest is writable");
    /* Uncommitted (MAP_FIXED PROT_NONE, as HotSpot does) and committed again: zeros. */
    if (mmap(r, 64 * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) != r)
        FAIL("uncommit");
    if (!faults(r + MIB, 0)) FAIL("an uncommitted page is readable");
    if (mprotect(r, 64 * MIB, PROT_READ | PROT_WRITE)) FAIL("recommit");
    check_zero(r, 64 * MIB, "recommitted");
    check(r + 64 * MIB, 64 * MIB, 11, "committed neighbour");
    printf("reserve: ok\n");

    /* read(2) into freshly committed memory (QEMU's preadv into guest RAM). */
    char path[] = "/tmp/krak-reserve-checks-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) FAIL("mkstemp");
    unlink(path);
    char *src = malloc(8 * MIB);
    fill(src, 8 * MIB, 2);
    if (write(fd, src, 8 * MIB) != (ssize_t)(8 * MIB)) FAIL("write file");
    if (mprotect(r + 128 * MIB, 8 * MIB, PROT_READ | PROT_WRITE)) FAIL("commit for read");
    if (pread(fd, r + 128 * MIB, 8 * MIB, 0) != (ssize_t)(8 * MIB)) FAIL("pread into committed memory");
    churn();
    check(r + 128 * MIB, 8 * MIB, 2, "pread into committed memory");
    printf("syscalls: ok\n");

    /* A guard page inside a block (QEMU's coroutine stacks, thread stacks). */
    char *g = malloc(8 * MIB);
    char *guard = (char *)(((uintptr_t)g + 4 * MIB) & ~(PAGE - 1));
    fill(g, 8 * MIB, 3);
    if (mprotect(guard, PAGE, PROT_NONE)) FAIL("guard page");
    if (!faults(guard, 0) || !faults(guard + PAGE - 1, 1)) FAIL("the guard page is accessible");
    churn();
    if (faults(guard - 1, 0) || faults(guard + PAGE, 0)) FAIL("the guard's neighbours fault");
    if (mprotect(guard, PAGE, PROT_READ | PROT_WRITE)) FAIL("unguard");
    check(g, 8 * MIB, 3, "a block with a guard page, the guard's contents kept");
    free(g);
    printf("guard: ok\n");

    /* Read-only and inaccessible pages are evicted and come back as they were. */
    char *ro = mmap(NULL, 64 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(ro, 64 * MIB, 4);
    if (mprotect(ro, 64 * MIB, PROT_READ)) FAIL("read-only");
    churn();
    check(ro, 64 * MIB, 4, "read-only after eviction");
    if (!faults(ro + 5 * MIB, 1)) FAIL("a read-only page is writable");
    if (mprotect(ro, 64 * MIB, PROT_NONE)) FAIL("inaccessible");
    churn();
    if (!faults(ro, 0)) FAIL("an inaccessible page is readable");
    if (mprotect(ro, 64 * MIB, PROT_READ | PROT_WRITE)) FAIL("accessible again");
    check(ro, 64 * MIB, 4, "inaccessible after eviction");
    munmap(ro, 64 * MIB);
    printf("protect: ok\n");

    /* A JIT: code written to executable far memory, evicted, run. */
    size_t jn = 4 * MIB, stride = 4096 + 64;
    unsigned char *j = mmap(NULL, jn, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (j == MAP_FAILED) FAIL("RWX mapping");
    for (size_t off = 0, k = 0; off + 6 <= jn; off += stride, k++) {
        uint32_t v = (uint32_t)word(5, k);
        j[off] = 0xB8; /* mov eax, imm32 */
        memcpy(j + off + 1, &v, 4);
        j[off + 5] = 0xC3; /* ret */
    }
    churn();
    for (size_t off = 0, k = 0; off + 6 <= jn; off += stride, k++) {
        uint32_t (*f)(void) = (uint32_t (*)(void))(void *)(j + off);
        if (f() != (uint32_t)word(5, k)) FAIL("JIT code at %zu returned the wrong value", off);
    }
    /* W^X: made read-execute, evicted again, run again. */
    if (mprotect(j, jn, PROT_READ | PROT_EXEC)) FAIL("RX");
    churn();
    uint32_t (*f0)(void) = (uint32_t (*)(void))(void *)j;
    if (f0() != (uint32_t)word(5, 0) || !faults((char *)j, 1)) FAIL("RX code");
    munmap(j, jn);
    printf("exec: ok\n");

    /* A file mapped MAP_FIXED over far memory, then far memory again. */
    char *m = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(m, 8 * MIB, 6);
    /* A MAP_FIXED the kernel refuses (a bad descriptor; writing through a read-only one)
     * leaves far memory as it was. */
    int rofd = open("/proc/self/exe", O_RDONLY);
    if (mmap(m + 2 * MIB, 2 * MIB, PROT_READ, MAP_PRIVATE | MAP_FIXED, 1000, 0) != MAP_FAILED || errno != EBADF)
        FAIL("MAP_FIXED of a bad descriptor");
    if (mmap(m + 2 * MIB, 2 * MIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, rofd, 0) != MAP_FAILED ||
        errno != EACCES)
        FAIL("MAP_FIXED shared writable of a read-only descriptor");
    close(rofd);
    churn();
    check(m, 8 * MIB, 6, "far memory after refused MAP_FIXED mappings");
    if (mmap(m + 2 * MIB, 2 * MIB, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) != m + 2 * MIB) FAIL("MAP_FIXED file");
    churn();
    check(m + 2 * MIB, 2 * MIB, 2, "the file over far memory");
    check(m, 2 * MIB, 6, "far memory before the file");
    uint64_t *after = (uint64_t *)(m + 4 * MIB);
    for (size_t i = 0; i < 4 * MIB / 8; i++)
        if (after[i] != word(6, 4 * MIB / 8 + i)) FAIL("far memory after the file: word %zu", i);
    if (munmap(m + 2 * MIB, 2 * MIB)) FAIL("munmap the file");
    if (mmap(m + 2 * MIB, 2 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != m + 2 * MIB)
        FAIL("far memory back over the file's place");
    check_zero(m + 2 * MIB, 2 * MIB, "far memory where the file was");
    fill(m + 2 * MIB, 2 * MIB, 7);
    churn();
    check(m + 2 * MIB, 2 * MIB, 7, "far memory where the file was, written");
    munmap(m, 8 * MIB);
    close(fd);
    free(src);
    printf("fixed_file: ok\n");

    /* 16 GiB reserved, a page touched every 64 MiB: costs about nothing. */
    size_t bn = 16UL << 30;
    char *big = mmap(NULL, bn, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (big == MAP_FAILED) FAIL("reserve 16 GiB");
    for (size_t off = 0; off < bn; off += 64 * MIB) {
        if (mprotect(big + off, PAGE, PROT_READ | PROT_WRITE)) FAIL("commit a page of 16 GiB");
        fill(big + off, PAGE, off);
    }
    churn();
    for (size_t off = 0; off < bn; off += 64 * MIB) check(big + off, PAGE, off, "sparse 16 GiB");
    munmap(big, bn);
    munmap(r, rn);
    printf("sparse: ok\n");
    return 0;
}
