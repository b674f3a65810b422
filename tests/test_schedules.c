// Schedules (optim/schedules.h) at their boundaries, against the formulas written out here:
// lr warmup and decay, the eps schedules at w*T and E*T, the AdEMAMix warmups.
#include <math.h>
#include <string.h>

#include "../optim/schedules.h"
#include "harness.h"
#include "test_util.h"

static ScheduleConfig sched(int warmup, int decay, float lr, float min_lr, float decay_fraction) {
    ScheduleConfig s;
    memset(&s, 0, sizeof s);
    s.lr = lr;
    s.warmup = warmup;
    s.decay = decay;
    s.min_lr = min_lr;
    s.decay_fraction = decay_fraction;
    return s;
}

TEST(sched_lr_warmup_and_cosine) {
    const ScheduleConfig s = sched(10, DECAY_COSINE, 1e-3f, 1e-4f, 0.2f);
    const long T = 100;
    const double floor_ = (double)1e-4f / (double)1e-3f;
    CHECK_NEAR(lr_scale_at(&s, 1, T), 0.1, 1e-7);
    CHECK_NEAR(lr_scale_at(&s, 5, T), 0.5, 1e-7);
    CHECK_NEAR(lr_scale_at(&s, 10, T), 1.0, 1e-7);  // warmup end: the peak
    // First decay step: progress 1/(T - warmup) through the cosine.
    CHECK_NEAR(lr_scale_at(&s, 11, T), floor_ + 0.5 * (1 - floor_) * (1 + cos(M_PI * 1.0 / 90.0)), 1e-7);
    CHECK_NEAR(lr_scale_at(&s, 55, T), floor_ + 0.5 * (1 - floor_), 1e-7);  // half way: the midpoint
    CHECK_NEAR(lr_scale_at(&s, 100, T), floor_, 1e-7);                      // cosine end = min_lr
    CHECK_NEAR(lr_scale_at(&s, 100, T) * s.lr, 1e-4, 1e-10);
    CHECK_NEAR(lr_scale_at(&s, 120, T), floor_, 1e-7);                      // past the end: stays
    // No warmup: step 1 is already on the cosine.
    const ScheduleConfig s0 = sched(0, DECAY_COSINE, 1e-3f, 0.0f, 0.2f);
    CHECK_NEAR(lr_scale_at(&s0, 1, T), 0.5 * (1 + cos(M_PI * 1.0 / 100.0)), 1e-7);
    CHECK_NEAR(lr_scale_at(&s0, T, T), 0.0, 1e-7);
}

TEST(sched_lr_linear_constant_wsd) {
    const long T = 100;
    const ScheduleConfig lin = sched(20, DECAY_LINEAR, 2e-3f, 2e-4f, 0.2f);
    const double fl = (double)2e-4f / (double)2e-3f;
    CHECK_NEAR(lr_scale_at(&lin, 20, T), 1.0, 1e-7);
    CHECK_NEAR(lr_scale_at(&lin, 21, T), 1.0 - (1.0 - fl) / 80.0, 1e-7);
    CHECK_NEAR(lr_scale_at(&lin, 60, T), 1.0 - (1.0 - fl) * 0.5, 1e-7);
    CHECK_NEAR(lr_scale_at(&lin, 100, T), fl, 1e-7);

    const ScheduleConfig con = sched(4, DECAY_CONSTANT, 1e-3f, 1e-4f, 0.2f);
    CHECK_NEAR(lr_scale_at(&con, 2, T), 0.5, 1e-7);
    CHECK_NEAR(lr_scale_at(&con, 4, T), 1.0, 1e-7);
    CHECK_NEAR(lr_scale_at(&con, 100, T), 1.0, 1e-7);  // constant ignores min_lr

    // WSD: decay over the last 20% = 20 steps, starting after step 80.
    const ScheduleConfig wsd = sched(5, DECAY_WSD, 1e-3f, 1e-4f, 0.2f);
    const double wf = (double)1e-4f / (double)1e-3f;
    CHECK_NEAR(lr_scale_at(&wsd, 3, T), 0.6, 1e-7);
    CHECK_NEAR(lr_scale_at(&wsd, 6, T), 1.0, 1e-7);
    CHECK_NEAR(lr_scale_at(&wsd, 80, T), 1.0, 1e-7);  // decay start: still the peak
    CHECK_NEAR(lr_scale_at(&wsd, 81, T), 1.0 - (1.0 - wf) / 20.0, 1e-7);
    CHECK_NEAR(lr_scale_at(&wsd, 90, T), 1.0 - (1.0 - wf) * 0.5, 1e-7);
    CHECK_NEAR(lr_scale_at(&wsd, 100, T), wf, 1e-7);
}

