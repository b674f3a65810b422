// The median of a few timings: what the benchmarks report, robust to a stray slow step.
#pragma once
#include <stdlib.h>

static inline int median_cmp_double_(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Sorts v in place.
static inline double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, median_cmp_double_);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
