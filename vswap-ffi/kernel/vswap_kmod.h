/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The vswap self-test module: the host hooks a kernel gives the library
 * (host.c), the self-test's counters and its suites.
 */
#ifndef VSWAP_KMOD_H
#define VSWAP_KMOD_H

#include <linux/atomic.h>
#include <linux/printk.h>
#include <linux/types.h>

#include "vswap.h"

/* ------------------------------------------------------- host.c: pages */

/*
 * Every block the library asks for comes from the page allocator
 * (alloc_pages, order get_order(max(size, align)), naturally aligned),
 * GFP_KERNEL when the caller may sleep and GFP_NOWAIT when it may not.
 * The counters are pages (not blocks) unless named otherwise.
 */
struct vk_page_stats {
	atomic_t pages_out;     /* handed out and not yet given back */
	atomic_t pages_peak;
	atomic_t pages_alloc;   /* handed out in total */
	atomic_t pages_freed;   /* given back in total */
	atomic_t blocks_out;
	atomic_t calls_sleep;   /* alloc calls with may_sleep (GFP_KERNEL) */
	atomic_t calls_nowait;  /* alloc calls without (GFP_NOWAIT) */
	atomic_t failed;        /* alloc_pages returned NULL */
};

extern struct vk_page_stats vk_pages;

void *vk_page_alloc(size_t size, size_t align, bool may_sleep);
void vk_page_free(void *ptr, size_t size, size_t align);

/* --------------------------------------------- host.c: the vswap locks */

/*
 * The library's slow-path locks are spinlock_t's through the hooks
 * vswap_host_spin_init/_lock/_unlock (host.c), which count here. A library
 * that fell back to a spin loop of its own would leave `locks` at 0.
 */
struct vk_lock_stats {
	atomic_t inits;               /* vswap_host_spin_init calls */
	atomic64_t locks;             /* vswap_host_spin_lock calls */
	atomic64_t unlocks;           /* vswap_host_spin_unlock calls */
	atomic64_t irqs_were_off;     /* locks taken with interrupts already off */
	atomic_t nested;              /* a lock taken with another vswap lock held */
	atomic_t bad_unlock;          /* unlock of a lock not held by this CPU, or
				       * with preemption or interrupts on */
	atomic_t callback_under_lock; /* alloc/free called with a vswap lock held */
	atomic_t rcu_kicks;           /* grace periods started at an unlock */
};

extern struct vk_lock_stats vk_locks;

/* ------------------------------------------- host.c: the kernel host */

/*
 * The host of the kernel's own suites: pages as above; zswap keeps a
 * kmalloc'd copy of the page's first bytes as its "compressed object" (the
 * handle is the object's address, a direct-map pointer that fits the 50
 * sign-extended bits a handle may have) and frees it on release_zswap;
 * released_phys records runs and slots.
 */
struct vk_host {
	atomic64_t zswap_stored;    /* objects kept by zswap_store */
	atomic64_t zswap_released;  /* release_zswap calls */
	atomic64_t zswap_live;      /* kept and not yet released */
	atomic64_t phys_runs;       /* released_phys calls */
	atomic64_t phys_slots;      /* device slots they reported */
	atomic64_t last_phys_dev;
	atomic64_t last_phys_off;
	atomic_t zswap_on;
};

void vk_host_init(struct vk_host *h, struct vswap_host_ops *ops);

/* Page contents: `kind` is a VSWAP_BACKEND_* the page should end up as
 * (PHYS: random bytes zswap refuses; ZSWAP: random bytes zswap takes). */
void vk_fill_page(u8 *page, u32 kind, u32 seed);

/* Stack high-water mark of the current task (host.c): paint, run, measure. */
void vk_stack_paint(void);
size_t vk_stack_used(void);
/* Keep the deepest mark of any test (module init's task). */
extern size_t vk_stack_deepest;
extern const char *vk_stack_deepest_test;
void vk_note_stack(const char *test, size_t used);

/* --------------------------------------------------------- the suites */

extern int vk_passed, vk_failed;

void vk_run(const char *name, void (*fn)(void));
void vk_suite_kernel(void);
int vswap_kt_lifecycle_main(void);
int vswap_kt_bad_input_main(void);

/* Self-test checks: log the failed condition or call and count it in
 * `counter` (the module's own tests and the userspace suites' harness each
 * keep their counter). */
#define VK_CHECK(counter, cond)                                                  \
	do {                                                                     \
		if (!(cond)) {                                                   \
			pr_err("vswap selftest: %s:%d: check failed: %s\n",      \
			       __FILE__, __LINE__, #cond);                       \
			(counter)++;                                             \
		}                                                                \
	} while (0)

#define VK_EXPECT(counter, call, want)                                           \
	do {                                                                     \
		long long got_ = (long long)(call);                              \
		long long want_ = (long long)(want);                             \
		if (got_ != want_) {                                             \
			pr_err("vswap selftest: %s:%d: %s returned %lld, want %lld\n", \
			       __FILE__, __LINE__, #call, got_, want_);          \
			(counter)++;                                             \
		}                                                                \
	} while (0)

#endif /* VSWAP_KMOD_H */
