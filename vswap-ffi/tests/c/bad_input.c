/*
 * DESIGN.md section 6 across the C ABI: every class of bad input returns its
 * exact code, and the neighbouring entry (a live slot next to the one
 * misused) is unchanged afterwards.
 */
#include "harness.h"

static struct test_host H;
static struct vswap_host_ops OPS;
static struct vswap_engine *E;
static uint32_t NB; /* the neighbour: live, count 3, zswap, cookie 77 */

struct snap {
	int rc, crc;
	struct vswap_entry e;
	struct vswap_cache_state c;
	struct vswap_map_stats st;
};

static struct snap snap_nb(void)
{
	struct snap s;
	memset(&s, 0, sizeof(s));
	s.rc = vswap_lookup(E, NB, &s.e);
	s.crc = vswap_cache_get(E, NB, &s.c);
	vswap_engine_get_stats(E, &s.st);
	return s;
}

static void same_snap(const struct snap *a, const struct snap *b, int line)
{
	if (a->rc != b->rc || a->crc != b->crc || a->e.backend.kind != b->e.backend.kind ||
	    a->e.backend.value != b->e.backend.value || a->e.count != b->e.count ||
	    a->e.cached != b->e.cached || a->e.locked != b->e.locked || a->c.word != b->c.word ||
	    a->st.live_slots != b->st.live_slots || a->st.locked != b->st.locked) {
		fprintf(stderr, "bad_input.c:%d: the neighbour or the totals changed\n", line);
		t_failed_checks++;
	}
}

#define UNCHANGED(before) do { struct snap after_ = snap_nb(); same_snap(&(before), &after_, __LINE__); } while (0)

static void setup(void)
{
	host_init(&H, &OPS);
	E = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	CHECK(E != NULL);
	OK(add_device(E, 0, 1, 4096));
	OK(vswap_alloc(E, 0, 0, VSWAP_NO_MEMCG, true, &NB));
	OK(vswap_dup(E, NB, 3, true));
	uint8_t page[PAGE];
	struct vswap_backend b;
	fill_zswap(page, 1);
	OK(vswap_writeout(E, NB, page, PAGE, 0, &b));
	OK(vswap_cache_store(E, NB, 77, true));
}

static void teardown(void)
{
	vswap_engine_destroy(E);
	E = NULL;
	EXPECT(atomic_load(&H.bytes), 0);
}

static uint32_t live_slot(void)
{
	uint32_t s = 0;
	OK(vswap_alloc(E, 0, 0, VSWAP_NO_MEMCG, true, &s));
	OK(vswap_dup(E, s, 1, true));
	return s;
}

static int32_t noop_move(void *arg, const struct vswap_move *mv, uint64_t *cookie)
{
	(void)arg;
	(void)mv;
	*cookie = 1;
	return 0;
}

static int32_t noop_virt(void *arg, const struct vswap_virt_move *mv)
{
	(void)arg;
	(void)mv;
	return 0;
}

static void noop_live(void *arg, uint32_t owner, uint64_t off)
{
	(void)arg;
	(void)owner;
	(void)off;
}

static void noop_copy(void *arg, uint32_t owner, uint64_t from, uint64_t to)
{
	(void)arg;
	(void)owner;
	(void)from;
	(void)to;
}

