#define _GNU_SOURCE
#include "optimizer.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"
#include "microstats.h"

// Keys every group may carry besides its optimizer's own.
static const char *const group_common_keys[] = {"params", "name", "lr", "lr_mult", "label", NULL};
static const char *const top_common_keys[] = {"name", "groups", NULL};

typedef struct {
    const char *word;
    int (*match)(const ParamTensor *t);
} Category;

static int is_all(const ParamTensor *t) { return 1; }
static int is_matrix(const ParamTensor *t) { return role_is_matrix(t->role); }
static int is_embedding(const ParamTensor *t) { return t->role == ROLE_EMBEDDING; }
static int is_head(const ParamTensor *t) { return t->role == ROLE_HEAD; }
static int is_norm(const ParamTensor *t) { return t->role == ROLE_NORM; }
static int is_bias(const ParamTensor *t) { return t->role == ROLE_BIAS; }

static const Category categories[] = {
    {"all", is_all}, {"matrices", is_matrix}, {"embeddings", is_embedding},
    {"head", is_head}, {"norms", is_norm}, {"biases", is_bias},
};

static int selector_is_word(const char *sel) {
    for (size_t i = 0; i < sizeof categories / sizeof categories[0]; i++)
        if (strcmp(sel, categories[i].word) == 0) return 1;
    for (int r = 0; r < NUM_ROLES; r++)
        if (strcmp(sel, role_names[r]) == 0) return 1;
    return 0;
}

// A selector is a category, a role name, or a tensor-name pattern such as "h.0.*".
static int selector_matches(const char *sel, const ParamTensor *t) {
    for (size_t i = 0; i < sizeof categories / sizeof categories[0]; i++)
        if (strcmp(sel, categories[i].word) == 0) return categories[i].match(t);
    for (int r = 0; r < NUM_ROLES; r++)
        if (strcmp(sel, role_names[r]) == 0) return t->role == r;
    return fnmatch(sel, t->name, 0) == 0;
}

// Walks a selector list (or a single string), checking every entry is a string.
#define FOR_EACH_SELECTOR(item, params)                                                     \
    for (const cJSON *item = cJSON_IsArray(params) ? (params)->child : (params); item;     \
         item = cJSON_IsArray(params) ? item->next : NULL)

static int group_selects(const cJSON *params, const ParamTensor *t) {
    FOR_EACH_SELECTOR(item, params) if (selector_matches(item->valuestring, t)) return 1;
    return 0;
}

// A name pattern that matches nothing is almost certainly a typo; a category that
// matches nothing (e.g. "head" with tied embeddings) is fine.
static void check_selectors(const JsonConfig *c, const cJSON *params, const char *path, const ParamTensor *tensors, int n) {
    if (!cJSON_IsString(params) && !(cJSON_IsArray(params) && params->child))
        config_key_error(c, path, "must be a selector string or a non-empty list of them");
    FOR_EACH_SELECTOR(item, params) {
        if (!cJSON_IsString(item)) config_key_error(c, path, "selectors must be strings");
        if (selector_is_word(item->valuestring)) continue;
        int any = 0;
        for (int i = 0; i < n && !any; i++) any = selector_matches(item->valuestring, &tensors[i]);
        if (!any)
            config_key_error(c, path, "selector \"%s\" is not a category (all, matrices, embeddings, head, norms, biases), "
                             "a role, or a pattern matching any tensor", item->valuestring);
    }
}

static const OptimizerDef *find_or_die(const JsonConfig *c, const char *path, const char *name) {
    const OptimizerDef *def = optimizer_find(name);
    if (def) return def;
    char known[512] = "";
    for (const OptimizerDef *const *d = optimizer_registry(); *d; d++) {
        strncat(known, (*d)->name, sizeof known - strlen(known) - 1);
        if (d[1]) strncat(known, ", ", sizeof known - strlen(known) - 1);
    }
    config_key_error(c, path, "unknown optimizer \"%s\" (known: %s)", name, known);
}

static const char *string_member(const JsonConfig *c, const cJSON *obj, const char *key, const char *path, const char *def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return def;
    if (!cJSON_IsString(v)) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        config_key_error(c, sub, "must be a string");
    }
    return v->valuestring;
}

