/*
 * The C ABI end to end: every backend's lifecycle, cache and lock, batch
 * calls, writeback, relocation, swapoff of a device and of the virtual
 * layer, direct-mode and standalone maps, the log device, charging,
 * discard. Each test checks that every byte the library took from the host
 * is back after destroy.
 */
#include "harness.h"

static struct test_host H;
static struct vswap_host_ops OPS;

static void setup(void)
{
	host_init(&H, &OPS);
}

static void teardown_engine(struct vswap_engine *e)
{
	vswap_engine_destroy(e);
	EXPECT(atomic_load(&H.bytes), 0);
	EXPECT(atomic_load(&H.blocks), 0);
}

static uint32_t alloc_slot(struct vswap_engine *e)
{
	uint32_t s = 0;
	OK(vswap_alloc(e, 0, 0, VSWAP_NO_MEMCG, true, &s));
	CHECK(s != 0);
	return s;
}

static void test_every_backend(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	CHECK(e != NULL);
	OK(add_device(e, 0, 10, 4096));
	uint8_t page[PAGE];
	struct vswap_backend b;
	struct vswap_entry en;
	uint32_t s[5];
	for (int i = 0; i < 5; i++) {
		s[i] = alloc_slot(e);
		OK(vswap_dup(e, s[i], 2, true));
	}
	/* s[0] stays in memory: no writeout. */
	OK(vswap_lookup(e, s[0], &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_NONE);
	EXPECT(en.count, 2);
	CHECK(en.cached && !en.locked);
	/* zero */
	OK(vswap_writeout(e, s[1], page_zero, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_ZERO);
	/* same-filled 0xff.. */
	fill_same(page, UINT64_MAX);
	OK(vswap_writeout(e, s[2], page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_SAME);
	CHECK(b.value == UINT64_MAX);
	/* zswap */
	fill_zswap(page, 1);
	OK(vswap_writeout(e, s[3], page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_ZSWAP);
	uint64_t handle = b.value;
	/* device slot */
	fill_random(page, 2);
	OK(vswap_writeout(e, s[4], page, PAGE, 1, &b));
	EXPECT(b.kind, VSWAP_BACKEND_PHYS);
	EXPECT(b.dev, 0);
	uint32_t owner = 0;
	OK(vswap_device_owner(e, 0, b.value, &owner));
	EXPECT(owner, s[4]);
	struct vswap_device_stats ds;
	OK(vswap_device_get_stats(e, 0, &ds));
	EXPECT(ds.used, 1);
	EXPECT(ds.usable, 4095);

	struct vswap_map_stats st;
	OK(vswap_engine_get_stats(e, &st));
	EXPECT(st.live_slots, 5);
	for (int k = 0; k < 5; k++)
		EXPECT(st.by_kind[k], 1);
	EXPECT(st.cached, 5);
	CHECK(st.mem_total > 0 && st.mem_total == st.mem_directory + st.mem_percpu +
						       st.mem_words + st.mem_cache +
						       st.mem_memcg + st.mem_side);

	/* Reclaim: the folio leaves the swap cache, leaving a shadow. */
	for (int i = 0; i < 5; i++) {
		EXPECT(vswap_cache_clear(e, s[i], 0xabc0 + (unsigned)i, true), VSWAP_LIVE);
		struct vswap_cache_state cs;
		OK(vswap_cache_get(e, s[i], &cs));
		CHECK(!cs.cached);
		EXPECT(cs.word, 0xabc0 + (unsigned)i);
	}
	/* Page tables drop their references: the last put frees. */
	for (int i = 0; i < 5; i++) {
		EXPECT(vswap_put(e, s[i], 1), VSWAP_LIVE);
		EXPECT(vswap_put(e, s[i], 1), VSWAP_FREED);
		EXPECT(vswap_lookup(e, s[i], &en), -VSWAP_ENOENT);
	}
	EXPECT(atomic_load(&H.zswap_released), 1);
	EXPECT(atomic_load(&H.zswap_sum), handle);
	EXPECT(atomic_load(&H.phys_released), 1);
	OK(vswap_device_get_stats(e, 0, &ds));
	EXPECT(ds.used, 0);
	OK(vswap_engine_get_stats(e, &st));
	EXPECT(st.live_slots, 0);
	teardown_engine(e);
}

static void test_cache_lock_store(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	uint32_t s = alloc_slot(e);
	struct vswap_cache_state cs;
	struct vswap_entry en;
	OK(vswap_cache_store(e, s, 0x1234, true));
	OK(vswap_cache_get(e, s, &cs));
	CHECK(cs.cached);
	EXPECT(cs.word, 0x1234);
	/* lock / unlock */
	OK(vswap_lock(e, s));
	EXPECT(vswap_lock(e, s), -VSWAP_EBUSY);
	OK(vswap_lookup(e, s, &en));
	CHECK(en.locked);
	EXPECT(vswap_unlock(e, s), VSWAP_LIVE);
	EXPECT(vswap_unlock(e, s), -VSWAP_EPERM);
	/* try_get takes a count */
	OK(vswap_try_get(e, s, true, &en));
	EXPECT(en.count, 1);
	/* low-level store and commit_unlock */
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_backend same7 = {VSWAP_BACKEND_SAME, 0, 7};
	struct vswap_backend zero = {VSWAP_BACKEND_ZERO, 0, 0};
	OK(vswap_store(e, s, &none, &same7));
	OK(vswap_lookup(e, s, &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_SAME);
	EXPECT(en.backend.value, 7);
	OK(vswap_lock(e, s));
	EXPECT(vswap_store(e, s, &same7, &zero), -VSWAP_EBUSY); /* locked */
	OK(vswap_commit_unlock(e, s, &same7, &zero));
	OK(vswap_lookup(e, s, &en));
	CHECK(!en.locked);
	EXPECT(en.backend.kind, VSWAP_BACKEND_ZERO);
	/* memcg ids */
	uint32_t id = 0;
	OK(vswap_set_memcg(e, s, 0, 42, true));
	OK(vswap_memcg(e, s, &id));
	EXPECT(id, 42);
	/* a zombie: the last reference goes while locked; the unlock frees */
	OK(vswap_lock(e, s));
	EXPECT(vswap_put(e, s, 1), VSWAP_LIVE);
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_LIVE);
	OK(vswap_lookup(e, s, &en));
	CHECK(en.locked && !en.cached && en.count == 0);
	EXPECT(vswap_unlock(e, s), VSWAP_FREED);
	EXPECT(vswap_lookup(e, s, &en), -VSWAP_ENOENT);
	teardown_engine(e);
}

static void test_batches(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	uint32_t start = 0, done = 99, freed = 99;
	struct vswap_entry en;
	/* put_range over an order-3 range */
	OK(vswap_alloc(e, 3, 0, VSWAP_NO_MEMCG, true, &start));
	EXPECT(start % 8, 0);
	for (uint32_t i = 0; i < 8; i++) {
		OK(vswap_dup(e, start + i, 1, true));
		EXPECT(vswap_cache_clear(e, start + i, 0, true), VSWAP_LIVE);
	}
	OK(vswap_lock_range(e, start, 3));
	EXPECT(vswap_put_range(e, start, 3, &freed), -VSWAP_EBUSY);
	OK(vswap_unlock_range(e, start, 3, &freed));
	EXPECT(freed, 0);
	OK(vswap_put_range(e, start, 3, &freed));
	EXPECT(freed, 8);
	/* put_many over 16 slots */
	OK(vswap_alloc(e, 4, 1, VSWAP_NO_MEMCG, true, &start));
	for (uint32_t i = 0; i < 16; i++) {
		OK(vswap_dup(e, start + i, 1, true));
		OK(vswap_store(e, start + i, &(struct vswap_backend){VSWAP_BACKEND_NONE, 0, 0},
			       &(struct vswap_backend){VSWAP_BACKEND_ZERO, 0, 0}));
		EXPECT(vswap_cache_clear(e, start + i, 0, true), VSWAP_LIVE);
	}
	OK(vswap_put_many(e, start, 16, &done, &freed));
	EXPECT(done, 16);
	EXPECT(freed, 16);
	/* a batch that stops: slot 2 has no count */
	OK(vswap_alloc(e, 2, 0, VSWAP_NO_MEMCG, true, &start));
	OK(vswap_dup(e, start, 1, true));
	OK(vswap_dup(e, start + 1, 1, true));
	EXPECT(vswap_put_many(e, start, 4, &done, &freed), -VSWAP_EINVAL);
	EXPECT(done, 2);
	OK(vswap_lookup(e, start + 2, &en));
	CHECK(en.cached && en.count == 0);
	for (uint32_t i = 0; i < 4; i++)
		EXPECT(vswap_cache_clear(e, start + i, 0, true), VSWAP_FREED);
	struct vswap_map_stats st;
	OK(vswap_engine_get_stats(e, &st));
	EXPECT(st.live_slots, 0);
	teardown_engine(e);
}

static void test_swapin_and_readahead(void)
{
	setup();
	/* Eager placement: an order-2 allocation gets 4 contiguous device slots. */
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_EAGER, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 1, 4096));
	uint32_t start = 0, z = 0;
	struct vswap_swapin si;
	struct vswap_entry en;
	OK(vswap_alloc(e, 2, 0, VSWAP_NO_MEMCG, true, &start));
	OK(vswap_swapin_check(e, start, 2, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_CONTIGUOUS);
	EXPECT(si.dev, 0);
	OK(vswap_lookup(e, start, &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_PHYS);
	EXPECT(si.off, en.backend.value);
	uint32_t nb[8];
	EXPECT(vswap_readahead(e, start, nb, 7), 3);
	for (int i = 0; i < 3; i++)
		CHECK(nb[i] > start && nb[i] < start + 4);
	EXPECT(vswap_readahead(e, start, NULL, 0), 0);
	/* all-zero range: uniform */
	OK(vswap_alloc(e, 1, 0, VSWAP_NO_MEMCG, true, &z));
	for (uint32_t i = 0; i < 2; i++) {
		struct vswap_backend b;
		OK(vswap_writeout(e, z + i, page_zero, PAGE, 0, &b));
		EXPECT(b.kind, VSWAP_BACKEND_ZERO); /* the eager slot went back */
	}
	OK(vswap_swapin_check(e, z, 1, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_UNIFORM);
	EXPECT(si.backend_kind, VSWAP_BACKEND_ZERO);
	EXPECT(vswap_readahead(e, z, nb, 8), 0); /* not on a device */
	for (uint32_t i = 0; i < 4; i++)
		EXPECT(vswap_cache_clear(e, start + i, 0, true), VSWAP_FREED);
	for (uint32_t i = 0; i < 2; i++)
		EXPECT(vswap_cache_clear(e, z + i, 0, true), VSWAP_FREED);
	EXPECT(atomic_load(&H.phys_released), 6);
	teardown_engine(e);
}

static void test_writeback_and_relocate(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	uint8_t page[PAGE];
	struct vswap_backend b;
	struct vswap_entry en;
	struct vswap_writeback wb;
	uint32_t s = alloc_slot(e), t = alloc_slot(e);
	fill_zswap(page, 3);
	OK(vswap_writeout(e, s, page, PAGE, 0, &b));
	OK(vswap_writeout(e, t, page, PAGE, 0, &b));
	/* abort: nothing changes */
	OK(vswap_writeback_begin(e, t, 0, &wb));
	EXPECT(wb.slot, t);
	EXPECT(vswap_writeback_abort(e, &wb), VSWAP_LIVE);
	OK(vswap_lookup(e, t, &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_ZSWAP);
	CHECK(!en.locked);
	/* commit: zswap -> device, handle released */
	OK(vswap_writeback_begin(e, s, 0, &wb));
	EXPECT(vswap_lock(e, s), -VSWAP_EBUSY);
	OK(vswap_writeback_commit(e, &wb));
	OK(vswap_lookup(e, s, &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_PHYS);
	EXPECT(en.backend.value, wb.off);
	EXPECT(atomic_load(&H.zswap_released), 1);
	/* relocation to a higher-priority device */
	OK(add_device(e, 1, 20, 4096));
	uint32_t dev = 99;
	uint64_t off = 0;
	OK(vswap_lock(e, s));
	OK(vswap_alloc_phys(e, 0, 0, s, true, &dev, &off));
	EXPECT(dev, 1);
	OK(vswap_relocate(e, s, 0, wb.off, 1, off));
	OK(vswap_lookup(e, s, &en));
	CHECK(!en.locked);
	EXPECT(en.backend.dev, 1);
	EXPECT(en.backend.value, off);
	struct vswap_device_stats ds;
	OK(vswap_device_get_stats(e, 0, &ds));
	EXPECT(ds.used, 0);
	/* a relocation target that was never committed goes back by hand */
	OK(vswap_alloc_phys(e, 0, 0, t, true, &dev, &off));
	OK(vswap_device_free(e, dev, off, 1, t));
	EXPECT(vswap_device_free(e, dev, off, 1, t), -VSWAP_ENOENT);
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_FREED);
	EXPECT(vswap_cache_clear(e, t, 0, true), VSWAP_FREED);
	EXPECT(atomic_load(&H.zswap_released), 2);
	teardown_engine(e);
}

struct moves {
	int copies, reads;
	uint64_t cookie_base;
	int drops;
};

static int32_t on_move(void *arg, const struct vswap_move *mv, uint64_t *cookie)
{
	struct moves *m = arg;
	if (mv->kind == VSWAP_MOVE_COPY) {
		m->copies++;
	} else if (mv->kind == VSWAP_MOVE_READ) {
		m->reads++;
		*cookie = m->cookie_base + mv->slot;
	} else {
		/* VSWAP_MOVE_DROP: the slot already had a folio; none here. */
		CHECK(mv->kind == VSWAP_MOVE_DROP);
		CHECK(*cookie == m->cookie_base + mv->slot);
		m->drops++;
	}
	return 0;
}

static int32_t failing_move(void *arg, const struct vswap_move *mv, uint64_t *cookie)
{
	(void)arg;
	(void)mv;
	(void)cookie;
	return -EIO;
}

static void test_swapoff_device(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	enum { N = 40 };
	uint32_t s[N];
	uint8_t page[PAGE];
	struct vswap_backend b;
	for (int i = 0; i < N; i++) {
		s[i] = alloc_slot(e);
		OK(vswap_dup(e, s[i], 1, true));
		fill_random(page, (unsigned)i);
		OK(vswap_writeout(e, s[i], page, PAGE, 0, &b));
		EXPECT(b.dev, 0);
		EXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_LIVE);
	}
	EXPECT(vswap_device_remove(e, 0), -VSWAP_EBUSY); /* still holds data */
	OK(add_device(e, 1, 5, 4096));
	struct moves m = {0, 0, 100, 0};
	struct vswap_evacuated ev;
	/* an I/O error stops the evacuation with its own code */
	EXPECT(vswap_evacuate(e, 0, 1, 0, failing_move, NULL, &ev), -EIO);
	OK(vswap_evacuate(e, 0, 1, 0, on_move, &m, &ev));
	EXPECT(ev.moved + (uint64_t)0, N);
	EXPECT(m.copies, N);
	OK(vswap_device_remove(e, 0));
	EXPECT(vswap_device_remove(e, 0), -VSWAP_ENODEV);
	/* swapoff of device 1 into memory; s[0] already has a folio in the
	 * swap cache (cookie 7): the one read for it is handed back */
	OK(vswap_cache_add(e, s[0], 7, true));
	OK(vswap_evacuate(e, 1, -1, 0, on_move, &m, &ev));
	EXPECT(m.reads, N);
	EXPECT(m.drops, 1);
	for (int i = 0; i < N; i++) {
		struct vswap_entry en;
		struct vswap_cache_state cs;
		OK(vswap_lookup(e, s[i], &en));
		EXPECT(en.backend.kind, VSWAP_BACKEND_NONE);
		CHECK(en.cached);
		OK(vswap_cache_get(e, s[i], &cs));
		EXPECT(cs.word, i == 0 ? 7 : 100 + s[i]);
	}
	OK(vswap_device_remove(e, 1));
	for (int i = 0; i < N; i++) {
		EXPECT(vswap_put(e, s[i], 1), VSWAP_LIVE);
		EXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_FREED);
	}
	teardown_engine(e);
}

struct vmoves {
	int to_direct, to_memory;
	struct vswap_map *direct;
};

static int32_t on_virt_move(void *arg, const struct vswap_virt_move *mv)
{
	struct vmoves *v = arg;
	if (mv->kind == VSWAP_VIRT_TO_DIRECT)
		v->to_direct++;
	else
		v->to_memory++;
	return 0;
}

static void test_swapoff_virtual_and_direct_map(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	struct vswap_device_config dc;
	uint64_t bad[2] = {5, 6};
	OK(vswap_device_config_default(&dc, 1024));
	dc.geometry.cluster_shift = 6;
	dc.geometry.cpus = 2;
	dc.discard = true;
	dc.bad_slots = bad;
	dc.nr_bad = 2;
	struct vswap_map *d = NULL;
	OK(vswap_map_create_direct(&dc, 7, &OPS, &d));
	EXPECT(vswap_map_is_direct(d), 1);
	uint8_t page[PAGE];
	struct vswap_backend b;
	uint32_t s[4];
	for (int i = 0; i < 4; i++) {
		s[i] = alloc_slot(e);
		OK(vswap_dup(e, s[i], 1, true));
	}
	OK(vswap_writeout(e, s[0], page_zero, PAGE, 0, &b));
	fill_same(page, 3);
	OK(vswap_writeout(e, s[1], page, PAGE, 0, &b));
	fill_zswap(page, 4);
	OK(vswap_writeout(e, s[2], page, PAGE, 0, &b));
	fill_random(page, 5);
	OK(vswap_writeout(e, s[3], page, PAGE, 0, &b));
	struct vmoves v = {0, 0, d};
	uint64_t moved = 0;
	OK(vswap_swapoff_virtual(e, d, 0, on_virt_move, &v, &moved));
	EXPECT(moved, 4);
	EXPECT(v.to_direct, 4);
	struct vswap_map_stats st;
	OK(vswap_engine_get_stats(e, &st));
	EXPECT(st.live_slots, 0);
	EXPECT(atomic_load(&H.zswap_released), 1);
	OK(vswap_map_get_stats(d, &st));
	EXPECT(st.live_slots, 4);
	EXPECT(st.by_kind[VSWAP_BACKEND_ZERO], 1);
	EXPECT(st.by_kind[VSWAP_BACKEND_SAME], 1);
	EXPECT(st.cached, 4);

	/* Direct map: bad slots never handed out, Phys refused, discard. */
	/* 150 slots: clusters 1 and 2 (no bad slots) fill and empty again */
	uint32_t got[150];
	int n = 0;
	for (; n < 150; n++) {
		uint32_t x = 0;
		OK(vswap_map_alloc(d, 0, 0, true, &x));
		CHECK(x != 5 && x != 6 && x != 0);
		got[n] = x;
	}
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_backend phys = {VSWAP_BACKEND_PHYS, 0, 3};
	struct vswap_backend zero = {VSWAP_BACKEND_ZERO, 0, 0};
	EXPECT(vswap_map_store(d, got[0], &none, &phys), -VSWAP_EEXIST);
	OK(vswap_map_store(d, got[0], &none, &zero));
	for (int i = 0; i < n; i++)
		EXPECT(vswap_map_cache_clear(d, got[i], 0, true), VSWAP_FREED);
	/* the four moved slots: count 1 each, cached */
	OK(vswap_map_get_stats(d, &st));
	EXPECT(st.live_slots, 4);
	struct vswap_entry en;
	/* free every direct slot through a scan */
	for (uint32_t x = 1; x < 1024; x++) {
		if (vswap_map_lookup(d, x, &en) != 0)
			continue;
		EXPECT(vswap_map_put(d, x, en.count), en.cached ? VSWAP_LIVE : VSWAP_FREED);
		if (en.cached)
			EXPECT(vswap_map_cache_clear(d, x, 0, true), VSWAP_FREED);
	}
	OK(vswap_map_get_stats(d, &st));
	EXPECT(st.live_slots, 0);
	CHECK(vswap_map_discard(d) >= 1);
	CHECK(atomic_load(&H.discards) >= 1);
	vswap_map_destroy(d);
	teardown_engine(e);
}

static void test_virtual_map(void)
{
	setup();
	struct vswap_geometry g;
	OK(vswap_geometry_default(&g));
	g.slots = 1 << 12;
	g.cpus = 1;
	struct vswap_map *m = NULL;
	OK(vswap_map_create(&g, &OPS, &m));
	EXPECT(vswap_map_is_direct(m), 0);
	uint32_t s = 0, r = 0, done = 0, freed = 0;
	OK(vswap_map_alloc(m, 1, 0, true, &s));
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_backend p0 = {VSWAP_BACKEND_PHYS, 2, 10};
	struct vswap_backend p1 = {VSWAP_BACKEND_PHYS, 2, 11};
	OK(vswap_map_store(m, s, &none, &p0));
	OK(vswap_map_store(m, s + 1, &none, &p1));
	OK(vswap_map_dup(m, s, 1, true));
	OK(vswap_map_dup(m, s + 1, 1, true));
	EXPECT(vswap_map_cache_add(m, s, 5, true), -VSWAP_EEXIST); /* already cached */
	EXPECT(vswap_map_cache_clear(m, s, 0, true), VSWAP_LIVE);
	EXPECT(vswap_map_cache_clear(m, s + 1, 0, true), VSWAP_LIVE);
	OK(vswap_map_cache_add(m, s, 5, true));
	struct vswap_cache_state cs;
	OK(vswap_map_cache_get(m, s, &cs));
	CHECK(cs.cached && cs.word == 5);
	OK(vswap_map_cache_store(m, s, 6, true));
	EXPECT(vswap_map_cache_clear(m, s, 0, true), VSWAP_LIVE);
	OK(vswap_map_lock_range(m, s, 1));
	OK(vswap_map_unlock_range(m, s, 1, &freed));
	OK(vswap_map_lock(m, s));
	struct vswap_backend p2 = {VSWAP_BACKEND_PHYS, 2, 20};
	OK(vswap_map_commit_unlock(m, s, &p0, &p2));
	EXPECT(atomic_load(&H.phys_released), 1); /* slot 10 handed back */
	EXPECT(vswap_map_unlock(m, s), -VSWAP_EPERM);
	struct vswap_entry en;
	OK(vswap_map_try_get(m, s, true, &en));
	EXPECT(en.count, 2);
	EXPECT(vswap_map_put(m, s, 1), VSWAP_LIVE);
	OK(vswap_map_put_many(m, s, 2, &done, &freed));
	EXPECT(freed, 2);
	/* the two device slots 20 and 11 are released (not contiguous) */
	EXPECT(atomic_load(&H.phys_released), 3);
	OK(vswap_map_alloc(m, 1, 0, true, &r));
	OK(vswap_map_dup(m, r, 1, true));
	OK(vswap_map_dup(m, r + 1, 1, true));
	OK(vswap_map_put_range(m, r, 1, &freed));
	EXPECT(freed, 0); /* still cached */
	EXPECT(vswap_map_cache_clear(m, r, 0, true), VSWAP_FREED);
	EXPECT(vswap_map_cache_clear(m, r + 1, 0, true), VSWAP_FREED);
	vswap_map_destroy(m);
	EXPECT(atomic_load(&H.bytes), 0);
}

/* The ranged calls of a standalone map: an order-2 folio's swap-in check
 * and its ranged cache clear (one shadow, frees the slots with count 0,
 * coalesced device run), and their bad-input codes with nothing changed. */
static void test_map_ranged_calls(void)
{
	setup();
	struct vswap_geometry g;
	OK(vswap_geometry_default(&g));
	g.slots = 1 << 12;
	g.cpus = 1;
	struct vswap_map *m = NULL;
	OK(vswap_map_create(&g, &OPS, &m));
	uint32_t s = 0, freed = 99;
	struct vswap_swapin si;
	OK(vswap_map_alloc(m, 2, 0, true, &s));
	CHECK(s % 4 == 0);
	/* Fresh: cached, so the swap-in check says "in the cache". */
	OK(vswap_map_swapin_check(m, s, 2, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_IN_CACHE);
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	for (uint32_t i = 0; i < 4; i++) {
		struct vswap_backend p = {VSWAP_BACKEND_PHYS, 1, 40 + i};
		OK(vswap_map_store(m, s + i, &none, &p));
	}
	/* Slots 2 and 3 keep a page-table reference. */
	OK(vswap_map_dup(m, s + 2, 1, true));
	OK(vswap_map_dup(m, s + 3, 1, true));
	/* Bad input: nothing changes, *freed not written. */
	EXPECT(vswap_map_cache_clear_range(NULL, s, 2, 0, true, &freed), -VSWAP_EINVAL);
	EXPECT(vswap_map_cache_clear_range(m, s, 2, 0, true, NULL), -VSWAP_EINVAL);
	EXPECT(vswap_map_cache_clear_range(m, s + 1, 2, 0, true, &freed), -VSWAP_EINVAL);
	EXPECT(vswap_map_cache_clear_range(m, s, 30, 0, true, &freed), -VSWAP_EINVAL);
	EXPECT(vswap_map_cache_clear_range(m, 0, 2, 0, true, &freed), -VSWAP_ERANGE);
	EXPECT(vswap_map_cache_clear_range(m, 1u << 12, 0, 0, true, &freed), -VSWAP_ERANGE);
	EXPECT(vswap_map_cache_clear_range(m, s + 4, 2, 0, true, &freed), -VSWAP_ENOENT);
	EXPECT(vswap_map_swapin_check(NULL, s, 2, &si), -VSWAP_EINVAL);
	EXPECT(vswap_map_swapin_check(m, s, 2, NULL), -VSWAP_EINVAL);
	EXPECT(vswap_map_swapin_check(m, s + 2, 2, &si), -VSWAP_EINVAL);
	EXPECT(vswap_map_swapin_check(m, 1u << 12, 0, &si), -VSWAP_ERANGE);
	EXPECT(vswap_map_swapin_check(m, s + 4, 2, &si), -VSWAP_ENOENT);
	EXPECT(freed, 99);
	/* One slot not cached: -EEXIST, the others keep their flag. */
	EXPECT(vswap_map_cache_clear(m, s + 3, 0, true), VSWAP_LIVE);
	EXPECT(vswap_map_cache_clear_range(m, s, 2, 0x5ad, true, &freed), -VSWAP_EEXIST);
	EXPECT(freed, 99);
	struct vswap_cache_state cs;
	for (uint32_t i = 0; i < 3; i++) {
		OK(vswap_map_cache_get(m, s + i, &cs));
		CHECK(cs.cached);
	}
	EXPECT(atomic_load(&H.phys_released), 0);
	/* The cached half: both freed (count 0), one run of two device slots. */
	OK(vswap_map_cache_clear_range(m, s, 1, 0x5ad, true, &freed));
	EXPECT(freed, 2);
	EXPECT(atomic_load(&H.phys_released), 2);
	EXPECT(atomic_load(&H.phys_runs), 1);
	OK(vswap_map_cache_clear_range(m, s + 2, 0, 0x5ad, true, &freed));
	EXPECT(freed, 0); /* count 1: it outlives, with the shadow */
	OK(vswap_map_cache_get(m, s + 2, &cs));
	CHECK(!cs.cached && cs.word == 0x5ad);
	/* Slots 2 and 3: uncached, contiguous on device 1. */
	OK(vswap_map_swapin_check(m, s + 2, 1, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_CONTIGUOUS);
	EXPECT(si.backend_kind, VSWAP_BACKEND_PHYS);
	EXPECT(si.dev, 1);
	EXPECT(si.off, 42);
	OK(vswap_map_lock(m, s + 3));
	OK(vswap_map_swapin_check(m, s + 2, 1, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_IN_CACHE);
	EXPECT(vswap_map_unlock(m, s + 3), VSWAP_LIVE);
	/* Zero pages: one zeroed folio. */
	struct vswap_backend zero = {VSWAP_BACKEND_ZERO, 0, 0};
	struct vswap_backend p2 = {VSWAP_BACKEND_PHYS, 1, 42};
	struct vswap_backend p3 = {VSWAP_BACKEND_PHYS, 1, 43};
	OK(vswap_map_store(m, s + 2, &p2, &zero));
	OK(vswap_map_swapin_check(m, s + 2, 1, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_NO); /* zero and device mixed */
	OK(vswap_map_store(m, s + 3, &p3, &zero));
	OK(vswap_map_swapin_check(m, s + 2, 1, &si));
	EXPECT(si.kind, VSWAP_SWAPIN_UNIFORM);
	EXPECT(si.backend_kind, VSWAP_BACKEND_ZERO);
	OK(vswap_map_put_range(m, s + 2, 1, &freed));
	EXPECT(freed, 2);
	EXPECT(atomic_load(&H.phys_released), 4);
	vswap_map_destroy(m);
	EXPECT(atomic_load(&H.bytes), 0);
}

static int live_calls;
static void on_live(void *arg, uint32_t owner, uint64_t off)
{
	(void)arg;
	(void)owner;
	(void)off;
	live_calls++;
}

static int gc_copies;
static void on_gc_copy(void *arg, uint32_t owner, uint64_t from, uint64_t to)
{
	(void)arg;
	(void)owner;
	CHECK(from != to);
	gc_copies++;
}

static void test_log_device(void)
{
	setup();
	struct vswap_engine_config cfg;
	struct vswap_log_config lc = {8, 4, 4096, 2, VSWAP_GC_GREEDY};
	OK(vswap_engine_config_default(&cfg));
	cfg.geometry.slots = 1 << 16;
	cfg.geometry.cpus = 2;
	cfg.log = &lc;
	cfg.log_dev = 3;
	struct vswap_engine *e = NULL;
	OK(vswap_engine_create(&cfg, &OPS, &e));
	EXPECT(add_device(e, 3, 1, 4096), -VSWAP_ENODEV); /* the log's number */
	enum { N = 16 };
	uint32_t s[N + 1];
	uint8_t page[PAGE];
	struct vswap_backend b;
	for (int i = 0; i <= N; i++) {
		s[i] = alloc_slot(e);
		OK(vswap_dup(e, s[i], 1, true));
	}
	for (int i = 0; i < N; i++) {
		fill_random(page, (unsigned)i);
		EXPECT(vswap_log_writeout(e, s[i], page, PAGE, &b), 1); /* staged */
	}
	EXPECT(vswap_log_writeout(e, s[N], page, PAGE, &b), -VSWAP_EBUSY); /* flush first */
	EXPECT(vswap_log_writeout(e, s[N], page_zero, PAGE, &b), 0);
	EXPECT(b.kind, VSWAP_BACKEND_ZERO);
	struct vswap_log_flushed f;
	EXPECT(vswap_log_flush(e, false, &f), 1);
	EXPECT(f.len, N);
	EXPECT(vswap_log_flush(e, true, &f) , 0); /* nothing staged */
	EXPECT(vswap_log_for_each_live(e, f.segment, on_live, NULL), N);
	EXPECT(live_calls, N);
	EXPECT(vswap_log_commit(e, f.segment + 1), -VSWAP_ENOENT);
	EXPECT(vswap_log_commit(e, f.segment), N);
	EXPECT(vswap_log_commit(e, f.segment), -VSWAP_ENOENT);
	struct vswap_entry en;
	OK(vswap_lookup(e, s[0], &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_PHYS);
	EXPECT(en.backend.dev, 3);
	/* free most of the segment, then collect it */
	for (int i = 0; i < N - 2; i++) {
		EXPECT(vswap_put(e, s[i], 1), VSWAP_LIVE);
		EXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_FREED);
	}
	struct vswap_gc_pass gp;
	OK(vswap_log_set_policy(e, VSWAP_GC_GREEDY));
	EXPECT(vswap_log_set_policy(e, 9), -VSWAP_EINVAL);
	OK(vswap_log_gc(e, on_gc_copy, NULL, &gp));
	EXPECT(gp.victim, (int64_t)f.segment);
	EXPECT(gp.live, 2);
	EXPECT(gp.staged, 2);
	/* The two stay locked in the GC stream until it is flushed: a pass with
	 * no victim flushes it, copies and commits. */
	EXPECT(gc_copies, 0);
	OK(vswap_lookup(e, s[N - 1], &en));
	CHECK(en.locked);
	OK(vswap_log_gc(e, on_gc_copy, NULL, &gp));
	EXPECT(gp.victim, -1);
	EXPECT(gp.flushed, 1);
	EXPECT(gc_copies, 2);
	OK(vswap_lookup(e, s[N - 1], &en));
	CHECK(!en.locked);
	EXPECT(en.backend.kind, VSWAP_BACKEND_PHYS);
	struct vswap_log_stats ls;
	OK(vswap_log_get_stats(e, &ls));
	EXPECT(ls.live_slots, 2);
	EXPECT(ls.gc_runs, 1);
	EXPECT(ls.host_bytes, N * 4096);
	/* zswap writeback to the log, keeping the virtual slot */
	uint32_t z[3];
	uint64_t zh[3];
	for (int i = 0; i < 3; i++) {
		z[i] = alloc_slot(e);
		OK(vswap_dup(e, z[i], 1, true));
		fill_zswap(page, 10 + (unsigned)i);
		EXPECT(vswap_log_writeout(e, z[i], page, PAGE, &b), 0);
		EXPECT(b.kind, VSWAP_BACKEND_ZSWAP);
		zh[i] = b.value;
		EXPECT(vswap_cache_clear(e, z[i], 0, true), VSWAP_LIVE);
		OK(vswap_log_writeback_begin(e, z[i]));
	}
	EXPECT(vswap_log_writeback_begin(e, z[0]), -VSWAP_EBUSY); /* staged already */
	EXPECT(vswap_log_writeback_begin(e, s[N]), -VSWAP_EEXIST); /* zero, not zswap */
	EXPECT(vswap_log_writeback_abort(e, s[N]), -VSWAP_EPERM);  /* not locked */
	OK(vswap_lookup(e, z[0], &en));
	CHECK(en.locked);
	EXPECT(en.backend.kind, VSWAP_BACKEND_ZSWAP); /* still readable from zswap */
	CHECK(en.backend.value == zh[0]);
	EXPECT(vswap_log_writeback_abort(e, z[2]), VSWAP_LIVE);
	EXPECT(vswap_log_writeback_abort(e, z[2]), -VSWAP_EPERM);
	OK(vswap_lookup(e, z[2], &en));
	CHECK(!en.locked);
	EXPECT(en.backend.kind, VSWAP_BACKEND_ZSWAP);
	/* z[1] dies while staged: its commit loses, its object goes once */
	EXPECT(vswap_put(e, z[1], 1), VSWAP_LIVE);
	long long released = atomic_load(&H.zswap_released);
	EXPECT(vswap_log_flush(e, true, &f), 1);
	EXPECT(f.len, 2);
	EXPECT(vswap_log_writeback_abort(e, z[0]), -VSWAP_EEXIST); /* flushed */
	live_calls = 0;
	EXPECT(vswap_log_for_each_live(e, f.segment, on_live, NULL), 2);
	EXPECT(vswap_log_commit(e, f.segment), 1);
	EXPECT(atomic_load(&H.zswap_released), released + 2);
	OK(vswap_lookup(e, z[0], &en));
	CHECK(!en.locked);
	EXPECT(en.backend.kind, VSWAP_BACKEND_PHYS);
	EXPECT(en.backend.dev, 3);
	EXPECT(vswap_lookup(e, z[1], &en), -VSWAP_ENOENT);
	OK(vswap_log_get_stats(e, &ls));
	EXPECT(ls.live_slots, 3);
	EXPECT(vswap_put(e, z[0], 1), VSWAP_FREED);
	EXPECT(vswap_put(e, z[2], 1), VSWAP_FREED);
	EXPECT(atomic_load(&H.zswap_released), released + 3);
	for (int i = N - 2; i <= N; i++) {
		EXPECT(vswap_put(e, s[i], 1), VSWAP_LIVE);
		EXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_FREED);
	}
	/* an engine without a log device */
	struct vswap_engine *plain = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	EXPECT(vswap_log_flush(plain, true, &f), -VSWAP_ENODEV);
	EXPECT(vswap_log_get_stats(plain, &ls), -VSWAP_ENODEV);
	EXPECT(vswap_log_writeback_begin(plain, 1), -VSWAP_ENODEV);
	EXPECT(vswap_log_writeback_abort(plain, 1), -VSWAP_ENODEV);
	vswap_engine_destroy(plain);
	teardown_engine(e);
}

static void test_charging(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_EVERY_SLOT);
	uint32_t s = 0, done, freed;
	OK(vswap_alloc(e, 0, 0, 5, true, &s));
	EXPECT(atomic_load(&H.charged), 1);
	OK(vswap_dup(e, s, 1, true));
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_LIVE);
	OK(vswap_put_range(e, s, 0, &freed));
	EXPECT(freed, 1);
	EXPECT(atomic_load(&H.charged), 0);
	OK(vswap_alloc(e, 0, 0, 5, true, &s));
	EXPECT(atomic_load(&H.charged), 1);
	OK(vswap_dup(e, s, 1, true));
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_LIVE);
	OK(vswap_put_many(e, s, 1, &done, &freed));
	EXPECT(freed, 1);
	EXPECT(atomic_load(&H.charged), 0);
	atomic_store(&H.refuse_charge, 1);
	EXPECT(vswap_alloc(e, 0, 0, 5, true, &s), -VSWAP_ENOSPC);
	atomic_store(&H.refuse_charge, 0);
	EXPECT(vswap_alloc(e, 0, 0, 70000, true, &s), -VSWAP_EINVAL);
	teardown_engine(e);

	setup();
	e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_PHYSICAL_ONLY);
	OK(add_device(e, 0, 1, 4096));
	uint8_t page[PAGE];
	struct vswap_backend b;
	OK(vswap_alloc(e, 0, 0, 9, true, &s));
	EXPECT(atomic_load(&H.charged), 0);
	fill_random(page, 9);
	OK(vswap_writeout(e, s, page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_PHYS);
	EXPECT(atomic_load(&H.charged), 1);
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_FREED);
	EXPECT(atomic_load(&H.charged), 0);
	teardown_engine(e);
}

static void test_device_discard(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	struct vswap_device_config dc;
	OK(vswap_device_config_default(&dc, 1024));
	dc.geometry.cluster_shift = 4;
	dc.geometry.cpus = 2;
	dc.discard = true;
	dc.rotational = true;
	OK(vswap_device_add(e, 2, 1, &dc));
	EXPECT(vswap_device_add(e, 2, 1, &dc), -VSWAP_EEXIST);
	uint8_t page[PAGE];
	struct vswap_backend b;
	uint32_t s[40];
	for (int i = 0; i < 40; i++) {
		s[i] = alloc_slot(e);
		fill_random(page, (unsigned)i + 50);
		OK(vswap_writeout(e, s[i], page, PAGE, 0, &b));
		EXPECT(b.dev, 2);
	}
	for (int i = 0; i < 40; i++)
		EXPECT(vswap_cache_clear(e, s[i], 0, true), VSWAP_FREED);
	int n = vswap_device_discard(e, 2);
	CHECK(n >= 1);
	EXPECT(atomic_load(&H.discards), n);
	EXPECT(vswap_device_discard(e, 2), 0);
	OK(vswap_device_remove(e, 2));
	teardown_engine(e);
}

/* ---------------------------------------------------- issue 12 contracts */

/* A live slot `s` with one PTE reference, written out to a device slot. */
static uint32_t on_device(struct vswap_engine *e, unsigned seed, uint32_t *dev, uint64_t *off)
{
	uint8_t page[PAGE];
	struct vswap_backend b;
	uint32_t s = alloc_slot(e);
	OK(vswap_dup(e, s, 1, true));
	fill_random(page, seed);
	OK(vswap_writeout(e, s, page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_PHYS);
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_LIVE);
	*dev = b.dev;
	*off = b.value;
	return s;
}

static int same_entry(const struct vswap_entry *a, const struct vswap_entry *b)
{
	return a->backend.kind == b->backend.kind && a->backend.dev == b->backend.dev &&
	       a->backend.value == b->backend.value && a->count == b->count &&
	       a->cached == b->cached && a->locked == b->locked;
}

/* Item 4: vswap_store took a device that was never added, a free device
 * slot, another live slot's device slot; dropping the alias freed the first
 * slot's device slot and released_phys fired twice. Each is refused now. */
static void test_store_needs_a_device_slot_reserved_for_the_slot(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	uint32_t dev, owner;
	uint64_t off, free_off = 0;
	uint32_t a = on_device(e, 41, &dev, &off);
	uint32_t n = alloc_slot(e);
	struct vswap_entry ea, en, x;
	OK(vswap_lookup(e, a, &ea));
	OK(vswap_lookup(e, n, &en));
	for (uint64_t o = 1; o < 4096 && !free_off; o++) {
		OK(vswap_device_owner(e, 0, o, &owner));
		if (owner == 0)
			free_off = o;
	}
	CHECK(free_off != 0);
	long long released = atomic_load(&H.phys_released);
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_backend never = {VSWAP_BACKEND_PHYS, 5, 1};
	struct vswap_backend max = {VSWAP_BACKEND_PHYS, VSWAP_MAX_DEVICES, 1};
	struct vswap_backend beyond = {VSWAP_BACKEND_PHYS, 0, 4096};
	struct vswap_backend freed = {VSWAP_BACKEND_PHYS, 0, free_off};
	struct vswap_backend alias = {VSWAP_BACKEND_PHYS, dev, off};
	EXPECT(vswap_store(e, n, &none, &never), -VSWAP_ENODEV);
	EXPECT(vswap_store(e, n, &none, &max), -VSWAP_ENODEV);
	EXPECT(vswap_store(e, n, &none, &beyond), -VSWAP_ERANGE);
	EXPECT(vswap_store(e, n, &none, &freed), -VSWAP_ENOENT);
	EXPECT(vswap_store(e, n, &none, &alias), -VSWAP_EEXIST);
	OK(vswap_lock(e, n));
	EXPECT(vswap_commit_unlock(e, n, &none, &alias), -VSWAP_EEXIST);
	OK(vswap_unlock(e, n));
	OK(vswap_lookup(e, a, &x));
	CHECK(same_entry(&x, &ea));
	OK(vswap_lookup(e, n, &x));
	CHECK(same_entry(&x, &en));
	OK(vswap_device_owner(e, dev, off, &owner));
	EXPECT(owner, a);
	EXPECT(atomic_load(&H.phys_released), released);
	/* a device slot reserved for n is n's to store */
	struct vswap_backend mine = {VSWAP_BACKEND_PHYS, 0, 0};
	OK(vswap_alloc_phys(e, 0, 0, n, true, &mine.dev, &mine.value));
	OK(vswap_store(e, n, &none, &mine));
	/* each death releases its own device slot, once */
	EXPECT(vswap_cache_clear(e, n, 0, true), VSWAP_FREED);
	EXPECT(atomic_load(&H.phys_released), released + 1);
	EXPECT(vswap_put(e, a, 1), VSWAP_FREED);
	EXPECT(atomic_load(&H.phys_released), released + 2);
	OK(vswap_device_remove(e, 0));
	teardown_engine(e);
}

/* Item 10: released_phys was not called for the device slots freed by
 * vswap_writeback_abort, by vswap_writeback_commit returning -ESTALE and by
 * vswap_device_free. */
static void test_every_device_slot_release_is_reported(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	uint8_t page[PAGE];
	struct vswap_backend b;
	struct vswap_writeback wb;
	uint32_t s = alloc_slot(e);
	fill_zswap(page, 5);
	OK(vswap_writeout(e, s, page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_ZSWAP);
	long long r0 = atomic_load(&H.phys_released);
	OK(vswap_writeback_begin(e, s, 0, &wb));
	EXPECT(vswap_writeback_abort(e, &wb), VSWAP_LIVE);
	EXPECT(atomic_load(&H.phys_released), r0 + 1);
	OK(vswap_writeback_begin(e, s, 0, &wb));
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_LIVE); /* a zombie, locked */
	EXPECT(vswap_writeback_commit(e, &wb), -VSWAP_ESTALE);
	EXPECT(atomic_load(&H.phys_released), r0 + 2);
	uint32_t t = alloc_slot(e), dev;
	uint64_t off;
	OK(vswap_alloc_phys(e, 1, 0, t, true, &dev, &off));
	EXPECT(vswap_device_free(e, dev, off, 2, 0), -VSWAP_ERANGE); /* owner needed */
	EXPECT(vswap_device_free(e, dev, off, 2, t + 1), -VSWAP_EEXIST);
	EXPECT(atomic_load(&H.phys_released), r0 + 2);
	OK(vswap_device_free(e, dev, off, 2, t));
	EXPECT(atomic_load(&H.phys_released), r0 + 4);
	EXPECT(vswap_cache_clear(e, t, 0, true), VSWAP_FREED);
	struct vswap_device_stats ds;
	OK(vswap_device_get_stats(e, 0, &ds));
	EXPECT(ds.used, 0);
	teardown_engine(e);
}

struct fail_at {
	int calls, fail_on;
};

static int32_t move_fails_at(void *arg, const struct vswap_move *mv, uint64_t *cookie)
{
	struct fail_at *f = arg;
	*cookie = 1000 + mv->slot;
	return ++f->calls == f->fail_on ? -EIO : 0;
}

static int32_t virt_move_fails_at(void *arg, const struct vswap_virt_move *mv)
{
	struct fail_at *f = arg;
	(void)mv;
	return ++f->calls == f->fail_on ? -EIO : 0;
}

/* Item 11: vswap_evacuate did not write *done, nor vswap_swapoff_virtual
 * *moved, when they failed part-way (3 of 4 slots moved, then -EIO). */
static void test_failed_moves_report_their_progress(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	OK(add_device(e, 1, 5, 4096));
	uint32_t s[4], dev;
	uint64_t off;
	for (int i = 0; i < 4; i++)
		s[i] = on_device(e, 60 + (unsigned)i, &dev, &off);
	struct vswap_evacuated ev = {77, 77, 77};
	struct fail_at f = {0, 4};
	EXPECT(vswap_evacuate(e, 0, 1, 0, move_fails_at, &f, &ev), -EIO);
	EXPECT(ev.moved, 3);
	EXPECT(ev.lost_to_free, 0);
	EXPECT(ev.passes, 1);
	/* argument errors write "nothing done" */
	ev.moved = 77;
	EXPECT(vswap_evacuate(e, 0, 1, 0, NULL, NULL, &ev), -VSWAP_EINVAL);
	EXPECT(ev.moved, 0);
	ev.moved = 77;
	EXPECT(vswap_evacuate(e, 0, 0, 0, move_fails_at, &f, &ev), -VSWAP_EINVAL);
	EXPECT(ev.moved, 0);
	uint64_t moved = 77;
	struct fail_at g = {0, 3};
	EXPECT(vswap_swapoff_virtual(e, NULL, 0, virt_move_fails_at, &g, &moved), -EIO);
	EXPECT(moved, 2);
	moved = 77;
	EXPECT(vswap_swapoff_virtual(e, NULL, 0, NULL, NULL, &moved), -VSWAP_EINVAL);
	EXPECT(moved, 0);
	g.fail_on = 0;
	OK(vswap_swapoff_virtual(e, NULL, 0, virt_move_fails_at, &g, &moved));
	EXPECT(moved, 2);
	struct vswap_entry en;
	for (int i = 0; i < 4; i++)
		EXPECT(vswap_lookup(e, s[i], &en), -VSWAP_ENOENT);
	teardown_engine(e);
}

/* Item 14: writeout checked its CPU against the device's CPUs (engine
 * cpus 4, device cpus 2: cpu 3 refused after vswap_alloc took it; cpu 10
 * accepted by a device with more), evacuation to memory ignored it. */
static void test_one_cpu_contract(void)
{
	setup();
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;
	OK(vswap_engine_config_default(&cfg));
	cfg.geometry.slots = 1 << 16;
	cfg.geometry.cpus = 4;
	OK(vswap_engine_create(&cfg, &OPS, &e));
	OK(add_device(e, 0, 10, 4096)); /* 2 CPUs */
	uint8_t page[PAGE];
	struct vswap_backend b;
	struct vswap_writeback wb;
	struct vswap_evacuated ev;
	uint32_t s = 0, dev;
	uint64_t off;
	OK(vswap_alloc(e, 0, 3, VSWAP_NO_MEMCG, true, &s));
	EXPECT(vswap_alloc(e, 0, 4, VSWAP_NO_MEMCG, true, &s), -VSWAP_EINVAL);
	fill_random(page, 9);
	EXPECT(vswap_writeout(e, s, page, PAGE, 10, &b), -VSWAP_EINVAL);
	EXPECT(vswap_writeout(e, s, page_zero, PAGE, 4, &b), -VSWAP_EINVAL);
	OK(vswap_writeout(e, s, page, PAGE, 3, &b));
	EXPECT(b.kind, VSWAP_BACKEND_PHYS);
	EXPECT(vswap_alloc_phys(e, 0, 4, s, true, &dev, &off), -VSWAP_EINVAL);
	uint32_t z = alloc_slot(e);
	fill_zswap(page, 10);
	OK(vswap_writeout(e, z, page, PAGE, 0, &b));
	EXPECT(vswap_writeback_begin(e, z, 4, &wb), -VSWAP_EINVAL);
	OK(vswap_writeback_begin(e, z, 3, &wb));
	OK(vswap_writeback_commit(e, &wb));
	struct moves m = {0, 0, 100, 0};
	EXPECT(vswap_evacuate(e, 0, -1, 4, on_move, &m, &ev), -VSWAP_EINVAL);
	EXPECT(m.reads, 0);
	OK(vswap_evacuate(e, 0, -1, 3, on_move, &m, &ev));
	EXPECT(ev.moved, 2);
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_FREED);
	EXPECT(vswap_cache_clear(e, z, 0, true), VSWAP_FREED);
	teardown_engine(e);
}

static uint8_t three_pages[3 * PAGE];

/* Item 15: vswap_writeout took any multiple of 8 bytes as a page (12 KiB
 * got one device slot). Exactly the configured page size now. */
static void test_writeout_takes_one_page(void)
{
	setup();
	struct vswap_engine *e = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	OK(add_device(e, 0, 10, 4096));
	struct vswap_backend b;
	struct vswap_entry en;
	struct vswap_device_stats ds;
	uint32_t s = alloc_slot(e);
	for (size_t i = 0; i < sizeof(three_pages); i++)
		three_pages[i] = (uint8_t)(i * 7 + 1);
	size_t lens[] = {0, 8, PAGE - 8, PAGE - 1, PAGE + 1, 2 * PAGE, 3 * PAGE};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		EXPECT(vswap_writeout(e, s, three_pages, lens[i], 0, &b), -VSWAP_EINVAL);
		OK(vswap_lookup(e, s, &en));
		EXPECT(en.backend.kind, VSWAP_BACKEND_NONE);
	}
	OK(vswap_device_get_stats(e, 0, &ds));
	EXPECT(ds.used, 0);
	OK(vswap_writeout(e, s, three_pages, VSWAP_PAGE_SIZE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_PHYS);
	EXPECT(vswap_cache_clear(e, s, 0, true), VSWAP_FREED);
	/* the page size is configuration */
	struct vswap_engine_config cfg;
	struct vswap_engine *f = NULL;
	OK(vswap_engine_config_default(&cfg));
	EXPECT(cfg.page_size, VSWAP_PAGE_SIZE);
	cfg.geometry.slots = 1 << 16;
	cfg.page_size = 4097;
	EXPECT(vswap_engine_create(&cfg, &OPS, &f), -VSWAP_EINVAL);
	cfg.page_size = 2 * PAGE;
	OK(vswap_engine_create(&cfg, &OPS, &f));
	s = alloc_slot(f);
	EXPECT(vswap_writeout(f, s, three_pages, PAGE, 0, &b), -VSWAP_EINVAL);
	memset(three_pages, 0, 2 * PAGE);
	OK(vswap_writeout(f, s, three_pages, 2 * PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_ZERO);
	EXPECT(vswap_cache_clear(f, s, 0, true), VSWAP_FREED);
	vswap_engine_destroy(f);
	teardown_engine(e);
}

/* An addressed engine (a swap device under the kernel's own swap
 * allocator): the host picks each slot; every backend; overwrite refused;
 * bad input refused with nothing changed; every byte back after the frees.
 * And the standalone addressed map. */
static void test_addressed(void)
{
	setup();
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;
	OK(vswap_engine_config_default(&cfg));
	cfg.geometry.slots = 1 << 16;
	cfg.geometry.cpus = 2;
	cfg.addressed = true;
	OK(vswap_engine_create(&cfg, &OPS, &e));
	OK(add_device(e, 0, 10, 4096));
	uint32_t s = 0;
	EXPECT(vswap_alloc(e, 0, 0, VSWAP_NO_MEMCG, true, &s), -VSWAP_EINVAL);
	EXPECT(s, 0);
	uint8_t page[PAGE];
	struct vswap_backend b;
	struct vswap_entry en;
	const uint32_t slots[4] = {7, 40000, 40001, 65535};
	const uint32_t kinds[4] = {VSWAP_BACKEND_ZERO, VSWAP_BACKEND_SAME, VSWAP_BACKEND_ZSWAP,
				   VSWAP_BACKEND_PHYS};
	for (int i = 0; i < 4; i++) {
		OK(vswap_alloc_at(e, slots[i], (uint32_t)i % 2, VSWAP_NO_MEMCG, true));
		EXPECT(vswap_alloc_at(e, slots[i], 0, VSWAP_NO_MEMCG, true), -VSWAP_EEXIST);
		OK(vswap_dup(e, slots[i], 1, true));
		if (i == 0)
			memset(page, 0, PAGE);
		else if (i == 1)
			fill_same(page, UINT64_MAX);
		else if (i == 2)
			fill_zswap(page, 4);
		else
			fill_random(page, 5);
		OK(vswap_writeout(e, slots[i], page, PAGE, 0, &b));
		EXPECT(b.kind, kinds[i]);
		EXPECT(vswap_cache_clear(e, slots[i], 0, true), VSWAP_LIVE);
		OK(vswap_lookup(e, slots[i], &en));
		EXPECT(en.backend.kind, kinds[i]);
		EXPECT(en.count, 1);
	}
	/* The neighbours were never taken. */
	EXPECT(vswap_lookup(e, 8, &en), -VSWAP_ENOENT);
	/* Bad input: nothing taken. */
	EXPECT(vswap_alloc_at(NULL, 9, 0, VSWAP_NO_MEMCG, true), -VSWAP_EINVAL);
	EXPECT(vswap_alloc_at(e, 0, 0, VSWAP_NO_MEMCG, true), -VSWAP_ERANGE);
	EXPECT(vswap_alloc_at(e, 1 << 16, 0, VSWAP_NO_MEMCG, true), -VSWAP_ERANGE);
	EXPECT(vswap_alloc_at(e, UINT32_MAX, 0, VSWAP_NO_MEMCG, true), -VSWAP_ERANGE);
	EXPECT(vswap_alloc_at(e, 9, 2, VSWAP_NO_MEMCG, true), -VSWAP_EINVAL);
	EXPECT(vswap_alloc_at(e, 9, 0, 1 << 16, true), -VSWAP_EINVAL);
	EXPECT(vswap_lookup(e, 9, &en), -VSWAP_ENOENT);
	for (int i = 0; i < 4; i++)
		EXPECT(vswap_put(e, slots[i], 1), VSWAP_FREED);
	EXPECT(atomic_load(&H.zswap_released), 1);
	EXPECT(atomic_load(&H.phys_released), 1);
	/* Emptied clusters' tables go back (here or at the teardown itself):
	 * only cluster 0, whose slot 0 is reserved, keeps one. */
	CHECK(vswap_reclaim(e) >= 0);
	struct vswap_map_stats st;
	OK(vswap_engine_get_stats(e, &st));
	EXPECT(st.live_slots, 0);
	CHECK(st.live_clusters <= 1);
	EXPECT(vswap_reclaim(NULL), -VSWAP_EINVAL);
	EXPECT(vswap_map_reclaim(NULL), -VSWAP_EINVAL);
	teardown_engine(e);

	/* A standalone addressed map; a plain one refuses host-chosen slots. */
	struct vswap_geometry g;
	OK(vswap_geometry_default(&g));
	g.slots = 1 << 12;
	g.cpus = 1;
	struct vswap_map *m = NULL, *v = NULL;
	OK(vswap_map_create_addressed(&g, &OPS, &m));
	OK(vswap_map_create(&g, &OPS, &v));
	EXPECT(vswap_map_alloc_at(v, 5, true), -VSWAP_EINVAL);
	EXPECT(vswap_map_alloc_at(NULL, 5, true), -VSWAP_EINVAL);
	EXPECT(vswap_map_alloc(m, 0, 0, true, &s), -VSWAP_EINVAL);
	OK(vswap_map_alloc_at(m, 4000, true));
	EXPECT(vswap_map_alloc_at(m, 4000, true), -VSWAP_EEXIST);
	EXPECT(vswap_map_alloc_at(m, 4096, true), -VSWAP_ERANGE);
	OK(vswap_map_dup(m, 4000, 1, true));
	EXPECT(vswap_map_cache_clear(m, 4000, 0, true), VSWAP_LIVE);
	EXPECT(vswap_map_put(m, 4000, 1), VSWAP_FREED);
	CHECK(vswap_map_reclaim(m) >= 0);
	vswap_map_destroy(v);
	vswap_map_destroy(m);
	EXPECT(atomic_load(&H.bytes), 0);
}

int main(void)
{
	RUN(test_every_backend);
	RUN(test_cache_lock_store);
	RUN(test_batches);
	RUN(test_swapin_and_readahead);
	RUN(test_writeback_and_relocate);
	RUN(test_swapoff_device);
	RUN(test_swapoff_virtual_and_direct_map);
	RUN(test_virtual_map);
	RUN(test_map_ranged_calls);
	RUN(test_log_device);
	RUN(test_charging);
	RUN(test_device_discard);
	RUN(test_store_needs_a_device_slot_reserved_for_the_slot);
	RUN(test_every_device_slot_release_is_reported);
	RUN(test_failed_moves_report_their_progress);
	RUN(test_one_cpu_contract);
	RUN(test_writeout_takes_one_page);
	RUN(test_addressed);
	return finish("lifecycle");
}
