// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * The module's own suite, on the kernel host of host.c (pages from
 * alloc_pages, zswap objects from kmalloc):
 *   - every backend through the whole lifecycle at every order 0..9, freed
 *     through the batch forms (put_range, put_many, lock_range +
 *     unlock_range) and slot by slot;
 *   - the tiers: zswap writeback to a device, relocation between devices,
 *     evacuation of a device into memory (the "read" fills a real page);
 *   - the list lock is the host's spinlock: the library's locks are
 *     initialised, taken and released through the vswap_host_spin_* hooks
 *     (host.c), in pairs, never nested, with interrupts on and off, and
 *     never around a host callback; a library that spun on a lock of its
 *     own would not call the hooks and fail it;
 *   - two kthreads bound to two CPUs doing random operations
 *     (prandom seeded from get_random_u32) on one engine, then the
 *     invariants: no slot handed out twice, every zswap object and device
 *     slot given back exactly once, nothing live, nothing leaked.
 */
#include <linux/completion.h>
#include <linux/cpumask.h>
#include <linux/err.h>
#include <linux/gfp.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/prandom.h>
#include <linux/printk.h>
#include <linux/random.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "vswap_kmod.h"

static int checks_failed;

#define KCHECK(cond) VK_CHECK(checks_failed, cond)
#define KEXPECT(call, want) VK_EXPECT(checks_failed, call, want)
#define KOK(call) KEXPECT(call, 0)

int vk_passed, vk_failed;

void vk_run(const char *name, void (*fn)(void))
{
	int before = checks_failed;

	size_t stack;

	vk_stack_paint();
	fn();
	stack = vk_stack_used();
	vk_note_stack(name, stack);
	if (checks_failed == before) {
		vk_passed++;
		pr_info("vswap selftest: test %s ... ok (stack %zu)\n", name, stack);
	} else {
		vk_failed++;
		pr_err("vswap selftest: test %s ... FAILED\n", name);
	}
}

static struct vk_host H;
static struct vswap_host_ops OPS;

static struct vswap_engine *new_engine(u32 placement, u64 slots)
{
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;

	vk_host_init(&H, &OPS);
	KOK(vswap_engine_config_default(&cfg));
	cfg.geometry.slots = slots;
	cfg.geometry.cpus = 2;
	cfg.placement = placement;
	KOK(vswap_engine_create(&cfg, &OPS, &e));
	return e;
}

static int new_device(struct vswap_engine *e, u32 dev, u32 prio, u64 slots)
{
	struct vswap_device_config d;

	KOK(vswap_device_config_default(&d, slots));
	d.geometry.cpus = 2;
	return vswap_device_add(e, dev, prio, &d);
}

/* Destroy `e`; every page the hooks handed out since `pages_before` is back. */
static void destroy_engine(struct vswap_engine *e, int pages_before)
{
	vswap_engine_destroy(e);
	KEXPECT(atomic_read(&vk_pages.pages_out), pages_before);
	KEXPECT(atomic64_read(&H.zswap_live), 0);
}

/* ---------------------------------------- every backend at every order */

enum vk_kind {
	K_MEMORY,      /* never written out: stays in the swap cache */
	K_ZERO,
	K_SAME,
	K_ZSWAP,
	K_PHYS,        /* deferred placement: a device slot at writeout */
	K_PHYS_EAGER,  /* eager placement: contiguous device slots at alloc */
	K_NR
};

static const char *const kind_name[K_NR] = {
	"memory", "zero", "same", "zswap", "phys", "phys-eager",
};

static const u32 kind_backend[K_NR] = {
	VSWAP_BACKEND_NONE, VSWAP_BACKEND_ZERO, VSWAP_BACKEND_SAME,
	VSWAP_BACKEND_ZSWAP, VSWAP_BACKEND_PHYS, VSWAP_BACKEND_PHYS,
};

#define MAX_ORDER_TESTED 9 /* 512-slot clusters: order 9 is a whole cluster */

static u8 *scratch; /* one page, from vk_suite_kernel */

