// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * vswap_swapdev.ko: /dev/vswap0, a swap device the kernel's own swap
 * subsystem drives (mkswap, swapon), built on the kernel-mode vswap library
 * through vswap.h.
 *
 * Sector -> slot is the identity (4 KiB blocks): the kernel's swap
 * allocator chooses the offset, and the device takes that slot of an
 * *addressed* engine (vswap_alloc_at). A write goes through the engine's
 * writeout: zero and same-filled pages are kept in the slot's 8-byte core
 * word; every other page goes to the zswap backend, which this module
 * implements with the kernel's LZ4 (lib/lz4) into a zsmalloc pool, as zram
 * does (pages LZ4 cannot shrink below 3/4 of a page are kept whole). A
 * read looks the slot up and serves it from the word or the pool; an
 * unwritten slot reads as zeroes. Overwrites free the old backend first;
 * REQ_OP_DISCARD, REQ_OP_WRITE_ZEROES and swap_slot_free_notify free slots
 * at once. Slot 0 (the swap header page, which the library reserves) is
 * kept in a page of its own.
 *
 * Unlike zram, the per-slot metadata is made on demand: an idle device of
 * any size costs the library's directory (a few KiB), and a cluster's
 * table goes back when its last slot is freed.
 *
 * Library calls run with preemption off (get_cpu/put_cpu: the CPU number
 * is the library's), without sleeping (may_sleep = false); the zswap
 * callback compresses into this CPU's buffer.
 *
 * Parameters: disksize_mb (default 16384), pool_limit_mb (0: none; a write
 * that would pass it fails with an I/O error and the kernel keeps the page).
 * Statistics: /sys/block/vswap0/vswap/{mm_stat,io_stat}. A timer gives back
 * the tables of emptied clusters whose grace period ended once the device
 * has been idle for a second.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/highmem.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/lz4.h>
#include <linux/module.h>
#include <linux/mm.h>
#include <linux/percpu.h>
#include <linux/pgtable.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>
#include <linux/zsmalloc.h>

#include "vswap_kmod.h"

#define VSD_SECTORS_PER_PAGE (PAGE_SIZE >> SECTOR_SHIFT)
/* Pool objects of pages LZ4 shrinks: a 2-byte length, then the data. */
#define VSD_HDR 2
/* Below this compressed size a page is kept compressed (zram's 3/4). */
#define VSD_HUGE (PAGE_SIZE * 3 / 4)
/* A handle's low bit: the object is a whole, uncompressed page. */
#define VSD_RAW 1ul

static unsigned long disksize_mb = 16384;
module_param(disksize_mb, ulong, 0444);
MODULE_PARM_DESC(disksize_mb, "device size in MiB (metadata is made on demand)");

static unsigned long pool_limit_mb;
module_param(pool_limit_mb, ulong, 0444);
MODULE_PARM_DESC(pool_limit_mb, "most MiB of compressed pool (0: no limit)");

struct vsd_pcpu {
	void *wrkmem; /* LZ4_MEM_COMPRESS */
	u8 *buf;      /* LZ4_COMPRESSBOUND(PAGE_SIZE) */
};

struct vsd {
	struct gendisk *disk;
	struct vswap_engine *e;
	struct vswap_host_ops ops;
	struct zs_pool *pool;
	struct vsd_pcpu __percpu *pcpu;
	u8 *header;            /* slot 0 */
	spinlock_t header_lock;
	u64 slots;
	unsigned long pool_limit_pages;
	/* statistics */
	atomic64_t pages_compressed; /* live pool objects, compressed */
	atomic64_t pages_huge;       /* live pool objects, whole pages */
	atomic64_t compr_bytes;      /* bytes of live pool objects */
	atomic64_t writes, reads, failed_writes, failed_reads;
	atomic64_t overwrites, discarded, notify_free, pool_full, pool_alloc_failed;
	atomic64_t zero_writes, same_writes;
	atomic64_t reclaimed;        /* clusters whose tables the timer gave back */
};

static struct vsd vsd;

/*
 * Tables of clusters emptied last wait for a grace period, and the library
 * gives them back at its next teardown or new cluster: an idle device would
 * keep them. Once a second, if the device did no I/O since the last look,
 * give back those whose grace period has ended. Not while it is busy:
 * under swap traffic clusters empty and fill again all the time, and one
 * still waiting is taken back with its table (measured under qemu: calling
 * this every second regardless made the fill phase about 2x slower, every
 * refilled cluster making a new table).
 */
static void vsd_reclaim_fn(struct work_struct *w);
static DECLARE_DELAYED_WORK(vsd_reclaim_work, vsd_reclaim_fn);
static s64 vsd_io_seen;

static void vsd_reclaim_fn(struct work_struct *w)
{
	s64 io = atomic64_read(&vsd.writes) + atomic64_read(&vsd.notify_free);

	if (io == vsd_io_seen) {
		int n = vswap_reclaim(vsd.e);

		if (n > 0)
			atomic64_add(n, &vsd.reclaimed);
	}
	vsd_io_seen = io;
	schedule_delayed_work(&vsd_reclaim_work, HZ);
}

/* ----------------------------------------------------- the zswap host */

static bool vsd_zswap_store(void *ctx, uint32_t slot, const uint8_t *page, size_t len,
			    uint64_t *handle)
{
	struct vsd *d = ctx;
	/* Called inside the library, with preemption off (get_cpu). */
	struct vsd_pcpu *pc = this_cpu_ptr(d->pcpu);
	unsigned long h;
	size_t size;
	int clen;
	void *dst;

	if (len != PAGE_SIZE)
		return false;
	if (d->pool_limit_pages && zs_get_total_pages(d->pool) >= d->pool_limit_pages) {
		atomic64_inc(&d->pool_full);
		return false;
	}
	clen = LZ4_compress_default((const char *)page, (char *)pc->buf, PAGE_SIZE,
				    LZ4_COMPRESSBOUND(PAGE_SIZE), pc->wrkmem);
	size = (clen > 0 && clen + VSD_HDR < VSD_HUGE) ? clen + VSD_HDR : PAGE_SIZE;
	h = zs_malloc(d->pool, size, GFP_NOWAIT | __GFP_NOWARN | __GFP_HIGHMEM | __GFP_MOVABLE);
	if (!h || IS_ERR_VALUE(h)) {
		atomic64_inc(&d->pool_alloc_failed);
		return false;
	}
	/* zsmalloc handles are aligned pointers: the low bit is ours. */
	if (WARN_ON_ONCE(h & VSD_RAW)) {
		zs_free(d->pool, h);
		return false;
	}
	dst = zs_map_object(d->pool, h, ZS_MM_WO);
	if (size == PAGE_SIZE) {
		memcpy(dst, page, PAGE_SIZE);
		atomic64_inc(&d->pages_huge);
	} else {
		u16 l = clen;

		memcpy(dst, &l, VSD_HDR);
		memcpy((u8 *)dst + VSD_HDR, pc->buf, clen);
		atomic64_inc(&d->pages_compressed);
	}
	zs_unmap_object(d->pool, h);
	atomic64_add(size, &d->compr_bytes);
	*handle = size == PAGE_SIZE ? (h | VSD_RAW) : h;
	return true;
}

static void vsd_release_zswap(void *ctx, uint64_t handle)
{
	struct vsd *d = ctx;
	unsigned long h = handle & ~VSD_RAW;

	if (handle & VSD_RAW) {
		atomic64_dec(&d->pages_huge);
		atomic64_sub(PAGE_SIZE, &d->compr_bytes);
	} else {
		u16 l;
		void *src = zs_map_object(d->pool, h, ZS_MM_RO);

		memcpy(&l, src, VSD_HDR);
		zs_unmap_object(d->pool, h);
		atomic64_dec(&d->pages_compressed);
		atomic64_sub(l + VSD_HDR, &d->compr_bytes);
	}
	zs_free(d->pool, h);
}

static void *vsd_alloc(void *ctx, size_t size, size_t align, bool may_sleep)
{
	return vk_page_alloc(size, align, may_sleep);
}

static void vsd_free(void *ctx, void *ptr, size_t size, size_t align)
{
	vk_page_free(ptr, size, align);
}

/* ---------------------------------------------------------- slot I/O */

/* Free slot `slot` if it holds a page (its backend goes back). */
static void vsd_free_slot(struct vsd *d, u32 slot)
{
	int rc;

	get_cpu();
	rc = vswap_put(d->e, slot, 1);
	put_cpu();
	/* -ENOENT: nothing stored there (never written, or freed already);
	 * LIVE: a read holds a count, and its put frees the slot. */
	WARN_ON_ONCE(rc != VSWAP_FREED && rc != VSWAP_LIVE && rc != -VSWAP_ENOENT);
}

static int vsd_write_slot(struct vsd *d, u32 slot, const u8 *data)
{
	struct vswap_backend b;
	int cpu, rc;

	cpu = get_cpu();
	rc = vswap_alloc_at(d->e, slot, cpu, VSWAP_NO_MEMCG, false);
	if (rc == -VSWAP_EEXIST) {
		/* An overwrite: the old page's backend goes first. */
		put_cpu();
		vsd_free_slot(d, slot);
		atomic64_inc(&d->overwrites);
		cpu = get_cpu();
		rc = vswap_alloc_at(d->e, slot, cpu, VSWAP_NO_MEMCG, false);
	}
	if (rc == -VSWAP_EAGAIN) {
		/*
		 * The cluster's table could not be made without sleeping: make
		 * it where we may (swap writes come from process context), with
		 * no I/O, as zram retries with GFP_NOIO. A CPU number that is
		 * no longer ours only makes us share its caches.
		 */
		unsigned int noio;

		put_cpu();
		noio = memalloc_noio_save();
		rc = vswap_alloc_at(d->e, slot, raw_smp_processor_id(), VSWAP_NO_MEMCG, true);
		memalloc_noio_restore(noio);
		cpu = get_cpu();
	}
	if (rc)
		goto out;
	/* One reference (the page is stored), then out of the "cache". */
	rc = vswap_dup(d->e, slot, 1, false);
	if (!rc)
		rc = vswap_writeout(d->e, slot, data, PAGE_SIZE, cpu, &b);
	if (rc) {
		/* Nothing stored: the slot goes back (no count if dup failed). */
		vswap_put(d->e, slot, 1);
		vswap_cache_clear(d->e, slot, 0, false);
		goto out;
	}
	rc = vswap_cache_clear(d->e, slot, 0, false);
	rc = rc == VSWAP_LIVE ? 0 : -VSWAP_EINVAL;
	if (b.kind == VSWAP_BACKEND_ZERO)
		atomic64_inc(&d->zero_writes);
	else if (b.kind == VSWAP_BACKEND_SAME)
		atomic64_inc(&d->same_writes);
out:
	put_cpu();
	return rc;
}

static int vsd_read_backend(struct vsd *d, const struct vswap_backend *be, u8 *data);

static int vsd_read_slot(struct vsd *d, u32 slot, u8 *data)
{
	struct vswap_entry en;
	int rc;

	/*
	 * A count for the read: swap never frees a slot it is reading, but a
	 * second opener (dd, blkid) may read while swap frees or overwrites
	 * it; the count keeps the pool object until our put.
	 */
	get_cpu();
	rc = vswap_try_get(d->e, slot, false, &en);
	put_cpu();
	if (rc == -VSWAP_ENOENT) {
		memset(data, 0, PAGE_SIZE); /* never written, or freed */
		return 0;
	}
	if (rc)
		return rc;
	rc = vsd_read_backend(d, &en.backend, data);
	vsd_free_slot(d, slot); /* our count; frees it if swap let it go meanwhile */
	return rc;
}

static int vsd_read_backend(struct vsd *d, const struct vswap_backend *be, u8 *data)
{
	unsigned long h;
	void *src;
	int rc;

	switch (be->kind) {
	case VSWAP_BACKEND_ZERO:
		memset(data, 0, PAGE_SIZE);
		return 0;
	case VSWAP_BACKEND_SAME: {
		size_t i;

		for (i = 0; i < PAGE_SIZE; i += 8)
			memcpy(data + i, &be->value, 8);
		return 0;
	}
	case VSWAP_BACKEND_ZSWAP:
		h = be->value & ~VSD_RAW;
		src = zs_map_object(d->pool, h, ZS_MM_RO);
		if (be->value & VSD_RAW) {
			memcpy(data, src, PAGE_SIZE);
			rc = 0;
		} else {
			u16 l;

			memcpy(&l, src, VSD_HDR);
			rc = LZ4_decompress_safe((const char *)src + VSD_HDR, (char *)data, l,
						 PAGE_SIZE) == PAGE_SIZE ? 0 : -EIO;
		}
		zs_unmap_object(d->pool, h);
		return rc;
	default:
		return -EIO;
	}
}

static int vsd_page_io(struct vsd *d, struct bio_vec *bv, sector_t sector, bool write)
{
	u64 slot = sector / VSD_SECTORS_PER_PAGE;
	u8 *p;
	int rc;

	/* 4 KiB logical blocks: whole, aligned pages only. */
	if (bv->bv_len != PAGE_SIZE || bv->bv_offset || sector % VSD_SECTORS_PER_PAGE ||
	    slot >= d->slots)
		return -EIO;
	p = kmap_local_page(bv->bv_page);
	if (slot == 0) {
		spin_lock(&d->header_lock);
		if (write)
			memcpy(d->header, p, PAGE_SIZE);
		else
			memcpy(p, d->header, PAGE_SIZE);
		spin_unlock(&d->header_lock);
		rc = 0;
	} else if (write) {
		rc = vsd_write_slot(d, slot, p);
	} else {
		rc = vsd_read_slot(d, slot, p);
	}
	kunmap_local(p);
	if (!write && !rc)
		flush_dcache_page(bv->bv_page);
	return rc;
}

static void vsd_discard(struct vsd *d, sector_t sector, unsigned int bytes, bool zeroes)
{
	u64 first = DIV_ROUND_UP_ULL(sector, VSD_SECTORS_PER_PAGE);
	u64 end = (sector + (bytes >> SECTOR_SHIFT)) / VSD_SECTORS_PER_PAGE;
	u64 s;

	/* Zeroes over the header page zero it; a discard leaves it. */
	if (zeroes && sector == 0 && bytes >= PAGE_SIZE) {
		spin_lock(&d->header_lock);
		memset(d->header, 0, PAGE_SIZE);
		spin_unlock(&d->header_lock);
	}
	for (s = max_t(u64, first, 1); s < end && s < d->slots; s++) {
		vsd_free_slot(d, s);
		atomic64_inc(&d->discarded);
	}
}

static void vsd_submit_bio(struct bio *bio)
{
	struct vsd *d = bio->bi_bdev->bd_disk->private_data;
	struct bvec_iter iter;
	struct bio_vec bv;
	sector_t sector = bio->bi_iter.bi_sector;
	bool write;

	switch (bio_op(bio)) {
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		vsd_discard(d, sector, bio->bi_iter.bi_size, bio_op(bio) == REQ_OP_WRITE_ZEROES);
		bio_endio(bio);
		return;
	case REQ_OP_READ:
	case REQ_OP_WRITE:
		break;
	case REQ_OP_FLUSH:
		bio_endio(bio);
		return;
	default:
		bio_io_error(bio);
		return;
	}
	write = op_is_write(bio_op(bio));
	bio_for_each_segment(bv, bio, iter) {
		int rc = vsd_page_io(d, &bv, sector, write);

		if (rc) {
			atomic64_inc(write ? &d->failed_writes : &d->failed_reads);
			bio_io_error(bio);
			return;
		}
		atomic64_inc(write ? &d->writes : &d->reads);
		sector += bv.bv_len >> SECTOR_SHIFT;
	}
	bio_endio(bio);
}

static void vsd_slot_free_notify(struct block_device *bdev, unsigned long offset)
{
	struct vsd *d = bdev->bd_disk->private_data;

	if (offset == 0 || offset >= d->slots)
		return;
	vsd_free_slot(d, offset);
	atomic64_inc(&d->notify_free);
}

static const struct block_device_operations vsd_fops = {
	.owner = THIS_MODULE,
	.submit_bio = vsd_submit_bio,
	.swap_slot_free_notify = vsd_slot_free_notify,
};

/* ----------------------------------------------------------- sysfs */

static ssize_t mm_stat_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct vsd *d = &vsd;
	struct vswap_map_stats st;
	long long orig, meta = 0;

	memset(&st, 0, sizeof(st));
	if (vswap_engine_get_stats(d->e, &st) == 0)
		meta = st.mem_total;
	/* Every stored page, as zram counts it (same-filled ones too). */
	orig = st.live_slots * PAGE_SIZE;
	/*
	 * zram's mm_stat order where it applies: orig_data_size
	 * compr_data_size mem_used_total mem_limit, then: metadata bytes (the
	 * library's tables), metadata pages the host holds for the library,
	 * live slots, zero pages, same-filled pages, huge pages.
	 */
	return sysfs_emit(buf, "%8lld %8lld %8lld %8lld %8lld %8lld %8llu %8llu %8llu %8lld\n",
			  orig, (long long)atomic64_read(&d->compr_bytes),
			  (long long)zs_get_total_pages(d->pool) << PAGE_SHIFT,
			  (long long)d->pool_limit_pages << PAGE_SHIFT, meta,
			  (long long)atomic_read(&vk_pages.pages_out), st.live_slots,
			  st.by_kind[VSWAP_BACKEND_ZERO], st.by_kind[VSWAP_BACKEND_SAME],
			  (long long)atomic64_read(&d->pages_huge));
}

