// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * What a kernel provides to the vswap library: memory from the page
 * allocator (GFP_KERNEL or GFP_NOWAIT by the caller's sleep context), the
 * zswap and device-release callbacks, the link-time hook vswap_host_bug
 * that the library's panic handler calls, the RCU hooks of the library's
 * deferred reclamation (read-side sections around slot-table accesses, a
 * polled grace period before a retired table is freed), and the lock hooks
 * of its slow-path lock (a spinlock_t, taken with spin_lock_irqsave), with
 * counters the self-test checks.
 */
#include <linux/bug.h>
#include <linux/build_bug.h>
#include <linux/percpu.h>
#include <linux/preempt.h>
#include <linux/spinlock.h>
#include <linux/gfp.h>
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/irqflags.h>
#include <linux/printk.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/task_stack.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "vswap_kmod.h"

struct vk_page_stats vk_pages;
struct vk_lock_stats vk_locks;

/* vswap locks this CPU holds now (preemption is off while it is not 0). */
static DEFINE_PER_CPU(int, vk_lock_depth);

/*
 * Whether the caller holds a vswap lock. Also right from preemptible code:
 * a holder has preemption and interrupts off, so while this CPU runs the
 * caller, only the caller's own locks can be counted in its depth.
 */
static bool vk_lock_held_here(void)
{
	return raw_cpu_read(vk_lock_depth) != 0;
}

static unsigned int vk_order(size_t size, size_t align)
{
	return get_order(max(size, align));
}

void *vk_page_alloc(size_t size, size_t align, bool may_sleep)
{
	unsigned int order = vk_order(size, align);
	/* NOWARN: a NULL is an answer the library handles (-ENOMEM/-EAGAIN). */
	gfp_t gfp = (may_sleep ? GFP_KERNEL : GFP_NOWAIT) | __GFP_NOWARN;
	struct page *page;
	int out, peak;

	/* The library never calls back with one of its locks held. */
	if (vk_lock_held_here())
		atomic_inc(&vk_locks.callback_under_lock);
	if (may_sleep) {
		might_sleep();
		atomic_inc(&vk_pages.calls_sleep);
	} else {
		atomic_inc(&vk_pages.calls_nowait);
	}
	page = alloc_pages(gfp, order);
	if (!page) {
		atomic_inc(&vk_pages.failed);
		return NULL;
	}
	atomic_add(1 << order, &vk_pages.pages_alloc);
	atomic_inc(&vk_pages.blocks_out);
	out = atomic_add_return(1 << order, &vk_pages.pages_out);
	peak = atomic_read(&vk_pages.pages_peak);
	while (out > peak) {
		int seen = atomic_cmpxchg(&vk_pages.pages_peak, peak, out);

		if (seen == peak)
			break;
		peak = seen;
	}
	/* A buddy block of 2^order pages is aligned to its size, so to align. */
	return page_address(page);
}

void vk_page_free(void *ptr, size_t size, size_t align)
{
	unsigned int order = vk_order(size, align);

	if (WARN_ON_ONCE(!ptr))
		return;
	if (vk_lock_held_here())
		atomic_inc(&vk_locks.callback_under_lock);
	free_pages((unsigned long)ptr, order);
	atomic_sub(1 << order, &vk_pages.pages_out);
	atomic_add(1 << order, &vk_pages.pages_freed);
	atomic_dec(&vk_pages.blocks_out);
}

/* ------------------------------------------------------ the kernel host */

#define VK_ZSWAP_OBJ 64 /* bytes kept per "compressed" page */

static void *vk_alloc(void *ctx, size_t size, size_t align, bool may_sleep)
{
	return vk_page_alloc(size, align, may_sleep);
}

static void vk_free(void *ctx, void *ptr, size_t size, size_t align)
{
	vk_page_free(ptr, size, align);
}

static bool vk_zswap_store(void *ctx, uint32_t slot, const uint8_t *page, size_t len,
			   uint64_t *handle)
{
	struct vk_host *h = ctx;
	void *obj;

	/* Take pages whose first byte is 0x5a (vk_fill_page's ZSWAP kind). */
	if (!atomic_read(&h->zswap_on) || len < VK_ZSWAP_OBJ || page[0] != 0x5a)
		return false;
	/* Writeout may run where sleeping is not allowed. */
	obj = kmemdup(page, VK_ZSWAP_OBJ, GFP_NOWAIT | __GFP_NOWARN);
	if (!obj)
		return false;
	*handle = (uint64_t)(uintptr_t)obj;
	atomic64_inc(&h->zswap_stored);
	atomic64_inc(&h->zswap_live);
	return true;
}

static void vk_release_zswap(void *ctx, uint64_t handle)
{
	struct vk_host *h = ctx;
	u8 *obj = (u8 *)(uintptr_t)handle;

	/* A handle the library never got from us would be a bug: catch it. */
	if (WARN_ON_ONCE(!virt_addr_valid(obj) || obj[0] != 0x5a))
		return;
	kfree(obj);
	atomic64_inc(&h->zswap_released);
	atomic64_dec(&h->zswap_live);
}

static void vk_released_phys(void *ctx, uint32_t dev, uint64_t off, uint64_t len)
{
	struct vk_host *h = ctx;

	atomic64_inc(&h->phys_runs);
	atomic64_add(len, &h->phys_slots);
	atomic64_set(&h->last_phys_dev, dev);
	atomic64_set(&h->last_phys_off, off);
}

void vk_host_init(struct vk_host *h, struct vswap_host_ops *ops)
{
	memset(h, 0, sizeof(*h));
	atomic_set(&h->zswap_on, 1);
	memset(ops, 0, sizeof(*ops));
	ops->ctx = h;
	ops->alloc = vk_alloc;
	ops->free = vk_free;
	ops->release_zswap = vk_release_zswap;
	ops->released_phys = vk_released_phys;
	ops->zswap_store = vk_zswap_store;
	/* charge/uncharge/discard: NULL (no memcg, discard marks only) */
}

void vk_fill_page(u8 *page, u32 kind, u32 seed)
{
	u64 v;
	size_t i;

	switch (kind) {
	case VSWAP_BACKEND_ZERO:
		memset(page, 0, PAGE_SIZE);
		return;
	case VSWAP_BACKEND_SAME:
		/* a repeated word small enough for the slot's payload */
		v = 0x100 + (seed & 0xfff);
		for (i = 0; i < PAGE_SIZE; i += 8)
			memcpy(page + i, &v, 8);
		return;
	default:
		for (i = 0; i < PAGE_SIZE; i++) {
			seed = seed * 1103515245u + 12345u;
			page[i] = (u8)(seed >> 16);
		}
		page[0] = kind == VSWAP_BACKEND_ZSWAP ? 0x5a : 0x11;
		return;
	}
}

/* --------------------------------------------- stack high-water marks */

#define VK_STACK_PAINT 0x5aa5f00dc0de5aa5ul

/*
 * Fill the unused part of the current task's stack (from just above the
 * end-of-stack magic to a margin below the stack pointer) with a pattern;
 * vk_stack_used() later finds the deepest word overwritten since.
 */
noinline void vk_stack_paint(void)
{
	unsigned long *p = end_of_stack(current) + 1;
	unsigned long *sp = (unsigned long *)current_stack_pointer;

	for (; p < sp - 64; p++)
		*p = VK_STACK_PAINT;
}

/* Bytes of the current task's stack in use at its deepest since the paint. */
noinline size_t vk_stack_used(void)
{
	unsigned long *p = end_of_stack(current) + 1;
	unsigned long top = (unsigned long)task_stack_page(current) + THREAD_SIZE;

	while (*p == VK_STACK_PAINT)
		p++;
	return top - (unsigned long)p;
}

size_t vk_stack_deepest;
const char *vk_stack_deepest_test = "none";

void vk_note_stack(const char *test, size_t used)
{
	if (used > vk_stack_deepest) {
		vk_stack_deepest = used;
		vk_stack_deepest_test = test;
	}
}

/*
 * The library's panic handler (the kernel-panic-handler feature) calls this
 * with the panic's location; a panic is a bug in the library: BUG().
 */
void vswap_host_bug(const char *file, size_t file_len, uint32_t line)
{
	pr_emerg("vswap: library bug at %.*s:%u\n", (int)file_len, file, line);
	BUG();
}

/*
 * The library's deferred reclamation, on the kernel's RCU: plain calls (no
 * function pointers), no atomics on the read side. Grace periods are polled
 * (the library frees a retired table at a later teardown or refill once
 * poll_state_synchronize_rcu says so), so nothing here sleeps and no
 * rcu_head lives in library memory.
 */
void vswap_host_rcu_read_lock(void)
{
	rcu_read_lock();
}

void vswap_host_rcu_read_unlock(void)
{
	rcu_read_unlock();
}

/*
 * Set when a grace period's cookie was taken with interrupts off (without
 * starting it); the next vswap unlock that finds interrupts on starts one.
 */
static atomic_t vk_rcu_kick;

uint64_t vswap_host_rcu_grace_start(void)
{
	unsigned long cookie;

	/*
	 * start_poll_synchronize_rcu() wants interrupts on. The library calls
	 * this under its list lock, which is a spin_lock_irqsave lock (below),
	 * and a host may also free a slot (and so tear a cluster down) with
	 * interrupts off, e.g. under xa_lock_irq. Then take the cookie without
	 * starting a grace period, and have the next vswap unlock with
	 * interrupts on start one (a grace period requested after the cookie
	 * was taken covers it); until then, one the system runs anyway ends it.
	 */
	if (!irqs_disabled())
		return start_poll_synchronize_rcu();
	cookie = get_state_synchronize_rcu();
	/* Fully ordered: a kick that sees 1 comes after the cookie. */
	(void)atomic_xchg(&vk_rcu_kick, 1);
	return cookie;
}

bool vswap_host_rcu_grace_done(uint64_t cookie)
{
	return poll_state_synchronize_rcu((unsigned long)cookie);
}

static void vk_rcu_kick_now(void)
{
	if (likely(!atomic_read(&vk_rcu_kick)) || irqs_disabled())
		return;
	if (atomic_xchg(&vk_rcu_kick, 0)) {
		(void)start_poll_synchronize_rcu();
		atomic_inc(&vk_locks.rcu_kicks);
	}
}

/*
 * The library's slow-path lock (vswap-alloc's `host-lock` build): a real
 * spinlock_t kept in VSWAP_HOST_LOCK_SIZE bytes of library memory, taken
 * with spin_lock_irqsave (the library is entered with interrupts on or off;
 * the locks guard slow paths only). Preemption and interrupts are off while
 * it is held, and lockdep (where the kernel has it) sees every acquisition.
 * All vswap locks are initialised here, by one spin_lock_init, so lockdep
 * puts them in one class, "vswap_lock"; the library never holds two at once
 * (vk_locks.nested counts it if it did), so no subclass is needed. A
 * spinlock needs no destroy: the library drops the memory without a call.
 *
 * The counters are the self-test's: every lock is taken and released
 * through here, in pairs, never nested, and never by a bare spin loop.
 */
void vswap_host_spin_init(void *lock)
{
	spinlock_t *vswap_lock = lock;

	BUILD_BUG_ON(sizeof(spinlock_t) > VSWAP_HOST_LOCK_SIZE);
	BUILD_BUG_ON(__alignof__(spinlock_t) > VSWAP_HOST_LOCK_ALIGN);
	spin_lock_init(vswap_lock);
	atomic_inc(&vk_locks.inits);
}

unsigned long vswap_host_spin_lock(void *lock)
{
	unsigned long flags;

	spin_lock_irqsave((spinlock_t *)lock, flags);
	if (__this_cpu_inc_return(vk_lock_depth) > 1)
		atomic_inc(&vk_locks.nested);
	if (irqs_disabled_flags(flags))
		atomic64_inc(&vk_locks.irqs_were_off);
	atomic64_inc(&vk_locks.locks);
	return flags;
}

void vswap_host_spin_unlock(void *lock, unsigned long flags)
{
	spinlock_t *l = lock;

	/*
	 * Held, by this CPU, with preemption and interrupts off. (On
	 * PREEMPT_RT a spinlock_t sleeps and leaves both on, and these per-CPU
	 * counters would not mean "held here": the self-test's kernel is
	 * Debian's 6.1 amd64, without it.)
	 */
	if ((IS_ENABLED(CONFIG_SMP) && !spin_is_locked(l)) || __this_cpu_read(vk_lock_depth) < 1 ||
	    (!IS_ENABLED(CONFIG_PREEMPT_RT) &&
	     (!irqs_disabled() || (IS_ENABLED(CONFIG_PREEMPT_COUNT) && !preempt_count()))))
		atomic_inc(&vk_locks.bad_unlock);
	__this_cpu_dec(vk_lock_depth);
	atomic64_inc(&vk_locks.unlocks);
	spin_unlock_irqrestore(l, flags);
	vk_rcu_kick_now();
}
