#define _GNU_SOURCE
#include "trainer.h"

#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/loader.h"
#include "../data/tokenizer.h"
#include "../kernels/crossentropy.h"
#include "../optim/microstats.h"
#include "checkpoint.h"
#include "common.h"
#include "dist.h"
#include "fileio.h"
#include "runlog.h"

typedef struct {
    const RunConfig *rc;
    Backend *b;
    const TrainOptions *opts;
    int rank, world, B, T, accum;
    long steps;
    double tokens_per_step;
    DataLoader train, val;
    int has_val;
    Tokenizer tok;
    int has_tok;
    Rng rng_train, rng_sample;
    RunLog log;
    int *inputs, *targets;  // this step's micro-batches, kept for the curvature hook
    int *order, *role;      // the micro-batches of a statistics pass (optim/microstats.h)
    char *config_json;
} Trainer;

// A pass over this step's micro-batches through the backend's statistics (the bias
// corrections): in the order and with the roles the plan gives; returns the sum of losses.
static double stats_pass(Trainer *tr, int pass, const StepInfo *info, int sampled) {
    Backend *b = tr->b;
    const size_t micro = (size_t)tr->B * tr->T;
    const int n = microstats_schedule(b->stats_plan, pass, tr->order, tr->role);
    double loss_sum = 0;
    b->stats_begin(b, pass, info);
    for (int k = 0; k < n; k++)
        loss_sum += b->stats_micro(b, tr->inputs + tr->order[k] * micro, sampled ? NULL : tr->targets + tr->order[k] * micro,
                                   tr->B, tr->T, 1.0f / tr->accum, tr->role[k], &tr->rng_train);
    b->stats_end(b, pass, 1.0f / tr->accum);
    return loss_sum;
}

// vocab.json decodes samples: data.vocab, or the one prepare_data wrote beside the shards.
static void load_tokenizer(Trainer *tr) {
    char path[4096];
    if (tr->rc->data.vocab[0]) {
        snprintf(path, sizeof path, "%s", tr->rc->data.vocab);
    } else {
        char *copy = xstrdup(tr->train.shards[0].path);
        snprintf(path, sizeof path, "%s/vocab.json", dirname(copy));
        free(copy);
        if (!file_exists(path)) return;
    }
    tokenizer_load(&tr->tok, path);
    tr->has_tok = 1;
}

// Mean loss over eval.batches global batches of one optimizer step's tokens each, so
// every (world, grad_accum) split of the same global batch evaluates the same rows.
static float evaluate(Trainer *tr) {
    const int batches = tr->rc->eval.batches * tr->accum;
    loader_reset(&tr->val);
    double sum = 0;
    for (int i = 0; i < batches; i++) {
        loader_next(&tr->val, tr->inputs, tr->targets);
        sum += tr->b->eval_micro(tr->b, tr->inputs, tr->targets, tr->B, tr->T);
    }
    return (float)dist_mean(sum / batches);
}

