// The run directory's log.jsonl: one JSON object per line, every line with "step".
// On resume, lines past the checkpoint's step are dropped first, so the log reads as if
// the run had never stopped.
#pragma once
#include <stdio.h>

#include <cJSON.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    FILE *f;
    char path[4096];
} RunLog;

// Starts DIR/log.jsonl afresh (keep_through_step < 0) or keeps its lines up to that step.
void runlog_open(RunLog *log, const char *dir, long keep_through_step);
// Writes the record as one line and flushes; takes ownership of it.
void runlog_write(RunLog *log, cJSON *record);
void runlog_close(RunLog *log);

// "1:02:03" or "2:03" for a duration in seconds.
void format_duration(char *out, size_t cap, double seconds);

#ifdef __cplusplus
}
#endif
