// kind: shared mapping of /dev/zero
// area: memory
// expect: refused
// refusal: shared memory that is not a file mapping
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int fd = open("/dev/zero", O_RDWR);
	SETUP(fd >= 0, "open /dev/zero");
	char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	SETUP(m != MAP_FAILED, "mmap");
	close(fd);
	strcpy(m, "zero");
	cs_ready();
	cs_wait_check();
	CHECK(strcmp(m, "zero") == 0, "contents");
	CHECK(cs_has_vmflag(m, "sh"), "no longer shared");
	cs_finish();
}
