// JSON configuration: loading with "extends", command-line overrides, and typed key
// tables. A key table is the single description of a config section: it gives each
// key's type, default, allowed range and one line of documentation, and it is what
// validates user input and what `train_gpt --help-config` prints.
#pragma once
#include <stddef.h>

#include <cJSON.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KEY_INT,     // int
    KEY_FLOAT,   // float
    KEY_BOOL,    // int (0/1)
    KEY_STRING,  // char * (owned copy)
    KEY_CHOICE,  // int: index into the '|'-separated choices
    KEY_JSON,    // const cJSON *: any JSON value, validated by the owner
} KeyType;

typedef struct {
    const char *name;
    KeyType type;
    size_t offset;        // of the field in the destination struct
    const char *def;      // default as JSON text; NULL: the key is required
    const char *range;    // for numbers, e.g. "[0,1)", "(0,inf)"; NULL: any value
    const char *choices;  // for KEY_CHOICE, e.g. "constant|cosine|linear|wsd"
    const char *doc;
} ConfigKey;

#define KEY_END {NULL, KEY_INT, 0, NULL, NULL, NULL, NULL}

// The resolved JSON tree of a run and where each key came from, for error messages.
typedef struct JsonConfig JsonConfig;

// Loads `path`, following "extends" chains (relative to each file), then applies
// overrides of the form "dotted.key=value" (value parsed as JSON when it parses, else a string).
JsonConfig *json_config_load(const char *path, const char *const *overrides, int n_overrides);
// Same, starting from an already parsed tree (e.g. a checkpoint's config); takes ownership.
JsonConfig *json_config_from_tree(cJSON *root, const char *origin, const char *const *overrides, int n_overrides);
void json_config_free(JsonConfig *c);

cJSON *json_config_root(const JsonConfig *c);
// The member `name` of the root object (a section), or NULL.
const cJSON *json_config_section(const JsonConfig *c, const char *name);
// The file (or "--set ...") that set `path` ("optimizer.beta1"), or the main file.
const char *json_config_origin(const JsonConfig *c, const char *path);

// Fills `out` from `obj` (a JSON object or NULL) using the key table: defaults first,
// then the object's members. Unknown members are fatal unless listed in `allowed_extra`
// (NULL-terminated, may be NULL). `path` names the section in messages ("train").
void config_read_keys(const JsonConfig *c, const cJSON *obj, const char *path, const ConfigKey *keys,
                      void *out, const char *const *allowed_extra);

// Fatal error about one key, naming the file it came from:  "<file>: <path>: <message>".
void config_key_error(const JsonConfig *c, const char *path, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

// Prints a key table as documentation (name, type, default, range, doc).
void config_print_keys(const char *section, const ConfigKey *keys);

#ifdef __cplusplus
}
#endif
