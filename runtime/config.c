#define _GNU_SOURCE
#include "config.h"

#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct {
    char *path;    // dotted path, e.g. "optimizer.beta1"
    char *origin;  // file name or "--set optimizer.beta1=..."
} Origin;

struct JsonConfig {
    cJSON *root;
    char *main_file;
    Origin *origins;
    int n_origins, cap_origins;
};

static void record_origin(JsonConfig *c, const char *path, const char *origin) {
    for (int i = 0; i < c->n_origins; i++) {
        if (strcmp(c->origins[i].path, path) == 0) {
            free(c->origins[i].origin);
            c->origins[i].origin = xstrdup(origin);
            return;
        }
    }
    if (c->n_origins == c->cap_origins) {
        c->cap_origins = c->cap_origins ? 2 * c->cap_origins : 64;
        c->origins = (Origin *)xrealloc(c->origins, (size_t)c->cap_origins * sizeof(Origin));
    }
    c->origins[c->n_origins++] = (Origin){xstrdup(path), xstrdup(origin)};
}

static void join_path(char *dst, size_t cap, const char *prefix, const char *key) {
    if (prefix[0]) snprintf(dst, cap, "%s.%s", prefix, key);
    else snprintf(dst, cap, "%s", key);
}

static void record_tree(JsonConfig *c, const cJSON *node, const char *path, const char *origin) {
    if (path[0]) record_origin(c, path, origin);
    if (!cJSON_IsObject(node)) return;
    for (const cJSON *m = node->child; m; m = m->next) {
        char sub[512];
        join_path(sub, sizeof sub, path, m->string);
        record_tree(c, m, sub, origin);
    }
}

// An object whose "name" changes (e.g. optimizer adamw -> lion) is a different thing:
// it starts afresh instead of inheriting the old one's keys, which it would not know.
static int renamed(const cJSON *old_obj, const cJSON *new_name) {
    const cJSON *old_name = cJSON_GetObjectItemCaseSensitive(old_obj, "name");
    return cJSON_IsString(old_name) && cJSON_IsString(new_name) && strcmp(old_name->valuestring, new_name->valuestring) != 0;
}

// Deep merge: objects merge member by member, anything else (arrays included) replaces,
// and null deletes the key (so a child config can drop a key its base sets).
static void merge_into(JsonConfig *c, cJSON *dst, const cJSON *src, const char *path, const char *origin) {
    for (const cJSON *m = src->child; m; m = m->next) {
        char sub[512];
        join_path(sub, sizeof sub, path, m->string);
        cJSON *existing = cJSON_GetObjectItemCaseSensitive(dst, m->string);
        if (cJSON_IsNull(m)) {
            cJSON_DeleteItemFromObjectCaseSensitive(dst, m->string);
        } else if (existing && cJSON_IsObject(existing) && cJSON_IsObject(m) &&
                   !renamed(existing, cJSON_GetObjectItemCaseSensitive(m, "name"))) {
            record_origin(c, sub, origin);
            merge_into(c, existing, m, sub, origin);
        } else {
            cJSON *copy = cJSON_Duplicate(m, 1);
            if (existing) cJSON_ReplaceItemInObjectCaseSensitive(dst, m->string, copy);
            else cJSON_AddItemToObject(dst, m->string, copy);
            record_tree(c, m, sub, origin);
        }
    }
}

static cJSON *parse_json_file(const char *path) {
    char *text = read_file(path, NULL);
    const char *err = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &err, 1);
    if (!root) {
        int line = 1, col = 1;
        for (const char *p = text; err && p < err; p++) {
            if (*p == '\n') line++, col = 1;
            else col++;
        }
        free(text);
        fatal("%s:%d:%d: invalid JSON", path, line, col);
    }
    free(text);
    if (!cJSON_IsObject(root)) fatal("%s: a config must be a JSON object", path);
    return root;
}

