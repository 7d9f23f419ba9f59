// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * vswap_selftest.ko: the kernel-mode vswap library (Rust, no_std, linked
 * in as one prebuilt object) driven through vswap.h from kernel C, with a
 * self-test at module load. It prints one line per test, then
 *   vswap selftest: N passed, M failed
 *   vswap selftest: pages: ...
 * and fails the load (-EINVAL) when a test failed or a page is missing.
 * .ci/kernel boots it under qemu and reads the console.
 */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/thread_info.h>

#include "vswap_kmod.h"

static int __init vswap_selftest_init(void)
{
	size_t entry;
	int out;

	/* Each test measures its stack high-water mark (vk_note_stack). */
	vk_stack_paint();
	entry = vk_stack_used();
	pr_info("vswap selftest: start (kernel-mode library, %u CPUs online)\n",
		num_online_cpus());
	vk_suite_kernel();
	/* The userspace C suites, compiled unchanged against harness.h. */
	vswap_kt_lifecycle_main();
	vswap_kt_bad_input_main();
	pr_info("vswap selftest: stack: %zu bytes in use at module init, deepest %zu of %lu (in %s)\n",
		entry, vk_stack_deepest, (unsigned long)THREAD_SIZE, vk_stack_deepest_test);

	out = atomic_read(&vk_pages.pages_out);
	if (out != 0 || atomic_read(&vk_pages.blocks_out) != 0) {
		pr_err("vswap selftest: %d pages (%d blocks) never given back\n", out,
		       atomic_read(&vk_pages.blocks_out));
		vk_failed++;
	}
	/* Over every suite (the stress kthreads too): the library's locks
	 * went through the spinlock hooks in pairs, never nested, never
	 * around a host callback. */
	if (atomic64_read(&vk_locks.locks) == 0 ||
	    atomic64_read(&vk_locks.locks) != atomic64_read(&vk_locks.unlocks) ||
	    atomic_read(&vk_locks.nested) || atomic_read(&vk_locks.bad_unlock) ||
	    atomic_read(&vk_locks.callback_under_lock)) {
		pr_err("vswap selftest: lock hooks: %lld locks, %lld unlocks, %d nested, %d bad unlocks, %d callbacks under a lock\n",
		       atomic64_read(&vk_locks.locks), atomic64_read(&vk_locks.unlocks),
		       atomic_read(&vk_locks.nested), atomic_read(&vk_locks.bad_unlock),
		       atomic_read(&vk_locks.callback_under_lock));
		vk_failed++;
	}
	pr_info("vswap selftest: locks: %d spinlocks initialised, %lld lock/unlock pairs (%lld with interrupts off), %d grace periods started at an unlock\n",
		atomic_read(&vk_locks.inits), atomic64_read(&vk_locks.locks),
		atomic64_read(&vk_locks.irqs_were_off), atomic_read(&vk_locks.rcu_kicks));
	pr_info("vswap selftest: %d passed, %d failed\n", vk_passed, vk_failed);
	pr_info("vswap selftest: pages: %d allocated, %d freed, %d outstanding, peak %d; alloc calls: %d GFP_KERNEL, %d GFP_NOWAIT, %d failed\n",
		atomic_read(&vk_pages.pages_alloc), atomic_read(&vk_pages.pages_freed), out,
		atomic_read(&vk_pages.pages_peak), atomic_read(&vk_pages.calls_sleep),
		atomic_read(&vk_pages.calls_nowait), atomic_read(&vk_pages.failed));
	return vk_failed ? -EINVAL : 0;
}

static void __exit vswap_selftest_exit(void)
{
}

module_init(vswap_selftest_init);
module_exit(vswap_selftest_exit);

MODULE_DESCRIPTION("vswap engine (Rust, kernel mode) self-test through the C ABI");
/* This code is MIT (the project is MIT OR Apache-2.0); MIT is GPL-compatible,
 * which the kernel spells "Dual MIT/GPL". */
MODULE_LICENSE("Dual MIT/GPL");