static void lifecycle_kind_order(struct vswap_engine *e, enum vk_kind k, u32 order)
{
	u32 n = 1u << order, start = 0, i, done = 0, freed = 0;
	u64 zswap0 = atomic64_read(&H.zswap_released);
	u64 phys0 = atomic64_read(&H.phys_slots);
	struct vswap_map_stats st;
	struct vswap_swapin si;
	struct vswap_backend b;
	struct vswap_entry en;
	u64 first_off = 0;

	KOK(vswap_alloc(e, order, order & 1, VSWAP_NO_MEMCG, true, &start));
	KCHECK(start != 0 && (start & (n - 1)) == 0);
	for (i = 0; i < n; i++) {
		u32 s = start + i;

		/* two page-table references */
		KOK(vswap_dup(e, s, 2, true));
		if (k != K_MEMORY) {
			vk_fill_page(scratch, kind_backend[k], s);
			KOK(vswap_writeout(e, s, scratch, PAGE_SIZE, order & 1, &b));
			KEXPECT(b.kind, kind_backend[k]);
			if (k == K_PHYS || k == K_PHYS_EAGER) {
				u32 owner = 0;

				KOK(vswap_device_owner(e, b.dev, b.value, &owner));
				KEXPECT(owner, s);
				if (i == 0)
					first_off = b.value;
				else if (k == K_PHYS_EAGER)
					KEXPECT(b.value, first_off + i);
			}
			/* reclaim: the folio leaves the swap cache */
			KEXPECT(vswap_cache_clear(e, s, 0x100 + i, true), VSWAP_LIVE);
		}
		KOK(vswap_lookup(e, s, &en));
		KEXPECT(en.backend.kind, kind_backend[k]);
		KEXPECT(en.count, 2);
		KEXPECT(en.cached, k == K_MEMORY);
	}
	/* mTHP swap-in check of the whole range */
	KOK(vswap_swapin_check(e, start, order, &si));
	if (k == K_ZERO || k == K_SAME || k == K_MEMORY) {
		KEXPECT(si.kind, VSWAP_SWAPIN_UNIFORM);
		KEXPECT(si.backend_kind, kind_backend[k]);
	} else if (k == K_PHYS_EAGER) {
		KEXPECT(si.kind, VSWAP_SWAPIN_CONTIGUOUS);
		KEXPECT(si.off, first_off);
	} else if (k == K_ZSWAP) {
		KEXPECT(si.kind, VSWAP_SWAPIN_NO);
	}
	KOK(vswap_engine_get_stats(e, &st));
	KEXPECT(st.live_slots, n);
	KEXPECT(st.by_kind[kind_backend[k]], n);

	/* The first reference of each slot goes through a batch form. */
	switch (order % 3) {
	case 0:
		KOK(vswap_put_range(e, start, order, &freed));
		KEXPECT(freed, 0);
		break;
	case 1:
		KOK(vswap_put_many(e, start, n, &done, &freed));
		KEXPECT(done, n);
		KEXPECT(freed, 0);
		break;
	default:
		for (i = 0; i < n; i++)
			KEXPECT(vswap_put(e, start + i, 1), VSWAP_LIVE);
		break;
	}
	/* The last one frees; under the range lock for some orders. */
	if (order % 2 == 0) {
		KOK(vswap_put_range(e, start, order, &freed));
		KEXPECT(freed, k == K_MEMORY ? 0 : n);
	} else {
		KOK(vswap_lock_range(e, start, order));
		for (i = 0; i < n; i++) {
			KOK(vswap_lookup(e, start + i, &en));
			KCHECK(en.locked);
			KEXPECT(vswap_put(e, start + i, 1), VSWAP_LIVE); /* freed at unlock */
		}
		KOK(vswap_unlock_range(e, start, order, &freed));
		KEXPECT(freed, k == K_MEMORY ? 0 : n);
	}
	if (k == K_MEMORY) {
		/* count 0, still cached: leaving the swap cache frees */
		for (i = 0; i < n; i++)
			KEXPECT(vswap_cache_clear(e, start + i, 0, true), VSWAP_FREED);
	}
	for (i = 0; i < n; i++)
		KEXPECT(vswap_lookup(e, start + i, &en), -VSWAP_ENOENT);
	KOK(vswap_engine_get_stats(e, &st));
	KEXPECT(st.live_slots, 0);
	KEXPECT(atomic64_read(&H.zswap_released) - zswap0, k == K_ZSWAP ? n : 0);
	KEXPECT(atomic64_read(&H.phys_slots) - phys0,
		(k == K_PHYS || k == K_PHYS_EAGER) ? n : 0);
}

