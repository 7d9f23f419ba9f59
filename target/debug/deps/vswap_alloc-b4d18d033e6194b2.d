/work/main/target/debug/deps/vswap_alloc-b4d18d033e6194b2.d: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs Cargo.toml

/work/main/target/debug/deps/libvswap_alloc-b4d18d033e6194b2.rmeta: vswap-alloc/src/lib.rs vswap-alloc/src/error.rs vswap-alloc/src/ext.rs vswap-alloc/src/geometry.rs vswap-alloc/src/provider.rs vswap-alloc/src/space.rs vswap-alloc/src/sync.rs Cargo.toml

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
