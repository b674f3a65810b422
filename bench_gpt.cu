// GPU throughput: `./bench_gptcu [-c CONFIG] [--set key=value ...] [--batch B] [--steps N]
// [--peak-tflops X]`. Without -c: GPT-2 124M shapes (12 layers, width 768, 12 heads, context
// 1024, vocabulary 50257) on random tokens (no data needed). Without --batch: the largest
// batch that fits in GPU memory, trying 64, 48, 32, ... 1. Prints ms per step split into
// forward, backward and optimizer, tokens/s and MFU. `make bench-cuda` runs it in the fp32
// and the bf16 build.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_common.cuh"
#include "model/cuda_backend.h"
#include "runtime/common.h"
#include "runtime/median.h"
#include "runtime/rng.h"
#include "runtime/run_config.h"

static const char *GPT2_124M =
    "{\"model\": {\"arch\": \"gpt2\", \"n_layer\": 12, \"n_head\": 12, \"n_embd\": 768, \"block_size\": 1024,"
    " \"vocab_size\": 50257},"
    " \"data\": {\"train\": \"unused\"}, \"train\": {\"batch_size\": 1, \"steps\": 1000}, \"schedule\": {\"lr\": 6e-4},"
    " \"optimizer\": {\"name\": \"adamw\", \"beta1\": 0.9, \"beta2\": 0.95, \"weight_decay\": 0.1}}";

// Dense peak TFLOPS: bf16 tensor cores, and plain fp32 (what the fp32 build uses: TF32 is
// off). First match of the device name wins.
typedef struct {
    const char *name;
    double bf16, fp32;
} Peak;
static const Peak peaks[] = {
    {"H100 PCIe", 756.5, 51.2}, {"H100 NVL", 835.5, 59.8}, {"GH200", 989.4, 66.9}, {"H200", 989.4, 66.9},
    {"H100", 989.4, 66.9},      {"A100", 312.0, 19.5},
};

int main(int argc, char **argv) {
    const char *config = NULL, *sets[64];
    int n_sets = 0, steps = 10, batch = 0;
    double peak_override = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) config = argv[++i];
        else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc && n_sets < 64) sets[n_sets++] = argv[++i];
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--peak-tflops") == 0 && i + 1 < argc) peak_override = atof(argv[++i]);
        else fatal("usage: bench_gptcu [-c CONFIG] [--set key=value ...] [--batch B] [--steps N] [--peak-tflops X]");
    }
    if (steps < 1) fatal("--steps must be positive");
    RunConfig rc;
    JsonConfig *json = config ? json_config_load(config, sets, n_sets)
                              : json_config_from_tree(cJSON_Parse(GPT2_124M), "bench_gptcu's GPT-2 124M", sets, n_sets);
    run_config_read(&rc, json);
    const int T = rc.train.seq_len;

    // The largest batch that fits, unless one is given.
    const int candidates[] = {64, 48, 32, 24, 16, 12, 8, 6, 4, 2, 1};
    Backend *b = NULL;
    for (size_t k = 0; k < sizeof candidates / sizeof candidates[0] && !b; k++) {
        rc.train.batch_size = batch ? batch : candidates[k];
        b = batch ? cuda_backend_create(&rc) : cuda_backend_try_create(&rc);
    }
    if (!b) fatal("not even batch 1 x %d fits in this GPU's memory", T);
    const int B = rc.train.batch_size, N = B * T, V = rc.model.vocab_size;

    int *inputs = (int *)xmalloc((size_t)N * sizeof(int)), *targets = (int *)xmalloc((size_t)N * sizeof(int));
    Rng r;
    rng_seed(&r, 1);
    for (int i = 0; i < N; i++) {
        inputs[i] = (int)rng_below(&r, (uint64_t)V);
        targets[i] = (int)rng_below(&r, (uint64_t)V);
    }
    double *fwd = (double *)xmalloc((size_t)steps * sizeof(double)), *fb = (double *)xmalloc((size_t)steps * sizeof(double));
    double *opt = (double *)xmalloc((size_t)steps * sizeof(double));
    const int warmup = 3;
    for (int s = -warmup; s < steps; s++) {
        // Every call below ends with the host waiting for the GPU (losses, the norm), so the
        // wall clock between them is GPU time plus launch overhead.
        const double t0 = wall_time();
        b->eval_micro(b, inputs, targets, B, T);
        const double t1 = wall_time();
        b->zero_grad(b);
        b->train_micro(b, inputs, targets, B, T, 1.0f, &r);
        const double t2 = wall_time();
        b->sync_grads(b);
        b->grad_sq_norm(b);
        const StepInfo info = {s + warmup + 1, rc.train.steps, rc.schedule.lr, 1.0f, (double)N};
        b->optimizer_step(b, &info, NULL);
        CHECK_CUDA(cudaDeviceSynchronize());
        const double t3 = wall_time();
        if (s >= 0) {
            fwd[s] = t1 - t0;
            fb[s] = t2 - t1;
            opt[s] = t3 - t2;
        }
    }
    const double f = median(fwd, steps), fbm = median(fb, steps), o = median(opt, steps), step = fbm + o;
    // llm.c's estimate, so that the numbers compare with llm.c's: 6 FLOPs per parameter per
    // token (forward and backward), plus 6 L C T for causal attention.
    const double flops = (6.0 * (double)b->layout->num_params + 6.0 * rc.model.n_layer * rc.model.n_embd * T) * N;
    int dev = 0;
    cudaDeviceProp p;
    CHECK_CUDA(cudaGetDevice(&dev));
    CHECK_CUDA(cudaGetDeviceProperties(&p, dev));
    double peak = peak_override;
    for (size_t k = 0; k < sizeof peaks / sizeof peaks[0] && peak == 0; k++)
        if (strstr(p.name, peaks[k].name)) peak = strcmp(cuda_backend_precision(), "bf16") == 0 ? peaks[k].bf16 : peaks[k].fp32;
    size_t free_bytes = 0, total_bytes = 0;
    CHECK_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));

    printf("bench_gptcu, %s build, on %s: %s, %d layers, width %d, vocab %d, batch %d x %d, %zu params\n",
           cuda_backend_precision(), p.name, arch_name(rc.model.arch), rc.model.n_layer, rc.model.n_embd, V, B, T,
           b->layout->num_params);
    printf("  forward      %8.2f ms\n", f * 1e3);
    printf("  backward     %8.2f ms   (forward+backward %.2f ms minus forward)\n", (fbm - f) * 1e3, fbm * 1e3);
    printf("  optimizer    %8.2f ms   (%s, with the gradient norm)\n", o * 1e3, b->opt->groups[0].def->name);
    printf("  step         %8.2f ms   %.0f tokens/s   %.1f TFLOP/s", step * 1e3, N / step, flops / step * 1e-12);
    if (peak > 0) printf("   MFU %.1f%% of %.1f TFLOP/s (%s dense peak)\n", 100.0 * flops / step * 1e-12 / peak, peak, cuda_backend_precision());
    else printf("   MFU n/a (unknown GPU: give --peak-tflops)\n");
    printf("  GPU memory in use %.1f of %.1f GiB; median of %d steps after %d warm-up\n",
           (double)(total_bytes - free_bytes) / (1 << 30), (double)total_bytes / (1 << 30), steps, warmup);
    cuda_backend_free(b);
    run_config_free(&rc);
    free(inputs);
    free(targets);
    free(fwd);
    free(fb);
    free(opt);
    return 0;
}
