// kind: shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS)
// area: memory
// expect: refused
// refusal: shared memory that is not a file mapping
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	SETUP(m != MAP_FAILED, "mmap");
	strcpy(m, "shared");
	cs_ready();
	cs_wait_check();
	CHECK(strcmp(m, "shared") == 0, "contents");
	CHECK(cs_has_vmflag(m, "sh"), "no longer shared");
	cs_finish();
}
