# Build: `make` (train_gpt, prepare_data), `make test`, `make bench`.
# CUDA targets (train_gptcu, test_gptcu) and MPI are optional and detected below.

CC       ?= gcc
OPT      ?= -O3 -march=native
CFLAGS   += $(OPT) -std=gnu11 -fopenmp -fno-math-errno -fno-trapping-math -Wall -Wextra -Wno-unused-parameter -MMD -MP
LDLIBS   += -fopenmp -lm

# Dependencies through pkg-config where the distribution ships a .pc file.
# OpenBLAS's OpenMP build shares our OpenMP thread pool; its default pthread build runs
# its own threads, which fight ours for the cores (about 2x slower GEMMs on 2 cores).
# Debian installs the variants side by side: prefer the OpenMP one, pinned with an rpath
# because the default libopenblas.so.0 symlink may point at another variant.
OPENBLAS_OPENMP := /usr/lib/$(shell $(CC) -dumpmachine)/openblas-openmp
ifneq ($(wildcard $(OPENBLAS_OPENMP)/pkgconfig/openblas.pc),)
export PKG_CONFIG_PATH := $(OPENBLAS_OPENMP)/pkgconfig:$(PKG_CONFIG_PATH)
LDLIBS += -Wl,-rpath,$(OPENBLAS_OPENMP)
else
$(info note: OpenBLAS's OpenMP build (libopenblas-openmp-dev) not found; using the default one, which is slower here)
endif
PKGS      := libcjson openblas lapacke
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(strip $(PKG_LIBS)),)
$(error pkg-config could not find $(PKGS); install libcjson-dev libopenblas-dev liblapacke-dev (see README))
endif
CFLAGS += $(PKG_CFLAGS)
LDLIBS += $(PKG_LIBS)

# Open MPI for data parallelism (mpirun -np N ./train_gpt). Optional: without it (or
# with MPI=0) the build runs single-process.
MPI ?= 1
ifeq ($(MPI),1)
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null)
ifneq ($(strip $(MPI_LIBS)),)
CFLAGS += -DUSE_MPI $(MPI_CFLAGS)
LDLIBS += $(MPI_LIBS)
else
$(info note: Open MPI not found (libopenmpi-dev); building without MPI, single process only)
endif
endif

BUILD := build
LIB_SRC := $(filter-out data/prepare_data.c,$(wildcard runtime/*.c data/*.c model/*.c optim/*.c kernels/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

.PHONY: all test bench clean
all: train_gpt prepare_data

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libgpt.a: $(LIB_OBJ)
	ar rcs $@ $^

train_gpt: $(BUILD)/train_gpt.o $(BUILD)/libgpt.a
	$(CC) $^ $(LDLIBS) -o $@

prepare_data: $(BUILD)/data/prepare_data.o $(BUILD)/libgpt.a
	$(CC) $^ $(LDLIBS) -o $@

bench_gpt: $(BUILD)/bench_gpt.o $(BUILD)/libgpt.a
	$(CC) $^ $(LDLIBS) -o $@

# Throughput of the baby Shakespeare config and of llm.c's CPU shape.
bench: bench_gpt
	./bench_gpt -c configs/shakespeare_char.json
	./bench_gpt -c configs/bench/llmc_cpu.json --steps 5

# Tests register themselves through constructors, so link the objects, not an archive.
test_gpt: $(BUILD)/test_gpt.o $(TEST_OBJ) $(BUILD)/libgpt.a
	$(CC) $^ $(LDLIBS) -o $@

# The Python suite covers scripts/sweep and scripts/report (numpy/matplotlib from Debian).
PYTHON ?= /usr/bin/python3
test: test_gpt prepare_data train_gpt
	./test_gpt
	$(PYTHON) -m unittest discover -s tests -p 'test_*.py'

clean:
	rm -rf $(BUILD) train_gpt prepare_data test_gpt bench_gpt

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
