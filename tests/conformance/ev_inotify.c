// kind: inotify instance with a watch
// area: event fds
// expect: refused
// refusal: inotify
#include "conform.h"
#include <sys/inotify.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int in = inotify_init1(IN_NONBLOCK);
	SETUP(in >= 0 && inotify_add_watch(in, cs_dir, IN_CREATE) >= 0, "inotify");
	cs_ready();
	cs_wait_check();
	char buf[4096];
	CHECK(read(in, buf, sizeof buf) > 0, "the watch saw no event for DIR/check");
	cs_finish();
}
