// kind: fanotify instance with a mark
// area: event fds
// expect: refused
// refusal: fanotify
#include "conform.h"
#include <sys/fanotify.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int fa = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
	SETUP(fa >= 0, "fanotify_init (needs CAP_SYS_ADMIN)");
	SETUP(fanotify_mark(fa, FAN_MARK_ADD, FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD, AT_FDCWD, cs_dir) == 0, "fanotify_mark");
	cs_ready();
	cs_wait_check();
	int fd = open(cs_path("written"), O_CREAT | O_WRONLY, 0644);
	close(fd);
	char buf[4096];
	ssize_t n = -1;
	for (int i = 0; i < 100 && n <= 0; i++) {
		n = read(fa, buf, sizeof buf);
		if (n <= 0)
			cs_sleep_ms(10);
	}
	CHECK(n > 0, "the mark saw no close-write event");
	cs_finish();
}
