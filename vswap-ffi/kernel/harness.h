/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The kernel's stand-in for vswap-ffi/tests/c/harness.h: the same names
 * (struct test_host, host_init, CHECK/EXPECT/OK/RUN, make_engine,
 * add_device, page fixtures), so the userspace C suites lifecycle.c and
 * bad_input.c compile unchanged inside the module. .ci/kernel copies them
 * next to this file, as harness.h, in the module's build directory.
 *
 * The test host's memory comes from the kernel's page hooks (host.c:
 * alloc_pages, GFP_KERNEL or GFP_NOWAIT), with the suites' byte accounting
 * and out-of-memory injection on top. The suites use C11 <stdatomic.h>
 * names on plain integers; here those are GCC __atomic builtins, defined
 * after every kernel header (the kernel's own atomic_fetch_add & co. have
 * other signatures, and nothing after this header uses them).
 */
#ifndef VSWAP_TEST_HARNESS_H
#define VSWAP_TEST_HARNESS_H

#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/limits.h>
#include <linux/printk.h>
#include <linux/string.h>
#include <linux/types.h>

#include "vswap_kmod.h"

/* ---------------------------------------------- userspace names mapped */

#ifndef UINT64_MAX
#define UINT64_MAX U64_MAX
#define UINT32_MAX U32_MAX
#define UINT16_MAX U16_MAX
#define UINT8_MAX U8_MAX
#define INT64_MAX S64_MAX
#define INT32_MAX S32_MAX
#define INT32_MIN S32_MIN
#endif

typedef long long atomic_llong;
typedef unsigned long long atomic_ullong;
typedef int atomic_int;
typedef unsigned char atomic_uchar;

#undef atomic_load
#undef atomic_store
#undef atomic_fetch_add
#undef atomic_fetch_sub
#undef atomic_exchange
#undef atomic_compare_exchange_weak
#define atomic_load(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define atomic_store(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define atomic_fetch_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define atomic_fetch_sub(p, v) __atomic_fetch_sub((p), (v), __ATOMIC_SEQ_CST)
#define atomic_exchange(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define atomic_compare_exchange_weak(p, e, d)                                         \
	__atomic_compare_exchange_n((p), (e), (d), 1, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)

/* printf/fprintf(stderr, ...) of the suites go to the kernel log. */
#undef printf
#undef fprintf
#define printf(...) pr_info("vswap selftest: " __VA_ARGS__)
#define fprintf(stream, ...) pr_err("vswap selftest: " __VA_ARGS__)

/* ------------------------------------------------------------- the host */

struct test_host {
	atomic_llong bytes;          /* bytes handed out and not yet freed */
	atomic_llong blocks;
	atomic_llong fail_after;     /* allocations left before NULL; -1: never */
	atomic_llong zswap_released; /* release_zswap calls */
	atomic_ullong zswap_sum;     /* sum of released handles */
	atomic_llong phys_released;  /* device slots reported released */
	atomic_llong phys_runs;      /* released_phys calls */
	atomic_llong zswap_next;     /* next zswap handle */
	atomic_llong charged;        /* pages charged minus uncharged */
	atomic_llong discards;       /* discard calls */
	atomic_int refuse_charge;
	atomic_int zswap_on;         /* zswap_store takes pages whose first byte is 0x5a */
};

static inline void *th_alloc(void *ctx, size_t size, size_t align, bool may_sleep)
{
	struct test_host *h = ctx;
	long long left = atomic_load(&h->fail_after);
	void *p;

	while (left >= 0) {
		if (left == 0)
			return NULL;
		if (atomic_compare_exchange_weak(&h->fail_after, &left, left - 1))
			break;
	}
	p = vk_page_alloc(size, align, may_sleep);
	if (!p)
		return NULL;
	memset(p, 0xa5, size); /* not zeroed: the library must zero it */
	atomic_fetch_add(&h->bytes, (long long)size);
	atomic_fetch_add(&h->blocks, 1);
	return p;
}

static inline void th_free(void *ctx, void *ptr, size_t size, size_t align)
{
	struct test_host *h = ctx;

	atomic_fetch_sub(&h->bytes, (long long)size);
	atomic_fetch_sub(&h->blocks, 1);
	vk_page_free(ptr, size, align);
}

static inline void th_release_zswap(void *ctx, uint64_t handle)
{
	struct test_host *h = ctx;

	atomic_fetch_add(&h->zswap_released, 1);
	atomic_fetch_add(&h->zswap_sum, handle);
}

