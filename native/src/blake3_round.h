/*
 * One BLAKE3 compression per lane, whatever the vector width: each kernel header (blake3_x8.h,
 * blake3_x16.h) defines ADD(a, b), XOR(a, b), ROTR16, ROTR12, ROTR8, ROTR7 (32-bit lane rotations),
 * SET1(x) (x in every lane) and ZERO() for its registers, includes this, runs COMPRESS in its
 * compress function, and undefines G, ROUND and COMPRESS with its own macros. Uses MSG_SCHEDULE,
 * BLAKE3_IV and BLAKE3_BLOCK_LEN from blake3_pages.c.
 */

#define G(a, b, c, d, mx, my)          \
  do {                                 \
    v[a] = ADD(ADD(v[a], v[b]), (mx)); \
    v[d] = ROTR16(XOR(v[d], v[a]));    \
    v[c] = ADD(v[c], v[d]);            \
    v[b] = ROTR12(XOR(v[b], v[c]));    \
    v[a] = ADD(ADD(v[a], v[b]), (my)); \
    v[d] = ROTR8(XOR(v[d], v[a]));     \
    v[c] = ADD(v[c], v[d]);            \
    v[b] = ROTR7(XOR(v[b], v[c]));     \
  } while (0)

#define ROUND(r)                             \
  do {                                       \
    const uint8_t *s = MSG_SCHEDULE[r];      \
    G(0, 4, 8, 12, m[s[0]], m[s[1]]);        \
    G(1, 5, 9, 13, m[s[2]], m[s[3]]);        \
    G(2, 6, 10, 14, m[s[4]], m[s[5]]);       \
    G(3, 7, 11, 15, m[s[6]], m[s[7]]);       \
    G(0, 5, 10, 15, m[s[8]], m[s[9]]);       \
    G(1, 6, 11, 12, m[s[10]], m[s[11]]);     \
    G(2, 7, 8, 13, m[s[12]], m[s[13]]);      \
    G(3, 4, 9, 14, m[s[14]], m[s[15]]);      \
  } while (0)

/* cv[i] (word i of every lane's chaining value) updated in place by the compression of message
 * vectors m under `counter` (low words; chunk counters here are 0..3) and `flags`; VEC is the
 * kernel's register type. */
#define COMPRESS(VEC, cv, m, counter, flags)                                           \
  do {                                                                                 \
    VEC v[16] = {                                                                      \
        cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],                        \
        SET1(BLAKE3_IV[0]), SET1(BLAKE3_IV[1]), SET1(BLAKE3_IV[2]), SET1(BLAKE3_IV[3]), \
        (counter), ZERO(), SET1(BLAKE3_BLOCK_LEN), SET1(flags),                         \
    };                                                                                 \
    ROUND(0);                                                                          \
    ROUND(1);                                                                          \
    ROUND(2);                                                                          \
    ROUND(3);                                                                          \
    ROUND(4);                                                                          \
    ROUND(5);                                                                          \
    ROUND(6);                                                                          \
    for (int i = 0; i < 8; i++) cv[i] = XOR(v[i], v[i + 8]);                           \
  } while (0)