static ssize_t io_stat_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct vsd *d = &vsd;

	/* writes reads failed_writes failed_reads overwrites discarded
	 * notify_free pool_full zero_writes same_writes reclaimed
	 * pool_alloc_failed */
	return sysfs_emit(buf, "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld\n",
			  (long long)atomic64_read(&d->writes), (long long)atomic64_read(&d->reads),
			  (long long)atomic64_read(&d->failed_writes),
			  (long long)atomic64_read(&d->failed_reads),
			  (long long)atomic64_read(&d->overwrites),
			  (long long)atomic64_read(&d->discarded),
			  (long long)atomic64_read(&d->notify_free),
			  (long long)atomic64_read(&d->pool_full),
			  (long long)atomic64_read(&d->zero_writes),
			  (long long)atomic64_read(&d->same_writes),
			  (long long)atomic64_read(&d->reclaimed),
			  (long long)atomic64_read(&d->pool_alloc_failed));
}

static DEVICE_ATTR_RO(mm_stat);
static DEVICE_ATTR_RO(io_stat);

static struct attribute *vsd_attrs[] = {
	&dev_attr_mm_stat.attr,
	&dev_attr_io_stat.attr,
	NULL,
};

static const struct attribute_group vsd_group = {
	.name = "vswap",
	.attrs = vsd_attrs,
};

