{
  # vnstore page codec addon. Binds the system liblz4 and libzstd at run time (dlopen), so no lz4 or
  # zstd headers or sources are needed at build time: the few prototypes used are declared in the C files.
  #
  # Warnings are errors: a warning here is a defect nobody reads in an install log. With
  # vnstore_sanitize=1 (scripts/build-native.mjs --sanitize, CI only) both modules are built with
  # AddressSanitizer and UBSan, every UB report fatal.
  "variables": { "vnstore_sanitize%": "0" },
  "target_defaults": {
    "defines": ["NAPI_VERSION=8"],
    "cflags": ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"],
    "conditions": [
      ["vnstore_sanitize==1", {
        "cflags": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
        "ldflags": ["-fsanitize=address,undefined"]
      }]
    ]
  },
  "targets": [
    {
      "target_name": "vnstore_native",
      "sources": ["src/vnstore_native.c", "src/zstd_codec.c"],
      "libraries": ["-ldl"]
    },
    {
      # BLAKE3 of many pages per call, eight per SIMD pass (native/src/blake3_pages.c). The AVX2 and
      # AVX-512VL kernels carry their own target attributes and are picked at run time, so the
      # module itself builds and loads on any x86-64.
      "target_name": "vnstore_hash",
      "sources": ["src/blake3_pages.c"]
    }
  ]
}