static void test_every_backend_every_order(void)
{
	int pages0 = atomic_read(&vk_pages.pages_out);
	enum vk_kind k;
	u32 order;

	for (k = 0; k < K_NR; k++) {
		struct vswap_engine *e = new_engine(k == K_PHYS_EAGER ? VSWAP_PLACEMENT_EAGER :
							VSWAP_PLACEMENT_DEFERRED, 1 << 16);
		struct vswap_device_stats ds;
		int before = checks_failed;

		if (!e)
			return;
		KOK(new_device(e, 0, 10, 1 << 14));
		for (order = 0; order <= MAX_ORDER_TESTED; order++)
			lifecycle_kind_order(e, k, order);
		KOK(vswap_device_get_stats(e, 0, &ds));
		KEXPECT(ds.used, 0);
		KOK(vswap_device_remove(e, 0));
		destroy_engine(e, pages0);
		pr_info("vswap selftest: backend %s, orders 0..%d: %s\n", kind_name[k],
			MAX_ORDER_TESTED, checks_failed == before ? "ok" : "FAILED");
	}
}

/* ------------------------------------------------- stack of creation */

/*
 * The engine is about 11 KiB; vswap_engine_create builds it in place in
 * host memory. Measure the stack creating (with a log device) and
 * destroying one really takes here, against the kernel's THREAD_SIZE.
 */
static void test_engine_create_stack(void)
{
	int pages0 = atomic_read(&vk_pages.pages_out);
	struct vswap_log_config lc = {
		.segments = 8, .seg_shift = 6, .page_size = 4096, .reserve = 1,
		.policy = VSWAP_GC_GREEDY,
	};
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;
	size_t base, used;

	vk_host_init(&H, &OPS);
	KOK(vswap_engine_config_default(&cfg)); /* 2^32 slots, 64 CPUs */
	cfg.log = &lc;
	cfg.log_dev = 15;
	vk_stack_paint();
	base = vk_stack_used();
	KOK(vswap_engine_create(&cfg, &OPS, &e));
	if (e) {
		KOK(new_device(e, 0, 1, 1 << 16));
		KOK(vswap_device_remove(e, 0));
		destroy_engine(e, pages0);
	}
	used = vk_stack_used() - base;
	pr_info("vswap selftest: stack: engine create + device add/remove + destroy took %zu bytes below the caller (THREAD_SIZE %lu)\n",
		used, (unsigned long)THREAD_SIZE);
	KCHECK(used < 4096);
}

/* ----------------------------------------------------------- the tiers */

static int evac_dropped;

/* Evacuation into memory: "read" the page into a real page, whose address
 * is the swap cache cookie; a folio the engine hands back is freed. */