static const struct attribute_group *vsd_groups[] = {
	&vsd_group,
	NULL,
};

/* ------------------------------------------------------ load, unload */

static void vsd_free_pcpu(struct vsd *d)
{
	int cpu;

	if (!d->pcpu)
		return;
	for_each_possible_cpu(cpu) {
		struct vsd_pcpu *pc = per_cpu_ptr(d->pcpu, cpu);

		vfree(pc->wrkmem);
		kfree(pc->buf);
	}
	free_percpu(d->pcpu);
	d->pcpu = NULL;
}

static int vsd_alloc_pcpu(struct vsd *d)
{
	int cpu;

	d->pcpu = alloc_percpu(struct vsd_pcpu);
	if (!d->pcpu)
		return -ENOMEM;
	for_each_possible_cpu(cpu) {
		struct vsd_pcpu *pc = per_cpu_ptr(d->pcpu, cpu);

		pc->wrkmem = vzalloc(LZ4_MEM_COMPRESS);
		pc->buf = kmalloc(LZ4_COMPRESSBOUND(PAGE_SIZE), GFP_KERNEL);
		if (!pc->wrkmem || !pc->buf)
			return -ENOMEM;
	}
	return 0;
}

static void vsd_teardown(struct vsd *d)
{
	if (d->e)
		vswap_engine_destroy(d->e);
	d->e = NULL;
	if (d->pool)
		zs_destroy_pool(d->pool);
	d->pool = NULL;
	vsd_free_pcpu(d);
	kfree(d->header);
	d->header = NULL;
}

