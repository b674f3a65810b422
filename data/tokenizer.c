#define _GNU_SOURCE
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "../runtime/common.h"

#define MAX_CODEPOINT 0x10FFFFu

// Decodes one strictly valid UTF-8 sequence (no overlongs, surrogates or values past
// U+10FFFF) at s[0..n); returns its length and sets *cp, or returns 0 if invalid.
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) len = 2, v = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, v = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > MAX_CODEPOINT || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

const char *tokenizer_kind_name(TokenizerKind kind) { return kind == TOKENIZER_BYTE ? "byte" : "char"; }

// Fills the decode tables from kind and codepoints[0..vocab_size).
static void finish(Tokenizer *tok) {
    int K = tok->vocab_size;
    tok->bytes = (char(*)[5])xcalloc((size_t)K, 5);
    tok->lens = (uint8_t *)xmalloc((size_t)K);
    for (int i = 0; i < 128; i++) tok->ascii[i] = -1;
    for (int id = 0; id < K; id++) {
        uint32_t cp = tok->codepoints[id];
        if (tok->kind == TOKENIZER_BYTE) {
            tok->bytes[id][0] = (char)cp;
            tok->lens[id] = 1;
        } else {
            tok->lens[id] = (uint8_t)utf8_encode(cp, tok->bytes[id]);
            if (cp < 128) tok->ascii[cp] = id;
        }
    }
}

static void init_byte(Tokenizer *tok) {
    memset(tok, 0, sizeof *tok);
    tok->kind = TOKENIZER_BYTE;
    tok->vocab_size = 256;
    tok->codepoints = (uint32_t *)xmalloc(256 * sizeof(uint32_t));
    for (uint32_t i = 0; i < 256; i++) tok->codepoints[i] = i;
    finish(tok);
}

void tokenizer_build(Tokenizer *tok, const char *kind, const char *text, size_t len, const char *source) {
    if (strcmp(kind, "byte") == 0) {
        init_byte(tok);
        return;
    }
    if (strcmp(kind, "char") != 0) fatal("unknown tokenizer \"%s\" (known: char, byte)", kind);
    memset(tok, 0, sizeof *tok);
    tok->kind = TOKENIZER_CHAR;
    size_t words = (MAX_CODEPOINT + 1 + 63) / 64;
    uint64_t *seen = (uint64_t *)xcalloc(words, sizeof(uint64_t));
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int n = utf8_decode(s + i, len - i, &cp);
        if (!n) fatal("%s: invalid UTF-8 at byte offset %zu (byte 0x%02x): use the byte tokenizer", source, i, s[i]);
        seen[cp >> 6] |= 1ull << (cp & 63);
        i += (size_t)n;
    }
    int K = 0;
    for (size_t w = 0; w < words; w++) K += __builtin_popcountll(seen[w]);
    if (K == 0) fatal("%s: no text to build a char vocabulary from", source);
    tok->vocab_size = K;
    tok->codepoints = (uint32_t *)xmalloc((size_t)K * sizeof(uint32_t));
    int id = 0;
    for (size_t w = 0; w < words; w++)
        for (uint64_t bits = seen[w]; bits; bits &= bits - 1)
            tok->codepoints[id++] = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(bits));
    free(seen);
    finish(tok);
}

static int find_codepoint(const Tokenizer *tok, uint32_t cp) {
    if (cp < 128) return tok->ascii[cp];
    int lo = 0, hi = tok->vocab_size - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (tok->codepoints[mid] == cp) return mid;
        if (tok->codepoints[mid] < cp) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

uint32_t *tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int64_t *n_out, const char *source) {
    uint32_t *ids = (uint32_t *)xmalloc((len ? len : 1) * sizeof(uint32_t));
    const unsigned char *s = (const unsigned char *)text;
    int64_t n = 0;
    if (tok->kind == TOKENIZER_BYTE) {
        for (size_t i = 0; i < len; i++) ids[n++] = s[i];
    } else {
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            int m = utf8_decode(s + i, len - i, &cp);
            if (!m) fatal("%s: invalid UTF-8 at byte offset %zu (byte 0x%02x)", source, i, s[i]);
            int id = find_codepoint(tok, cp);
            if (id < 0)
                fatal("%s: character U+%04X at byte offset %zu is not in the vocabulary (%d characters)", source, cp, i,
                      tok->vocab_size);
            ids[n++] = (uint32_t)id;
            i += (size_t)m;
        }
    }
    *n_out = n;
    return ids;
}

const char *tokenizer_decode(const Tokenizer *tok, int id, int *len_out) {
    if (id < 0 || id >= tok->vocab_size)
        fatal("token id %d is outside the %s vocabulary of %d tokens", id, tokenizer_kind_name(tok->kind),
              tok->vocab_size);
    if (len_out) *len_out = tok->lens[id];
    return tok->bytes[id];
}

char *tokenizer_decode_all(const Tokenizer *tok, const int *ids, int64_t n, size_t *len_out) {
    char *out = (char *)xmalloc((size_t)n * 4 + 1);
    size_t len = 0;
    for (int64_t i = 0; i < n; i++) {
        int m;
        const char *b = tokenizer_decode(tok, ids[i], &m);
        memcpy(out + len, b, (size_t)m);
        len += (size_t)m;
    }
    out[len] = '\0';
    if (len_out) *len_out = len;
    return out;
}

