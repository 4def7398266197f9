/* Q4_K decode for CPU tensors: one pass over each 144-byte super-block, written straight in the
 * compute dtype (float32, or bfloat16 rounded to nearest even as torch's cast does).
 *
 * Layout (ggml's block_q4_K): fp16 d, fp16 dmin, 12 bytes of eight 6-bit scales and mins, 128
 * bytes of 4-bit levels; byte 32k+l holds level l of sub-block 2k (low nibble) and of 2k+1 (high).
 * Exactness: d*sc, dmin*m and (d*sc)*q are exact in float32 (11 + 6 + 4 significant bits), so the
 * one rounding is the subtraction, fused or not: the result equals the numpy and torch decodes
 * bit for bit. Plain C (no torch headers), so it builds in a fraction of a second on first use;
 * the inner loops are written for the compiler to vectorise. */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define QK_K 256
#define BLOCK_BYTES 144

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    float f;
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in float32 */
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    bits = exp == 0x1F ? (sign | 0x7F800000u | (man << 13)) : (sign | ((exp + 112u) << 23) | (man << 13));
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even (inputs are finite) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The eight sub-block steps d*sc_j and offsets dmin*m_j of one super-block (ggml's get_scale_min_k4). */
static inline void block_steps(const uint8_t *b, float step[8], float off[8]) {
    uint16_t hd, hm;
    memcpy(&hd, b, 2);
    memcpy(&hm, b + 2, 2);
    const float d = half_to_float(hd), dmin = half_to_float(hm);
    const uint8_t *s = b + 4;
    for (int j = 0; j < 4; j++) {
        step[j] = d * (float)(s[j] & 63);
        off[j] = dmin * (float)(s[j + 4] & 63);
        step[j + 4] = d * (float)((s[j + 8] & 0x0F) | ((s[j] >> 6) << 4));
        off[j + 4] = dmin * (float)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

void q4k_decode_f32(const uint8_t *blocks, float *out, int64_t n_blocks) {
    for (int64_t i = 0; i < n_blocks; i++) {
        const uint8_t *b = blocks + i * BLOCK_BYTES, *qs = b + 16;
        float step[8], off[8], *o = out + i * QK_K;
        block_steps(b, step, off);
        for (int k = 0; k < 4; k++) {
            const float s0 = step[2 * k], o0 = off[2 * k], s1 = step[2 * k + 1], o1 = off[2 * k + 1];
            for (int l = 0; l < 32; l++) {
                const uint8_t byte = qs[32 * k + l];
                o[64 * k + l] = s0 * (float)(byte & 15) - o0;
                o[64 * k + 32 + l] = s1 * (float)(byte >> 4) - o1;
            }
        }
    }
}

void q4k_decode_bf16(const uint8_t *blocks, uint16_t *out, int64_t n_blocks) {
    for (int64_t i = 0; i < n_blocks; i++) {
        const uint8_t *b = blocks + i * BLOCK_BYTES, *qs = b + 16;
        float step[8], off[8];
        uint16_t *o = out + i * QK_K;
        block_steps(b, step, off);
        for (int k = 0; k < 4; k++) {
            const float s0 = step[2 * k], o0 = off[2 * k], s1 = step[2 * k + 1], o1 = off[2 * k + 1];
            for (int l = 0; l < 32; l++) {
                const uint8_t byte = qs[32 * k + l];
                o[64 * k + l] = float_to_bf16(s0 * (float)(byte & 15) - o0);
                o[64 * k + 32 + l] = float_to_bf16(s1 * (float)(byte >> 4) - o1);
            }
        }
    }
}
