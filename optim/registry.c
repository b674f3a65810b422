// The optimizer registry: one include and one table entry per optimizer.
#include <string.h>

#include "optimizer.h"

#include "adamw.h"
#include "sgd.h"
#include "lion.h"
#include "adopt.h"
#include "ademamix.h"
#include "adafactor.h"
#include "muon.h"
#include "shampoo.h"
#include "soap.h"
#include "sophia.h"

static const OptimizerDef *const registry[] = {
    &optimizer_adamw,
    &optimizer_sgd,
    &optimizer_lion,
    &optimizer_adopt,
    &optimizer_ademamix,
    &optimizer_adafactor,
    &optimizer_muon,
    &optimizer_shampoo,
    &optimizer_soap,
    &optimizer_sophia,
    NULL,
};

const OptimizerDef *const *optimizer_registry(void) { return registry; }

const OptimizerDef *optimizer_find(const char *name) {
    for (const OptimizerDef *const *d = registry; *d; d++)
        if (strcmp((*d)->name, name) == 0) return *d;
    return NULL;
}
