// CPU test suite: every test in tests/*.c registers itself; this runs them.
// Usage: ./test_gpt [name-substring ...]
int test_main(int argc, char **argv);

int main(int argc, char **argv) { return test_main(argc, argv); }