/* Class: a NULL handle or pointer, everywhere. */
static void test_null_handle_and_pointers(void)
{
	setup();
	struct snap before = snap_nb();
	const int EINV = -VSWAP_EINVAL;
	uint32_t u = 0, u2 = 0;
	uint64_t u64 = 0;
	struct vswap_entry en;
	struct vswap_backend b = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_cache_state cs;
	struct vswap_map_stats ms;
	struct vswap_device_stats ds;
	struct vswap_writeback wb = {NB, 0, 0, 1};
	struct vswap_swapin si;
	struct vswap_evacuated ev;
	struct vswap_device_config dc;
	struct vswap_log_flushed lf;
	struct vswap_log_stats ls;
	struct vswap_gc_pass gp;
	OK(vswap_device_config_default(&dc, 1024));

	EXPECT(vswap_alloc(NULL, 0, 0, VSWAP_NO_MEMCG, true, &u), EINV);
	EXPECT(vswap_dup(NULL, NB, 1, true), EINV);
	EXPECT(vswap_try_get(NULL, NB, true, &en), EINV);
	EXPECT(vswap_put(NULL, NB, 1), EINV);
	EXPECT(vswap_put_many(NULL, NB, 1, &u, &u2), EINV);
	EXPECT(vswap_put_range(NULL, NB, 0, &u), EINV);
	EXPECT(vswap_cache_add(NULL, NB, 1, true), EINV);
	EXPECT(vswap_cache_store(NULL, NB, 1, true), EINV);
	EXPECT(vswap_cache_clear(NULL, NB, 0, true), EINV);
	EXPECT(vswap_cache_get(NULL, NB, &cs), EINV);
	EXPECT(vswap_lock(NULL, NB), EINV);
	EXPECT(vswap_unlock(NULL, NB), EINV);
	EXPECT(vswap_lock_range(NULL, NB, 0), EINV);
	EXPECT(vswap_unlock_range(NULL, NB, 0, &u), EINV);
	EXPECT(vswap_store(NULL, NB, &b, &b), EINV);
	EXPECT(vswap_commit_unlock(NULL, NB, &b, &b), EINV);
	EXPECT(vswap_lookup(NULL, NB, &en), EINV);
	EXPECT(vswap_set_memcg(NULL, NB, 0, 1, true), EINV);
	EXPECT(vswap_memcg(NULL, NB, &u), EINV);
	EXPECT(vswap_writeout(NULL, NB, page_zero, PAGE, 0, &b), EINV);
	EXPECT(vswap_writeback_begin(NULL, NB, 0, &wb), EINV);
	EXPECT(vswap_writeback_commit(NULL, &wb), EINV);
	EXPECT(vswap_writeback_abort(NULL, &wb), EINV);
	EXPECT(vswap_relocate(NULL, NB, 0, 1, 0, 2), EINV);
	EXPECT(vswap_evacuate(NULL, 0, -1, 0, noop_move, NULL, &ev), EINV);
	EXPECT(vswap_swapoff_virtual(NULL, NULL, 0, noop_virt, NULL, &u64), EINV);
	EXPECT(vswap_swapin_check(NULL, NB, 0, &si), EINV);
	EXPECT(vswap_readahead(NULL, NB, &u, 1), EINV);
	EXPECT(vswap_engine_get_stats(NULL, &ms), EINV);
	EXPECT(vswap_device_add(NULL, 1, 1, &dc), EINV);
	EXPECT(vswap_device_remove(NULL, 0), EINV);
	EXPECT(vswap_device_get_stats(NULL, 0, &ds), EINV);
	EXPECT(vswap_device_owner(NULL, 0, 1, &u), EINV);
	EXPECT(vswap_device_free(NULL, 0, 1, 1, 0), EINV);
	EXPECT(vswap_device_discard(NULL, 0), EINV);
	EXPECT(vswap_alloc_phys(NULL, 0, 0, NB, true, &u, &u64), EINV);
	EXPECT(vswap_log_writeout(NULL, NB, page_zero, PAGE, &b), EINV);
	EXPECT(vswap_log_flush(NULL, true, &lf), EINV);
	EXPECT(vswap_log_for_each_live(NULL, 0, noop_live, NULL), EINV);
	EXPECT(vswap_log_commit(NULL, 0), EINV);
	EXPECT(vswap_log_gc(NULL, noop_copy, NULL, &gp), EINV);
	EXPECT(vswap_log_set_policy(NULL, VSWAP_GC_GREEDY), EINV);
	EXPECT(vswap_log_get_stats(NULL, &ls), EINV);
	EXPECT(vswap_log_writeback_begin(NULL, NB), EINV);
	EXPECT(vswap_log_writeback_abort(NULL, NB), EINV);
	vswap_engine_destroy(NULL); /* ignored */

	/* NULL maps */
	EXPECT(vswap_map_is_direct(NULL), EINV);
	EXPECT(vswap_map_alloc(NULL, 0, 0, true, &u), EINV);
	EXPECT(vswap_map_dup(NULL, 1, 1, true), EINV);
	EXPECT(vswap_map_try_get(NULL, 1, true, &en), EINV);
	EXPECT(vswap_map_put(NULL, 1, 1), EINV);
	EXPECT(vswap_map_put_many(NULL, 1, 1, &u, &u2), EINV);
	EXPECT(vswap_map_put_range(NULL, 1, 0, &u), EINV);
	EXPECT(vswap_map_cache_add(NULL, 1, 1, true), EINV);
	EXPECT(vswap_map_cache_store(NULL, 1, 1, true), EINV);
	EXPECT(vswap_map_cache_clear(NULL, 1, 0, true), EINV);
	EXPECT(vswap_map_cache_get(NULL, 1, &cs), EINV);
	EXPECT(vswap_map_lock(NULL, 1), EINV);
	EXPECT(vswap_map_unlock(NULL, 1), EINV);
	EXPECT(vswap_map_lock_range(NULL, 1, 0), EINV);
	EXPECT(vswap_map_unlock_range(NULL, 1, 0, &u), EINV);
	EXPECT(vswap_map_store(NULL, 1, &b, &b), EINV);
	EXPECT(vswap_map_commit_unlock(NULL, 1, &b, &b), EINV);
	EXPECT(vswap_map_lookup(NULL, 1, &en), EINV);
	EXPECT(vswap_map_get_stats(NULL, &ms), EINV);
	EXPECT(vswap_map_discard(NULL), EINV);
	vswap_map_destroy(NULL); /* ignored */

	/* NULL outputs and inputs on a live handle: nothing happens */
	EXPECT(vswap_alloc(E, 0, 0, VSWAP_NO_MEMCG, true, NULL), EINV);
	EXPECT(vswap_try_get(E, NB, true, NULL), EINV);
	EXPECT(vswap_put_many(E, NB, 1, NULL, &u), EINV);
	EXPECT(vswap_put_many(E, NB, 1, &u, NULL), EINV);
	EXPECT(vswap_put_range(E, NB, 0, NULL), EINV);
	EXPECT(vswap_cache_get(E, NB, NULL), EINV);
	EXPECT(vswap_unlock_range(E, NB, 0, NULL), EINV);
	EXPECT(vswap_store(E, NB, NULL, &b), EINV);
	EXPECT(vswap_store(E, NB, &b, NULL), EINV);
	EXPECT(vswap_commit_unlock(E, NB, &b, NULL), EINV);
	EXPECT(vswap_lookup(E, NB, NULL), EINV);
	EXPECT(vswap_memcg(E, NB, NULL), EINV);
	EXPECT(vswap_writeout(E, NB, NULL, PAGE, 0, &b), EINV);
	EXPECT(vswap_writeout(E, NB, page_zero, PAGE, 0, NULL), EINV);
	EXPECT(vswap_writeback_begin(E, NB, 0, NULL), EINV);
	EXPECT(vswap_writeback_commit(E, NULL), EINV);
	EXPECT(vswap_writeback_abort(E, NULL), EINV);
	EXPECT(vswap_evacuate(E, 0, -1, 0, NULL, NULL, &ev), EINV);
	EXPECT(vswap_evacuate(E, 0, -1, 0, noop_move, NULL, NULL), EINV);
	EXPECT(vswap_swapoff_virtual(E, NULL, 0, NULL, NULL, &u64), EINV);
	EXPECT(vswap_swapoff_virtual(E, NULL, 0, noop_virt, NULL, NULL), EINV);
	EXPECT(vswap_swapin_check(E, NB, 0, NULL), EINV);
	EXPECT(vswap_readahead(E, NB, NULL, 4), EINV);
	EXPECT(vswap_engine_get_stats(E, NULL), EINV);
	EXPECT(vswap_device_add(E, 1, 1, NULL), EINV);
	EXPECT(vswap_device_get_stats(E, 0, NULL), EINV);
	EXPECT(vswap_device_owner(E, 0, 1, NULL), EINV);
	EXPECT(vswap_alloc_phys(E, 0, 0, NB, true, NULL, &u64), EINV);
	EXPECT(vswap_alloc_phys(E, 0, 0, NB, true, &u, NULL), EINV);
	dc.nr_bad = 3; /* bad_slots NULL */
	EXPECT(vswap_device_add(E, 1, 1, &dc), EINV);
	EXPECT(vswap_geometry_default(NULL), EINV);
	EXPECT(vswap_engine_config_default(NULL), EINV);
	EXPECT(vswap_device_config_default(NULL, 1), EINV);
	UNCHANGED(before);

	/* create with NULL pieces, or without alloc/free */
	struct vswap_engine_config cfg;
	struct vswap_engine *e2 = (struct vswap_engine *)&u; /* must stay untouched */
	struct vswap_map *m2 = NULL;
	OK(vswap_engine_config_default(&cfg));
	EXPECT(vswap_engine_create(NULL, &OPS, &e2), EINV);
	EXPECT(vswap_engine_create(&cfg, NULL, &e2), EINV);
	EXPECT(vswap_engine_create(&cfg, &OPS, NULL), EINV);
	CHECK(e2 == (struct vswap_engine *)&u);
	struct vswap_host_ops no_alloc = OPS;
	no_alloc.alloc = NULL;
	EXPECT(vswap_engine_create(&cfg, &no_alloc, &e2), EINV);
	struct vswap_host_ops no_free = OPS;
	no_free.free = NULL;
	EXPECT(vswap_map_create(&cfg.geometry, &no_free, &m2), EINV);
	EXPECT(vswap_map_create(NULL, &OPS, &m2), EINV);
	EXPECT(vswap_map_create_direct(NULL, 0, &OPS, &m2), EINV);
	CHECK(m2 == NULL);
	teardown();
}

