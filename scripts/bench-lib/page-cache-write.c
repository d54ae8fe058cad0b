/*
 * page-cache-write FILE BS ITERS: what it costs to put BS bytes into page-cache pages of
 * FILE, per operation, by five means (docs/performance.md, "What limits the write goals";
 * trace scripts/bench-results/iops-cpu-profile-2026-12-05.txt). A measurement aid, not
 * part of the product: build with `cc -O2 -o page-cache-write page-cache-write.c`.
 *
 * FILE is created (1 GiB, sparse) and its first 128 MiB written once; then, 3 rounds of
 * ITERS operations cycling through those 128 MiB, each reported in microseconds:
 *   pwrite(dirty)          pwrite(2) over pages that are already dirty
 *   pvw(dirty)             process_vm_writev(2) to self into a MAP_SHARED mapping of FILE
 *   memcpy(dirty)          a user-space memcpy into that mapping
 *   copy_to_user-into-map  process_vm_readv(2) with the mapping as the local buffer: the
 *                          kernel's copy_to_user into it (what pread(2) into it would do)
 *   ... (after fdatasync)  the same right after fdatasync(2): the pages are clean and
 *                          write-protected again, as after a FLUSH
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define WORKING_SET ((size_t)128 << 20)
#define FILE_SIZE ((off_t)1 << 30)

enum method { PWRITE, PVW, MEMCPY, CTU };
static const char *const NAMES[] = {"pwrite", "pvw", "memcpy", "copy_to_user-into-map"};

static int fd;
static char *buf, *map;
static size_t bs;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* One operation of `m` at offset `o`; 0 on success. */
static int one(enum method m, size_t o) {
    struct iovec local, remote;
    switch (m) {
    case PWRITE:
        return pwrite(fd, buf, bs, (off_t)o) != (ssize_t)bs;
    case PVW: /* the kernel pins the mapping's pages (GUP) and copies into them */
        local = (struct iovec){buf, bs};
        remote = (struct iovec){map + o, bs};
        return process_vm_writev(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)bs;
    case MEMCPY:
        memcpy(map + o, buf, bs);
        return 0;
    case CTU: /* the mapping is the local buffer: copy_to_user into it, as pread(2) */
        local = (struct iovec){map + o, bs};
        remote = (struct iovec){buf, bs};
        return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)bs;
    }
    return 1;
}

/* Microseconds per operation of `iters` operations of `m` through the working set;
 * after an fdatasync(2) first when `synced`. Exits on a failed operation. */
static double timed(enum method m, int iters, int synced) {
    if (synced && fdatasync(fd)) {
        perror("fdatasync");
        exit(1);
    }
    double t0 = now();
    size_t o = 0;
    for (int i = 0; i < iters; i++) {
        if (one(m, o)) {
            perror(NAMES[m]);
            exit(1);
        }
        o = (o + bs) % WORKING_SET;
    }
    return (now() - t0) / iters * 1e6;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE BS ITERS\n", argv[0]);
        return 2;
    }
    bs = strtoul(argv[2], NULL, 10);
    int iters = atoi(argv[3]);
    if (bs == 0 || bs > WORKING_SET || WORKING_SET % bs || iters <= 0) {
        fprintf(stderr, "BS must divide 128 MiB and ITERS be positive\n");
        return 2;
    }
    fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, FILE_SIZE)) {
        perror(argv[1]);
        return 1;
    }
    buf = aligned_alloc(4096, bs);
    if (!buf) {
        perror("aligned_alloc");
        return 1;
    }
    memset(buf, 0x5a, bs);
    /* The working set written once: allocated and dirty. */
    for (size_t o = 0; o < WORKING_SET; o += bs)
        if (one(PWRITE, o)) {
            perror("prefill");
            return 1;
        }
    map = mmap(NULL, FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (int round = 0; round < 3; round++) {
        double pw = timed(PWRITE, iters, 0), pvw = timed(PVW, iters, 0);
        double mc = timed(MEMCPY, iters, 0), ctu = timed(CTU, iters, 0);
        double pvw_s = timed(PVW, iters, 1), ctu_s = timed(CTU, iters, 1);
        double pw_s = timed(PWRITE, iters, 1);
        printf("bs=%zu iters=%d round %d: us/op pwrite(dirty) %.1f  pvw(dirty) %.1f  "
               "memcpy(dirty) %.1f  copy_to_user-into-map(dirty) %.1f  pvw(after fdatasync) %.1f  "
               "copy_to_user-into-map(after fdatasync) %.1f  pwrite(after fdatasync) %.1f\n",
               bs, iters, round, pw, pvw, mc, ctu, pvw_s, ctu_s, pw_s);
        fflush(stdout);
    }
    return 0;
}
