// kind: private file mapping with copy-on-write pages written
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
	char buf[3 * 4096];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (char)('a' + i % 26);
	SETUP(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf, "write");
	char *m = mmap(NULL, sizeof buf, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	SETUP(m != MAP_FAILED, "mmap");
	close(fd);
	m[4096] = 'X'; /* copy-on-write of page 1 */
	cs_ready();
	cs_wait_check();
	CHECK(m[4096] == 'X', "the written private page lost its change");
	CHECK(m[0] == 'a' && m[8192] == buf[8192], "untouched pages differ from the file");
	fd = open(path, O_RDONLY);
	char c = 0;
	CHECK(pread(fd, &c, 1, 4096) == 1 && c == buf[4096], "the private write reached the file");
	close(fd);
	m[10] = 'Y';
	CHECK(m[10] == 'Y', "write after restore");
	cs_finish();
}
