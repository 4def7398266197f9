// Throwaway harness around ggml's own K-quant quantizers, for benchmarks/kquant_codecs.py.
// It is built outside the repository against a checkout of ggml (see build.sh) and never linked
// into squeezegen. usage: harness TYPE MODE in.f32 n_weights out.bin
//   TYPE: q2_K q3_K q4_K q5_K q6_K q8_0; MODE: ref (quantize_row_*_ref) | ones (quantize_* with
//   an all-ones importance matrix, what ggml_quantize_chunk runs). Rows of 4096 weights.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml-quants.h"

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: harness TYPE ref|ones in.f32 n out.bin\n"); return 2; }
    const char *type = argv[1];
    const int ref = strcmp(argv[2], "ref") == 0;
    const long n = atol(argv[4]), n_per_row = 4096, nrow = n / n_per_row;
    float *x = malloc(n * sizeof(float)), *w = malloc(n_per_row * sizeof(float));
    void *out = malloc(n * 2);
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(x, sizeof(float), n, f) != (size_t)n) { fprintf(stderr, "cannot read %s\n", argv[3]); return 1; }
    fclose(f);
    for (long i = 0; i < n_per_row; i++) w[i] = 1.0f;
    size_t bytes = 0;
#define RUN(T, QK, BT) if (!strcmp(type, #T)) { \
        if (ref) { quantize_row_##T##_ref(x, out, n); bytes = n / QK * sizeof(BT); } \
        else bytes = quantize_##T(x, out, nrow, n_per_row, w); }
    RUN(q2_K, 256, block_q2_K) RUN(q3_K, 256, block_q3_K) RUN(q4_K, 256, block_q4_K)
    RUN(q5_K, 256, block_q5_K) RUN(q6_K, 256, block_q6_K) RUN(q8_0, 32, block_q8_0)
    if (!bytes) { fprintf(stderr, "unknown type %s\n", type); return 2; }
    f = fopen(argv[5], "wb");
    fwrite(out, 1, bytes, f);
    fclose(f);
    return 0;
}