static int evac_read(void *arg, const struct vswap_move *mv, uint64_t *cookie)
{
	struct page **pages = arg;
	struct page *p;

	if (mv->kind == VSWAP_MOVE_DROP) {
		p = virt_to_page((void *)(uintptr_t)*cookie);
		if (pages[mv->slot & 63] == p)
			pages[mv->slot & 63] = NULL;
		__free_page(p);
		evac_dropped++;
		return 0;
	}
	if (mv->kind != VSWAP_MOVE_READ)
		return -EINVAL;
	p = alloc_page(GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	pages[mv->slot & 63] = p;
	*cookie = (uint64_t)(uintptr_t)page_address(p);
	return 0;
}

static void test_tiers(void)
{
	int pages0 = atomic_read(&vk_pages.pages_out);
	struct vswap_engine *e = new_engine(VSWAP_PLACEMENT_DEFERRED, 1 << 16);
	struct page *pages[64] = { NULL };
	struct vswap_cache_state cs;
	struct vswap_evacuated ev;
	struct vswap_writeback wb;
	struct vswap_backend b;
	struct vswap_entry en;
	u32 s[4], i, to_dev = 0;
	u64 to = 0, moved;

	if (!e)
		return;
	KOK(new_device(e, 0, 10, 4096));
	KOK(new_device(e, 1, 5, 4096));
	for (i = 0; i < 4; i++) {
		KOK(vswap_alloc(e, 0, 0, VSWAP_NO_MEMCG, true, &s[i]));
		KOK(vswap_dup(e, s[i], 1, true));
	}
	/* zswap writeback: s[0] goes from zswap to device 0 */
	vk_fill_page(scratch, VSWAP_BACKEND_ZSWAP, 1);
	KOK(vswap_writeout(e, s[0], scratch, PAGE_SIZE, 0, &b));
	KEXPECT(b.kind, VSWAP_BACKEND_ZSWAP);
	KEXPECT(vswap_cache_clear(e, s[0], 0, true), VSWAP_LIVE);
	KOK(vswap_writeback_begin(e, s[0], 0, &wb));
	KEXPECT(wb.handle, b.value);
	KOK(vswap_writeback_commit(e, &wb));
	KEXPECT(atomic64_read(&H.zswap_live), 0);
	KOK(vswap_lookup(e, s[0], &en));
	KEXPECT(en.backend.kind, VSWAP_BACKEND_PHYS);
	KEXPECT(en.backend.value, wb.off);
	/* relocation (GC): s[0] moves to a new device slot, the old is released */
	KOK(vswap_alloc_phys(e, 0, 0, s[0], true, &to_dev, &to));
	KOK(vswap_lock(e, s[0]));
	KOK(vswap_relocate(e, s[0], wb.dev, wb.off, to_dev, to));
	KOK(vswap_lookup(e, s[0], &en));
	KEXPECT(en.backend.dev, to_dev);
	KEXPECT(en.backend.value, to);
	KCHECK(!en.locked);
	KEXPECT(atomic64_read(&H.last_phys_dev), wb.dev);
	KEXPECT(atomic64_read(&H.last_phys_off), wb.off);
	KEXPECT(atomic64_read(&H.phys_slots), 1);
	/* three more on the devices, then swapoff of both into memory */
	for (i = 1; i < 4; i++) {
		vk_fill_page(scratch, VSWAP_BACKEND_PHYS, 10 + i);
		KOK(vswap_writeout(e, s[i], scratch, PAGE_SIZE, 0, &b));
		KEXPECT(b.kind, VSWAP_BACKEND_PHYS);
		KEXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_LIVE);
	}
	KOK(vswap_evacuate(e, 0, -1, 0, evac_read, pages, &ev));
	moved = ev.moved;
	KOK(vswap_evacuate(e, 1, -1, 1, evac_read, pages, &ev));
	KEXPECT(moved + ev.moved, 4);
	KEXPECT(evac_dropped, 0); /* every slot took its folio */
	KEXPECT(atomic64_read(&H.phys_slots), 5);
	for (i = 0; i < 4; i++) {
		KOK(vswap_cache_get(e, s[i], &cs));
		KCHECK(cs.cached);
		KCHECK(cs.word == (uint64_t)(uintptr_t)page_address(pages[s[i] & 63]));
		KEXPECT(vswap_put(e, s[i], 1), VSWAP_LIVE);
		KEXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_FREED);
		__free_page(pages[s[i] & 63]);
	}
	KOK(vswap_device_remove(e, 0));
	KOK(vswap_device_remove(e, 1));
	destroy_engine(e, pages0);
}

/* ------------------------------------------------ the list lock */

#define LOCK_SLOTS (3 * 512) /* three clusters: at least three list refills */

static u32 lock_slots[LOCK_SLOTS];

/*
 * The library's slow-path locks are kernel spinlocks (host.c's hooks), not
 * a spin loop of the library's own: allocations that must refill a CPU's
 * cluster take the list lock through vswap_host_spin_lock, frees with
 * interrupts off (a host under xa_lock_irq) take it with them off and leave
 * them off, and every lock is released on its CPU, unnested, with
 * preemption and interrupts off while held.
 */