// Resolves "extends" recursively: the base is merged first, then this file on top.
static void load_with_extends(JsonConfig *c, cJSON *acc, const char *path, int depth) {
    if (depth > 16) fatal("%s: \"extends\" chain is deeper than 16 files (a cycle?)", path);
    cJSON *root = parse_json_file(path);
    cJSON *ext = cJSON_DetachItemFromObjectCaseSensitive(root, "extends");
    if (ext) {
        if (!cJSON_IsString(ext)) fatal("%s: extends: must be a string (a path)", path);
        char base[4096];
        if (ext->valuestring[0] == '/') {
            snprintf(base, sizeof base, "%s", ext->valuestring);
        } else {
            char *copy = xstrdup(path);
            snprintf(base, sizeof base, "%s/%s", dirname(copy), ext->valuestring);
            free(copy);
        }
        if (!file_exists(base)) fatal("%s: extends: base config %s not found", path, base);
        load_with_extends(c, acc, base, depth + 1);
        cJSON_Delete(ext);
    }
    merge_into(c, acc, root, "", path);
    cJSON_Delete(root);
}

// "groups[1]" -> name "groups", index 1; a plain part gives index -1.
static int split_index(char *part, const char *assignment) {
    char *open = strchr(part, '[');
    if (!open) return -1;
    char *end;
    long idx = strtol(open + 1, &end, 10);
    if (end == open + 1 || *end != ']' || end[1] != '\0' || idx < 0) fatal("--set %s: bad list index in \"%s\"", assignment, part);
    *open = '\0';
    return (int)idx;
}

static void apply_override(JsonConfig *c, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment) fatal("--set %s: expected section.key=value", assignment);
    char key[512];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof key) fatal("--set %s: key too long", assignment);
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    const char *text = eq + 1;
    cJSON *value = cJSON_Parse(text);
    if (!value) value = cJSON_CreateString(text);

    char origin[600];
    snprintf(origin, sizeof origin, "--set %s", key);
    char path[512] = "";
    snprintf(path, sizeof path, "%s", key);
    cJSON *node = c->root;
    char *save = NULL, *part = strtok_r(key, ".", &save);
    while (part) {
        char *next = strtok_r(NULL, ".", &save);
        const int index = split_index(part, assignment);
        cJSON *child = cJSON_GetObjectItemCaseSensitive(node, part);
        if (index >= 0) {  // an element of a list that the config already has
            if (!cJSON_IsArray(child) || index >= cJSON_GetArraySize(child))
                fatal("--set %s: %s has no element %d", assignment, part, index);
            if (!next) {
                cJSON_ReplaceItemInArray(child, index, value);
                record_tree(c, value, path, origin);
                return;
            }
            node = cJSON_GetArrayItem(child, index);
            if (!cJSON_IsObject(node)) fatal("--set %s: %s[%d] is not an object", assignment, part, index);
            part = next;
            continue;
        }
        if (!next) {
            if (strcmp(part, "name") == 0 && renamed(node, value)) {
                // Same rule as merging: a renamed object starts afresh.
                while (node->child) cJSON_Delete(cJSON_DetachItemViaPointer(node, node->child));
                child = NULL;
            }
            if (cJSON_IsNull(value)) {
                cJSON_DeleteItemFromObjectCaseSensitive(node, part);
                cJSON_Delete(value);
            } else {
                if (child) cJSON_ReplaceItemInObjectCaseSensitive(node, part, value);
                else cJSON_AddItemToObject(node, part, value);
                record_tree(c, value, path, origin);
            }
            return;
        }
        if (!child) {
            child = cJSON_CreateObject();
            cJSON_AddItemToObject(node, part, child);
        } else if (!cJSON_IsObject(child)) {
            fatal("--set %s: %s is not a section", assignment, part);
        }
        node = child;
        part = next;
    }
}

