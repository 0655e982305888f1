// kind: listening unix stream socket bound to a path (and one with an abstract name); accepts after restore
// area: unix sockets
// expect: restored
#include "conform.h"
#include <sys/socket.h>
#include <sys/un.h>

static int bind_listen(const char *path, int abstract)
{
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	socklen_t len;
	if (abstract) {
		a.sun_path[0] = 0;
		strcpy(a.sun_path + 1, path);
		len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path);
	} else {
		strcpy(a.sun_path, path);
		len = sizeof a;
	}
	if (s < 0 || bind(s, (struct sockaddr *)&a, len) < 0 || listen(s, 16) < 0)
		return -1;
	return s;
}

static int connect_to(const char *path, int abstract)
{
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	socklen_t len;
	if (abstract) {
		strcpy(a.sun_path + 1, path);
		len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path);
	} else {
		strcpy(a.sun_path, path);
		len = sizeof a;
	}
	if (connect(c, (struct sockaddr *)&a, len) < 0)
		return -1;
	return c;
}

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	char *path = cs_path("listen.sock");
	char abs_name[64];
	snprintf(abs_name, sizeof abs_name, "cs-conform-%d", getpid());
	int s = bind_listen(path, 0);
	int t = bind_listen(abs_name, 1);
	SETUP(s >= 0 && t >= 0, "bind/listen");
	cs_ready();
	cs_wait_check();
	int acc = 0, type = 0;
	socklen_t l = sizeof acc;
	CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) == 0 && acc == 1, "not listening");
	l = sizeof type;
	CHECK(getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_STREAM, "type %d", type);
	struct sockaddr_un a;
	l = sizeof a;
	CHECK(getsockname(s, (struct sockaddr *)&a, &l) == 0 && strcmp(a.sun_path, path) == 0, "bound path %s", a.sun_path);
	int c = connect_to(path, 0);
	CHECK(c >= 0, "connect to the path: %s", strerror(errno));
	int x = accept(s, NULL, NULL);
	CHECK(x >= 0 && write(c, "hi", 2) == 2, "accept");
	char b[2];
	CHECK(read(x, b, 2) == 2, "read accepted");
	c = connect_to(abs_name, 1);
	CHECK(c >= 0, "connect to the abstract name: %s", strerror(errno));
	CHECK(accept(t, NULL, NULL) >= 0, "accept abstract");
	cs_finish();
}