static inline void th_released_phys(void *ctx, uint32_t dev, uint64_t off, uint64_t len)
{
	struct test_host *h = ctx;

	atomic_fetch_add(&h->phys_released, (long long)len);
	atomic_fetch_add(&h->phys_runs, 1);
}

static inline bool th_zswap_store(void *ctx, uint32_t slot, const uint8_t *page, size_t len,
				  uint64_t *handle)
{
	struct test_host *h = ctx;

	if (!atomic_load(&h->zswap_on) || len == 0 || page[0] != 0x5a)
		return false;
	*handle = (uint64_t)atomic_fetch_add(&h->zswap_next, 1);
	return true;
}

static inline bool th_charge(void *ctx, uint16_t memcg, uint32_t pages)
{
	struct test_host *h = ctx;

	if (atomic_load(&h->refuse_charge))
		return false;
	atomic_fetch_add(&h->charged, pages);
	return true;
}

static inline void th_uncharge(void *ctx, uint16_t memcg, uint32_t pages)
{
	struct test_host *h = ctx;

	atomic_fetch_sub(&h->charged, pages);
}

static inline void th_discard(void *ctx, uint32_t dev, uint64_t first, uint64_t len)
{
	struct test_host *h = ctx;

	atomic_fetch_add(&h->discards, 1);
}

static inline void host_init(struct test_host *h, struct vswap_host_ops *ops)
{
	memset(h, 0, sizeof(*h));
	atomic_store(&h->fail_after, -1);
	atomic_store(&h->zswap_next, 1000);
	atomic_store(&h->zswap_on, 1);
	memset(ops, 0, sizeof(*ops));
	ops->ctx = h;
	ops->alloc = th_alloc;
	ops->free = th_free;
	ops->release_zswap = th_release_zswap;
	ops->released_phys = th_released_phys;
	ops->zswap_store = th_zswap_store;
	ops->charge = th_charge;
	ops->uncharge = th_uncharge;
	ops->discard = th_discard;
}

/* ----------------------------------------------------------- the runner */

static int t_failed_checks;

#define CHECK(cond) VK_CHECK(t_failed_checks, cond)
#define EXPECT(call, want) VK_EXPECT(t_failed_checks, call, want)
#define OK(call) EXPECT(call, 0)

static int t_passed, t_failed;

static inline void run_test(const char *name, void (*fn)(void))
{
	int before = t_failed_checks;

	size_t stack;

	vk_stack_paint();
	fn();
	stack = vk_stack_used();
	vk_note_stack(name, stack);
	if (t_failed_checks == before) {
		t_passed++;
		vk_passed++;
		pr_info("vswap selftest: test %s ... ok (stack %zu)\n", name, stack);
	} else {
		t_failed++;
		vk_failed++;
		pr_err("vswap selftest: test %s ... FAILED\n", name);
	}
}

#define RUN(fn) run_test(#fn, fn)

static inline int finish(const char *suite)
{
	pr_info("vswap selftest: suite %s: %d passed, %d failed\n", suite, t_passed, t_failed);
	return t_failed ? 1 : 0;
}

/* ---------------------------------------------------------- fixtures */

#define PAGE 4096

static uint8_t page_zero[PAGE];

static inline void fill_same(uint8_t *p, uint64_t v)
{
	for (size_t i = 0; i < PAGE; i += 8)
		memcpy(p + i, &v, 8);
}

static inline void fill_random(uint8_t *p, unsigned int seed)
{
	for (size_t i = 0; i < PAGE; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
	p[0] = 0x11; /* not 0x5a: zswap does not take it */
}

static inline void fill_zswap(uint8_t *p, unsigned int seed)
{
	fill_random(p, seed);
	p[0] = 0x5a; /* the test host's zswap takes it */
}

/* An engine with a small virtual space (64 Ki slots, 2 CPUs). */
static inline struct vswap_engine *make_engine(const struct vswap_host_ops *ops,
					       uint32_t placement, uint32_t charge)
{
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;

	if (vswap_engine_config_default(&cfg) != 0)
		return NULL;
	cfg.geometry.slots = 1 << 16;
	cfg.geometry.cpus = 2;
	cfg.placement = placement;
	cfg.charge = charge;
	if (vswap_engine_create(&cfg, ops, &e) != 0)
		return NULL;
	return e;
}

static inline int add_device(struct vswap_engine *e, uint32_t dev, uint32_t prio, uint64_t slots)
{
	struct vswap_device_config d;
	int rc = vswap_device_config_default(&d, slots);

	if (rc)
		return rc;
	d.geometry.cpus = 2;
	return vswap_device_add(e, dev, prio, &d);
}

#endif /* VSWAP_TEST_HARNESS_H */
