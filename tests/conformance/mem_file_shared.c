// kind: shared writable file mapping (MAP_SHARED, file opened O_RDWR)
// area: memory
// expect: restored
#include "conform.h"
#include <sys/mman.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("data");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	SETUP(fd >= 0, "open");
	SETUP(ftruncate(fd, 8192) == 0, "ftruncate");
	char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	SETUP(m != MAP_FAILED, "mmap");
	close(fd);
	memcpy(m, "before", 6);
	cs_ready();
	cs_wait_check();
	CHECK(memcmp(m, "before", 6) == 0, "mapping lost what was written before");
	memcpy(m + 4096, "after", 5);
	SETUP(msync(m, 8192, MS_SYNC) == 0, "msync");
	fd = open(path, O_RDONLY);
	char b[6] = { 0 };
	CHECK(pread(fd, b, 5, 4096) == 5 && memcmp(b, "after", 5) == 0, "a write after restore did not reach the file");
	CHECK(pwrite(open(path, O_WRONLY), "ext", 3, 100) == 3, "pwrite");
	CHECK(memcmp(m + 100, "ext", 3) == 0, "a write to the file is not seen through the mapping (not shared)");
	cs_finish();
}
