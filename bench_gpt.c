// Throughput benchmark: `./bench_gpt [-c CONFIG] [--set k=v ...] [--steps N]`.
// Times forward, backward and the optimizer step separately on random tokens (no data
// needed) and prints ms/step, tokens/s, achieved GFLOP/s and peak memory. Forward and
// backward are medians; the optimizer is a mean over the steps, because optimizers that
// refresh a preconditioner every k steps (Shampoo, SOAP) or run an extra backward for
// their curvature (Sophia) pay most of their cost on a few steps.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "model/cpu_backend.h"
#include "runtime/blas_setup.h"
#include "runtime/common.h"
#include "runtime/median.h"
#include "runtime/run_config.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// Matmul FLOPs of a forward pass per token: 2 x (weights touched by a token) plus attention.
static double forward_flops_per_token(const ModelConfig *c, int T) {
    const double C = c->n_embd, L = c->n_layer;
    const double per_layer = C * c->qkv_dim + C * C + C * c->fc_dim + c->hidden * C;
    const double attention = 2.0 * c->n_head * c->head_dim * (T + 1) / 2.0;  // QK^T and AV, causal average
    return 2.0 * (L * per_layer + C * c->vocab_size) + 2.0 * L * attention;
}

int main(int argc, char **argv) {
    blas_pick_kernels(argc, argv);
    const char *config = "configs/shakespeare_char.json";
    const char *sets[64];
    int n_sets = 0, steps = 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) config = argv[++i];
        else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc && n_sets < 64) sets[n_sets++] = argv[++i];
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
        else fatal("usage: bench_gpt [-c CONFIG] [--set key=value ...] [--steps N]");
    }
    if (steps < 1) fatal("--steps must be positive");
    RunConfig rc;
    run_config_read(&rc, json_config_load(config, sets, n_sets));
    Backend *b = cpu_backend_create(&rc);
    const int B = rc.train.batch_size, T = rc.train.seq_len, N = B * T, V = rc.model.vocab_size;
    int *inputs = (int *)xmalloc((size_t)N * sizeof(int)), *targets = (int *)xmalloc((size_t)N * sizeof(int));
    Rng r;
    rng_seed(&r, 1);
    for (int i = 0; i < N; i++) {
        inputs[i] = (int)rng_below(&r, (uint64_t)V);
        targets[i] = (int)rng_below(&r, (uint64_t)V);
    }
    double *fwd = (double *)xmalloc((size_t)steps * sizeof(double));
    double *fb = (double *)xmalloc((size_t)steps * sizeof(double));
    double *opt = (double *)xmalloc((size_t)steps * sizeof(double));
    double opt_total = 0, curvature_total = 0;
    const int warmup = 3;
    for (int s = -warmup; s < steps; s++) {
        double t0 = wall_time();
        b->eval_micro(b, inputs, targets, B, T);
        double t1 = wall_time();
        b->zero_grad(b);
        b->train_micro(b, inputs, targets, B, T, 1.0f, &r);
        b->sync_grads(b);
        double t2 = wall_time();
        const StepInfo info = {s + warmup + 1, rc.train.steps, rc.schedule.lr, 1.0f, (double)N};
        b->optimizer_step(b, &info, NULL);
        double t3 = wall_time();
        const int curvature_due = optim_needs_curvature(b->opt, info.step);
        if (curvature_due) {  // Sophia: a backward on sampled labels
            b->zero_grad(b);
            b->train_micro(b, inputs, NULL, B, T, 1.0f, &r);
            b->sync_grads(b);
            b->curvature_step(b, &info);
        }
        double t4 = wall_time();
        if (s >= 0) {
            fwd[s] = t1 - t0;
            fb[s] = t2 - t1;
            opt[s] = t3 - t2;
            opt_total += t3 - t2;
            if (curvature_due) curvature_total += t4 - t3;
        }
    }
    const double f = median(fwd, steps), fbm = median(fb, steps), o_median = median(opt, steps);
    const double o = opt_total / steps, curv = curvature_total / steps;
    const double step = fbm + o + curv;
    const double flops = 3.0 * forward_flops_per_token(&rc.model, T) * N;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("config %s: %s, %d layers, width %d, vocab %d, batch %d x %d, %zu params, %d threads\n", config,
           arch_name(rc.model.arch), rc.model.n_layer, rc.model.n_embd, V, B, T, b->layout->num_params, threads);
    printf("  forward      %8.2f ms\n", f * 1e3);
    printf("  backward     %8.2f ms   (forward+backward %.2f ms minus forward)\n", (fbm - f) * 1e3, fbm * 1e3);
    char groups[256] = "";
    for (int gi = 0; gi < b->opt->n_groups; gi++) {
        const char *name = b->opt->groups[gi].def->name;
        if (!strstr(groups, name)) snprintf(groups + strlen(groups), sizeof groups - strlen(groups), "%s%s", gi ? " + " : "", name);
    }
    printf("  optimizer    %8.2f ms   (%s; mean, median step %.2f ms)\n", o * 1e3, groups, o_median * 1e3);
    if (curv > 0) printf("  curvature    %8.2f ms   (mean: the sampled-label backward and h update, on its steps)\n", curv * 1e3);
    printf("  step         %8.2f ms   %.0f tokens/s   %.1f GFLOP/s   peak RSS %.0f MiB\n", step * 1e3, N / step,
           flops / fbm * 1e-9, ru.ru_maxrss / 1024.0);
    printf("  (%d steps after %d warm-up; optimizer share of a step %.1f%%)\n", steps, warmup, 100 * (o + curv) / step);
    cpu_backend_free(b);
    run_config_free(&rc);
    free(inputs);
    free(targets);
    free(fwd);
    free(fb);
    free(opt);
    return 0;
}