/* Class: a slot out of range, or not allocated. */
static void test_out_of_range_and_free_slots(void)
{
	setup();
	struct snap before = snap_nb();
	struct vswap_entry en;
	struct vswap_cache_state cs;
	const uint32_t far = (1u << 16) + 5; /* the space has 2^16 slots */
	EXPECT(vswap_lookup(E, 0, &en), -VSWAP_ERANGE);
	EXPECT(vswap_dup(E, 0, 1, true), -VSWAP_ERANGE);
	EXPECT(vswap_lookup(E, far, &en), -VSWAP_ERANGE);
	EXPECT(vswap_dup(E, far, 1, true), -VSWAP_ERANGE);
	EXPECT(vswap_lock(E, UINT32_MAX), -VSWAP_ERANGE);
	EXPECT(vswap_cache_get(E, far, &cs), -VSWAP_ERANGE);
	/* ranges outside the space, or holding slot 0: -ERANGE as per slot */
	uint32_t rf;
	const uint32_t end = 1u << 16;
	EXPECT(vswap_lock_range(E, end, 2), -VSWAP_ERANGE);
	EXPECT(vswap_lock_range(E, UINT32_MAX & ~3u, 2), -VSWAP_ERANGE);
	EXPECT(vswap_unlock_range(E, end, 1, &rf), -VSWAP_ERANGE);
	EXPECT(vswap_put_range(E, end + 8, 3, &rf), -VSWAP_ERANGE);
	EXPECT(vswap_set_memcg(E, end, 0, 3, true), -VSWAP_ERANGE);
	EXPECT(vswap_lock_range(E, 0, 2), -VSWAP_ERANGE);
	EXPECT(vswap_put_range(E, 0, 0, &rf), -VSWAP_ERANGE);
	/* a free slot next to the neighbour */
	uint32_t fr = NB + 1;
	EXPECT(vswap_lookup(E, fr, &en), -VSWAP_ENOENT);
	EXPECT(vswap_dup(E, fr, 1, true), -VSWAP_ENOENT);
	EXPECT(vswap_lock(E, fr), -VSWAP_ENOENT);
	EXPECT(vswap_unlock(E, fr), -VSWAP_ENOENT);
	EXPECT(vswap_cache_add(E, fr, 5, true), -VSWAP_ENOENT);
	EXPECT(vswap_cache_clear(E, fr, 0, true), -VSWAP_ENOENT);
	EXPECT(vswap_cache_get(E, fr, &cs), -VSWAP_ENOENT);
	EXPECT(vswap_try_get(E, fr, true, &en), -VSWAP_ENOENT);
	/* a slot in a cluster that does not exist */
	EXPECT(vswap_lookup(E, 40000, &en), -VSWAP_ENOENT);
	/* a CPU number out of range */
	uint32_t s;
	EXPECT(vswap_alloc(E, 0, 2, VSWAP_NO_MEMCG, true, &s), -VSWAP_EINVAL);
	UNCHANGED(before);
	teardown();
}

