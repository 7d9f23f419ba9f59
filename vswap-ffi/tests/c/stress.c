/*
 * Two pthreads on one engine through the C ABI: allocation on their own CPU
 * numbers, writeout to every backend, lookups, reference drops, and frees of
 * slots the other thread allocated (handed over through a queue). Checks no
 * slot is handed out twice, every zswap handle and device slot is released
 * exactly once, and everything is back with the host at the end.
 * VSWAP_STRESS_ITERS sets the operations per thread (default 20000).
 */
#include <pthread.h>

#include "harness.h"

static struct test_host H;
static struct vswap_host_ops OPS;
static struct vswap_engine *E;
static atomic_uchar owned[1 << 16]; /* slot -> handed out now */
static atomic_llong zswap_stored, phys_written, double_alloc, bad_rc;

#define QCAP 4096
static struct {
	pthread_mutex_t lock;
	uint32_t slots[QCAP];
	int len;
} Q = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};

static void note_rc(int rc, const char *what)
{
	if (rc < 0) {
		if (atomic_fetch_add(&bad_rc, 1) < 5)
			fprintf(stderr, "stress: %s returned %d\n", what, rc);
	}
}

/* Drop the last references of a slot we own (count 1, not cached). */
static void release(uint32_t s)
{
	atomic_store(&owned[s], 0); /* before the put: it may be reused at once */
	int rc = vswap_put(E, s, 1);
	if (rc != VSWAP_FREED)
		note_rc(rc < 0 ? rc : -1000, "last put");
}

static void *worker(void *arg)
{
	uint32_t cpu = (uint32_t)(uintptr_t)arg;
	long iters = 20000;
	const char *env = getenv("VSWAP_STRESS_ITERS");
	if (env)
		iters = atol(env);
	uint8_t page[PAGE];
	unsigned seed = 12345u + cpu;
	for (long i = 0; i < iters; i++) {
		uint32_t s = 0;
		int rc = vswap_alloc(E, 0, cpu, VSWAP_NO_MEMCG, false, &s);
		if (rc == -VSWAP_EAGAIN)
			rc = vswap_alloc(E, 0, cpu, VSWAP_NO_MEMCG, true, &s);
		if (rc < 0) {
			note_rc(rc, "alloc");
			continue;
		}
		if (atomic_exchange(&owned[s], 1) != 0)
			atomic_fetch_add(&double_alloc, 1);
		note_rc(vswap_dup(E, s, 1, true), "dup");
		struct vswap_backend b;
		switch (i % 4) {
		case 0:
			rc = vswap_writeout(E, s, page_zero, PAGE, cpu, &b);
			break;
		case 1:
			fill_same(page, (uint64_t)i);
			rc = vswap_writeout(E, s, page, PAGE, cpu, &b);
			break;
		case 2:
			fill_zswap(page, seed++);
			rc = vswap_writeout(E, s, page, PAGE, cpu, &b);
			if (rc == 0 && b.kind == VSWAP_BACKEND_ZSWAP)
				atomic_fetch_add(&zswap_stored, 1);
			break;
		default:
			fill_random(page, seed++);
			rc = vswap_writeout(E, s, page, PAGE, cpu, &b);
			if (rc == 0 && b.kind == VSWAP_BACKEND_PHYS)
				atomic_fetch_add(&phys_written, 1);
			break;
		}
		note_rc(rc, "writeout");
		struct vswap_entry en;
		rc = vswap_lookup(E, s, &en);
		note_rc(rc, "lookup");
		if (rc == 0 && (en.count != 1 || !en.cached))
			note_rc(-2000, "lookup state");
		/* a stray lookup of some other slot: any state, never a crash */
		uint32_t other = (seed * 2654435761u) & 0xffff;
		int orc = vswap_lookup(E, other, &en);
		if (orc != 0 && orc != -VSWAP_ENOENT && orc != -VSWAP_ERANGE)
			note_rc(orc, "stray lookup");
		note_rc(vswap_cache_clear(E, s, 0, true), "cache_clear");
		if (i % 3 == 0) {
			/* hand it to the other thread */
			pthread_mutex_lock(&Q.lock);
			if (Q.len < QCAP) {
				Q.slots[Q.len++] = s;
				s = 0;
			}
			pthread_mutex_unlock(&Q.lock);
		}
		if (s)
			release(s);
		/* free one the other thread handed over */
		uint32_t t = 0;
		pthread_mutex_lock(&Q.lock);
		if (Q.len > 0)
			t = Q.slots[--Q.len];
		pthread_mutex_unlock(&Q.lock);
		if (t)
			release(t);
	}
	return NULL;
}

static void test_two_threads(void)
{
	host_init(&H, &OPS);
	E = make_engine(&OPS, VSWAP_PLACEMENT_DEFERRED, VSWAP_CHARGE_NONE);
	CHECK(E != NULL);
	OK(add_device(E, 0, 5, 1 << 14));
	OK(add_device(E, 1, 5, 1 << 14));
	pthread_t th[2];
	for (uintptr_t i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, worker, (void *)i) == 0);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	while (Q.len > 0)
		release(Q.slots[--Q.len]);
	EXPECT(atomic_load(&double_alloc), 0);
	EXPECT(atomic_load(&bad_rc), 0);
	struct vswap_map_stats st;
	OK(vswap_engine_get_stats(E, &st));
	EXPECT(st.live_slots, 0);
	EXPECT(st.locked, 0);
	struct vswap_device_stats d0, d1;
	OK(vswap_device_get_stats(E, 0, &d0));
	OK(vswap_device_get_stats(E, 1, &d1));
	EXPECT(d0.used + d1.used, 0);
	CHECK(d0.clusters_full + d1.clusters_full == 0);
	CHECK(atomic_load(&zswap_stored) > 0 && atomic_load(&phys_written) > 0);
	EXPECT(atomic_load(&H.zswap_released), atomic_load(&zswap_stored));
	EXPECT(atomic_load(&H.phys_released), atomic_load(&phys_written));
	OK(vswap_device_remove(E, 0));
	OK(vswap_device_remove(E, 1));
	vswap_engine_destroy(E);
	EXPECT(atomic_load(&H.bytes), 0);
	EXPECT(atomic_load(&H.blocks), 0);
}

int main(void)
{
	RUN(test_two_threads);
	return finish("stress");
}