static void sample_text(Trainer *tr, long step) {
    const SampleConfig *sc = &tr->rc->sample;
    const int V = tr->rc->model.vocab_size, ctx = tr->rc->model.block_size;
    const int n_max = sc->tokens + 256;
    int *tokens = (int *)xmalloc((size_t)n_max * sizeof(int));
    int n = 0;
    if (tr->has_tok) {
        int64_t np;
        uint32_t *ids = tokenizer_encode(&tr->tok, sc->prompt, strlen(sc->prompt), &np, "sample.prompt");
        for (int64_t i = 0; i < np && n < 256; i++) tokens[n++] = (int)ids[i];
        free(ids);
    }
    if (n == 0) tokens[n++] = 0;
    const int prompt_len = n;
    float *logits = xmalloc_floats((size_t)V), *probs = xmalloc_floats((size_t)V);
    for (int i = 0; i < sc->tokens; i++) {
        const int start = n > ctx ? n - ctx : 0;  // a sliding window over the context
        tr->b->next_logits(tr->b, tokens + start, n - start, logits);
        softmax_row(probs, logits, V, sc->temperature);
        float u = rng_uniform(&tr->rng_sample), acc = 0;
        int pick = V - 1;
        for (int j = 0; j < V; j++)
            if (u < (acc += probs[j])) {
                pick = j;
                break;
            }
        tokens[n++] = pick;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/samples.txt", tr->opts->out_dir);
    FILE *f = xfopen(path, "a");
    fprintf(f, "--- step %ld ---\n", step);
    printf("--- sample at step %ld ---\n", step);
    if (tr->has_tok) {
        char *text = tokenizer_decode_all(&tr->tok, tokens, n, NULL);
        printf("%s\n", text);
        fprintf(f, "%s\n", text);
        free(text);
    } else {
        for (int i = prompt_len; i < n; i++) {
            printf("%d ", tokens[i]);
            fprintf(f, "%d ", tokens[i]);
        }
        printf("\n");
        fprintf(f, "\n");
    }
    printf("---\n");
    fclose(f);
    free(tokens);
    free(logits);
    free(probs);
}

static void save_checkpoint(Trainer *tr, long step) {
    const ModelLayout *L = tr->b->layout;
    const Optimizer *opt = tr->b->opt;
    float *params = xmalloc_floats(L->num_params), *state = xmalloc_floats(opt->state_floats);
    tr->b->get_params(tr->b, params);
    tr->b->get_state(tr->b, state);
    if (tr->rank == 0) {
        TrainState ts = {step, loader_tell(&tr->train), tr->rng_train.state, tr->rng_sample.state};
        char path[4096];
        checkpoint_path(path, sizeof path, tr->opts->out_dir, step);
        checkpoint_save(path, tr->config_json, L, params, opt, state, &ts);
        checkpoint_prune(tr->opts->out_dir, tr->rc->checkpoint.keep);
    }
    free(params);
    free(state);
}

static long resume(Trainer *tr) {
    const ModelLayout *L = tr->b->layout;
    const Optimizer *opt = tr->b->opt;
    float *params = xmalloc_floats(L->num_params), *state = xmalloc_floats(opt->state_floats);
    TrainState ts;
    checkpoint_load(tr->opts->resume_from, L, params, opt, state, &ts);
    tr->b->set_params(tr->b, params);
    tr->b->set_state(tr->b, state);
    free(params);
    free(state);
    loader_seek(&tr->train, ts.train_pos);
    tr->rng_train.state = ts.rng_train;
    tr->rng_sample.state = ts.rng_sample;
    if (ts.step > tr->steps) fatal("%s: checkpoint is at step %ld, past train.steps %ld", tr->opts->resume_from, (long)ts.step, tr->steps);
    return (long)ts.step;
}

static void write_summary(const Trainer *tr, const TrainSummary *s) {
    char path[4096];
    snprintf(path, sizeof path, "%s/summary.json", tr->opts->out_dir);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "done");
    cJSON_AddNumberToObject(o, "steps", (double)s->steps);
    if (isnan(s->final_val_loss)) cJSON_AddNullToObject(o, "final_val_loss");
    else cJSON_AddNumberToObject(o, "final_val_loss", s->final_val_loss);
    if (isnan(s->best_val_loss)) cJSON_AddNullToObject(o, "best_val_loss");
    else cJSON_AddNumberToObject(o, "best_val_loss", s->best_val_loss);
    cJSON_AddNumberToObject(o, "final_train_loss", s->final_train_loss);
    cJSON_AddNumberToObject(o, "tokens_per_s", s->tokens_per_s);
    cJSON_AddNumberToObject(o, "optimizer_state_bytes", (double)tr->b->opt->state_floats * sizeof(float));
    if (tr->b->stats_plan) {
        const MicroStatsPlan *p = tr->b->stats_plan;
        cJSON_AddNumberToObject(o, "correction_buffer_bytes",
                                ((double)p->grad_buffers * p->num_params + (double)p->tensor_stats_floats) * sizeof(float));
    }
    cJSON_AddNumberToObject(o, "params", (double)tr->b->layout->num_params);
    cJSON_AddNumberToObject(o, "wall_s", s->wall_s);
    char *text = cJSON_Print(o);
    AtomicFile af = atomic_open(path);
    fprintf(af.f, "%s\n", text);
    atomic_commit(&af);
    free(text);
    cJSON_Delete(o);
}