/* Class: a put (or free) of a slot that is free; a put of more than held. */
static void test_put_of_free_slot(void)
{
	setup();
	struct snap before = snap_nb();
	uint32_t s = live_slot(), done = 9, freed = 9;
	EXPECT(vswap_cache_clear(E, s, 0, true), VSWAP_LIVE);
	EXPECT(vswap_put(E, s, 2), -VSWAP_EINVAL); /* only 1 held */
	EXPECT(vswap_put(E, s, 1), VSWAP_FREED);
	EXPECT(vswap_put(E, s, 1), -VSWAP_ENOENT);
	EXPECT(vswap_put(E, NB + 1, 1), -VSWAP_ENOENT);
	EXPECT(vswap_put_many(E, s, 1, &done, &freed), -VSWAP_ENOENT);
	EXPECT(done, 0);
	EXPECT(vswap_put_range(E, s, 0, &freed), -VSWAP_ENOENT);
	EXPECT(vswap_cache_clear(E, s, 0, true), -VSWAP_ENOENT);
	UNCHANGED(before);
	teardown();
}

/* Class: count overflow past the side table. */
static void test_count_overflow(void)
{
	setup();
	struct snap before = snap_nb();
	uint32_t s = live_slot();
	struct vswap_entry en;
	EXPECT(vswap_dup(E, s, UINT32_MAX, true), -VSWAP_EOVERFLOW);
	OK(vswap_dup(E, s, 100, true)); /* into the side table */
	OK(vswap_lookup(E, s, &en));
	EXPECT(en.count, 101);
	EXPECT(vswap_dup(E, s, UINT32_MAX - 100, true), -VSWAP_EOVERFLOW);
	OK(vswap_lookup(E, s, &en));
	EXPECT(en.count, 101);
	EXPECT(vswap_put(E, s, 101), VSWAP_LIVE);
	EXPECT(vswap_cache_clear(E, s, 0, true), VSWAP_FREED);
	UNCHANGED(before);
	teardown();
}

