// seccomp-exec: run a program with some system calls denied, as a locked-down container does.
//
//   seccomp-exec SYSCALL[,SYSCALL...] ERRNO -- PROGRAM [ARGS...]
//
// Installs a seccomp filter (libseccomp) that makes each named system call fail with ERRNO (a
// number or ENOSYS / EPERM / EACCES) and lets every other call through, then execs PROGRAM.
// The filter is inherited by every thread the program starts. Test helper only.
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_errno(const char *text) {
    if (strcmp(text, "ENOSYS") == 0) return ENOSYS;
    if (strcmp(text, "EPERM") == 0) return EPERM;
    if (strcmp(text, "EACCES") == 0) return EACCES;
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value <= 0 || value > 4095) return -1;
    return (int)value;
}

int main(int argc, char **argv) {
    if (argc < 5 || strcmp(argv[3], "--") != 0) {
        fprintf(stderr, "usage: %s SYSCALL[,SYSCALL...] ERRNO -- PROGRAM [ARGS...]\n", argv[0]);
        return 64;
    }
    int error = parse_errno(argv[2]);
    if (error < 0) {
        fprintf(stderr, "seccomp-exec: bad errno %s\n", argv[2]);
        return 64;
    }
    scmp_filter_ctx filter = seccomp_init(SCMP_ACT_ALLOW);
    if (filter == NULL) {
        fprintf(stderr, "seccomp-exec: seccomp_init failed\n");
        return 70;
    }
    char *names = strdup(argv[1]);
    for (char *save = NULL, *name = strtok_r(names, ",", &save); name != NULL; name = strtok_r(NULL, ",", &save)) {
        int number = seccomp_syscall_resolve_name(name);
        if (number == __NR_SCMP_ERROR) {
            fprintf(stderr, "seccomp-exec: unknown system call %s\n", name);
            return 64;
        }
        int rc = seccomp_rule_add(filter, SCMP_ACT_ERRNO(error), number, 0);
        if (rc < 0) {
            fprintf(stderr, "seccomp-exec: seccomp_rule_add(%s): %s\n", name, strerror(-rc));
            return 70;
        }
    }
    free(names);
    int rc = seccomp_load(filter);
    if (rc < 0) {
        fprintf(stderr, "seccomp-exec: seccomp_load: %s\n", strerror(-rc));
        return 70;
    }
    seccomp_release(filter);
    execv(argv[4], &argv[4]);
    fprintf(stderr, "seccomp-exec: exec %s: %s\n", argv[4], strerror(errno));
    return 127;
}
