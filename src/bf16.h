/* bf16 <-> f32 conversion on the host: round to nearest even, NaN kept
 * NaN (quiet). Shared by the library, the reference, tests and tools. */
#ifndef GDN_BF16_H
#define GDN_BF16_H

#include <stdint.h>
#include <string.h>

static inline float gdn_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t gdn_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* f rounded through bf16 and back. */
static inline float gdn_round_bf16(float f) { return gdn_bf16_to_f32(gdn_f32_to_bf16(f)); }

#endif