// The definitions, written independently of schedules.c.
static double eps_warmup_exp(double eps, double eps_max, double w, double E, double kappa, long t, long T) {
    if (t <= w * T) return eps;
    if (t >= E * T) return eps_max;
    const double k = kappa / (T * (E - w));
    const double A = (eps_max - eps) / (exp(kappa) - 1.0), B = eps - A;  // A + B = eps, A e^kappa + B = eps_max
    return A * exp(k * (t - w * T)) + B;
}

static double eps_log_linear(double eps, double eps_max, double w, double E, long t, long T) {
    if (t <= w * T) return eps;
    if (t >= E * T) return eps_max;
    const double frac = (t - w * T) / ((E - w) * T);
    return exp((1.0 - frac) * log(eps) + frac * log(eps_max));  // geometric interpolation
}

#define CHECK_RELV(a, b, tol) CHECK_NEAR((a) / (b), 1.0, tol)

TEST(sched_eps_boundaries) {
    const double eps = 1e-8;
    EpsSchedule s = {EPS_WARMUP_EXP, 1e-4f, 0.25f, 0.75f, 5.0f};
    const double em = (double)s.eps_max;
    const long T = 100;  // w T = 25, E T = 75
    const long ts[] = {1, 24, 25, 26, 50, 74, 75, 76, 100};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        const long t = ts[i];
        CHECK_RELV(eps_at(&s, eps, t, T), eps_warmup_exp(eps, em, 0.25, 0.75, 5.0, t, T), 1e-9);
    }
    CHECK(eps_at(&s, eps, 25, T) == eps);         // t = w T: still the base eps
    CHECK_RELV(eps_at(&s, eps, 75, T), em, 1e-12); // t = E T: eps_max
    CHECK(eps_at(&s, eps, 26, T) > eps);
    CHECK(eps_at(&s, eps, 74, T) < em);
    // Continuity at E T: the last growth step is within one step's growth factor of eps_max.
    CHECK(eps_at(&s, eps, 74, T) > em * exp(-5.0 / 50.0) * 0.99);

    s.type = EPS_LOG_LINEAR;
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        const long t = ts[i];
        CHECK_RELV(eps_at(&s, eps, t, T), eps_log_linear(eps, em, 0.25, 0.75, t, T), 1e-9);
    }
    CHECK(eps_at(&s, eps, 25, T) == eps);
    CHECK_RELV(eps_at(&s, eps, 75, T), em, 1e-12);
    CHECK_RELV(eps_at(&s, eps, 50, T), sqrt(eps * em), 1e-9);  // half way in log space: the geometric mean

    // w T between steps (T = 10: w T = 2.5, E T = 7.5).
    s.type = EPS_WARMUP_EXP;
    CHECK(eps_at(&s, eps, 2, 10) == eps);
    CHECK_RELV(eps_at(&s, eps, 3, 10), eps_warmup_exp(eps, em, 0.25, 0.75, 5.0, 3, 10), 1e-9);
    CHECK_RELV(eps_at(&s, eps, 7, 10), eps_warmup_exp(eps, em, 0.25, 0.75, 5.0, 7, 10), 1e-9);
    CHECK_RELV(eps_at(&s, eps, 8, 10), em, 1e-12);

    s.type = EPS_CONSTANT;
    CHECK(eps_at(&s, eps, 1, T) == eps && eps_at(&s, eps, 75, T) == eps && eps_at(&s, eps, 100, T) == eps);
}