static void print_header(const Trainer *tr, long start_step) {
    const ModelConfig *mc = &tr->rc->model;
    printf("model %s: %d layers, %d heads (%d kv), width %d, context %d, vocab %d (padded %d), %zu params\n",
           arch_name(mc->arch), mc->n_layer, mc->n_head, mc->n_kv_head, mc->n_embd, mc->block_size, mc->vocab_size,
           mc->padded_vocab_size, tr->b->layout->num_params);
    printf("backend %s, %d rank%s; batch %d x %d tokens x %d accum x %d ranks = %.0f tokens/step; %ld steps%s\n",
           tr->b->name, tr->world, tr->world > 1 ? "s" : "", tr->B, tr->T, tr->accum, tr->world, tr->tokens_per_step,
           tr->steps, start_step ? " (resumed)" : "");
    optim_print(tr->b->opt, stdout);
    if (tr->b->stats_plan) microstats_print(tr->b->stats_plan, stdout);
    const OptimDist *d = &tr->b->opt->dist;
    if (d->world > 1)
        printf("data parallel: %d ranks%s, optimizer state on this rank %.2f MiB\n", d->world,
               d->zero ? ", ZeRO-1 (element-wise state sharded)" : "", (double)d->local_floats * 4.0 / (1 << 20));
    printf("train data: %d shard%s, %ld micro-batches per epoch; run directory %s\n", tr->train.num_shards,
           tr->train.num_shards > 1 ? "s" : "", (long)loader_batches_per_epoch(&tr->train), tr->opts->out_dir);
    fflush(stdout);
}

// Scheduled optimizer values (e.g. AdamW's eps). A value every reporting group agrees on
// is logged under its bare name ("eps"), else once per group ("eps/<label>").
static void add_optimizer_scalars(const Trainer *tr, cJSON *rec, const StepInfo *base) {
    const Optimizer *opt = tr->b->opt;
    enum { MAX = 8 };
    const char *names[64][MAX];
    double values[64][MAX];
    int counts[64] = {0};
    const int n_groups = opt->n_groups < 64 ? opt->n_groups : 64;
    for (int gi = 0; gi < n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        const StepInfo s = optim_group_step_info(g, base);
        if (g->def->log_scalars) counts[gi] = g->def->log_scalars(g->hyper, &s, names[gi], values[gi], MAX);
    }
    for (int gi = 0; gi < n_groups; gi++) {
        for (int i = 0; i < counts[gi]; i++) {
            int agree = 1;
            for (int gj = 0; gj < n_groups && agree; gj++)
                for (int j = 0; j < counts[gj]; j++)
                    if (strcmp(names[gj][j], names[gi][i]) == 0 && values[gj][j] != values[gi][i]) agree = 0;
            char key[128];
            if (agree) snprintf(key, sizeof key, "%s", names[gi][i]);
            else snprintf(key, sizeof key, "%s/%s", names[gi][i], opt->groups[gi].label);
            if (!cJSON_HasObjectItem(rec, key)) cJSON_AddNumberToObject(rec, key, values[gi][i]);
        }
    }
}

