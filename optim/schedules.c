#include "schedules.h"

#include <math.h>
#include <stddef.h>

#define SKEY(name, type, def, range, choices, doc) {#name, type, offsetof(ScheduleConfig, name), def, range, choices, doc}
const ConfigKey schedule_keys[] = {
    SKEY(lr, KEY_FLOAT, "3e-4", "(0,inf)", NULL, "peak learning rate (groups scale it with lr_mult or set their own lr)"),
    SKEY(warmup, KEY_INT, "0", "[0,inf)", NULL, "linear warmup steps"),
    SKEY(decay, KEY_CHOICE, "\"cosine\"", NULL, "constant|cosine|linear|wsd", "shape after warmup"),
    SKEY(min_lr, KEY_FLOAT, "0", "[0,inf)", NULL, "learning rate at the last step (cosine, linear, wsd)"),
    SKEY(decay_fraction, KEY_FLOAT, "0.2", "(0,1]", NULL, "wsd: final fraction of steps that decays linearly"),
    KEY_END,
};

float lr_scale_at(const ScheduleConfig *s, long t, long T) {
    if (s->warmup > 0 && t <= s->warmup) return (float)t / (float)s->warmup;
    const double floor_scale = s->min_lr / s->lr;
    double p;  // progress through the decay, 0 at its start, 1 at step T
    switch (s->decay) {
    case DECAY_COSINE:
        p = T > s->warmup ? (double)(t - s->warmup) / (double)(T - s->warmup) : 1.0;
        return (float)(floor_scale + 0.5 * (1.0 - floor_scale) * (1.0 + cos(M_PI * fmin(p, 1.0))));
    case DECAY_LINEAR:
        p = T > s->warmup ? (double)(t - s->warmup) / (double)(T - s->warmup) : 1.0;
        return (float)(1.0 - (1.0 - floor_scale) * fmin(p, 1.0));
    case DECAY_WSD: {
        long decay_steps = lround(s->decay_fraction * (double)T);
        long start = T - decay_steps;
        if (decay_steps <= 0 || t <= start) return 1.0f;
        p = (double)(t - start) / (double)decay_steps;
        return (float)(1.0 - (1.0 - floor_scale) * fmin(p, 1.0));
    }
    default:
        return 1.0f;
    }
}

#define EKEY(name, type, def, range, choices, doc) {#name, type, offsetof(EpsSchedule, name), def, range, choices, doc}
const ConfigKey eps_schedule_keys[] = {
    EKEY(type, KEY_CHOICE, "\"constant\"", NULL, "constant|warmup_exp|log_linear", "shape of the epsilon schedule"),
    EKEY(eps_max, KEY_FLOAT, "1e-8", "(0,inf)", NULL, "final epsilon"),
    EKEY(w, KEY_FLOAT, "0", "[0,1]", NULL, "fraction of training where growth starts"),
    EKEY(E, KEY_FLOAT, "1", "[0,1]", NULL, "fraction of training where growth ends"),
    EKEY(kappa, KEY_FLOAT, "5", "(0,inf)", NULL, "warmup_exp: growth rate over the window"),
    KEY_END,
};

void eps_schedule_read(EpsSchedule *s, const JsonConfig *c, const cJSON *obj, const char *path) {
    config_read_keys(c, obj, path, eps_schedule_keys, s, NULL);
    if (s->type != EPS_CONSTANT && !(s->E > s->w)) config_key_error(c, path, "needs E > w (got w=%g, E=%g)", s->w, s->E);
}

double eps_at(const EpsSchedule *s, double eps, long t, long T) {
    if (s->type == EPS_CONSTANT) return eps;
    const double start = s->w * (double)T, end = s->E * (double)T;
    if ((double)t <= start) return eps;
    if ((double)t >= end) return s->eps_max;
    const double x = (double)t - start, span = end - start;
    if (s->type == EPS_LOG_LINEAR) return eps * pow(s->eps_max / eps, x / span);
    // A exp(k x) + B with A + B = eps at x = 0 and A exp(kappa) + B = eps_max at x = span.
    const double k = s->kappa / span;
    const double A = (s->eps_max - eps) / expm1(s->kappa);
    return A * exp(k * x) + (eps - A);
}

double linear_warmup(double from, double to, long t, long steps) {
    if (steps <= 0 || t >= steps) return to;
    return from + (to - from) * (double)t / (double)steps;
}

static double halflife(double beta) { return log(0.5) / log(beta + 1e-8) - 1.0; }

double halflife_warmup(double from, double to, long t, long steps) {
    if (steps <= 0 || t >= steps) return to;
    const double a = (double)t / (double)steps;
    return pow(0.5, 1.0 / ((1.0 - a) * halflife(from) + a * halflife(to) + 1.0));
}
