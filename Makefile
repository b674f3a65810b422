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

# =======================================================================================
# CUDA: train_gptcu, test_gptcu, bench_gptcu (docs/cuda.md). All optional: nothing above
# needs nvcc, and without nvcc `make cuda` says so and succeeds.
#   make cuda              builds train_gptcu, test_gptcu, bench_gptcu (compile and link only: CI)
#   make test-cuda         builds and runs test_gptcu (needs a GPU)
#   make bench-cuda        GPT-2 124M throughput in fp32, then in bf16 (needs a GPU)
#   PRECISION=FP32|BF16    fp32 everywhere, TF32 off (default); or bf16 weights and activations
#                          with fp32 master weights, gradients and optimizer state
#   GPU_ARCH=90            the compute capability to build for (90: H100, H200)
#   CUDA_HOME, NVCC, NCCL_HOME   where the toolkit and NCCL are, when they are not found
# NCCL (with MPI, from the section above) gives multi-GPU training; without either,
# train_gptcu runs on one GPU.
# =======================================================================================
NVCC_IN_PATH := $(shell command -v nvcc 2>/dev/null)
CUDA_HOME ?= $(if $(NVCC_IN_PATH),$(patsubst %/bin/nvcc,%,$(realpath $(NVCC_IN_PATH))),/usr/local/cuda)
NVCC ?= $(if $(NVCC_IN_PATH),$(NVCC_IN_PATH),$(CUDA_HOME)/bin/nvcc)
HAVE_NVCC := $(if $(shell command -v $(NVCC) 2>/dev/null),1,)
GPU_ARCH ?= 90
PRECISION ?= FP32
CUDA_PRECISION := $(shell echo '$(PRECISION)' | tr A-Z a-z)
ifeq ($(CUDA_PRECISION),bf16)
CUDA_DEFS := -DENABLE_BF16
else ifneq ($(CUDA_PRECISION),fp32)
$(error PRECISION must be FP32 or BF16, not "$(PRECISION)")
endif

# Libraries, wherever the toolkit (or the distribution) put them: the first directory
# that holds lib$(1).so.
CUDA_LIB_DIRS := $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib $(CUDA_HOME)/targets/$(shell uname -m)-linux/lib \
                 /usr/lib/$(shell $(CC) -dumpmachine) /usr/local/cuda/lib64
cuda_find_lib = $(firstword $(foreach d,$(2),$(if $(wildcard $(d)/lib$(1).so),$(d))))
CUDA_LIBDIR := $(call cuda_find_lib,cublasLt,$(CUDA_LIB_DIRS))
CUSOLVER_DIR := $(call cuda_find_lib,cusolver,$(CUDA_LIB_DIRS))
NCCL_LIB_DIR := $(call cuda_find_lib,nccl,$(if $(NCCL_HOME),$(NCCL_HOME)/lib $(NCCL_HOME)/lib64) $(CUDA_LIB_DIRS) /usr/local/lib)
NCCL_INC_DIR := $(firstword $(foreach d,$(if $(NCCL_HOME),$(NCCL_HOME)/include) $(CUDA_HOME)/include /usr/include /usr/local/include,$(if $(wildcard $(d)/nccl.h),$(d))))

cuda_comma := ,
CUDA_LDLIBS := $(if $(CUDA_LIBDIR),-L$(CUDA_LIBDIR) -Wl$(cuda_comma)-rpath$(cuda_comma)$(CUDA_LIBDIR)) -lcublasLt -lcublas -lcudart -lstdc++
# cuSOLVER is for the matrix optimizers' GPU kernels (not written yet); --as-needed keeps
# it out of the binaries until something calls it.
ifneq ($(CUSOLVER_DIR),)
CUDA_LDLIBS += -Wl,--as-needed -L$(CUSOLVER_DIR) -lcusolver -Wl,--no-as-needed
endif
ifneq ($(and $(NCCL_LIB_DIR),$(NCCL_INC_DIR)),)
CUDA_DEFS += -DUSE_NCCL -I$(NCCL_INC_DIR)
CUDA_LDLIBS += -L$(NCCL_LIB_DIR) -Wl,-rpath,$(NCCL_LIB_DIR) -lnccl
else
CUDA_NOTE_NCCL := note: NCCL not found (libnccl-dev, or NCCL_HOME=...): train_gptcu runs on one GPU only
endif
ifeq ($(filter -DUSE_MPI,$(CFLAGS)),)
CUDA_NOTE_MPI := note: MPI not found (or MPI=0): train_gptcu runs on one GPU only
endif

