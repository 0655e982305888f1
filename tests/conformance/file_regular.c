// kind: regular files: offsets, access modes, O_APPEND, O_NONBLOCK, FD_CLOEXEC
// area: files and pipes
// expect: restored
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *p = cs_path("f");
	int w = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	SETUP(w >= 0, "open");
	SETUP(write(w, "0123456789abcdef", 16) == 16, "write");
	SETUP(lseek(w, 7, SEEK_SET) == 7, "lseek");
	int r = open(p, O_RDONLY | O_NONBLOCK);
	SETUP(r >= 0 && lseek(r, 3, SEEK_SET) == 3, "open r");
	int a = open(p, O_WRONLY | O_APPEND);
	SETUP(a >= 0, "open a");
	cs_ready();
	cs_wait_check();
	CHECK(lseek(w, 0, SEEK_CUR) == 7, "rw offset %ld", (long)lseek(w, 0, SEEK_CUR));
	CHECK(lseek(r, 0, SEEK_CUR) == 3, "ro offset %ld", (long)lseek(r, 0, SEEK_CUR));
	int fl = fcntl(w, F_GETFL);
	CHECK((fl & O_ACCMODE) == O_RDWR, "rw access mode %o", fl & O_ACCMODE);
	CHECK(fcntl(w, F_GETFD) & FD_CLOEXEC, "FD_CLOEXEC lost");
	CHECK(!(fcntl(r, F_GETFD) & FD_CLOEXEC), "FD_CLOEXEC gained");
	fl = fcntl(r, F_GETFL);
	CHECK((fl & O_ACCMODE) == O_RDONLY && (fl & O_NONBLOCK), "ro flags %o", fl);
	fl = fcntl(a, F_GETFL);
	CHECK((fl & O_ACCMODE) == O_WRONLY && (fl & O_APPEND), "append flags %o", fl);
	char c;
	CHECK(read(r, &c, 1) == 1 && c == '3', "read at the offset");
	CHECK(write(a, "Z", 1) == 1, "append write");
	CHECK(write(w, "W", 1) == 1, "rw write");
	char buf[32] = { 0 };
	CHECK(pread(r, buf, 32, 0) == 17 && memcmp(buf, "0123456W89abcdefZ", 17) == 0, "file contents %s", buf);
	cs_finish();
}
