/*
 * BLAKE3-256 of whole 4 KiB pages, sixteen pages at a time, one 32-bit lane of a 512-bit register
 * per page (AVX-512F). The same scheme as blake3_x8.h (chunk c of every page compressed in lane
 * order, then the two parent levels across lanes in place); only the width and the transposes
 * differ. Every rotation is one vprord.
 *
 * Why a second width: on a core with full-width 512-bit units (AMD Zen 5 here), one instruction
 * does the work of two 256-bit ones, and the transposes per page are no dearer; on a core that
 * splits 512-bit operations in two it is no slower than the 8-lane kernel (bench/RESULTS.md, issue
 * 12, session 18).
 *
 * Included by blake3_pages.c once, inside its x86 section; uses its BLAKE3 constants.
 */

#define X16_ATTR __attribute__((target("avx512f")))

#define ADD(a, b) _mm512_add_epi32((a), (b))
#define XOR(a, b) _mm512_xor_si512((a), (b))
#define ROTR16(x) _mm512_ror_epi32((x), 16)
#define ROTR12(x) _mm512_ror_epi32((x), 12)
#define ROTR8(x) _mm512_ror_epi32((x), 8)
#define ROTR7(x) _mm512_ror_epi32((x), 7)
#define SET1(x) _mm512_set1_epi32((int)(x))
#define ZERO() _mm512_setzero_si512()
#include "blake3_round.h"

/* One compression per lane: cv[i] holds word i of every lane's chaining value; updated in place. */
static X16_ATTR inline void compress16(__m512i cv[8], const __m512i m[16], __m512i counter, uint32_t flags) {
  COMPRESS(__m512i, cv, m, counter, flags);
}

/* 128-bit blocks 0 and 2 of a then of b (lo), or blocks 1 and 3 (hi). */
#define LO128(a, b) _mm512_shuffle_i32x4((a), (b), 0x88)
#define HI128(a, b) _mm512_shuffle_i32x4((a), (b), 0xdd)

/* 16x16 transpose of 32-bit words: in, r[i] = row i; out, r[j] = column j. */
static X16_ATTR inline void transpose16(__m512i r[16]) {
  __m512i a[16], b[16];
  /* Pairs of rows interleaved by 32-bit words, then by 64-bit words: a[4q + k] holds, in each
   * 128-bit block, word k of rows 4q..4q+3. */
  for (int q = 0; q < 4; q++) {
    const __m512i lo01 = _mm512_unpacklo_epi32(r[4 * q], r[4 * q + 1]);
    const __m512i hi01 = _mm512_unpackhi_epi32(r[4 * q], r[4 * q + 1]);
    const __m512i lo23 = _mm512_unpacklo_epi32(r[4 * q + 2], r[4 * q + 3]);
    const __m512i hi23 = _mm512_unpackhi_epi32(r[4 * q + 2], r[4 * q + 3]);
    a[4 * q + 0] = _mm512_unpacklo_epi64(lo01, lo23);
    a[4 * q + 1] = _mm512_unpackhi_epi64(lo01, lo23);
    a[4 * q + 2] = _mm512_unpacklo_epi64(hi01, hi23);
    a[4 * q + 3] = _mm512_unpackhi_epi64(hi01, hi23);
  }
  /* Then by 128-bit blocks, within each half h of the rows (0-7, 8-15): b[8h + k] holds columns
   * k, 8 + k, k, 8 + k of rows 8h..8h+3, 8h..8h+3, 8h+4..8h+7, 8h+4..8h+7, and b[8h + 4 + k] the
   * same of columns 4 + k and 12 + k; across the halves last, for whole columns. */
  for (int h = 0; h < 2; h++)
    for (int k = 0; k < 4; k++) {
      b[8 * h + k] = LO128(a[8 * h + k], a[8 * h + 4 + k]);
      b[8 * h + 4 + k] = HI128(a[8 * h + k], a[8 * h + 4 + k]);
    }
  for (int k = 0; k < 8; k++) {
    r[k] = LO128(b[k], b[8 + k]);
    r[8 + k] = HI128(b[k], b[8 + k]);
  }
}

/* Digests of sixteen whole pages: page[l] (4096 bytes) -> out[l] (32 bytes). Pointers may repeat. */
static X16_ATTR void hash16_pages(const uint8_t *const page[], uint8_t *const out[]) {
  __m512i chunk_cv[4][8];
  for (int c = 0; c < 4; c++) {
    __m512i *cv = chunk_cv[c];
    for (int i = 0; i < 8; i++) cv[i] = _mm512_set1_epi32((int)BLAKE3_IV[i]);
    const __m512i counter = _mm512_set1_epi32(c);
    for (int blk = 0; blk < 16; blk++) {
      __m512i m[16];
      const size_t at = (size_t)c * BLAKE3_CHUNK_LEN + (size_t)blk * BLAKE3_BLOCK_LEN;
      for (int l = 0; l < 16; l++) m[l] = _mm512_loadu_si512((const void *)(page[l] + at));
      transpose16(m);
      const uint32_t flags = (blk == 0 ? BLAKE3_CHUNK_START : 0u) | (blk == 15 ? BLAKE3_CHUNK_END : 0u);
      compress16(cv, m, counter, flags);
    }
  }
  /* Parents: the message of P(x, y) is x's chaining value then y's, already word-per-vector. */
  const __m512i zero = _mm512_setzero_si512();
  __m512i m[16];
  __m512i left[8], right[8], root[8];
  for (int i = 0; i < 8; i++) {
    left[i] = _mm512_set1_epi32((int)BLAKE3_IV[i]);
    right[i] = left[i];
    root[i] = left[i];
    m[i] = chunk_cv[0][i];
    m[8 + i] = chunk_cv[1][i];
  }
  compress16(left, m, zero, BLAKE3_PARENT);
  for (int i = 0; i < 8; i++) {
    m[i] = chunk_cv[2][i];
    m[8 + i] = chunk_cv[3][i];
  }
  compress16(right, m, zero, BLAKE3_PARENT);
  for (int i = 0; i < 8; i++) {
    m[i] = left[i];
    m[8 + i] = right[i];
  }
  compress16(root, m, zero, BLAKE3_PARENT | BLAKE3_ROOT);
  /* root[i] holds word i of every lane; a 16-row transpose with rows 8-15 unused gives lane l's
   * eight words in the low 256 bits of column l. */
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[i] = root[i];
    t[8 + i] = zero;
  }
  transpose16(t);
  for (int l = 0; l < 16; l++) _mm256_storeu_si256((__m256i *)(void *)out[l], _mm512_castsi512_si256(t[l]));
}

#undef LO128
#undef HI128
#undef COMPRESS
#undef ROUND
#undef G
#undef ZERO
#undef SET1
#undef ROTR7
#undef ROTR8
#undef ROTR12
#undef ROTR16
#undef XOR
#undef ADD
#undef X16_ATTR
