// kind: anonymous executable memory holding generated code (a JIT's)
// area: memory
// expect: restored
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	/* mov eax, 42; ret */
	static const unsigned char code[] = { 0xb8, 42, 0, 0, 0, 0xc3 };
	unsigned char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	memcpy(m, code, sizeof code);
	SETUP(mprotect(m, 4096, PROT_READ | PROT_EXEC) == 0, "mprotect");
	int (*f)(void) = (int (*)(void))m;
	SETUP(f() == 42, "generated code");
	cs_ready();
	cs_wait_check();
	CHECK(cs_has_vmflag(m, "ex") && !cs_has_vmflag(m, "wr"), "protection changed");
	CHECK(f() == 42, "generated code returns %d", f());
	cs_finish();
}
