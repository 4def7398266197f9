// The few ggml.c symbols ggml-quants.c links against (sizes of the types the harness runs).
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#define GGML_COMMON_DECL_C
#include "ggml.h"
void ggml_abort(const char *file, int line, const char *fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
#include "ggml-common.h"
static size_t bsz(enum ggml_type t, int64_t *blck) {
    switch (t) {
    case GGML_TYPE_Q2_K: *blck = 256; return sizeof(block_q2_K);
    case GGML_TYPE_Q3_K: *blck = 256; return sizeof(block_q3_K);
    case GGML_TYPE_Q4_K: *blck = 256; return sizeof(block_q4_K);
    case GGML_TYPE_Q5_K: *blck = 256; return sizeof(block_q5_K);
    case GGML_TYPE_Q6_K: *blck = 256; return sizeof(block_q6_K);
    case GGML_TYPE_Q8_0: *blck = 32; return sizeof(block_q8_0);
    default: abort();
    }
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) { int64_t b; size_t s = bsz(t, &b); return s * ne / b; }
size_t ggml_type_size(enum ggml_type t) { int64_t b; return bsz(t, &b); }
const char * ggml_type_name(enum ggml_type t) { return "?"; }
