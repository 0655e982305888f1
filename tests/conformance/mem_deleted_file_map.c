// kind: mapping of a file deleted after it was mapped
// area: memory
// expect: refused
// refusal: deleted
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("gone");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	SETUP(fd >= 0, "open");
	SETUP(write(fd, "deleted-data", 12) == 12, "write");
	char *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
	SETUP(m != MAP_FAILED, "mmap");
	close(fd);
	unlink(path);
	cs_ready();
	cs_wait_check();
	CHECK(memcmp(m, "deleted-data", 12) == 0, "contents");
	cs_finish();
}
