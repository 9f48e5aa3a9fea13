/*
 * One BLAKE3 round (the G function over columns, then diagonals) on sixteen state vectors `v` and
 * sixteen message vectors `m`, whatever the vector width: each kernel header (blake3_x8.h,
 * blake3_x16.h) defines ADD(a, b), XOR(a, b) and ROTR16, ROTR12, ROTR8, ROTR7 (32-bit lane
 * rotations) for its registers, includes this, calls ROUND(0) .. ROUND(6), and undefines G and
 * ROUND with its own macros. Uses MSG_SCHEDULE from blake3_pages.c.
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