static float float_member(const JsonConfig *c, const cJSON *obj, const char *key, const char *path, float def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return def;
    char sub[256];
    snprintf(sub, sizeof sub, "%s.%s", path, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0)) config_key_error(c, sub, "must be a positive number");
    return (float)v->valuedouble;
}

// The group's hyperparameters: the optimizer's defaults, then the top-level optimizer
// section when the group uses the same optimizer, then the group's own keys.
static void read_group_hyper(const JsonConfig *c, const cJSON *top, const OptimizerDef *top_def, const cJSON *group,
                             const char *path, OptimGroup *g) {
    void *scratch = xcalloc(1, g->def->hyper_size);
    config_read_keys(c, group, path, g->def->keys, scratch, group_common_keys);  // validates the group's own keys
    free(scratch);
    cJSON *merged = g->def == top_def && top ? cJSON_Duplicate(top, 1) : cJSON_CreateObject();
    cJSON_DeleteItemFromObjectCaseSensitive(merged, "groups");
    cJSON_DeleteItemFromObjectCaseSensitive(merged, "name");
    for (const cJSON *m = group->child; m; m = m->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(merged, m->string);
        cJSON_AddItemToObject(merged, m->string, cJSON_Duplicate(m, 1));
    }
    g->hyper = xcalloc(1, g->def->hyper_size);
    g->json = merged;
    config_read_keys(c, merged, path, g->def->keys, g->hyper, group_common_keys);
    if (g->def->check) g->def->check(g->hyper, c, path);
}

