// kind: a child process
// area: process
// expect: refused
// refusal: child process
#include "conform.h"
#include <sys/wait.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	pid_t c = fork();
	SETUP(c >= 0, "fork");
	if (c == 0) {
		for (;;)
			pause();
	}
	cs_ready();
	cs_wait_check();
	int st;
	CHECK(waitpid(c, &st, WNOHANG) == 0, "the child is gone");
	CHECK(kill(c, SIGKILL) == 0, "kill child: %s", strerror(errno));
	CHECK(waitpid(c, &st, 0) == c && WIFSIGNALED(st), "the child was not ours to reap");
	cs_finish();
}
