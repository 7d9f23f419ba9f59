// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * swaptest: the workload .ci/swapdev runs inside a memory cgroup whose limit
 * is a fraction of its working set, so that the kernel swaps it out and in
 * through the swap device under test.
 *
 *   swaptest <MiB> <random ops> <seed> [stats file]
 *   swaptest --swapon <path> <priority>   (busybox's swapon may lack -p)
 *
 * Fill: every page of an anonymous mapping gets contents from its index and
 * a version: zero pages, 0xff.. pages, other repeated 64-bit words,
 * compressible text and random bytes (a fixed mix by index). Random: ops
 * with a hot set (80% of them on a tenth of the pages), half reads that
 * verify the page, half writes that bump its version and rewrite it. Verify:
 * every page, byte for byte. Prints one line per phase and
 *   swaptest: <pages> pages, <n> mismatches
 * and exits 0 only with no mismatch. Static, libc only.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/swap.h>
#include <time.h>

#define PAGE 4096

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

static const char text[] =
	"The kernel's swap subsystem writes this page out through the swap device. "
	"vswap keeps its descriptor; zram keeps a table entry. Compressible text. ";

/* The contents of page `i` at version `v`. */
static void fill(uint8_t *p, uint64_t i, uint8_t v)
{
	uint64_t k = mix(i) % 10, w, s;
	size_t j;

	switch (k) {
	case 0:
	case 1:
		memset(p, 0, PAGE);
		return;
	case 2:
		memset(p, 0xff, PAGE);
		return;
	case 3:
		w = mix(i * 31 + v) | 1;
		for (j = 0; j < PAGE; j += 8)
			memcpy(p + j, &w, 8);
		return;
	case 4:
	case 5:
	case 6:
		for (j = 0; j < PAGE; j++)
			p[j] = (uint8_t)text[(j + i + v) % (sizeof(text) - 1)];
		memcpy(p, &i, 8);
		p[8] = v;
		return;
	default:
		s = mix(i ^ ((uint64_t)v << 56)) | 1;
		for (j = 0; j < PAGE; j += 8) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			memcpy(p + j, &s, 8);
		}
		return;
	}
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "--swapon")) {
		int prio = atoi(argv[3]);

		if (swapon(argv[2], SWAP_FLAG_PREFER |
					    ((prio << SWAP_FLAG_PRIO_SHIFT) & SWAP_FLAG_PRIO_MASK))) {
			perror("swaptest: swapon");
			return 1;
		}
		return 0;
	}
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: swaptest <MiB> <random ops> <seed> [stats file]\n");
		return 2;
	}
	uint64_t pages = strtoull(argv[1], NULL, 0) * (1024 * 1024 / PAGE);
	uint64_t ops = strtoull(argv[2], NULL, 0);
	uint64_t seed = strtoull(argv[3], NULL, 0);
	uint8_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *ver = calloc(pages, 1);
	uint8_t want[PAGE];
	uint64_t bad = 0, i, hot = pages / 10 ? pages / 10 : 1;
	double t;

	if (mem == MAP_FAILED || !ver) {
		perror("swaptest: mmap");
		return 1;
	}
	t = now();
	for (i = 0; i < pages; i++)
		fill(mem + i * PAGE, i, 0);
	printf("swaptest: fill %llu pages %.2f s\n", (unsigned long long)pages, now() - t);
	if (argc == 5) {
		char line[512];
		FILE *f = fopen(argv[4], "r");

		while (f && fgets(line, sizeof(line), f))
			printf("swaptest: after fill %s: %s", argv[4], line);
		if (f)
			fclose(f);
	}
	fflush(stdout);

	t = now();
	uint64_t reads = 0, writes = 0;
	for (uint64_t n = 0; n < ops; n++) {
		uint64_t r = mix(seed + n);
		uint64_t pg = (r & 0xff) < 205 ? (r >> 8) % hot * 10 % pages : (r >> 8) % pages;

		if (r & (1ull << 40)) {
			fill(want, pg, ver[pg]);
			if (memcmp(want, mem + pg * PAGE, PAGE)) {
				if (bad++ < 10)
					printf("swaptest: mismatch at page %llu (random phase)\n",
					       (unsigned long long)pg);
			}
			reads++;
		} else {
			ver[pg]++;
			fill(mem + pg * PAGE, pg, ver[pg]);
			writes++;
		}
	}
	printf("swaptest: random %llu reads %llu writes %.2f s\n", (unsigned long long)reads,
	       (unsigned long long)writes, now() - t);
	fflush(stdout);

	t = now();
	for (i = 0; i < pages; i++) {
		fill(want, i, ver[i]);
		if (memcmp(want, mem + i * PAGE, PAGE)) {
			if (bad++ < 10)
				printf("swaptest: mismatch at page %llu\n", (unsigned long long)i);
		}
	}
	printf("swaptest: verify %.2f s\n", now() - t);
	printf("swaptest: %llu pages, %llu mismatches\n", (unsigned long long)pages,
	       (unsigned long long)bad);
	return bad ? 1 : 0;
}
