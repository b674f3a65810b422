#define _GNU_SOURCE
#include "harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#include "../runtime/common.h"
#include "../runtime/rng.h"

typedef struct {
    const char *name;
    const char *file;
    TestFn fn;
} TestCase;

static TestCase tests[512];
static int n_tests;
static int current_failures;

void test_register(const char *name, TestFn fn, const char *file) {
    if (n_tests == (int)(sizeof tests / sizeof tests[0])) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    tests[n_tests++] = (TestCase){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    current_failures++;
}

double rel_error(const float *x, const float *y, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        num += d * d;
        den += (double)y[i] * (double)y[i];
    }
    if (isnan(num) || isnan(den)) return INFINITY;
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

double rel_error_d(const double *x, const double *y, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - y[i];
        num += d * d;
        den += y[i] * y[i];
    }
    if (isnan(num) || isnan(den)) return INFINITY;
    return sqrt(num) / fmax(sqrt(den), 1e-300);
}

// A child must not run the parent's atexit handlers (they remove the test directory).
static NORETURN void child_exit(int status) { _exit(status); }

void expect_fatal(void (*fn)(void *), void *arg, const char *expected, const char *file, int line) {
    int fds[2];
    if (pipe(fds) != 0) {
        test_fail(file, line, "pipe failed");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1);
        set_fatal_hook(child_exit);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char buf[8192];
    size_t len = 0;
    ssize_t got;
    while ((got = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)got;
    buf[len] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) == 0)
        test_fail(file, line, "expected a fatal error containing \"%s\", but the call %s", expected,
                  WIFEXITED(status) ? "succeeded" : "crashed");
    else if (!strstr(buf, expected))
        test_fail(file, line, "expected error containing \"%s\", got: %s", expected, buf);
}

static char tmpdir[256];

static void remove_tmpdir(void) {
    if (tmpdir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    }
}

const char *test_tmpdir(void) {
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/test_gpt.XXXXXX");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

const char *tmp_path(const char *name) {
    static char slots[8][512];
    static int next;
    char *p = slots[next++ % 8];
    snprintf(p, 512, "%s/%s", test_tmpdir(), name);
    return p;
}

const char *tinyshakespeare_path(void) {
    const char *env = getenv("TINYSHAKESPEARE");
    return env && env[0] ? env : "../shared/data/tinyshakespeare.txt";
}

void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi) {
    Rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(&r);
}

void fill_normal(float *x, size_t n, uint64_t seed, float std) {
    Rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = std * rng_normal(&r);
}

// Runs every registered test whose name contains one of the arguments (all when none).
int test_main(int argc, char **argv) {
    int passed = 0, failed = 0;
    for (int i = 0; i < n_tests; i++) {
        int selected = argc <= 1;
        for (int a = 1; a < argc && !selected; a++) selected = strstr(tests[i].name, argv[a]) != NULL;
        if (!selected) continue;
        current_failures = 0;
        printf("%-48s ", tests[i].name);
        fflush(stdout);
        double t0 = (double)clock() / CLOCKS_PER_SEC;
        tests[i].fn();
        double dt = (double)clock() / CLOCKS_PER_SEC - t0;
        if (current_failures) {
            printf("FAIL (%d checks)\n", current_failures);
            failed++;
        } else {
            printf("ok  %.2fs cpu\n", dt);
            passed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
