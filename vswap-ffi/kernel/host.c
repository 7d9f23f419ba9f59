// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * What a kernel provides to the vswap library: memory from the page
 * allocator (GFP_KERNEL or GFP_NOWAIT by the caller's sleep context), the
 * zswap and device-release callbacks, the link-time hook vswap_host_bug
 * that the library's panic handler calls, and the RCU hooks of the library's
 * deferred reclamation (read-side sections around slot-table accesses, a
 * polled grace period before a retired table is freed).
 */
#include <linux/bug.h>
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

uint64_t vswap_host_rcu_grace_start(void)
{
	/*
	 * start_poll_synchronize_rcu() wants interrupts on; a host may free a
	 * slot (and so tear a cluster down) with them off, e.g. under
	 * xa_lock_irq. Then take the cookie without starting a grace period:
	 * the next one that the system runs anyway ends it.
	 */
	if (irqs_disabled())
		return get_state_synchronize_rcu();
	return start_poll_synchronize_rcu();
}

bool vswap_host_rcu_grace_done(uint64_t cookie)
{
	return poll_state_synchronize_rcu((unsigned long)cookie);
}
