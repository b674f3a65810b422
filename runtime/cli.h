// The command line shared by train_gpt and train_gptcu.
#pragma once
#include "run_config.h"
#include "trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    RunConfig rc;
    TrainOptions opts;
    char out_dir[4096];
    char resume_path[4096];    // checkpoint file when resuming
    const char *export_llmc;   // write llm.c's layout here and exit
} CliRun;

// Parses argv, loads and validates the config, and settles the run directory and the
// checkpoint to resume from. Returns 0 when the program should exit 0 (help printed).
int cli_prepare(CliRun *run, int argc, char **argv);

// --export-llmc: the model's parameters (from the resumed checkpoint, else as initialised)
// written in llm.c's layout.
void cli_export_llmc(const CliRun *run, Backend *b);

#ifdef __cplusplus
}
#endif