int tokenizer_vocab_size(const Tokenizer *tok) { return tok->vocab_size; }

// Writes code point cp as the contents of a JSON string.
static void json_char(FILE *f, uint32_t cp) {
    switch (cp) {
        case '"': fputs("\\\"", f); return;
        case '\\': fputs("\\\\", f); return;
        case '\n': fputs("\\n", f); return;
        case '\t': fputs("\\t", f); return;
        case '\r': fputs("\\r", f); return;
        default: break;
    }
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
        fprintf(f, "\\u%04x", cp);
        return;
    }
    char buf[4];
    int n = utf8_encode(cp, buf);
    fwrite(buf, 1, (size_t)n, f);
}

void tokenizer_save(const Tokenizer *tok, const char *path) {
    size_t tmp_len = strlen(path) + 5;
    char *tmp = (char *)xmalloc(tmp_len);
    snprintf(tmp, tmp_len, "%s.tmp", path);
    FILE *f = xfopen(tmp, "wb");
    fprintf(f, "{\n  \"tokenizer\": \"%s\",\n  \"vocab_size\": %d,\n  \"tokens\": [", tokenizer_kind_name(tok->kind),
            tok->vocab_size);
    for (int id = 0; id < tok->vocab_size; id++) {
        if (id % 16 == 0) fputs(id ? ",\n    " : "\n    ", f);
        else fputs(", ", f);
        fputc('"', f);
        json_char(f, tok->codepoints[id]);
        fputc('"', f);
    }
    fputs("\n  ]\n}\n", f);
    if (ferror(f) || fclose(f) != 0) fatal("%s: write failed (%s)", tmp, strerror(errno));
    if (rename(tmp, path) != 0) fatal("%s: cannot rename %s into place (%s)", path, tmp, strerror(errno));
    free(tmp);
}

void tokenizer_load(Tokenizer *tok, const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        fatal("%s: malformed JSON near byte %ld: not a vocabulary file", path, off);
    }
    if (!cJSON_IsObject(root)) fatal("%s: vocabulary file must hold a JSON object", path);
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(root, "vocab_size");
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsString(kind)) fatal("%s: missing string field \"tokenizer\" (\"char\" or \"byte\")", path);
    memset(tok, 0, sizeof *tok);
    if (strcmp(kind->valuestring, "char") == 0) tok->kind = TOKENIZER_CHAR;
    else if (strcmp(kind->valuestring, "byte") == 0) tok->kind = TOKENIZER_BYTE;
    else fatal("%s: unknown tokenizer \"%s\" (known: char, byte)", path, kind->valuestring);
    if (!cJSON_IsNumber(size) || size->valuedouble != floor(size->valuedouble) || size->valuedouble < 1 ||
        size->valuedouble > MAX_CODEPOINT + 1.0)
        fatal("%s: \"vocab_size\" must be a positive integer", path);
    int K = (int)size->valuedouble;
    if (tok->kind == TOKENIZER_BYTE && K != 256) fatal("%s: a byte vocabulary has 256 tokens, not %d", path, K);
    if (!cJSON_IsArray(tokens)) fatal("%s: missing array field \"tokens\"", path);
    int count = cJSON_GetArraySize(tokens);
    if (count != K) fatal("%s: \"tokens\" has %d entries but \"vocab_size\" is %d", path, count, K);
    tok->vocab_size = K;
    tok->codepoints = (uint32_t *)xmalloc((size_t)K * sizeof(uint32_t));
    int id = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, tokens) {
        if (!cJSON_IsString(item)) fatal("%s: token %d is not a string", path, id);
        const unsigned char *s = (const unsigned char *)item->valuestring;
        size_t n = strlen((const char *)s);
        uint32_t cp = 0;
        // cJSON ends strings at NUL, so "\u0000" reads as "": allowed only for id 0,
        // the only place U+0000 can sit in a sorted vocabulary.
        if (n == 0) {
            if (id != 0) fatal("%s: token %d is an empty string", path, id);
        } else if (utf8_decode(s, n, &cp) != (int)n) {
            fatal("%s: token %d is not exactly one character", path, id);
        }
        if (tok->kind == TOKENIZER_BYTE && cp != (uint32_t)id)
            fatal("%s: byte token %d must be the character U+%04X, not U+%04X", path, id, (unsigned)id, cp);
        if (id > 0 && cp <= tok->codepoints[id - 1])
            fatal("%s: tokens must be distinct characters sorted by code point (token %d is U+%04X after U+%04X)",
                  path, id, cp, tok->codepoints[id - 1]);
        tok->codepoints[id++] = cp;
    }
    cJSON_Delete(root);
    free(text);
    finish(tok);
}

void tokenizer_free(Tokenizer *tok) {
    free(tok->codepoints);
    free(tok->bytes);
    free(tok->lens);
    memset(tok, 0, sizeof *tok);
}
