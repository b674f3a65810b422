#define _GNU_SOURCE
#include "cli.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../model/llmc.h"
#include "checkpoint.h"
#include "common.h"

static void usage(const char *prog, FILE *out) {
    fprintf(out,
            "usage: %s -c CONFIG.json [--set section.key=value ...] [--out DIR]\n"
            "       %s --resume DIR|CHECKPOINT [-c CONFIG.json] [--set ...] [--out DIR]\n"
            "       %s (-c CONFIG.json | --resume ...) --export-llmc FILE.bin\n"
            "       %s --help-config\n"
            "\n"
            "  -c FILE           run config (JSON; may \"extends\" a base file)\n"
            "  --set KEY=VALUE   override one key, e.g. --set optimizer.beta2=0.95 (repeatable);\n"
            "                    VALUE is JSON when it parses, else a string\n"
            "  --out DIR         run directory (default runs/<config name>, or the resumed one)\n"
            "  --resume PATH     continue from the newest checkpoint in DIR, or from CHECKPOINT;\n"
            "                    without -c the config stored in the checkpoint is used\n"
            "  --export-llmc F   write the model in llm.c's gpt2 checkpoint layout and exit\n"
            "  --help-config     list every config key with its default and range\n",
            prog, prog, prog, prog);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int cli_prepare(CliRun *run, int argc, char **argv) {
    memset(run, 0, sizeof *run);
    const char *prog = argc > 0 ? argv[0] : "train_gpt";
    const char *config = NULL, *out = NULL, *resume = NULL;
    const char **sets = (const char **)xmalloc((size_t)(argc + 1) * sizeof(char *));
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(prog, stdout);
            return 0;
        } else if (strcmp(a, "--help-config") == 0) {
            run_config_print_keys();
            return 0;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && has_value) {
            config = argv[++i];
        } else if (strcmp(a, "--set") == 0 && has_value) {
            sets[n_sets++] = argv[++i];
        } else if (strcmp(a, "--out") == 0 && has_value) {
            out = argv[++i];
        } else if (strcmp(a, "--resume") == 0 && has_value) {
            resume = argv[++i];
        } else if (strcmp(a, "--export-llmc") == 0 && has_value) {
            run->export_llmc = argv[++i];
        } else {
            usage(prog, stderr);
            fatal("unknown or incomplete argument \"%s\"", a);
        }
    }
    if (!config && !resume) {
        usage(prog, stderr);
        fatal("give a config with -c, or a run to continue with --resume");
    }

    if (resume) {
        if (is_dir(resume)) {
            if (!checkpoint_latest(resume, run->resume_path, sizeof run->resume_path))
                fatal("%s: no checkpoint (ckpt_*.bin) to resume from", resume);
        } else if (file_exists(resume)) {
            snprintf(run->resume_path, sizeof run->resume_path, "%s", resume);
        } else {
            fatal("%s: no such run directory or checkpoint", resume);
        }
    }
    JsonConfig *json;
    if (config) {
        json = json_config_load(config, sets, n_sets);
    } else {
        char *text = checkpoint_read_config(run->resume_path);
        cJSON *root = cJSON_Parse(text);
        free(text);
        if (!root) fatal("%s: the checkpoint's config is not valid JSON", run->resume_path);
        json = json_config_from_tree(root, run->resume_path, sets, n_sets);
    }
    free(sets);
    run_config_read(&run->rc, json);

    if (out) {
        snprintf(run->out_dir, sizeof run->out_dir, "%s", out);
    } else if (resume) {
        char *copy = xstrdup(run->resume_path);
        snprintf(run->out_dir, sizeof run->out_dir, "%s", dirname(copy));
        free(copy);
    } else {
        char *copy = xstrdup(config);
        char *stem = basename(copy);
        char *dot = strrchr(stem, '.');
        if (dot) *dot = '\0';
        snprintf(run->out_dir, sizeof run->out_dir, "runs/%s", stem);
        free(copy);
    }
    char existing[4096];
    if (!resume && !run->export_llmc && checkpoint_latest(run->out_dir, existing, sizeof existing))
        fatal("%s already holds a run (%s); continue it with --resume %s, or choose another --out", run->out_dir,
              existing, run->out_dir);
    run->opts.out_dir = run->out_dir;
    run->opts.resume_from = resume ? run->resume_path : NULL;
    return 1;
}

void cli_export_llmc(const CliRun *run, Backend *b) {
    const ModelLayout *L = b->layout;
    float *params = xmalloc_floats(L->num_params);
    if (run->opts.resume_from) {
        float *state = xmalloc_floats(b->opt->state_floats);
        TrainState ts;
        checkpoint_load(run->opts.resume_from, L, params, b->opt, state, &ts);
        free(state);
    } else {
        b->get_params(b, params);
    }
    llmc_save(run->export_llmc, L, params);
    printf("wrote %s (llm.c gpt2 layout, %zu params)\n", run->export_llmc, L->num_params);
    free(params);
}