JsonConfig *json_config_from_tree(cJSON *root, const char *origin, const char *const *overrides, int n_overrides) {
    JsonConfig *c = (JsonConfig *)xcalloc(1, sizeof *c);
    c->root = root;
    c->main_file = xstrdup(origin);
    record_tree(c, root, "", origin);
    for (int i = 0; i < n_overrides; i++) apply_override(c, overrides[i]);
    return c;
}

JsonConfig *json_config_load(const char *path, const char *const *overrides, int n_overrides) {
    if (!file_exists(path)) fatal("%s: config file not found", path);
    JsonConfig *c = (JsonConfig *)xcalloc(1, sizeof *c);
    c->root = cJSON_CreateObject();
    c->main_file = xstrdup(path);
    load_with_extends(c, c->root, path, 0);
    for (int i = 0; i < n_overrides; i++) apply_override(c, overrides[i]);
    return c;
}

void json_config_free(JsonConfig *c) {
    if (!c) return;
    cJSON_Delete(c->root);
    for (int i = 0; i < c->n_origins; i++) {
        free(c->origins[i].path);
        free(c->origins[i].origin);
    }
    free(c->origins);
    free(c->main_file);
    free(c);
}

cJSON *json_config_root(const JsonConfig *c) { return c->root; }

const cJSON *json_config_section(const JsonConfig *c, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(c->root, name);
}

const char *json_config_origin(const JsonConfig *c, const char *path) {
    // The longest recorded prefix of `path` wins ("optimizer.groups[1].lr" -> "optimizer.groups").
    const char *best = c->main_file;
    size_t best_len = 0;
    for (int i = 0; i < c->n_origins; i++) {
        size_t n = strlen(c->origins[i].path);
        if (n > best_len && strncmp(path, c->origins[i].path, n) == 0 &&
            (path[n] == '\0' || path[n] == '.' || path[n] == '[')) {
            best = c->origins[i].origin;
            best_len = n;
        }
    }
    return best;
}

void config_key_error(const JsonConfig *c, const char *path, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fatal("%s: %s: %s", json_config_origin(c, path), path, msg);
}

typedef struct {
    double lo, hi;
    int lo_open, hi_open;
} Range;

static double parse_bound(const char *s, const char *range) {
    while (*s == ' ') s++;
    if (strncmp(s, "-inf", 4) == 0) return -INFINITY;
    if (strncmp(s, "inf", 3) == 0) return INFINITY;
    char *end;
    double v = strtod(s, &end);
    if (end == s) fatal("internal: bad range \"%s\" in a key table", range);
    return v;
}

static Range parse_range(const char *range) {
    size_t n = strlen(range);
    const char *comma = strchr(range, ',');
    if (n < 5 || !comma || (range[0] != '[' && range[0] != '(') || (range[n - 1] != ']' && range[n - 1] != ')'))
        fatal("internal: bad range \"%s\" in a key table", range);
    return (Range){parse_bound(range + 1, range), parse_bound(comma + 1, range), range[0] == '(', range[n - 1] == ')'};
}

static int in_range(double v, const char *range) {
    if (!range) return 1;
    Range r = parse_range(range);
    if (r.lo_open ? !(v > r.lo) : !(v >= r.lo)) return 0;
    if (r.hi_open ? !(v < r.hi) : !(v <= r.hi)) return 0;
    return 1;
}

