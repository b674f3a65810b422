// The CPU trainer: `./train_gpt -c configs/shakespeare_char.json`. See README.md.
// The model is in model/gpt_cpu.c, the loop in runtime/trainer.c; this file wires them.
#include "model/cpu_backend.h"
#include "runtime/blas_setup.h"
#include "runtime/cli.h"
#include "runtime/dist.h"

int main(int argc, char **argv) {
    blas_pick_kernels(argc, argv);
    dist_init(&argc, &argv);
    CliRun run;
    if (!cli_prepare(&run, argc, argv)) return 0;
    Backend *b = cpu_backend_create(&run.rc);
    if (run.export_llmc) cli_export_llmc(&run, b);
    else train_run(&run.rc, b, &run.opts, NULL);
    cpu_backend_free(b);
    run_config_free(&run.rc);
    dist_finalize();
    return 0;
}