/* Class: a transition from an unexpected state. */
static void test_wrong_state(void)
{
	setup();
	struct snap before = snap_nb();
	uint32_t s = live_slot();
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_backend zero = {VSWAP_BACKEND_ZERO, 0, 0};
	struct vswap_backend same = {VSWAP_BACKEND_SAME, 0, 9};
	struct vswap_writeback wb;
	struct vswap_backend b;
	EXPECT(vswap_cache_add(E, s, 5, true), -VSWAP_EEXIST);     /* already cached */
	EXPECT(vswap_store(E, s, &zero, &same), -VSWAP_EEXIST);    /* backend is none */
	EXPECT(vswap_unlock(E, s), -VSWAP_EPERM);                  /* not locked */
	EXPECT(vswap_commit_unlock(E, s, &none, &zero), -VSWAP_EPERM);
	EXPECT(vswap_writeback_begin(E, s, 0, &wb), -VSWAP_EEXIST); /* not in zswap */
	EXPECT(vswap_relocate(E, s, 0, 1, 0, 2), -VSWAP_EPERM);
	EXPECT(vswap_writeout(E, NB, page_zero, PAGE, 0, &b), -VSWAP_EEXIST); /* zswap */
	OK(vswap_lock(E, s));
	EXPECT(vswap_lock(E, s), -VSWAP_EBUSY);
	EXPECT(vswap_store(E, s, &none, &zero), -VSWAP_EBUSY);
	EXPECT(vswap_commit_unlock(E, s, &zero, &same), -VSWAP_EEXIST); /* still locked */
	EXPECT(vswap_unlock(E, s), VSWAP_LIVE);
	EXPECT(vswap_cache_clear(E, s, 0, true), VSWAP_LIVE);
	EXPECT(vswap_cache_clear(E, s, 0, true), -VSWAP_EEXIST); /* already clear */
	EXPECT(vswap_put(E, s, 1), VSWAP_FREED);
	UNCHANGED(before);
	teardown();
}

/* Class: an order above the maximum, or a misaligned range. */
static void test_bad_order_and_misaligned(void)
{
	setup();
	struct snap before = snap_nb();
	uint32_t s = 0, freed;
	struct vswap_swapin si;
	EXPECT(vswap_alloc(E, 10, 0, VSWAP_NO_MEMCG, true, &s), -VSWAP_EINVAL);
	EXPECT(vswap_alloc(E, UINT32_MAX, 0, VSWAP_NO_MEMCG, true, &s), -VSWAP_EINVAL);
	OK(vswap_alloc(E, 2, 0, VSWAP_NO_MEMCG, true, &s));
	EXPECT(vswap_lock_range(E, s + 1, 1), -VSWAP_EINVAL);
	EXPECT(vswap_lock_range(E, s, 10), -VSWAP_EINVAL);
	EXPECT(vswap_unlock_range(E, s + 2, 2, &freed), -VSWAP_EINVAL);
	EXPECT(vswap_put_range(E, s + 1, 1, &freed), -VSWAP_EINVAL);
	EXPECT(vswap_swapin_check(E, s + 1, 2, &si), -VSWAP_EINVAL);
	EXPECT(vswap_swapin_check(E, s, 11, &si), -VSWAP_EINVAL);
	EXPECT(vswap_set_memcg(E, s + 1, 2, 3, true), -VSWAP_EINVAL);
	/* a page that is empty or not whole 64-bit words */
	struct vswap_backend b;
	EXPECT(vswap_writeout(E, s, page_zero, 0, 0, &b), -VSWAP_EINVAL);
	EXPECT(vswap_writeout(E, s, page_zero, 4095, 0, &b), -VSWAP_EINVAL);
	for (uint32_t i = 0; i < 4; i++)
		EXPECT(vswap_cache_clear(E, s + i, 0, true), VSWAP_FREED);
	UNCHANGED(before);
	teardown();
}

