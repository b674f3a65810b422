// The CUDA trainer: `./train_gptcu -c configs/shakespeare_char.json`, or on N GPUs
// `mpirun -np N ./train_gptcu -c ...`. The same configs, logs, checkpoints and command line
// as the CPU trainer (train_gpt.c): this file only puts the CUDA backend
// (model/cuda_backend.cu) under the shared training loop (runtime/trainer.c). See docs/cuda.md.
#include "model/cuda_backend.h"
#include "runtime/cli.h"
#include "runtime/dist.h"
#include "runtime/dist_nccl.h"

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    CliRun run;
    if (!cli_prepare(&run, argc, argv)) return 0;
    dist_nccl_init();  // one GPU per rank, and the NCCL communicator when there are several
    Backend *b = cuda_backend_create(&run.rc);
    if (run.export_llmc) cli_export_llmc(&run, b);
    else train_run(&run.rc, b, &run.opts, NULL);
    cuda_backend_free(b);
    run_config_free(&run.rc);
    dist_nccl_finalize();
    dist_finalize();
    return 0;
}