static int choice_index(const char *choices, const char *value) {
    int idx = 0;
    size_t vlen = strlen(value);
    for (const char *p = choices; *p; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vlen && strncmp(p, value, len) == 0) return idx;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

static const char *type_name(KeyType t) {
    switch (t) {
    case KEY_INT: return "integer";
    case KEY_FLOAT: return "number";
    case KEY_BOOL: return "boolean";
    case KEY_STRING: return "string";
    case KEY_CHOICE: return "string";
    case KEY_JSON: return "JSON value";
    }
    return "?";
}

static void assign_key(const JsonConfig *c, const ConfigKey *k, const cJSON *v, const char *path, void *out) {
    char *field = (char *)out + k->offset;
    switch (k->type) {
    case KEY_INT: {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 2147483647.0)
            config_key_error(c, path, "must be an integer");
        if (!in_range(v->valuedouble, k->range)) config_key_error(c, path, "%g is out of range %s", v->valuedouble, k->range);
        *(int *)field = (int)v->valuedouble;
        break;
    }
    case KEY_FLOAT:
        if (!cJSON_IsNumber(v)) config_key_error(c, path, "must be a number");
        if (!in_range(v->valuedouble, k->range)) config_key_error(c, path, "%g is out of range %s", v->valuedouble, k->range);
        *(float *)field = (float)v->valuedouble;
        break;
    case KEY_BOOL:
        if (!cJSON_IsBool(v)) config_key_error(c, path, "must be true or false");
        *(int *)field = cJSON_IsTrue(v);
        break;
    case KEY_STRING:
        if (!cJSON_IsString(v)) config_key_error(c, path, "must be a string");
        *(char **)field = xstrdup(v->valuestring);
        break;
    case KEY_CHOICE: {
        int idx = cJSON_IsString(v) ? choice_index(k->choices, v->valuestring) : -1;
        if (idx < 0) config_key_error(c, path, "must be one of %s", k->choices);
        *(int *)field = idx;
        break;
    }
    case KEY_JSON:
        *(const cJSON **)field = v;
        break;
    }
}

void config_read_keys(const JsonConfig *c, const cJSON *obj, const char *path, const ConfigKey *keys,
                      void *out, const char *const *allowed_extra) {
    if (obj && !cJSON_IsObject(obj)) config_key_error(c, path, "must be a JSON object");
    for (const ConfigKey *k = keys; k->name; k++) {
        char sub[512];
        join_path(sub, sizeof sub, path, k->name);
        const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, k->name) : NULL;
        if (v && cJSON_IsNull(v) && k->type != KEY_JSON) v = NULL;
        if (v) {
            assign_key(c, k, v, sub, out);
        } else if (k->def) {
            cJSON *d = cJSON_Parse(k->def);
            if (!d) fatal("internal: bad default for key %s", sub);
            assign_key(c, k, d, sub, out);
            // A KEY_JSON default would dangle; tables use NULL for "absent" JSON keys instead.
            if (k->type == KEY_JSON) *(const cJSON **)((char *)out + k->offset) = NULL;
            cJSON_Delete(d);
        } else if (k->type == KEY_JSON) {
            *(const cJSON **)((char *)out + k->offset) = NULL;
        } else {
            fatal("%s: %s: required key is missing", json_config_origin(c, path), sub);
        }
    }
    if (!obj) return;
    for (const cJSON *m = obj->child; m; m = m->next) {
        int known = 0;
        for (const ConfigKey *k = keys; k->name && !known; k++) known = strcmp(k->name, m->string) == 0;
        for (const char *const *e = allowed_extra; e && *e && !known; e++) known = strcmp(*e, m->string) == 0;
        if (!known) {
            char sub[512];
            join_path(sub, sizeof sub, path, m->string);
            config_key_error(c, sub, "unknown key (see `train_gpt --help-config`)");
        }
    }
}

void config_print_keys(const char *section, const ConfigKey *keys) {
    for (const ConfigKey *k = keys; k->name; k++) {
        char full[128];
        snprintf(full, sizeof full, "%s.%s", section, k->name);
        const char *type = k->type == KEY_CHOICE ? k->choices : type_name(k->type);
        const char *def = k->def ? k->def : k->type == KEY_JSON ? "(none)" : "(required)";
        printf("  %-32s %-26s default %-10s%s%s  %s\n", full, type, def,
               k->range ? " range " : "", k->range ? k->range : "", k->doc ? k->doc : "");
    }
}
