/*
 * mapwriter FILE PAGES: writes FILE continuously through a MAP_SHARED
 * mapping, so that its content at any instant is a function of one number.
 *
 * Page 0's first 8 bytes count the page writes done so far (h). Write t
 * (t = 0, 1, ...) fills page 1 + t % (PAGES - 1) with t / (PAGES - 1) + 1 in
 * every 8-byte word, then sets h = t + 1. So after h writes, page j holds
 * the number of times it was written, and only the page being written when
 * the process stopped may be torn (a prefix of words one ahead). Writes to
 * already-dirty pages change no timestamp: a stat comparison cannot see them.
 * Creates FILE.ready once the mapping is set up.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: mapwriter FILE PAGES\n");
        return 2;
    }
    long pages = atol(argv[2]);
    if (pages < 2) {
        fprintf(stderr, "mapwriter: PAGES must be >= 2\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, pages * PAGE) != 0) {
        perror("mapwriter: open");
        return 1;
    }
    unsigned char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mapwriter: mmap");
        return 1;
    }
    close(fd);
    char ready[4096];
    snprintf(ready, sizeof ready, "%s.ready", argv[1]);
    int r = open(ready, O_WRONLY | O_CREAT, 0644);
    if (r >= 0) close(r);

    volatile uint64_t *h = (volatile uint64_t *)p;
    for (uint64_t t = 0;; t++) {
        uint64_t page = 1 + t % (uint64_t)(pages - 1);
        uint64_t gen = t / (uint64_t)(pages - 1) + 1;
        volatile uint64_t *w = (volatile uint64_t *)(p + page * PAGE);
        for (int k = 0; k < PAGE / 8; k++) w[k] = gen;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        *h = t + 1;
        /* Leave the CPU now and then: the committer shares it. */
        if (t % 64 == 0) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
}
