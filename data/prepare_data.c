// prepare_data: text files -> token shards + vocab.json. See docs/data.md; the work is in data/prepare.c.
#include "prepare.h"

int main(int argc, char **argv) { return prepare_main(argc, argv); }
