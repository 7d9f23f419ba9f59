/*
 * <stddef.h> for vswap.h inside the kernel: the module builds with -nostdinc
 * and the kernel's own types (bool, size_t, uint*_t) come from
 * <linux/types.h>; the compiler's freestanding header would clash with them.
 */
#ifndef VSWAP_KCOMPAT_STDDEF_H
#define VSWAP_KCOMPAT_STDDEF_H
#include <linux/types.h>
#endif
