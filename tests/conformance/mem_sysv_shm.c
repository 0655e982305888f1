// kind: System V shared memory segment attached (shmat)
// area: memory
// expect: refused
// refusal: shared memory that is not a file mapping
#include "conform.h"
#include <sys/ipc.h>
#include <sys/shm.h>

int main(int argc, char **argv)
{
	cs_init(argc, argv);
	int id = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
	SETUP(id >= 0, "shmget");
	char *m = shmat(id, NULL, 0);
	SETUP(m != (void *)-1, "shmat");
	shmctl(id, IPC_RMID, NULL); /* gone once detached */
	strcpy(m, "sysv");
	cs_ready();
	cs_wait_check();
	CHECK(strcmp(m, "sysv") == 0, "contents");
	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1, "segment not attached");
	cs_finish();
}
