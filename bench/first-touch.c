/*
 * Cost of touching fresh memory: fills a new 100 MiB anonymous mapping twice (the first pass faults
 * every page in), with and without MADV_HUGEPAGE. bench/RESULTS.md quotes it: on the project's
 * virtual machine the first pass costs ~11 µs per 4 KiB page, which is why the ingest and restore
 * pipelines reuse their buffers instead of allocating per block.
 *
 *   cc -O2 -o /tmp/first-touch bench/first-touch.c && /tmp/first-touch
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(void) {
  const size_t n = 100u << 20, align = 2u << 20;
  for (int huge = 0; huge < 2; huge++) {
    char *p = mmap(NULL, n + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    char *a = (char *)(((unsigned long)p + align - 1) & ~(unsigned long)(align - 1));
    if (huge) madvise(a, n, MADV_HUGEPAGE);
    double t = now_ms();
    memset(a, 1, n);
    double first = now_ms() - t;
    t = now_ms();
    memset(a, 2, n);
    printf("MADV_HUGEPAGE=%d: first fill %.1f ms, second %.1f ms per 100 MiB\n", huge, first, now_ms() - t);
    munmap(p, n + align);
  }
  return 0;
}
