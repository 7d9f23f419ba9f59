/*
 * A bare _start for running the freestanding example as a static x86-64
 * Linux executable, with no libc: the only system call is exit, with
 * vswap_example_run()'s result as the status. (A kernel links
 * freestanding.c's object into itself instead.)
 */
int vswap_example_run(void);

void _start(void) __attribute__((noreturn, force_align_arg_pointer));

void _start(void)
{
	long status = vswap_example_run();
	__asm__ volatile("syscall" : : "a"(60L), "D"(status) : "rcx", "r11", "memory");
	for (;;)
		;
}