static int __init vsd_init(void)
{
	struct vsd *d = &vsd;
	struct vswap_engine_config cfg;
	int rc;

	if (disksize_mb == 0 || disksize_mb > (1ul << 24)) {
		pr_err("vswap swapdev: disksize_mb=%lu: must be 1..16777216 (16 TiB: 2^32 4-KiB slots)\n",
		       disksize_mb);
		return -EINVAL;
	}
	if (PAGE_SIZE != 4096) {
		pr_err("vswap swapdev: needs 4 KiB pages\n");
		return -EINVAL;
	}
	/*
	 * A zsmalloc handle is a direct-map address kept in the slot's 50
	 * sign-extended payload bits: true with 4-level page tables, not with
	 * 5-level ones (LA57), where every compressed store would be refused.
	 */
	if (pgtable_l5_enabled()) {
		pr_err("vswap swapdev: 5-level page tables: zsmalloc handles do not fit a slot's payload\n");
		return -EINVAL;
	}
	spin_lock_init(&d->header_lock);
	/* Slot 2^32 - 1 is reserved by the library: a 16 TiB device is one
	 * page short. */
	d->slots = min_t(u64, (u64)disksize_mb << (20 - PAGE_SHIFT), U32_MAX);
	d->pool_limit_pages = pool_limit_mb << (20 - PAGE_SHIFT);
	d->header = kzalloc(PAGE_SIZE, GFP_KERNEL);
	rc = -ENOMEM;
	if (!d->header)
		goto fail;
	rc = vsd_alloc_pcpu(d);
	if (rc)
		goto fail;
	rc = -ENOMEM;
	d->pool = zs_create_pool("vswap0");
	if (!d->pool)
		goto fail;

	memset(&d->ops, 0, sizeof(d->ops));
	d->ops.ctx = d;
	d->ops.alloc = vsd_alloc;
	d->ops.free = vsd_free;
	d->ops.zswap_store = vsd_zswap_store;
	d->ops.release_zswap = vsd_release_zswap;
	vswap_engine_config_default(&cfg);
	/* One slot per 4 KiB block; the kernel numbers CPUs below nr_cpu_ids. */
	cfg.geometry.slots = d->slots;
	cfg.geometry.cpus = nr_cpu_ids;
	cfg.addressed = true;
	rc = vswap_engine_create(&cfg, &d->ops, &d->e);
	if (rc) {
		pr_err("vswap swapdev: engine: %d\n", rc);
		d->e = NULL;
		goto fail;
	}

	d->disk = blk_alloc_disk(NUMA_NO_NODE);
	rc = -ENOMEM;
	if (!d->disk)
		goto fail;
	d->disk->major = 0;
	d->disk->first_minor = 0;
	d->disk->minors = 0;
	d->disk->flags |= GENHD_FL_NO_PART;
	d->disk->fops = &vsd_fops;
	d->disk->private_data = d;
	snprintf(d->disk->disk_name, sizeof(d->disk->disk_name), "vswap0");
	set_capacity(d->disk, d->slots * VSD_SECTORS_PER_PAGE);
	blk_queue_logical_block_size(d->disk->queue, PAGE_SIZE);
	blk_queue_physical_block_size(d->disk->queue, PAGE_SIZE);
	blk_queue_io_min(d->disk->queue, PAGE_SIZE);
	blk_queue_io_opt(d->disk->queue, PAGE_SIZE);
	/* Whole pages only: direct I/O buffers must be page-aligned. */
	blk_queue_dma_alignment(d->disk->queue, PAGE_SIZE - 1);
	d->disk->queue->limits.discard_granularity = PAGE_SIZE;
	blk_queue_max_discard_sectors(d->disk->queue, UINT_MAX);
	blk_queue_max_write_zeroes_sectors(d->disk->queue, UINT_MAX);
	blk_queue_flag_set(QUEUE_FLAG_NONROT, d->disk->queue);
	blk_queue_flag_clear(QUEUE_FLAG_ADD_RANDOM, d->disk->queue);
	rc = device_add_disk(NULL, d->disk, vsd_groups);
	if (rc) {
		put_disk(d->disk);
		d->disk = NULL;
		goto fail;
	}
	schedule_delayed_work(&vsd_reclaim_work, HZ);
	pr_info("vswap swapdev: vswap0: %llu slots (%lu MiB), pool limit %lu MiB, %u CPUs; metadata %d pages\n",
		d->slots, disksize_mb, pool_limit_mb, nr_cpu_ids, atomic_read(&vk_pages.pages_out));
	return 0;
fail:
	vsd_teardown(d);
	pr_err("vswap swapdev: load failed: %d\n", rc);
	return rc;
}

static void __exit vsd_exit(void)
{
	struct vsd *d = &vsd;
	struct vswap_map_stats st = {0};

	del_gendisk(d->disk);
	put_disk(d->disk);
	cancel_delayed_work_sync(&vsd_reclaim_work);
	vswap_engine_get_stats(d->e, &st);
	pr_info("vswap swapdev: unload: %llu slots still hold data, pool %lu pages\n",
		st.live_slots, zs_get_total_pages(d->pool));
	vsd_teardown(d);
	pr_info("vswap swapdev: unloaded: %d pages outstanding, %d blocks\n",
		atomic_read(&vk_pages.pages_out), atomic_read(&vk_pages.blocks_out));
}

module_init(vsd_init);
module_exit(vsd_exit);

MODULE_DESCRIPTION("vswap swap device: the kernel's swap through the vswap engine (addressed mode)");
MODULE_LICENSE("Dual MIT/GPL");