# No --use_fast_math: the fp32 build must compute what the CPU computes. OPTIM_RULES_ONLY:
# C++ sees only the per-element rules of the optimizer headers (the rest is C).
NVCC_FLAGS := -O3 -std=c++17 -gencode arch=compute_$(GPU_ARCH),code=sm_$(GPU_ARCH) -lineinfo \
              -Xcompiler -Wall,-Wextra,-Wno-unused-parameter -DOPTIM_RULES_ONLY $(CUDA_DEFS) \
              $(filter -I% -D%,$(PKG_CFLAGS)) -MMD -MP
CUDA_BUILD := $(BUILD)/cuda-$(CUDA_PRECISION)
CUDA_OBJ := $(addprefix $(CUDA_BUILD)/,model/gpt_cuda.o model/cuda_optim.o model/cuda_backend.o runtime/dist_nccl.o)
CUDA_TEST_HOST_OBJ := $(BUILD)/tests/harness.o $(BUILD)/tests/test_util.o $(BUILD)/tests/cuda/cpu_ref.o
# The binaries have one name for both precisions; this stamp changes with PRECISION, so
# they are relinked when it does.
CUDA_STAMP := $(BUILD)/cuda-precision
ifneq ($(filter cuda train_gptcu test_gptcu bench_gptcu test-cuda,$(MAKECMDGOALS)),)
$(shell mkdir -p $(BUILD) && (echo $(CUDA_PRECISION) | cmp -s - $(CUDA_STAMP) || echo $(CUDA_PRECISION) > $(CUDA_STAMP)))
endif
$(CUDA_STAMP):
	@mkdir -p $(dir $@) && echo $(CUDA_PRECISION) > $@

.PHONY: cuda test-cuda bench-cuda clean-cuda
ifeq ($(HAVE_NVCC),1)
cuda: train_gptcu test_gptcu bench_gptcu
else
cuda:
	@echo "nvcc not found (put it on PATH, or set NVCC=... or CUDA_HOME=...): skipping the CUDA targets"
endif

$(CUDA_BUILD)/%.o: %.cu
	@$(if $(HAVE_NVCC),,echo "error: nvcc not found (put it on PATH, or set NVCC=... or CUDA_HOME=...)"; exit 1)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

define cuda_link
	@$(if $(CUDA_LIBDIR),,echo "error: cuBLASLt (libcublasLt.so) not found under $(CUDA_HOME) (set CUDA_HOME=...)"; exit 1)
	@$(if $(CUDA_NOTE_NCCL),echo "$(CUDA_NOTE_NCCL)")
	@$(if $(CUDA_NOTE_MPI),echo "$(CUDA_NOTE_MPI)")
	$(CXX) $(filter %.o %.a,$^) $(LDLIBS) $(CUDA_LDLIBS) -o $@
endef

train_gptcu: $(CUDA_BUILD)/train_gpt.o $(CUDA_OBJ) $(BUILD)/libgpt.a $(CUDA_STAMP)
	$(cuda_link)

bench_gptcu: $(CUDA_BUILD)/bench_gpt.o $(CUDA_OBJ) $(BUILD)/libgpt.a $(CUDA_STAMP)
	$(cuda_link)

# The CPU side of the comparisons (tests/cuda/cpu_ref.c) is built by gcc, as the CPU
# trainer is; only the harness and helpers of tests/, not the CPU tests themselves.
test_gptcu: $(CUDA_BUILD)/test_gpt.o $(CUDA_OBJ) $(CUDA_TEST_HOST_OBJ) $(BUILD)/libgpt.a $(CUDA_STAMP)
	$(cuda_link)

# test_gptcu runs ./train_gpt and ./train_gptcu for its command-line checks.
test-cuda: test_gptcu train_gptcu train_gpt
	./test_gptcu

bench-cuda:
	$(MAKE) --no-print-directory bench_gptcu PRECISION=FP32
	./bench_gptcu
	$(MAKE) --no-print-directory bench_gptcu PRECISION=BF16
	./bench_gptcu

clean: clean-cuda
clean-cuda:
	rm -rf $(BUILD)/cuda-fp32 $(BUILD)/cuda-bf16 $(CUDA_STAMP) train_gptcu test_gptcu bench_gptcu
