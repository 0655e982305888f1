// kind: a FIFO (named pipe) open for reading and writing, with data
// area: files and pipes
// expect: refused
// refusal: FIFO
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *p = cs_path("fifo");
	SETUP(mkfifo(p, 0600) == 0, "mkfifo");
	int fd = open(p, O_RDWR | O_NONBLOCK);
	SETUP(fd >= 0, "open fifo");
	SETUP(write(fd, "fifo", 4) == 4, "write");
	cs_ready();
	cs_wait_check();
	char b[8];
	CHECK(read(fd, b, 8) == 4 && memcmp(b, "fifo", 4) == 0, "FIFO contents");
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode), "not a FIFO");
	cs_finish();
}
