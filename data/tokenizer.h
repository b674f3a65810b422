// Tokenizers and the vocabulary file.
//   char: the distinct characters (UTF-8 code points) of the corpus, sorted by code point,
//         are ids 0..K-1 (65 for tinyshakespeare, as nanoGPT's shakespeare_char).
//   byte: ids are the 256 byte values; any input is accepted.
// vocab.json, written next to the shards:
//   {"tokenizer": "char"|"byte", "vocab_size": K, "tokens": [K strings]}
// For char, tokens[i] is the one-character string of id i. For byte, tokens[i] is the
// character U+00ii (JSON strings must be valid Unicode), but id i decodes to the raw byte i,
// so a sequence of byte tokens decodes back to the original bytes.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TOKENIZER_CHAR = 1, TOKENIZER_BYTE = 2 } TokenizerKind;

typedef struct {
    TokenizerKind kind;
    int vocab_size;
    uint32_t *codepoints;  // codepoints[id], strictly increasing (byte: codepoints[id] = id)
    char (*bytes)[5];      // what id decodes to, NUL-terminated (byte 0 decodes to one 0 byte)
    uint8_t *lens;         // length of bytes[id]: 1..4
    int32_t ascii[128];    // char: id of each ASCII code point, -1 if absent
} Tokenizer;

// "char" or "byte".
const char *tokenizer_kind_name(TokenizerKind kind);

// Builds a tokenizer of `kind` ("char" or "byte"; anything else is fatal). char collects the
// code points of text (invalid UTF-8 is fatal, naming `source` and the byte offset); byte
// ignores the text.
void tokenizer_build(Tokenizer *tok, const char *kind, const char *text, size_t len, const char *source);

// Encodes text; returns a malloc'd array of *n_out ids. A character missing from the
// vocabulary or invalid UTF-8 (char) is fatal, naming `source` and the byte offset.
uint32_t *tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int64_t *n_out, const char *source);

// What one id decodes to: UTF-8 (char) or one raw byte (byte), with its length in *len_out
// (may be NULL); the string is NUL-terminated and lives as long as the tokenizer. An id
// outside 0..vocab_size-1 is fatal.
const char *tokenizer_decode(const Tokenizer *tok, int id, int *len_out);
// Decodes n ids into a malloc'd NUL-terminated buffer; *len_out (may be NULL) gets its length.
char *tokenizer_decode_all(const Tokenizer *tok, const int *ids, int64_t n, size_t *len_out);

int tokenizer_vocab_size(const Tokenizer *tok);

// vocab.json; loading validates everything and a malformed file is fatal, naming it.
void tokenizer_save(const Tokenizer *tok, const char *path);
void tokenizer_load(Tokenizer *tok, const char *path);
void tokenizer_free(Tokenizer *tok);

#ifdef __cplusplus
}
#endif
