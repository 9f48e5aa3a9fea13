{
  # vnstore page codec addon. Binds the system liblz4 at run time (dlopen), so no lz4 headers or
  # sources are needed at build time: the few prototypes used are declared in the C file.
  "targets": [
    {
      "target_name": "vnstore_native",
      "sources": ["src/vnstore_native.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "libraries": ["-ldl"]
    }
  ]
}