/* Class: an unknown or removed device. */
static void test_unknown_and_removed_device(void)
{
	setup();
	struct snap before = snap_nb();
	struct vswap_device_stats ds;
	struct vswap_evacuated ev;
	struct vswap_device_config dc;
	uint32_t owner;
	OK(vswap_device_config_default(&dc, 1024));
	EXPECT(vswap_device_get_stats(E, 5, &ds), -VSWAP_ENODEV);
	EXPECT(vswap_device_get_stats(E, 16, &ds), -VSWAP_ENODEV);
	EXPECT(vswap_device_get_stats(E, 300, &ds), -VSWAP_ENODEV);
	EXPECT(vswap_device_add(E, 16, 1, &dc), -VSWAP_ENODEV);
	EXPECT(vswap_device_add(E, 1000, 1, &dc), -VSWAP_ENODEV);
	/* issue 12, item 13: the header defines VSWAP_MAX_DEVICES (16), and
	 * device numbers are 0..VSWAP_MAX_DEVICES - 1 (not 0..=63) */
	EXPECT(VSWAP_MAX_DEVICES, 16);
	EXPECT(vswap_device_add(E, VSWAP_MAX_DEVICES, 1, &dc), -VSWAP_ENODEV);
	EXPECT(vswap_device_get_stats(E, VSWAP_MAX_DEVICES, &ds), -VSWAP_ENODEV);
	EXPECT(vswap_device_owner(E, VSWAP_MAX_DEVICES, 1, &owner), -VSWAP_ENODEV);
	OK(vswap_device_add(E, VSWAP_MAX_DEVICES - 1, 1, &dc));
	OK(vswap_device_remove(E, VSWAP_MAX_DEVICES - 1));
	EXPECT(vswap_device_add(E, 1, 256, &dc), -VSWAP_EINVAL); /* priority */
	EXPECT(vswap_device_remove(E, 5), -VSWAP_ENODEV);
	EXPECT(vswap_evacuate(E, 5, -1, 0, noop_move, NULL, &ev), -VSWAP_ENODEV);
	EXPECT(vswap_device_owner(E, 9, 1, &owner), -VSWAP_ENODEV);
	EXPECT(vswap_device_owner(E, 0, 4096, &owner), -VSWAP_ERANGE);
	OK(vswap_device_add(E, 5, 1, &dc));
	OK(vswap_device_remove(E, 5));
	EXPECT(vswap_device_get_stats(E, 5, &ds), -VSWAP_ENODEV);
	EXPECT(vswap_device_remove(E, 5), -VSWAP_ENODEV);
	EXPECT(vswap_device_discard(E, 5), -VSWAP_ENODEV);
	/* device 0 holds one page: moving it to the removed device fails */
	uint32_t p = live_slot();
	uint8_t page[PAGE];
	struct vswap_backend b;
	struct vswap_entry en;
	fill_random(page, 3);
	OK(vswap_writeout(E, p, page, PAGE, 0, &b));
	EXPECT(vswap_evacuate(E, 0, 5, 0, noop_move, NULL, &ev), -VSWAP_ENODEV);
	OK(vswap_lookup(E, p, &en));
	CHECK(!en.locked && en.backend.kind == VSWAP_BACKEND_PHYS && en.backend.value == b.value);
	EXPECT(vswap_cache_clear(E, p, 0, true), VSWAP_LIVE);
	EXPECT(vswap_put(E, p, 1), VSWAP_FREED);
	UNCHANGED(before);
	teardown();
}

