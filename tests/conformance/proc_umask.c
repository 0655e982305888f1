// kind: umask
// area: process
// expect: restored
#include "conform.h"

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	umask(0345);
	cs_ready();
	cs_wait_check();
	mode_t m = umask(0);
	CHECK(m == 0345, "umask is %04o, not 0345", m);
	umask(m);
	char *p = cs_path("made");
	int fd = open(p, O_CREAT | O_WRONLY, 0777);
	struct stat st;
	CHECK(fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & 0777) == 0432, "a new file got mode %04o, not 0432", st.st_mode & 0777);
	cs_finish();
}