void optim_build(Optimizer *opt, const JsonConfig *c, const ParamTensor *tensors, int n_tensors, float base_lr) {
    memset(opt, 0, sizeof *opt);
    opt->tensors = tensors;
    opt->n_tensors = n_tensors;
    const cJSON *top = json_config_section(c, "optimizer");
    if (top && !cJSON_IsObject(top)) config_key_error(c, "optimizer", "must be a JSON object");
    const char *top_name = top ? string_member(c, top, "name", "optimizer", "adamw") : "adamw";
    const OptimizerDef *top_def = find_or_die(c, "optimizer.name", top_name);
    {
        void *scratch = xcalloc(1, top_def->hyper_size);
        config_read_keys(c, top, "optimizer", top_def->keys, scratch, top_common_keys);
        free(scratch);
    }

    const cJSON *groups = top ? cJSON_GetObjectItemCaseSensitive(top, "groups") : NULL;
    cJSON *implicit = NULL;
    if (!groups) {
        // As llm.c: weight decay on matrices and embeddings, none on norms and biases.
        implicit = cJSON_Parse("[{\"params\": [\"matrices\", \"embeddings\", \"head\"], \"label\": \"decay\"},"
                               " {\"params\": [\"norms\", \"biases\"], \"weight_decay\": 0, \"label\": \"no_decay\"}]");
        groups = implicit;
    }
    if (!cJSON_IsArray(groups) || cJSON_GetArraySize(groups) == 0)
        config_key_error(c, "optimizer.groups", "must be a non-empty list of {\"params\": ..., ...} objects");

    opt->n_groups = cJSON_GetArraySize(groups);
    opt->groups = (OptimGroup *)xcalloc((size_t)opt->n_groups, sizeof(OptimGroup));
    opt->group_of = (int *)xmalloc((size_t)n_tensors * sizeof(int));
    for (int i = 0; i < n_tensors; i++) opt->group_of[i] = -1;

    int gi = 0;
    for (const cJSON *gj = groups->child; gj; gj = gj->next, gi++) {
        char path[64];
        snprintf(path, sizeof path, "optimizer.groups[%d]", gi);
        if (!cJSON_IsObject(gj)) config_key_error(c, path, "must be an object");
        OptimGroup *g = &opt->groups[gi];
        g->def = find_or_die(c, path, string_member(c, gj, "name", path, top_name));
        read_group_hyper(c, top, top_def, gj, path, g);
        const char *label = string_member(c, gj, "label", path, NULL);
        if (label) snprintf(g->label, sizeof g->label, "%s", label);
        else snprintf(g->label, sizeof g->label, "%d:%s", gi, g->def->name);
        if (cJSON_HasObjectItem(gj, "lr") && cJSON_HasObjectItem(gj, "lr_mult"))
            config_key_error(c, path, "give either lr or lr_mult, not both");
        g->lr_peak = float_member(c, gj, "lr", path, base_lr * float_member(c, gj, "lr_mult", path, 1.0f));

        char ppath[80];
        snprintf(ppath, sizeof ppath, "%s.params", path);
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(gj, "params");
        if (!params) config_key_error(c, ppath, "required: which tensors this group takes (e.g. \"matrices\")");
        check_selectors(c, params, ppath, tensors, n_tensors);
        g->tensors = (int *)xmalloc((size_t)n_tensors * sizeof(int));
        for (int i = 0; i < n_tensors; i++) {
            if (!group_selects(params, &tensors[i])) continue;
            if (opt->group_of[i] >= 0)
                config_key_error(c, ppath, "tensor %s is already in group %s; every tensor must be in exactly one group",
                                 tensors[i].name, opt->groups[opt->group_of[i]].label);
            const char *why = g->def->refuses ? g->def->refuses(g->hyper, &tensors[i]) : NULL;
            if (why)
                config_key_error(c, ppath, "%s cannot take %s (%s): %s", g->def->name, tensors[i].name,
                                 role_names[tensors[i].role], why);
            opt->group_of[i] = gi;
            g->tensors[g->n_tensors++] = i;
            g->numel += tensors[i].numel;
        }
    }
    for (int i = 0; i < n_tensors; i++)
        if (opt->group_of[i] < 0)
            config_key_error(c, "optimizer.groups", "tensor %s (%s) is in no group; every tensor must be in exactly one",
                             tensors[i].name, role_names[tensors[i].role]);

    opt->state_offset = (size_t *)xmalloc((size_t)n_tensors * sizeof(size_t));
    opt->elementwise_only = 1;
    size_t off = 0;
    for (int i = 0; i < n_tensors; i++) {
        OptimGroup *g = &opt->groups[opt->group_of[i]];
        size_t n = g->def->step_elements ? (size_t)g->def->slots(g->hyper) * tensors[i].numel
                                         : g->def->tensor_state(g->hyper, &tensors[i]);
        if (!g->def->step_elements) opt->elementwise_only = 0;
        opt->state_offset[i] = off;
        g->state_floats += n;
        off += n;
    }
    opt->state_floats = off;
    // A world of one: per-tensor optimizers are stepped by rank 0, element-wise ones by all.
    opt->dist = (OptimDist){.rank = 0, .world = 1, .local_floats = off};
    opt->dist.owner = (int *)xmalloc((size_t)n_tensors * sizeof(int));
    for (int i = 0; i < n_tensors; i++) opt->dist.owner[i] = opt->groups[opt->group_of[i]].def->step_elements ? -1 : 0;
    cJSON_Delete(implicit);  // groups keep their own merged copies
}

void optim_free(Optimizer *opt) {
    for (int g = 0; g < opt->n_groups; g++) {
        free(opt->groups[g].hyper);
        cJSON_Delete(opt->groups[g].json);
        free(opt->groups[g].tensors);
    }
    free(opt->groups);
    free(opt->group_of);
    free(opt->state_offset);
    free(opt->state);
    free(opt->dist.counts);
    free(opt->dist.local_offset);
    free(opt->dist.owner);
    memset(opt, 0, sizeof *opt);
}

void optim_alloc_state(Optimizer *opt) {
    opt->state = xmalloc_floats(opt->dist.local_floats);
    memset(opt->state, 0, opt->dist.local_floats * sizeof(float));
    if (opt->dist.zero) return;  // ZeRO holds element-wise state only: zeros
    for (int i = 0; i < opt->n_tensors; i++) {
        const OptimGroup *g = &opt->groups[opt->group_of[i]];
        if (g->def->init_tensor_state) g->def->init_tensor_state(g->hyper, &opt->tensors[i], opt->state + opt->state_offset[i]);
    }
}

