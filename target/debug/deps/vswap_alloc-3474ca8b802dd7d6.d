/work/main/target/debug/deps/vswap_alloc-3474ca8b802dd7d6.d: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs

/work/main/target/debug/deps/libvswap_alloc-3474ca8b802dd7d6.rlib: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs

/work/main/target/debug/deps/libvswap_alloc-3474ca8b802dd7d6.rmeta: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs

vswap-alloc/src/lib.rs:
vswap-alloc/src/error.rs:
vswap-alloc/src/ext.rs:
vswap-alloc/src/geometry.rs:
vswap-alloc/src/provider.rs:
vswap-alloc/src/space.rs:
vswap-alloc/src/sync.rs:
