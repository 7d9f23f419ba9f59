# Shared by .ci/kernel and .ci/swapdev (source it after lib.sh; not a suite):
# the packages, the kernel to build against and boot, and the kernel-mode
# library reduced to one object a module can link.
#
# The library: no_std, no alloc, x86_64-unknown-none, -C code-model=kernel
# -C relocation-model=static, reduced with `ld -r -u <every vswap_* function>`
# to one object. Environment: KVER (kernel version; default: the newest with
# both headers in /lib/modules/<ver>/build and /boot/vmlinuz-<ver>).

KTARGET=x86_64-unknown-none
KDIR=target/kernel-module     # its own target dir: other RUSTFLAGS than .ci/ffi's
# .ci/ffi's kernel flags, plus relro-level=off: with full RELRO (the
# target's default) rustc calls runtime functions (memcpy, memset) through
# the GOT, and the x86 module loader rejects R_X86_64_GOTPCREL; without it
# they are plain PLT32 calls, which it accepts.
KFLAGS="-C code-model=kernel -C relocation-model=static -C relro-level=off"
run() { echo "+ $*"; "$@"; }

# Install what is missing (apt only then): kmod_packages pkg...
kmod_packages() {
  need_target stable "$KTARGET"
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# Sets KVER, KBUILD, VMLINUZ, BUSYBOX.
kmod_kernel() {
  local d v
  if [ -z "${KVER:-}" ]; then
    KVER=$(for d in /lib/modules/*/; do
      v=$(basename "$d")
      if [ -e "/lib/modules/$v/build/Makefile" ] && [ -e "/boot/vmlinuz-$v" ]; then
        echo "$v"
      fi
    done | sort -V | tail -n1)
  fi
  if [ -z "$KVER" ] || [ ! -e "/lib/modules/$KVER/build/Makefile" ] || [ ! -e "/boot/vmlinuz-$KVER" ]; then
    echo "no kernel with both /lib/modules/<ver>/build and /boot/vmlinuz-<ver> (KVER=${KVER:-})" >&2
    exit 1
  fi
  KBUILD=/lib/modules/$KVER/build
  VMLINUZ=/boot/vmlinuz-$KVER
  BUSYBOX=$(command -v busybox || echo /bin/busybox)
  echo "kernel $KVER: headers $KBUILD, image $VMLINUZ; busybox $BUSYBOX"
}

# Build the library and write <mod>/vswap_rust.o_shipped and its .cmd file
# (modpost reads it), checking that only relocations the x86 module loader
# applies remain and that it needs nothing a kernel lacks. Scratch: <tmp>.
kmod_rust_object() { # tmp mod
  local tmp=$1 mod=$2 klib bad_rel undef
  say "kernel-mode library ($KTARGET, $KFLAGS)"
  CARGO_TARGET_DIR=$KDIR RUSTFLAGS=$KFLAGS run cargo build -p vswap-ffi --no-default-features \
    --features kernel-panic-handler --target "$KTARGET" --release
  klib=$KDIR/$KTARGET/release/libvswap_ffi.a
  # The exported functions: every vswap_* the C ABI defines (the archive's
  # objects carry LLVM bitcode the binutils LTO plugin cannot read: strip it
  # after `ld -r`, before nm).
  ld -r --whole-archive "$klib" -o "$tmp/all-bc.o"
  objcopy -R .llvmbc -R .llvmcmd "$tmp/all-bc.o" "$tmp/all.o"
  nm -g --defined-only "$tmp/all.o" | awk '$2 == "T" && $3 ~ /^vswap_/ {print $3}' | sort -u >"$tmp/exports"
  test -s "$tmp/exports"
  echo "$(wc -l <"$tmp/exports") exported functions"
  mkdir -p "$mod"
  # shellcheck disable=SC2046
  local ldcmd=(ld -r --gc-sections $(sed 's/^/-u /' "$tmp/exports") "$klib" -o "$tmp/vswap_rust-bc.o")
  "${ldcmd[@]}"
  objcopy --strip-debug -R .llvmbc -R .llvmcmd "$tmp/vswap_rust-bc.o" "$mod/vswap_rust.o_shipped"
  # Only relocations the x86 module loader applies (64, 32S, PC32, PLT32).
  bad_rel=$(readelf -rW "$mod/vswap_rust.o_shipped" | awk '/^ *[0-9a-f]+ +[0-9a-f]+ R_X86_64_/ {print $3}' |
    sort -u | grep -vxE 'R_X86_64_(64|32S|PC32|PLT32)' || true)
  if [ -n "$bad_rel" ]; then
    echo "vswap_rust.o has relocations the module loader rejects: $bad_rel" >&2
    exit 1
  fi
  undef=$(nm -u "$mod/vswap_rust.o_shipped" | awk '{print $2}' | sort -u | tr '\n' ' ')
  echo "vswap_rust.o: $(stat -c %s "$mod/vswap_rust.o_shipped") bytes, undefined: $undef"
  if nm -u "$mod/vswap_rust.o_shipped" | awk '{print $2}' |
    grep -vE '^(vswap_host_[a-z_]+|memcpy|memmove|memset|memcmp|bcmp)$'; then
    echo "the library object needs symbols a kernel does not provide" >&2
    exit 1
  fi
  # modpost (srcversion) reads each object's .cmd file; the shipped
  # object's records how it was made.
  printf 'cmd_%s := %s\n' "$mod/vswap_rust.o" "${ldcmd[*]}" >"$mod/.vswap_rust.o.cmd"
}

# Build the module in <mod> (Kbuild writes next to its sources); the log is
# shown, and only a failed build fails.
kmod_build() { # tmp mod
  local tmp=$1 mod=$2
  say "module: Kbuild against $KBUILD"
  if ! make -C "$KBUILD" M="$mod" modules >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log"
    echo "module build failed" >&2
    exit 1
  fi
  cat "$tmp/build.log"
}

# The console verdict every boot shares: nothing the kernel reports as a
# problem. (An unsigned module taints the kernel with "module verification
# failed": not matched.)
kmod_console_clean() { # console.txt
  if grep -nE '\bBUG\b|WARNING|Oops|Kernel panic|Call Trace|stack overflow|general protection|blocked for more than' "$1" >&2; then
    echo "the kernel reported a problem (above)" >&2
    return 1
  fi
}