int optim_elementwise_part(const Optimizer *opt, int i, float *state, float **slots, size_t *start, size_t *len) {
    const ParamTensor *t = &opt->tensors[i];
    const OptimGroup *g = &opt->groups[opt->group_of[i]];
    const int k = g->def->slots(g->hyper);
    if (!opt->dist.zero) {
        *start = t->offset;
        *len = t->numel;
        optim_slot_pointers(state + opt->state_offset[i], t->numel, k, slots);
        return 1;
    }
    const size_t a = t->offset > opt->dist.lo ? t->offset : opt->dist.lo;
    const size_t b = t->offset + t->numel < opt->dist.hi ? t->offset + t->numel : opt->dist.hi;
    if (a >= b) return 0;
    *start = a;
    *len = b - a;
    optim_slot_pointers(state + opt->dist.local_offset[i], b - a, k, slots);
    return 1;
}

void optim_print(const Optimizer *opt, FILE *out) {
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        fprintf(out, "optimizer group %-12s %-9s lr %-9.3g tensors %4d  params %10zu  state %8.2f MiB\n", g->label,
                g->def->name, g->lr_peak, g->n_tensors, g->numel, (double)g->state_floats * 4.0 / (1 << 20));
    }
}

StepInfo optim_group_step_info(const OptimGroup *g, const StepInfo *base) {
    StepInfo s = *base;
    s.lr = g->lr_peak * base->lr_scale;
    return s;
}

void optim_step_cpu(Optimizer *opt, const MicroStats *ms, float *params, const float *grads, const StepInfo *base) {
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        const StepInfo s = optim_group_step_info(g, base);
        const int corrected = ms && ms->need[gi].active;
        for (int k = 0; k < g->n_tensors; k++) {
            const int i = g->tensors[k];
            if (g->def->step_elements) {
                float *slots[OPTIM_MAX_SLOTS];
                size_t start, len;
                if (!optim_elementwise_part(opt, i, opt->state, slots, &start, &len)) continue;
                if (corrected) {
                    const MicroStatsView v = microstats_view(ms, MS_PASS_MAIN, start);
                    g->def->step_elements_stats(g->hyper, &s, &v, params + start, grads + start, slots, len);
                } else {
                    g->def->step_elements(g->hyper, &s, params + start, grads + start, slots, len);
                }
            } else if (opt->dist.owner[i] == opt->dist.rank || opt->dist.owner[i] < 0) {
                const ParamTensor *t = &opt->tensors[i];
                float *state = opt->state + opt->state_offset[i];
                if (corrected) {
                    const MicroStatsView v = microstats_view(ms, MS_PASS_MAIN, t->offset);
                    const float *ts = ms->tensor_offset[i] == SIZE_MAX ? NULL : ms->tensor_stats + ms->tensor_offset[i];
                    g->def->step_tensor_stats(g->hyper, &s, &v, t, params + t->offset, grads + t->offset, state, ts);
                } else {
                    g->def->step_tensor(g->hyper, &s, t, params + t->offset, grads + t->offset, state);
                }
            }
        }
    }
}

int optim_needs_curvature(const Optimizer *opt, long step) {
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        if (g->def->curvature_due && g->def->curvature_due(g->hyper, step)) return 1;
    }
    return 0;
}

void optim_curvature_cpu(Optimizer *opt, const MicroStats *ms, const float *curvature_grads, const StepInfo *base) {
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        if (!g->def->curvature_due || !g->def->curvature_due(g->hyper, base->step)) continue;
        const StepInfo s = optim_group_step_info(g, base);
        for (int k = 0; k < g->n_tensors; k++) {
            float *slots[OPTIM_MAX_SLOTS];
            size_t start, len;
            if (!optim_elementwise_part(opt, g->tensors[k], opt->state, slots, &start, &len)) continue;
            if (ms && ms->need[gi].curvature) {
                const MicroStatsView v = microstats_view(ms, MS_PASS_CURVATURE, start);
                g->def->curvature_elements_stats(g->hyper, &s, &v, curvature_grads + start, slots, len);
            } else {
                g->def->curvature_elements(g->hyper, &s, curvature_grads + start, slots, len);
            }
        }
    }
}
