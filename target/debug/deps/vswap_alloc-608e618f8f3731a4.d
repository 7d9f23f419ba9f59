/work/main/target/debug/deps/vswap_alloc-608e618f8f3731a4.d: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs Cargo.toml

/work/main/target/debug/deps/libvswap_alloc-608e618f8f3731a4.rmeta: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs Cargo.toml

vswap-alloc/src/lib.rs:
vswap-alloc/src/error.rs:
vswap-alloc/src/ext.rs:
vswap-alloc/src/geometry.rs:
vswap-alloc/src/provider.rs:
vswap-alloc/src/space.rs:
vswap-alloc/src/sync.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
