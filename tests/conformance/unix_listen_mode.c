// kind: listening unix socket file with its own mode (chmod 0600) and owner
// area: unix sockets
// expect: restored
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("mode.sock");
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	SETUP(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 4) == 0, "bind");
	SETUP(chmod(path, 0600) == 0 && chown(path, 1234, 5678) == 0, "chmod/chown");
	cs_ready();
	cs_wait_check();
	struct stat st;
	CHECK(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "socket file gone");
	CHECK((st.st_mode & 07777) == 0600, "socket file mode %04o, not 0600", st.st_mode & 07777);
	CHECK(st.st_uid == 1234 && st.st_gid == 5678, "socket file owner %d:%d", st.st_uid, st.st_gid);
	cs_finish();
}
