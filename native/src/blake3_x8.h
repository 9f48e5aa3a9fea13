/*
 * BLAKE3-256 of whole 4 KiB pages, eight pages at a time, one SIMD lane per page (AVX2, 8 x 32-bit).
 *
 * Included by blake3_pages.c once per instruction-set variant, with these defined:
 *   KSUFFIX  name suffix of the variant's functions
 *   KTARGET  the GCC target attribute string ("avx2", "avx2,avx512f,avx512vl")
 *   ROTR12, ROTR7  32-bit lane rotations (shift/or on AVX2, one vprord with AVX-512VL)
 *
 * Why lanes across pages: a 4 KiB page is only four 1 KiB BLAKE3 chunks, so a hasher fed one page
 * can fill at most four lanes. Hashing eight pages side by side fills all eight: chunk c of every
 * page is compressed in lane order (same chunk counter c in every lane), then the two parent levels
 * combine lanes in place, so only the message blocks and the final digests need transposing.
 *
 * The tree of a 4096-byte input (BLAKE3 spec, section 2.1): chunks c0..c3 (counters 0..3, 16 blocks
 * of 64 bytes, CHUNK_START on block 0, CHUNK_END on block 15); parents p0 = P(c0,c1), p1 = P(c2,c3)
 * (key = IV, counter 0, block length 64, flag PARENT); root = P(p0,p1) with PARENT|ROOT; the digest
 * is the root's first 32 output bytes.
 */

#define PASTE2_(a, b) a##b
#define PASTE_(a, b) PASTE2_(a, b)
#define KFN(name) PASTE_(name, KSUFFIX)

#define KATTR __attribute__((target(KTARGET)))

#define ADD(a, b) _mm256_add_epi32((a), (b))
#define XOR(a, b) _mm256_xor_si256((a), (b))
#define ROTR16(x) _mm256_shuffle_epi8((x), rot16_mask)
#define ROTR8(x) _mm256_shuffle_epi8((x), rot8_mask)
#define SET1(x) _mm256_set1_epi32((int)(x))
#define ZERO() _mm256_setzero_si256()

#include "blake3_round.h"

/* One compression per lane: cv[i] holds word i of every lane's chaining value; updated in place. */
static KATTR inline void KFN(compress8)(__m256i cv[8], const __m256i m[16], __m256i counter, uint32_t flags) {
  const __m256i rot16_mask = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6,
                                              7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  const __m256i rot8_mask = _mm256_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5,
                                             6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12);
  COMPRESS(__m256i, cv, m, counter, flags);
}

/* 8x8 transpose of 32-bit words: in, r[i] = row i; out, r[j] = column j. */
static KATTR inline void KFN(transpose8)(__m256i r[8]) {
  __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]);
  __m256i t1 = _mm256_unpackhi_epi32(r[0], r[1]);
  __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]);
  __m256i t3 = _mm256_unpackhi_epi32(r[2], r[3]);
  __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]);
  __m256i t5 = _mm256_unpackhi_epi32(r[4], r[5]);
  __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]);
  __m256i t7 = _mm256_unpackhi_epi32(r[6], r[7]);
  __m256i u0 = _mm256_unpacklo_epi64(t0, t2);
  __m256i u1 = _mm256_unpackhi_epi64(t0, t2);
  __m256i u2 = _mm256_unpacklo_epi64(t1, t3);
  __m256i u3 = _mm256_unpackhi_epi64(t1, t3);
  __m256i u4 = _mm256_unpacklo_epi64(t4, t6);
  __m256i u5 = _mm256_unpackhi_epi64(t4, t6);
  __m256i u6 = _mm256_unpacklo_epi64(t5, t7);
  __m256i u7 = _mm256_unpackhi_epi64(t5, t7);
  r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* Digests of eight whole pages: page[l] (4096 bytes) -> out[l] (32 bytes). Pointers may repeat. */
static KATTR void KFN(hash8_pages)(const uint8_t *const page[8], uint8_t *const out[8]) {
  __m256i chunk_cv[4][8];
  for (int c = 0; c < 4; c++) {
    __m256i *cv = chunk_cv[c];
    for (int i = 0; i < 8; i++) cv[i] = _mm256_set1_epi32((int)BLAKE3_IV[i]);
    const __m256i counter = _mm256_set1_epi32(c);
    for (int b = 0; b < 16; b++) {
      __m256i m[16];
      const size_t at = (size_t)c * BLAKE3_CHUNK_LEN + (size_t)b * BLAKE3_BLOCK_LEN;
      for (int l = 0; l < 8; l++) {
        m[l] = _mm256_loadu_si256((const __m256i *)(const void *)(page[l] + at));
        m[8 + l] = _mm256_loadu_si256((const __m256i *)(const void *)(page[l] + at + 32));
      }
      KFN(transpose8)(m);
      KFN(transpose8)(m + 8);
      const uint32_t flags = (b == 0 ? BLAKE3_CHUNK_START : 0u) | (b == 15 ? BLAKE3_CHUNK_END : 0u);
      KFN(compress8)(cv, m, counter, flags);
    }
  }
  /* Parents: the message of P(x, y) is x's chaining value then y's, already word-per-vector. */
  const __m256i zero = _mm256_setzero_si256();
  __m256i m[16];
  __m256i left[8], right[8];
  for (int i = 0; i < 8; i++) {
    left[i] = _mm256_set1_epi32((int)BLAKE3_IV[i]);
    right[i] = left[i];
    m[i] = chunk_cv[0][i];
    m[8 + i] = chunk_cv[1][i];
  }
  KFN(compress8)(left, m, zero, BLAKE3_PARENT);
  for (int i = 0; i < 8; i++) {
    m[i] = chunk_cv[2][i];
    m[8 + i] = chunk_cv[3][i];
  }
  KFN(compress8)(right, m, zero, BLAKE3_PARENT);
  __m256i root[8];
  for (int i = 0; i < 8; i++) {
    root[i] = _mm256_set1_epi32((int)BLAKE3_IV[i]);
    m[i] = left[i];
    m[8 + i] = right[i];
  }
  KFN(compress8)(root, m, zero, BLAKE3_PARENT | BLAKE3_ROOT);
  KFN(transpose8)(root);
  for (int l = 0; l < 8; l++) _mm256_storeu_si256((__m256i *)(void *)out[l], root[l]);
}

#undef COMPRESS
#undef ROUND
#undef G
#undef ZERO
#undef SET1
#undef ROTR8
#undef ROTR16
#undef XOR
#undef ADD
#undef KATTR
#undef KFN
#undef PASTE_
#undef PASTE2_