static void test_list_lock_is_a_spinlock(void)
{
	int pages0 = atomic_read(&vk_pages.pages_out);
	int inits0 = atomic_read(&vk_locks.inits);
	s64 locks0 = atomic64_read(&vk_locks.locks);
	s64 unlocks0 = atomic64_read(&vk_locks.unlocks);
	s64 off0 = atomic64_read(&vk_locks.irqs_were_off);
	int nested0 = atomic_read(&vk_locks.nested);
	int bad0 = atomic_read(&vk_locks.bad_unlock);
	int under0 = atomic_read(&vk_locks.callback_under_lock);
	struct vswap_engine *e = new_engine(VSWAP_PLACEMENT_DEFERRED, 1 << 16);
	s64 locks_alloc, locks, off;
	unsigned long flags;
	int inits;
	u32 i;

	if (!e)
		return;
	/* At least the virtual space's lists and the map's side table. */
	inits = atomic_read(&vk_locks.inits) - inits0;
	KCHECK(inits >= 2);
	KOK(new_device(e, 0, 10, 1 << 14));
	KCHECK(atomic_read(&vk_locks.inits) - inits0 > inits); /* the device's lists */

	for (i = 0; i < LOCK_SLOTS; i++)
		KOK(vswap_alloc(e, 0, 0, VSWAP_NO_MEMCG, true, &lock_slots[i]));
	locks_alloc = atomic64_read(&vk_locks.locks) - locks0;
	KCHECK(locks_alloc >= 3);
	KCHECK(!irqs_disabled());

	/* Free the first half with interrupts off: emptied clusters are torn
	 * down under the list lock, taken with interrupts already off. */
	local_irq_save(flags);
	for (i = 0; i < LOCK_SLOTS / 2; i++)
		KEXPECT(vswap_cache_clear(e, lock_slots[i], 0, false), VSWAP_FREED);
	KCHECK(irqs_disabled());
	local_irq_restore(flags);
	off = atomic64_read(&vk_locks.irqs_were_off) - off0;
	KCHECK(off > 0);
	for (i = LOCK_SLOTS / 2; i < LOCK_SLOTS; i++)
		KEXPECT(vswap_cache_clear(e, lock_slots[i], 0, true), VSWAP_FREED);
	KCHECK(!irqs_disabled());
	KOK(vswap_device_remove(e, 0));
	destroy_engine(e, pages0);

	locks = atomic64_read(&vk_locks.locks) - locks0;
	KEXPECT(atomic64_read(&vk_locks.unlocks) - unlocks0, locks);
	KEXPECT(atomic_read(&vk_locks.nested) - nested0, 0);
	KEXPECT(atomic_read(&vk_locks.bad_unlock) - bad0, 0);
	KEXPECT(atomic_read(&vk_locks.callback_under_lock) - under0, 0);
	pr_info("vswap selftest: list lock: %d spinlocks initialised, %lld lock/unlock pairs (%lld in the allocations, %lld with interrupts off), none nested\n",
		atomic_read(&vk_locks.inits) - inits0, locks, locks_alloc, off);
}

/* ---------------------------------------------- two kthreads, two CPUs */

#define STRESS_SLOTS (1u << 16)
#define STRESS_OWN 256
#define STRESS_ITERS 200000
#define QCAP 1024

struct stress_slot {
	u32 slot;
	u32 refs;
};

struct stress_worker {
	struct task_struct *task;
	struct completion done;
	struct rnd_state rnd;
	u32 cpu;
	u32 seed;
	struct stress_slot own[STRESS_OWN];
	int n;
	long ops;
	size_t stack; /* high-water mark of the kthread's stack */
};

static struct vswap_engine *SE;
static unsigned long *stress_owned; /* bitmap: slot handed out now */
static atomic64_t st_double, st_bad, st_zswap, st_phys, st_freed, st_allocs;
static DEFINE_SPINLOCK(q_lock);
static u32 q_slots[QCAP];
static int q_len;

static void st_rc(int rc, int want, const char *what, u32 slot)
{
	if (rc == want)
		return;
	if (atomic64_inc_return(&st_bad) <= 5)
		pr_err("vswap selftest: stress: %s(%u) returned %d, want %d\n", what, slot, rc, want);
}

/* The last reference goes: the slot is no longer ours before the put
 * (another CPU may get it back at once). */
static void st_release(u32 s, u32 refs)
{
	clear_bit(s, stress_owned);
	if (refs > 1)
		st_rc(vswap_put(SE, s, refs - 1), VSWAP_LIVE, "put", s);
	st_rc(vswap_put(SE, s, 1), VSWAP_FREED, "last put", s);
	atomic64_inc(&st_freed);
}

static void st_take(struct stress_worker *w, u32 s, u32 refs)
{
	if (test_and_set_bit(s, stress_owned))
		atomic64_inc(&st_double);
	w->own[w->n].slot = s;
	w->own[w->n].refs = refs;
	w->n++;
}

