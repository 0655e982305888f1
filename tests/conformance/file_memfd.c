// kind: memfd (memfd_create) with contents, held by fd and mapped
// area: files and pipes
// expect: refused
// refusal: memfd
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int fd = memfd_create("cs-conform", 0);
	SETUP(fd >= 0, "memfd_create");
	SETUP(write(fd, "memfd!", 6) == 6, "write");
	cs_ready();
	cs_wait_check();
	char b[6];
	CHECK(pread(fd, b, 6, 0) == 6 && memcmp(b, "memfd!", 6) == 0, "memfd contents");
	cs_finish();
}
