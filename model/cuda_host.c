// See cuda_host.h. (The full optim/adamw.h is included here first; nvcc code only ever
// sees its per-element rules, built with OPTIM_RULES_ONLY.)
#include "../optim/adamw.h"

#include <string.h>

#include "../kernels/rope.h"
#include "cuda_host.h"

int cuda_host_adamw_step(const OptimGroup *g, const StepInfo *s, AdamWStep *step, int *amsgrad, int *cautious) {
    if (strcmp(g->def->name, optimizer_adamw.name) != 0) return 0;
    const AdamWHyper *h = (const AdamWHyper *)g->hyper;
    *step = adamw_resolve(h, s);
    *amsgrad = h->amsgrad;
    *cautious = h->cautious;
    return 1;
}

void cuda_host_rope_table(float *table, int T, int hd, float theta) { rope_table(table, T, hd, theta); }