void train_run(const RunConfig *rc, Backend *b, const TrainOptions *opts, TrainSummary *summary) {
    Trainer tr;
    memset(&tr, 0, sizeof tr);
    tr.rc = rc;
    tr.b = b;
    tr.opts = opts;
    tr.rank = dist_rank();
    tr.world = dist_world();
    tr.B = rc->train.batch_size;
    tr.T = rc->train.seq_len;
    tr.accum = rc->train.grad_accum;
    tr.steps = rc->train.steps;
    tr.tokens_per_step = (double)tr.B * tr.T * tr.accum * tr.world;
    loader_open(&tr.train, rc->data.train, tr.B, tr.T, tr.rank, tr.world, rc->model.vocab_size, rc->data.shuffle,
                (uint64_t)rc->train.seed, "data.train");
    loader_set_accum(&tr.train, tr.accum);
    tr.has_val = rc->data.val[0] != '\0';
    if (tr.has_val) {
        loader_open(&tr.val, rc->data.val, tr.B, tr.T, tr.rank, tr.world, rc->model.vocab_size, 0, 0, "data.val");
        loader_set_accum(&tr.val, tr.accum);
    }
    if (rc->sample.every) load_tokenizer(&tr);
    rng_seed(&tr.rng_train, (uint64_t)rc->train.seed);
    rng_seed(&tr.rng_sample, (uint64_t)rc->train.seed ^ 0x5A3B1E5ull);
    tr.inputs = (int *)xmalloc((size_t)tr.accum * tr.B * tr.T * sizeof(int));
    tr.targets = (int *)xmalloc((size_t)tr.accum * tr.B * tr.T * sizeof(int));
    tr.order = (int *)xmalloc((size_t)tr.accum * sizeof(int));
    tr.role = (int *)xmalloc((size_t)tr.accum * sizeof(int));
    if (microstats_required(b->opt) && !b->stats_plan)
        fatal("optimizer: a group sets a bias correction (correction), which needs per-micro-batch statistics that the "
              "%s backend does not compute; use the CPU trainer (./train_gpt) or correction \"none\"", b->name);
    const MicroStatsPlan *plan = b->stats_plan;
    tr.config_json = cJSON_Print(json_config_root(rc->json));

    const long start = opts->resume_from ? resume(&tr) : 0;
    if (tr.rank == 0) {
        make_dirs(opts->out_dir);
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", opts->out_dir);
        AtomicFile af = atomic_open(path);
        fprintf(af.f, "%s\n", tr.config_json);
        atomic_commit(&af);
        runlog_open(&tr.log, opts->out_dir, opts->resume_from ? start : -1);
        if (!opts->quiet) print_header(&tr, start);
    }

    const double t_begin = wall_time();
    double ema_step_s = 0, tokens_seen = 0, train_time = 0;
    float loss = NAN, val_loss = NAN, best_val = NAN;
    const int eval_every = rc->eval.every, log_every = rc->log.every;
    if (start == 0 && eval_every && tr.has_val) {
        val_loss = best_val = evaluate(&tr);
        if (tr.rank == 0) {
            cJSON *rec = cJSON_CreateObject();
            cJSON_AddNumberToObject(rec, "step", 0);
            cJSON_AddNumberToObject(rec, "val_loss", val_loss);
            runlog_write(&tr.log, rec);
            if (!opts->quiet) printf("step %*d/%ld | val %.4f\n", (int)snprintf(NULL, 0, "%ld", tr.steps), 0, tr.steps, val_loss);
        }
    }
    GroupDiagnostics *diag = rc->log.diagnostics ? (GroupDiagnostics *)xcalloc((size_t)b->opt->n_groups, sizeof *diag) : NULL;
    const size_t micro = (size_t)tr.B * tr.T;
    for (long step = start + 1; step <= tr.steps; step++) {
        const double t0 = wall_time();
        b->zero_grad(b);
        double loss_sum = 0;
        if (plan && plan->main) {
            // Bias corrections: every micro-batch is read first, then run in the plan's order.
            for (int a = 0; a < tr.accum; a++) loader_next(&tr.train, tr.inputs + a * micro, tr.targets + a * micro);
            const StepInfo at = {step, tr.steps, 0.0f, 0.0f, tr.tokens_per_step};
            loss_sum = stats_pass(&tr, MS_PASS_MAIN, &at, 0);
        } else {
            for (int a = 0; a < tr.accum; a++) {
                loader_next(&tr.train, tr.inputs + a * micro, tr.targets + a * micro);
                loss_sum += b->train_micro(b, tr.inputs + a * micro, tr.targets + a * micro, tr.B, tr.T, 1.0f / tr.accum, &tr.rng_train);
            }
        }
        b->sync_grads(b);
        loss = (float)dist_mean(loss_sum / tr.accum);
        const double norm = sqrt(b->grad_sq_norm(b));
        if (!isfinite(loss) || !isfinite(norm))
            fatal("step %ld: the training loss is %g and the gradient norm %g; stopping (lower schedule.lr, or check the "
                  "data)", step, loss, norm);
        if (rc->train.grad_clip > 0 && norm > rc->train.grad_clip) b->scale_grads(b, (float)(rc->train.grad_clip / norm));

        const float lr_scale = lr_scale_at(&rc->schedule, step, tr.steps);
        const StepInfo base = {step, tr.steps, rc->schedule.lr * lr_scale, lr_scale, tr.tokens_per_step};
        const int log_due = log_every && (step % log_every == 0 || step == start + 1 || step == tr.steps);
        // Leave-one-out: a second pass over the micro-batches, now that the clip is known.
        if (plan && plan->loo) stats_pass(&tr, MS_PASS_LOO, &base, 0);
        const double t_opt = wall_time();
        b->optimizer_step(b, &base, log_due ? diag : NULL);
        const double opt_s = wall_time() - t_opt;
        if (optim_needs_curvature(b->opt, step)) {
            // Gauss-Newton-Bartlett: gradients of the loss on labels sampled from the model.
            b->zero_grad(b);
            if (plan && plan->curvature)
                stats_pass(&tr, MS_PASS_CURVATURE, &base, 1);
            else
                for (int a = 0; a < tr.accum; a++)
                    b->train_micro(b, tr.inputs + a * micro, NULL, tr.B, tr.T, 1.0f / tr.accum, &tr.rng_train);
            b->sync_grads(b);
            b->curvature_step(b, &base);
        }
        const double dt = wall_time() - t0;
        train_time += dt;
        tokens_seen += tr.tokens_per_step;
        ema_step_s = step == start + 1 ? dt : 0.9 * ema_step_s + 0.1 * dt;

        const int do_eval = eval_every && tr.has_val && (step % eval_every == 0 || step == tr.steps);
        if (do_eval) {
            val_loss = evaluate(&tr);
            if (isnan(best_val) || val_loss < best_val) best_val = val_loss;
        }
        const int do_log = log_due || do_eval;
        if (tr.rank == 0 && do_log) {
            cJSON *rec = cJSON_CreateObject();
            cJSON_AddNumberToObject(rec, "step", (double)step);
            cJSON_AddNumberToObject(rec, "loss", loss);
            cJSON_AddNumberToObject(rec, "lr", base.lr);
            cJSON_AddNumberToObject(rec, "grad_norm", norm);
            cJSON_AddNumberToObject(rec, "tokens_per_s", tr.tokens_per_step / dt);
            cJSON_AddNumberToObject(rec, "ms", dt * 1e3);
            cJSON_AddNumberToObject(rec, "opt_ms", opt_s * 1e3);
            if (do_eval) cJSON_AddNumberToObject(rec, "val_loss", val_loss);
            add_optimizer_scalars(&tr, rec, &base);
            for (int gi = 0; diag && log_due && gi < b->opt->n_groups; gi++) {
                char key[96];
                snprintf(key, sizeof key, "update_rms/%s", b->opt->groups[gi].label);
                cJSON_AddNumberToObject(rec, key, diag[gi].update_rms);
                snprintf(key, sizeof key, "grad_rms/%s", b->opt->groups[gi].label);
                cJSON_AddNumberToObject(rec, key, diag[gi].grad_rms);
            }
            runlog_write(&tr.log, rec);
            if (!opts->quiet) {
                char eta[32];
                format_duration(eta, sizeof eta, ema_step_s * (double)(tr.steps - step));
                printf("step %*ld/%ld | loss %.4f | lr %.3e | norm %.4f | %.1f ms (opt %.1f) | %.0f tok/s | eta %s",
                       (int)snprintf(NULL, 0, "%ld", tr.steps), step, tr.steps, loss, base.lr, norm, dt * 1e3,
                       opt_s * 1e3, tr.tokens_per_step / dt, eta);
                if (do_eval) printf(" | val %.4f", val_loss);
                printf("\n");
                fflush(stdout);
            }
        }
        if (tr.rank == 0 && rc->sample.every && step % rc->sample.every == 0) sample_text(&tr, step);
        if (rc->checkpoint.every && (step % rc->checkpoint.every == 0 || step == tr.steps)) save_checkpoint(&tr, step);
    }

    TrainSummary s = {tr.steps, loss, val_loss, best_val, train_time > 0 ? tokens_seen / train_time : 0,
                      wall_time() - t_begin};
    if (tr.rank == 0) {
        write_summary(&tr, &s);
        runlog_close(&tr.log);
        if (!opts->quiet) {
            char wall[32];
            format_duration(wall, sizeof wall, s.wall_s);
            printf("done: %ld steps in %s, final train loss %.4f", tr.steps, wall, loss);
            if (!isnan(val_loss)) printf(", val loss %.4f (best %.4f)", val_loss, best_val);
            printf(", %.0f tok/s\n", s.tokens_per_s);
        }
    }
    if (summary) *summary = s;
    free(diag);
    free(tr.inputs);
    free(tr.targets);
    free(tr.order);
    free(tr.role);
    free(tr.config_json);
    loader_close(&tr.train);
    if (tr.has_val) loader_close(&tr.val);
    if (tr.has_tok) tokenizer_free(&tr.tok);
}
