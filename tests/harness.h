// A tiny test harness. Each test file defines tests with TEST(name) { ... }; they register
// themselves at load time, so adding a file to tests/ is all it takes. test_gpt.c runs
// them and ends with the line "N passed, M failed".
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*TestFn)(void);
void test_register(const char *name, TestFn fn, const char *file);

#define TEST(name)                                                                          \
    static void name(void);                                                                 \
    __attribute__((constructor)) static void register_##name(void) { test_register(#name, name, __FILE__); } \
    static void name(void)

// Records a failure for the running test and prints where and why; the test goes on.
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) test_fail(__FILE__, __LINE__, "check failed: %s", #cond); \
    } while (0)

#define CHECKF(cond, ...)                                       \
    do {                                                        \
        if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

// |a - b| <= tol, with NaN always failing.
#define CHECK_NEAR(a, b, tol)                                                                       \
    do {                                                                                            \
        double a_ = (double)(a), b_ = (double)(b);                                                  \
        if (!(fabs(a_ - b_) <= (tol)))                                                              \
            test_fail(__FILE__, __LINE__, "%s = %.9g vs %s = %.9g (tol %g)", #a, a_, #b, b_, (double)(tol)); \
    } while (0)

// ||x - y|| / max(||y||, tiny) over n floats; NaN anywhere gives +inf.
double rel_error(const float *x, const float *y, size_t n);
double rel_error_d(const double *x, const double *y, size_t n);

#define CHECK_REL(x, y, n, tol)                                                                        \
    do {                                                                                               \
        double e_ = rel_error((x), (y), (n));                                                          \
        if (!(e_ <= (tol))) test_fail(__FILE__, __LINE__, "relative error %s vs %s = %.3g > %g", #x, #y, e_, (double)(tol)); \
    } while (0)

// Runs fn(arg) in a child process and checks that it exits non-zero with `expected`
// somewhere in its stderr. This is how tests assert on fatal() errors.
void expect_fatal(void (*fn)(void *), void *arg, const char *expected, const char *file, int line);
#define EXPECT_FATAL(fn, arg, expected) expect_fatal((fn), (arg), (expected), __FILE__, __LINE__)

// A fresh temporary directory for this test process, removed at exit.
const char *test_tmpdir(void);
// Path of a file inside test_tmpdir(); the result lives until the next call with the same slot.
const char *tmp_path(const char *name);
// The tinyshakespeare corpus: $TINYSHAKESPEARE, else ../shared/data/tinyshakespeare.txt.
const char *tinyshakespeare_path(void);

// Fill with uniform values in [lo, hi) from a fixed seed; tests never run on zeros.
void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
void fill_normal(float *x, size_t n, uint64_t seed, float std);
