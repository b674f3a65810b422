#define _GNU_SOURCE
#include "runlog.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fileio.h"

void runlog_open(RunLog *log, const char *dir, long keep_through_step) {
    snprintf(log->path, sizeof log->path, "%s/log.jsonl", dir);
    if (keep_through_step >= 0 && file_exists(log->path)) {
        // Rewrite the kept prefix atomically, then append to it.
        FILE *in = xfopen(log->path, "r");
        AtomicFile af = atomic_open(log->path);
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, in) > 0) {
            cJSON *rec = cJSON_Parse(line);
            const cJSON *step = rec ? cJSON_GetObjectItemCaseSensitive(rec, "step") : NULL;
            if (cJSON_IsNumber(step) && step->valuedouble <= (double)keep_through_step) fputs(line, af.f);
            cJSON_Delete(rec);
        }
        free(line);
        fclose(in);
        atomic_commit(&af);
        log->f = xfopen(log->path, "a");
    } else {
        log->f = xfopen(log->path, "w");
    }
}

void runlog_write(RunLog *log, cJSON *record) {
    char *text = cJSON_PrintUnformatted(record);
    fprintf(log->f, "%s\n", text);
    fflush(log->f);
    free(text);
    cJSON_Delete(record);
}

void runlog_close(RunLog *log) {
    if (log->f) fclose(log->f);
    log->f = NULL;
}

void format_duration(char *out, size_t cap, double seconds) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600) snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else snprintf(out, cap, "%ld:%02ld", s / 60, s % 60);
}
