// kind: file locks held: flock and a POSIX record lock (fcntl F_SETLK)
// area: files and pipes
// expect: refused
// refusal: lock
#include "conform.h"
#include <sys/file.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *p = cs_path("locked");
	int fd = open(p, O_RDWR | O_CREAT, 0644);
	SETUP(fd >= 0, "open");
	SETUP(flock(fd, LOCK_EX) == 0, "flock");
	char *q = cs_path("rec");
	int r = open(q, O_RDWR | O_CREAT, 0644);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
	SETUP(r >= 0 && fcntl(r, F_SETLK, &fl) == 0, "F_SETLK");
	cs_ready();
	cs_wait_check();
	int other = open(p, O_RDWR);
	CHECK(flock(other, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK, "the flock is no longer held");
	/* A POSIX lock shows only to another process: ask a child. */
	pid_t c = fork();
	if (c == 0) {
		int x = open(q, O_RDWR);
		struct flock t = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
		_exit(fcntl(x, F_GETLK, &t) == 0 && t.l_type == F_WRLCK ? 0 : 1);
	}
	int st = 0;
	waitpid(c, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the POSIX record lock is no longer held");
	cs_finish();
}