static void st_alloc(struct stress_worker *w, u8 *page)
{
	u32 r = prandom_u32_state(&w->rnd);
	u32 order = (r & 7) == 0 ? (r >> 3) % 3 : 0; /* mostly order 0, some 1..2 */
	bool may_sleep = r & 0x100;
	u32 start = 0, i;
	int rc;

	if (w->n + (1 << order) > STRESS_OWN)
		return;
	rc = vswap_alloc(SE, order, w->cpu, VSWAP_NO_MEMCG, may_sleep, &start);
	if (rc == -VSWAP_EAGAIN) /* GFP_NOWAIT found no page: sleep and retry */
		rc = vswap_alloc(SE, order, w->cpu, VSWAP_NO_MEMCG, true, &start);
	if (rc == -VSWAP_ENOSPC)
		return;
	st_rc(rc, 0, "alloc", order);
	if (rc)
		return;
	atomic64_inc(&st_allocs);
	for (i = 0; i < (1u << order); i++) {
		u32 s = start + i, kind = (r >> 9) % 5;
		struct vswap_backend b;

		st_take(w, s, 1);
		st_rc(vswap_dup(SE, s, 1, may_sleep), 0, "dup", s);
		if (kind != VSWAP_BACKEND_NONE) {
			vk_fill_page(page, kind, prandom_u32_state(&w->rnd));
			rc = vswap_writeout(SE, s, page, PAGE_SIZE, w->cpu, &b);
			st_rc(rc, 0, "writeout", s);
			if (!rc && b.kind != kind)
				st_rc(b.kind, kind, "writeout kind", s);
			if (!rc && b.kind == VSWAP_BACKEND_ZSWAP)
				atomic64_inc(&st_zswap);
			if (!rc && b.kind == VSWAP_BACKEND_PHYS)
				atomic64_inc(&st_phys);
		}
		/* reclaim: count 1, not cached */
		st_rc(vswap_cache_clear(SE, s, 0, may_sleep), VSWAP_LIVE, "cache_clear", s);
	}
}

static void st_drop(struct stress_worker *w, int i)
{
	st_release(w->own[i].slot, w->own[i].refs);
	w->own[i] = w->own[--w->n];
}

static int stress_fn(void *arg)
{
	struct stress_worker *w = arg;
	u8 *page = (u8 *)__get_free_page(GFP_KERNEL);
	struct vswap_entry en;
	long it;

	if (!page) {
		atomic64_inc(&st_bad);
		kthread_complete_and_exit(&w->done, 0);
	}
	vk_stack_paint();
	prandom_seed_state(&w->rnd, w->seed);
	for (it = 0; it < STRESS_ITERS; it++) {
		u32 r = prandom_u32_state(&w->rnd), op = r % 10;
		int i = w->n ? (int)((r >> 8) % w->n) : -1;
		u32 other, t = 0;
		int rc;

		w->ops++;
		if (op <= 2 || i < 0) {
			st_alloc(w, page);
		} else if (op == 3 && w->own[i].refs < 100) {
			/* past 62 references the count moves to the side table */
			rc = vswap_dup(SE, w->own[i].slot, 1, r & 0x100000);
			if (rc == -VSWAP_EAGAIN)
				rc = vswap_dup(SE, w->own[i].slot, 1, true);
			st_rc(rc, 0, "dup", w->own[i].slot);
			if (!rc)
				w->own[i].refs++;
		} else if (op == 4) {
			rc = vswap_lookup(SE, w->own[i].slot, &en);
			st_rc(rc, 0, "lookup", w->own[i].slot);
			if (!rc && (en.count != w->own[i].refs || en.cached || en.locked))
				st_rc(-1, 0, "lookup state", w->own[i].slot);
		} else if (op == 5) {
			/* a stray lookup: any state, never a crash */
			other = prandom_u32_state(&w->rnd) % STRESS_SLOTS;
			rc = vswap_lookup(SE, other, &en);
			if (rc && rc != -VSWAP_ENOENT && rc != -VSWAP_ERANGE)
				st_rc(rc, 0, "stray lookup", other);
		} else if (op <= 7) {
			if (w->own[i].refs > 1) {
				st_rc(vswap_put(SE, w->own[i].slot, 1), VSWAP_LIVE, "put",
				      w->own[i].slot);
				w->own[i].refs--;
			} else {
				st_drop(w, i);
			}
		} else if (op == 8) {
			/* hand a slot (with its references) to the other CPU */
			spin_lock(&q_lock);
			if (q_len + 1 < QCAP && w->own[i].refs == 1) {
				q_slots[q_len++] = w->own[i].slot;
				w->own[i] = w->own[--w->n];
			}
			spin_unlock(&q_lock);
		} else {
			/* free one the other CPU handed over */
			spin_lock(&q_lock);
			if (q_len > 0)
				t = q_slots[--q_len];
			spin_unlock(&q_lock);
			if (t)
				st_release(t, 1);
		}
		if ((it & 255) == 0)
			cond_resched();
	}
	while (w->n > 0)
		st_drop(w, w->n - 1);
	w->stack = vk_stack_used();
	free_page((unsigned long)page);
	kthread_complete_and_exit(&w->done, 0);
}

