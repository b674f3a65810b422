// CPU test suite: every test in tests/*.c registers itself; this runs them.
// Usage: ./test_gpt [name-substring ...]
#include "runtime/blas_setup.h"

int test_main(int argc, char **argv);

int main(int argc, char **argv) {
    blas_pick_kernels(argc, argv);
    return test_main(argc, argv);
}
