/*
 * Stall probe, run inside a container by the pause benchmark.
 *
 *   probe LOG_PATH [THRESHOLD_US=200] [DURATION_S=0 (forever)]
 *
 * Spins reading CLOCK_MONOTONIC. Whenever two consecutive readings are more
 * than THRESHOLD_US apart, the process was not running in between (frozen,
 * preempted, ...): it appends "<start_ns> <gap_ns>\n" to LOG_PATH with one
 * unbuffered write. CLOCK_MONOTONIC is shared with the host (no time
 * namespace), so a benchmark on the host can pick the largest gap inside an
 * interval it measured itself. On start it writes "# start <ns>\n".
 *
 * Build: gcc -O2 -static -o probe probe.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ __volatile__("pause");
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int write_line(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s LOG_PATH [THRESHOLD_US] [DURATION_S]\n", argv[0]);
    return 2;
  }
  uint64_t threshold_ns = 200000;
  if (argc >= 3) threshold_ns = strtoull(argv[2], NULL, 10) * 1000ull;
  uint64_t duration_ns = 0;
  if (argc >= 4) duration_ns = strtoull(argv[3], NULL, 10) * 1000000000ull;

  int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    fprintf(stderr, "probe: open %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  char line[96];
  uint64_t start = now_ns();
  int len = snprintf(line, sizeof line, "# start %llu\n", (unsigned long long)start);
  if (write_line(fd, line, (size_t)len) < 0) return 1;

  uint64_t prev = start;
  unsigned spin = 0;
  for (;;) {
    uint64_t t = now_ns();
    uint64_t gap = t - prev;
    if (gap > threshold_ns) {
      len = snprintf(line, sizeof line, "%llu %llu\n", (unsigned long long)prev,
                     (unsigned long long)gap);
      if (write_line(fd, line, (size_t)len) < 0) return 1;
      /* The write itself took time: do not count it as a stall. */
      t = now_ns();
    }
    prev = t;
    cpu_relax();
    if (duration_ns && (++spin & 0xfff) == 0 && t - start > duration_ns) break;
  }
  close(fd);
  return 0;
}