static void test_two_kthreads(void)
{
	int pages0 = atomic_read(&vk_pages.pages_out);
	struct stress_worker *w;
	struct vswap_device_stats d0, d1;
	struct vswap_map_stats st;
	u32 cpus[2] = { 0, 0 };
	int i, c = 0;

	for_each_online_cpu(i) {
		if (c < 2)
			cpus[c++] = i;
	}
	if (c < 2)
		pr_warn("vswap selftest: one CPU online: both kthreads on CPU %u\n", cpus[0]);
	w = kcalloc(2, sizeof(*w), GFP_KERNEL);
	stress_owned = bitmap_zalloc(STRESS_SLOTS, GFP_KERNEL);
	SE = new_engine(VSWAP_PLACEMENT_DEFERRED, STRESS_SLOTS);
	KCHECK(w && stress_owned && SE);
	if (!w || !stress_owned || !SE)
		goto out;
	KOK(new_device(SE, 0, 5, 1 << 14));
	KOK(new_device(SE, 1, 5, 1 << 14));
	q_len = 0;
	for (i = 0; i < 2; i++) {
		w[i].cpu = i; /* the library's CPU number: its per-CPU caches */
		w[i].seed = get_random_u32();
		init_completion(&w[i].done);
		w[i].task = kthread_create_on_cpu(stress_fn, &w[i], cpus[i], "vswap_stress/%u");
		if (IS_ERR(w[i].task)) {
			KCHECK(!IS_ERR(w[i].task));
			w[i].task = NULL;
			complete(&w[i].done);
			continue;
		}
		pr_info("vswap selftest: stress kthread %d on CPU %u, seed %#x\n", i, cpus[i],
			w[i].seed);
	}
	for (i = 0; i < 2; i++)
		if (w[i].task)
			wake_up_process(w[i].task);
	for (i = 0; i < 2; i++)
		wait_for_completion(&w[i].done);
	while (q_len > 0)
		st_release(q_slots[--q_len], 1);

	/* the invariants */
	KEXPECT(atomic64_read(&st_double), 0);
	KEXPECT(atomic64_read(&st_bad), 0);
	KCHECK(bitmap_empty(stress_owned, STRESS_SLOTS));
	KOK(vswap_engine_get_stats(SE, &st));
	KEXPECT(st.live_slots, 0);
	KEXPECT(st.locked, 0);
	KOK(vswap_device_get_stats(SE, 0, &d0));
	KOK(vswap_device_get_stats(SE, 1, &d1));
	KEXPECT(d0.used + d1.used, 0);
	KCHECK(atomic64_read(&st_zswap) > 0 && atomic64_read(&st_phys) > 0);
	KEXPECT(atomic64_read(&H.zswap_released), atomic64_read(&st_zswap));
	KEXPECT(atomic64_read(&H.zswap_live), 0);
	KEXPECT(atomic64_read(&H.phys_slots), atomic64_read(&st_phys));
	pr_info("vswap selftest: stress: %ld + %ld ops, %lld allocations, %lld slots freed, %lld zswap, %lld device writes; kthread stacks %zu, %zu bytes deep\n",
		w[0].ops, w[1].ops, atomic64_read(&st_allocs), atomic64_read(&st_freed),
		atomic64_read(&st_zswap), atomic64_read(&st_phys), w[0].stack, w[1].stack);
	KOK(vswap_device_remove(SE, 0));
	KOK(vswap_device_remove(SE, 1));
out:
	if (SE)
		destroy_engine(SE, pages0);
	SE = NULL;
	bitmap_free(stress_owned);
	kfree(w);
}

/* ----------------------------------------------------------- the suite */

void vk_suite_kernel(void)
{
	scratch = (u8 *)__get_free_page(GFP_KERNEL);
	if (!scratch) {
		vk_failed++;
		return;
	}
	vk_run("engine_create_stack", test_engine_create_stack);
	vk_run("every_backend_every_order", test_every_backend_every_order);
	vk_run("tiers_writeback_relocate_evacuate", test_tiers);
	vk_run("list_lock_is_a_spinlock", test_list_lock_is_a_spinlock);
	vk_run("two_kthreads_two_cpus", test_two_kthreads);
	free_page((unsigned long)scratch);
}
