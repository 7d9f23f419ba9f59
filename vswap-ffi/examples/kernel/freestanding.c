/*
 * A kernel-style user of the vswap C ABI: compiled with -ffreestanding
 * -nostdlib, no libc, only the compiler's freestanding headers (vswap.h needs
 * <stdbool.h>, <stddef.h>, <stdint.h>). It provides what a kernel would:
 * the host callbacks (here a bump arena stands in for the page allocator) and
 * the link-time hooks vswap_host_bug, vswap_host_rcu_* and vswap_host_spin_*.
 * memcpy/memset/memmove/memcmp/bcmp come
 * with the kernel-mode archive (compiler_builtins, as weak symbols a kernel's
 * own definitions override), so this file needs none.
 *
 * Built and linked by .ci/ffi:
 *   gcc -std=c11 -ffreestanding -nostdlib -fno-stack-protector -mno-red-zone \
 *       -mcmodel=kernel -fno-pic -Ivswap-ffi/include -c freestanding.c
 *   ld -r -o vswap_kernel.o freestanding.o libvswap_ffi.a   (kernel-mode .a)
 *   nm -u vswap_kernel.o    -> nothing
 *
 * vswap_example_run() returns 0 when every step gave the expected result and
 * every byte went back to the arena; .ci/ffi also links it into a static
 * executable (with start.c) and runs it.
 */
#include "vswap.h"

/* ------------------------------------------------- the "page allocator" */

static unsigned char arena[8 << 20] __attribute__((aligned(4096)));
static size_t arena_top;     /* bump pointer */
static long long bytes_live; /* handed out and not yet freed */

static void *k_alloc(void *ctx, size_t size, size_t align, bool may_sleep)
{
	(void)ctx;
	(void)may_sleep; /* GFP_KERNEL vs GFP_NOWAIT in a real kernel */
	size_t at = (arena_top + align - 1) & ~(align - 1);
	if (at + size > sizeof(arena))
		return NULL;
	arena_top = at + size;
	bytes_live += (long long)size;
	return arena + at;
}

static void k_free(void *ctx, void *ptr, size_t size, size_t align)
{
	(void)ctx;
	(void)ptr;
	(void)align;
	bytes_live -= (long long)size; /* a bump arena never reuses */
}

static unsigned long zswap_released;
static unsigned long phys_released;

static void k_release_zswap(void *ctx, uint64_t handle)
{
	(void)ctx;
	(void)handle;
	zswap_released++;
}

static void k_released_phys(void *ctx, uint32_t dev, uint64_t off, uint64_t len)
{
	(void)ctx;
	(void)dev;
	(void)off;
	phys_released += len;
}

/* The kernel's BUG(): a panic inside the library ends here. */
void vswap_host_bug(const char *file, size_t file_len, uint32_t line)
{
	(void)file;
	(void)file_len;
	(void)line;
	for (;;)
		__builtin_trap();
}

/*
 * The kernel's RCU (rcu_read_lock, start_poll_synchronize_rcu,
 * poll_state_synchronize_rcu). This example is single-threaded, so a grace
 * period has ended whenever no section is open; the nesting depth also
 * checks that the library pairs every lock with an unlock.
 */
static long rcu_depth;
static unsigned long rcu_unbalanced;

void vswap_host_rcu_read_lock(void)
{
	rcu_depth++;
}

void vswap_host_rcu_read_unlock(void)
{
	if (rcu_depth <= 0)
		rcu_unbalanced++;
	else
		rcu_depth--;
}

uint64_t vswap_host_rcu_grace_start(void)
{
	return 0;
}

bool vswap_host_rcu_grace_done(uint64_t cookie)
{
	(void)cookie;
	return rcu_depth == 0;
}

/*
 * The kernel's spinlock_t (spin_lock_init, spin_lock_irqsave,
 * spin_unlock_irqrestore): here a test-and-set word at the start of the
 * VSWAP_HOST_LOCK_SIZE bytes the library keeps per lock, and counters that
 * show the library takes its locks through these hooks, in pairs, one at a
 * time (a library spinning on a lock of its own would never call them).
 */
_Static_assert(sizeof(int) <= VSWAP_HOST_LOCK_SIZE, "lock storage too small");
static unsigned long spin_inits, spin_locks, spin_unbalanced;
static long spin_depth, spin_depth_max;