static void read_eps_schedule(void *json) {
    JsonConfig *c = config_from_text((const char *)json);
    EpsSchedule s;
    eps_schedule_read(&s, c, json_config_section(c, "eps_schedule"), "optimizer.eps_schedule");
}

TEST(sched_eps_read_and_errors) {
    JsonConfig *c = config_from_text("{\"eps_schedule\": {\"type\": \"log_linear\", \"eps_max\": 1e-5, \"w\": 0.5, \"E\": 0.9}}");
    EpsSchedule s;
    eps_schedule_read(&s, c, json_config_section(c, "eps_schedule"), "optimizer.eps_schedule");
    CHECK(s.type == EPS_LOG_LINEAR && s.eps_max == 1e-5f && s.w == 0.5f && s.E == 0.9f && s.kappa == 5.0f);
    json_config_free(c);
    eps_schedule_read(&s, NULL, NULL, "optimizer.eps_schedule");
    CHECK(s.type == EPS_CONSTANT);
    EXPECT_FATAL(read_eps_schedule, (void *)"{\"eps_schedule\": {\"type\": \"warmup_exp\", \"w\": 0.5, \"E\": 0.5}}",
                 "optimizer.eps_schedule: needs E > w");
    EXPECT_FATAL(read_eps_schedule, (void *)"{\"eps_schedule\": {\"type\": \"cubic\"}}", "optimizer.eps_schedule.type");
    EXPECT_FATAL(read_eps_schedule, (void *)"{\"eps_schedule\": {\"type\": \"log_linear\", \"kapa\": 3}}",
                 "optimizer.eps_schedule.kapa: unknown key");
}

// AdEMAMix's half-life, as in the paper and its official code (with its 1e-8 guard).
static double halflife_of(double beta) { return log(0.5) / log(beta + 1e-8) - 1.0; }

TEST(sched_ademamix_warmups) {
    // alpha: linear from 0, reaching alpha at t = T_alpha and staying there.
    CHECK(linear_warmup(0.0, 5.0, 0, 100) == 0.0);
    CHECK_NEAR(linear_warmup(0.0, 5.0, 1, 100), 0.05, 1e-15);
    CHECK_NEAR(linear_warmup(0.0, 5.0, 50, 100), 2.5, 1e-15);
    CHECK_NEAR(linear_warmup(0.0, 5.0, 99, 100), 4.95, 1e-12);
    CHECK(linear_warmup(0.0, 5.0, 100, 100) == 5.0);
    CHECK(linear_warmup(0.0, 5.0, 150, 100) == 5.0);
    CHECK(linear_warmup(0.0, 5.0, 1, 0) == 5.0);  // no warmup

    // beta3: from beta1 at t = 0 to beta3 at t = T, linear in the half-life.
    const double b1 = 0.9, b3 = 0.9999;
    const long T = 1000;
    CHECK_NEAR(halflife_warmup(b1, b3, 0, T), b1, 2e-8);  // the 1e-8 guard shifts it by 1e-8
    CHECK(halflife_warmup(b1, b3, T, T) == b3);
    CHECK(halflife_warmup(b1, b3, T + 5, T) == b3);
    CHECK(halflife_warmup(b1, b3, 7, 0) == b3);
    const long ts[] = {1, 250, 500, 999};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        const double a = (double)ts[i] / T;
        const double expect = pow(0.5, 1.0 / ((1 - a) * halflife_of(b1) + a * halflife_of(b3) + 1.0));
        CHECK_NEAR(halflife_warmup(b1, b3, ts[i], T), expect, 1e-14);
        // beta^(h+1) = 1/2: the half-life of beta(t) is the linear interpolation.
        const double h = log(0.5) / log(halflife_warmup(b1, b3, ts[i], T)) - 1.0;
        const double h_lin = (1 - a) * (log(0.5) / log(b1) - 1) + a * (log(0.5) / log(b3) - 1);
        CHECK_NEAR(h / h_lin, 1.0, 1e-3);
    }
    // Monotone between the ends.
    double prev = 0;
    for (long t = 0; t <= T; t += 50) {
        const double b = halflife_warmup(b1, b3, t, T);
        CHECK(b >= prev);
        prev = b;
    }
}
