/*
 * lockfs: a FUSE file system of the test suite's own, mirroring a directory, whose locks
 * either lie or are left to the kernel.
 *
 *     lockfs lie|kernel SOURCE MOUNTPOINT
 *
 * "lie" implements FUSE's flock and POSIX lock operations and answers every request with
 * success without locking anything: the kernel then believes the file system keeps the
 * locks, and two processes both "hold" one. That is what a FUSE file system whose lock
 * operations are no-ops, virtiofsd without flock support and some 9p servers do.
 * "kernel" leaves the lock operations out: the kernel then keeps flock and POSIX locks
 * itself, for the processes of this host, as on a local file system.
 *
 * It runs in the foreground, single-threaded, and ends when it is unmounted (fusermount3 -u)
 * or sent SIGTERM. Only what the tests need is mirrored: files and directories.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static char source[PATH_MAX];

static void real(char *out, const char *path) { snprintf(out, PATH_MAX, "%s%s", source, path); }

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    if (fi != NULL) return fstat((int)fi->fh, st) == -1 ? -errno : 0;
    real(p, path);
    return lstat(p, st) == -1 ? -errno : 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    char p[PATH_MAX];
    DIR *dir;
    struct dirent *entry;
    (void)offset, (void)fi, (void)flags;
    real(p, path);
    if ((dir = opendir(p)) == NULL) return -errno;
    while ((entry = readdir(dir)) != NULL) fill(buf, entry->d_name, NULL, 0, 0);
    closedir(dir);
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    int fd;
    real(p, path);
    if ((fd = open(p, fi->flags & ~O_NOFOLLOW)) == -1) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    int fd;
    real(p, path);
    if ((fd = open(p, fi->flags & ~O_NOFOLLOW, mode)) == -1) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    ssize_t got = pread((int)fi->fh, buf, size, offset);
    (void)path;
    return got == -1 ? -errno : (int)got;
}

static int fs_write(const char *path, const char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    ssize_t put = pwrite((int)fi->fh, buf, size, offset);
    (void)path;
    return put == -1 ? -errno : (int)put;
}

static int fs_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int fs_unlink(const char *path) {
    char p[PATH_MAX];
    real(p, path);
    return unlink(p) == -1 ? -errno : 0;
}

static int fs_mkdir(const char *path, mode_t mode) {
    char p[PATH_MAX];
    real(p, path);
    return mkdir(p, mode) == -1 ? -errno : 0;
}

static int fs_rmdir(const char *path) {
    char p[PATH_MAX];
    real(p, path);
    return rmdir(p) == -1 ? -errno : 0;
}

static int fs_rename(const char *from, const char *to, unsigned int flags) {
    char a[PATH_MAX], b[PATH_MAX];
    if (flags) return -EINVAL;
    real(a, from);
    real(b, to);
    return rename(a, b) == -1 ? -errno : 0;
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    if (fi != NULL) return fchmod((int)fi->fh, mode) == -1 ? -errno : 0;
    real(p, path);
    return chmod(p, mode) == -1 ? -errno : 0;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    if (fi != NULL) return ftruncate((int)fi->fh, size) == -1 ? -errno : 0;
    real(p, path);
    return truncate(p, size) == -1 ? -errno : 0;
}

static int fs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    char p[PATH_MAX];
    (void)fi;
    real(p, path);
    return utimensat(AT_FDCWD, p, tv, AT_SYMLINK_NOFOLLOW) == -1 ? -errno : 0;
}

/* The lies: every lock request succeeds, and nobody ever holds one. */
static int lie_lock(const char *path, struct fuse_file_info *fi, int cmd, struct flock *lock) {
    (void)path, (void)fi;
    if (cmd == F_GETLK) lock->l_type = F_UNLCK;
    return 0;
}

static int lie_flock(const char *path, struct fuse_file_info *fi, int op) {
    (void)path, (void)fi, (void)op;
    return 0;
}

static struct fuse_operations operations = {
    .getattr = fs_getattr,
    .readdir = fs_readdir,
    .open = fs_open,
    .create = fs_create,
    .read = fs_read,
    .write = fs_write,
    .release = fs_release,
    .unlink = fs_unlink,
    .mkdir = fs_mkdir,
    .rmdir = fs_rmdir,
    .rename = fs_rename,
    .chmod = fs_chmod,
    .truncate = fs_truncate,
    .utimens = fs_utimens,
};

int main(int argc, char *argv[]) {
    if (argc != 4 || (strcmp(argv[1], "lie") != 0 && strcmp(argv[1], "kernel") != 0)) {
        fprintf(stderr, "usage: lockfs lie|kernel SOURCE MOUNTPOINT\n");
        return 2;
    }
    if (realpath(argv[2], source) == NULL) {
        perror(argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "lie") == 0) {
        operations.lock = lie_lock;
        operations.flock = lie_flock;
    }
    char *args[] = {argv[0], "-f", "-s", "-o", strcmp(argv[1], "lie") == 0 ? "fsname=lockfs-lie,subtype=lockfs" : "fsname=lockfs-kernel,subtype=lockfs",
                    argv[3], NULL};
    return fuse_main(6, args, &operations, NULL);
}