/* Class: a full device, and a full slot space. */
static void test_full_device_and_space(void)
{
	host_init(&H, &OPS);
	E = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	struct vswap_device_config dc;
	OK(vswap_device_config_default(&dc, 64));
	dc.geometry.cluster_shift = 4;
	dc.geometry.cpus = 2;
	OK(vswap_device_add(E, 0, 1, &dc));
	OK(vswap_alloc(E, 0, 0, VSWAP_NO_MEMCG, true, &NB));
	OK(vswap_dup(E, NB, 1, true));
	struct snap before = snap_nb();
	uint8_t page[PAGE];
	struct vswap_backend b;
	uint32_t s[64];
	int n = 0;
	for (; n < 63; n++) { /* 64 slots less the header */
		s[n] = live_slot();
		fill_random(page, (unsigned)n);
		OK(vswap_writeout(E, s[n], page, PAGE, n % 2, &b));
	}
	s[n] = live_slot();
	EXPECT(vswap_writeout(E, s[n], page, PAGE, 0, &b), -VSWAP_ENOSPC);
	struct vswap_entry en;
	OK(vswap_lookup(E, s[n], &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_NONE);
	uint32_t dev;
	uint64_t off;
	EXPECT(vswap_alloc_phys(E, 0, 0, s[n], true, &dev, &off), -VSWAP_ENOSPC);
	for (int i = 0; i <= n; i++) {
		EXPECT(vswap_cache_clear(E, s[i], 0, true), VSWAP_LIVE);
		EXPECT(vswap_put(E, s[i], 1), VSWAP_FREED);
	}
	struct snap mid = snap_nb();
	(void)before;
	/* after the frees the device takes pages again */
	uint32_t t = live_slot();
	fill_random(page, 99);
	OK(vswap_writeout(E, t, page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_PHYS);
	EXPECT(vswap_cache_clear(E, t, 0, true), VSWAP_LIVE);
	EXPECT(vswap_put(E, t, 1), VSWAP_FREED);
	UNCHANGED(mid);
	teardown();

	/* a virtual space of one 512-slot cluster: 511 usable (slot 0) */
	host_init(&H, &OPS);
	struct vswap_geometry g;
	OK(vswap_geometry_default(&g));
	g.slots = 512;
	g.cpus = 1;
	struct vswap_map *m = NULL;
	OK(vswap_map_create(&g, &OPS, &m));
	uint32_t x = 0;
	for (int i = 0; i < 511; i++)
		OK(vswap_map_alloc(m, 0, 0, true, &x));
	EXPECT(vswap_map_alloc(m, 0, 0, true, &x), -VSWAP_ENOSPC);
	EXPECT(vswap_map_cache_clear(m, 7, 0, true), VSWAP_FREED);
	OK(vswap_map_alloc(m, 0, 0, true, &x));
	EXPECT(x, 7);
	vswap_map_destroy(m);
	EXPECT(atomic_load(&H.bytes), 0);
}

/* Class: the host's allocator out of memory (alloc returns NULL). */
static void test_out_of_memory_host(void)
{
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;
	host_init(&H, &OPS);
	OK(vswap_engine_config_default(&cfg));
	cfg.geometry.slots = 1 << 16;
	cfg.geometry.cpus = 2;
	/* creation fails at every step, leaking nothing */
	for (long long k = 0; k < 6; k++) {
		atomic_store(&H.fail_after, k);
		int rc = vswap_engine_create(&cfg, &OPS, &e);
		if (rc == 0) {
			vswap_engine_destroy(e);
			break;
		}
		EXPECT(rc, -VSWAP_ENOMEM);
		EXPECT(atomic_load(&H.bytes), 0);
	}
	atomic_store(&H.fail_after, -1);

	setup();
	struct snap before = snap_nb();
	uint32_t s = 0;
	/* CPU 1 has no cluster yet: its first allocation needs memory */
	atomic_store(&H.fail_after, 0);
	EXPECT(vswap_alloc(E, 0, 1, VSWAP_NO_MEMCG, true, &s), -VSWAP_ENOMEM);
	EXPECT(vswap_alloc(E, 0, 1, VSWAP_NO_MEMCG, false, &s), -VSWAP_EAGAIN);
	struct vswap_device_config dc;
	OK(vswap_device_config_default(&dc, 1024));
	EXPECT(vswap_device_add(E, 1, 1, &dc), -VSWAP_ENOMEM);
	struct vswap_device_stats ds;
	EXPECT(vswap_device_get_stats(E, 1, &ds), -VSWAP_ENODEV);
	/* a cache word needs the cluster's cache table: NB has one already,
	 * a slot of a fresh cluster does not */
	UNCHANGED(before);
	atomic_store(&H.fail_after, -1);
	/* nothing was lost: the allocation works once memory is back */
	OK(vswap_alloc(E, 0, 1, VSWAP_NO_MEMCG, true, &s));
	atomic_store(&H.fail_after, 0);
	EXPECT(vswap_dup(E, s, 100, true), -VSWAP_ENOMEM); /* side table page */
	EXPECT(vswap_set_memcg(E, s, 0, 3, true), -VSWAP_ENOMEM);
	atomic_store(&H.fail_after, -1);
	struct vswap_entry en;
	OK(vswap_lookup(E, s, &en));
	EXPECT(en.count, 0);
	EXPECT(vswap_cache_clear(E, s, 0, true), VSWAP_FREED);
	teardown();
}

/* Class: a payload too wide for the core word; an unknown kind. */
static void test_payload_too_wide(void)
{
	setup();
	struct snap before = snap_nb();
	uint32_t s = live_slot();
	struct vswap_backend none = {VSWAP_BACKEND_NONE, 0, 0};
	struct vswap_backend wide[] = {
		{VSWAP_BACKEND_ZSWAP, 0, 0x7fff000000000000ull},
		{VSWAP_BACKEND_PHYS, 64, 0},
		{VSWAP_BACKEND_PHYS, 300, 0},
		{VSWAP_BACKEND_PHYS, 0, 1ull << 44},
	};
	for (size_t i = 0; i < sizeof(wide) / sizeof(wide[0]); i++)
		EXPECT(vswap_store(E, s, &none, &wide[i]), -VSWAP_E2BIG);
	struct vswap_backend unknown = {9, 0, 0};
	EXPECT(vswap_store(E, s, &none, &unknown), -VSWAP_EINVAL);
	EXPECT(vswap_relocate(E, s, 300, 1, 0, 2), -VSWAP_E2BIG);
	struct vswap_entry en;
	OK(vswap_lookup(E, s, &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_NONE);
	/* every same-filled value fits: stored and read back whole */
	struct vswap_backend same_wide = {VSWAP_BACKEND_SAME, 0, 0xdeadbeefcafef00dull};
	OK(vswap_store(E, s, &none, &same_wide));
	OK(vswap_lookup(E, s, &en));
	EXPECT(en.backend.kind, VSWAP_BACKEND_SAME);
	EXPECT(en.backend.value == 0xdeadbeefcafef00dull, 1);
	OK(vswap_store(E, s, &same_wide, &none));
	/* and a page of any repeated word is written out as same-filled */
	uint8_t page[PAGE];
	struct vswap_backend b;
	fill_same(page, 0xff00ff00ff00ff00ull);
	OK(vswap_writeout(E, s, page, PAGE, 0, &b));
	EXPECT(b.kind, VSWAP_BACKEND_SAME);
	EXPECT(b.value == 0xff00ff00ff00ff00ull, 1);
	EXPECT(vswap_cache_clear(E, s, 0, true), VSWAP_LIVE);
	EXPECT(vswap_put(E, s, 1), VSWAP_FREED);
	UNCHANGED(before);
	teardown();
}

/* Class: bad configurations. */
static void test_bad_config(void)
{
	host_init(&H, &OPS);
	struct vswap_engine_config cfg;
	struct vswap_engine *e = NULL;
	OK(vswap_engine_config_default(&cfg));
	cfg.geometry.cluster_shift = 0;
	EXPECT(vswap_engine_create(&cfg, &OPS, &e), -VSWAP_EINVAL);
	OK(vswap_engine_config_default(&cfg));
	cfg.placement = 7;
	EXPECT(vswap_engine_create(&cfg, &OPS, &e), -VSWAP_EINVAL);
	OK(vswap_engine_config_default(&cfg));
	cfg.charge = 3;
	EXPECT(vswap_engine_create(&cfg, &OPS, &e), -VSWAP_EINVAL);
	struct vswap_log_config lc = {1, 4, 4096, 2, VSWAP_GC_GREEDY}; /* too few segments */
	OK(vswap_engine_config_default(&cfg));
	cfg.log = &lc;
	EXPECT(vswap_engine_create(&cfg, &OPS, &e), -VSWAP_EINVAL);
	lc.segments = 8;
	lc.policy = 5;
	EXPECT(vswap_engine_create(&cfg, &OPS, &e), -VSWAP_EINVAL);
	lc.policy = VSWAP_GC_GREEDY;
	cfg.log_dev = 16;
	EXPECT(vswap_engine_create(&cfg, &OPS, &e), -VSWAP_ENODEV);
	CHECK(e == NULL);
	EXPECT(atomic_load(&H.bytes), 0);
}

int main(void)
{
	RUN(test_null_handle_and_pointers);
	RUN(test_out_of_range_and_free_slots);
	RUN(test_put_of_free_slot);
	RUN(test_count_overflow);
	RUN(test_wrong_state);
	RUN(test_bad_order_and_misaligned);
	RUN(test_unknown_and_removed_device);
	RUN(test_full_device_and_space);
	RUN(test_out_of_memory_host);
	RUN(test_payload_too_wide);
	RUN(test_bad_config);
	return finish("bad_input");
}