void vswap_host_spin_init(void *lock)
{
	if ((uintptr_t)lock % VSWAP_HOST_LOCK_ALIGN)
		spin_unbalanced++;
	__atomic_store_n((int *)lock, 0, __ATOMIC_RELAXED);
	spin_inits++;
}

unsigned long vswap_host_spin_lock(void *lock)
{
	while (__atomic_exchange_n((int *)lock, 1, __ATOMIC_ACQUIRE))
		__builtin_ia32_pause();
	spin_locks++;
	if (++spin_depth > spin_depth_max)
		spin_depth_max = spin_depth;
	return 0x200; /* "interrupts were on" (X86_EFLAGS_IF) */
}

void vswap_host_spin_unlock(void *lock, unsigned long flags)
{
	if (flags != 0x200 || spin_depth <= 0 || !__atomic_load_n((int *)lock, __ATOMIC_RELAXED))
		spin_unbalanced++;
	spin_depth--;
	__atomic_store_n((int *)lock, 0, __ATOMIC_RELEASE);
}

/* --------------------------------------------------------- the example */

static unsigned char page[4096];

int vswap_example_run(void);

int vswap_example_run(void)
{
	struct vswap_host_ops ops = {0};
	struct vswap_engine_config cfg;
	struct vswap_device_config dev;
	struct vswap_engine *e = 0;
	struct vswap_backend b;
	struct vswap_entry en;
	uint32_t slot = 0, other = 0;
	int step = 0;

	ops.alloc = k_alloc;
	ops.free = k_free;
	ops.release_zswap = k_release_zswap;
	ops.released_phys = k_released_phys;

#define STEP(expr) do { step++; if (!(expr)) return step; } while (0)
	STEP(vswap_engine_config_default(&cfg) == 0);
	cfg.geometry.slots = 1u << 20;
	cfg.geometry.cpus = 4;
	STEP(vswap_engine_create(&cfg, &ops, &e) == 0);
	STEP(vswap_device_config_default(&dev, 1u << 14) == 0);
	dev.geometry.cpus = 4;
	STEP(vswap_device_add(e, 0, 10, &dev) == 0);

	/* swap-out: allocate with the folio in the swap cache, one PTE */
	STEP(vswap_alloc(e, 0, 0, VSWAP_NO_MEMCG, false, &slot) == 0);
	STEP(vswap_dup(e, slot, 1, false) == 0);
	/* writeout of an all-zero page: no device slot */
	STEP(vswap_writeout(e, slot, page, sizeof(page), 0, &b) == 0);
	STEP(b.kind == VSWAP_BACKEND_ZERO);
	/* writeout of real data: a device slot */
	STEP(vswap_alloc(e, 0, 1, VSWAP_NO_MEMCG, false, &other) == 0);
	for (unsigned i = 0; i < sizeof(page); i++)
		page[i] = (unsigned char)(i * 7 + 1);
	STEP(vswap_writeout(e, other, page, sizeof(page), 1, &b) == 0);
	STEP(b.kind == VSWAP_BACKEND_PHYS && b.dev == 0);
	/* reclaim, then the last references go */
	STEP(vswap_cache_clear(e, slot, 0x1234, false) == VSWAP_LIVE);
	STEP(vswap_lookup(e, slot, &en) == 0 && en.count == 1 && !en.cached);
	STEP(vswap_put(e, slot, 1) == VSWAP_FREED);
	STEP(vswap_put(e, slot, 1) == -VSWAP_ENOENT);
	STEP(vswap_cache_clear(e, other, 0, false) == VSWAP_FREED);
	STEP(phys_released == 1 && zswap_released == 0);
	/* bad input never crashes */
	STEP(vswap_lookup(0, slot, &en) == -VSWAP_EINVAL);
	STEP(vswap_alloc(e, 30, 0, VSWAP_NO_MEMCG, false, &slot) == -VSWAP_EINVAL);
	STEP(vswap_device_remove(e, 0) == 0);
	vswap_engine_destroy(e);
	STEP(bytes_live == 0);
	/* every read-side section the library opened, it closed */
	STEP(rcu_depth == 0 && rcu_unbalanced == 0);
	/* the slow-path locks were the host's: taken, released, never nested */
	STEP(spin_inits >= 2 && spin_locks > 0);
	STEP(spin_depth == 0 && spin_depth_max == 1 && spin_unbalanced == 0);
#undef STEP
	return 0;
}
