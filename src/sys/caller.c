/*
 * Who is calling: the uid, gid, pid and umask of the process whose request creates an entry.
 *
 * libfuse 2 knows them (fuse_get_context(), a thread-local of its worker thread), but
 * fuse-native never passes them to JS, and its worker thread waits while JS runs on the
 * main thread, so JS cannot ask libfuse itself. This library, loaded with RTLD_GLOBAL before
 * fuse-native's addon, defines fuse_new: the addon's reference binds here first. It wraps the
 * operations that create entries (create, mknod, mkdir, symlink) so that, on the worker
 * thread, they publish the caller and hold a lock until JS has answered; JS reads the caller
 * with tsovl_caller() while it serves that operation. Then it calls libfuse's fuse_new.
 *
 * No libfuse headers are needed: only libfuse 2.9's fuse_operations layout (pointer slots
 * below) and the start of its fuse_context.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* libfuse 2.9's struct fuse_operations: 38 pointers, a flags word, 6 pointers. */
#define OPS_SIZE 360
#define SLOT_MKNOD 3
#define SLOT_MKDIR 4
#define SLOT_SYMLINK 7
#define SLOT_CREATE 32

struct fuse_context_26 {
  void *fuse;
  uid_t uid;
  gid_t gid;
  pid_t pid;
  void *private_data;
  mode_t umask;
};

typedef int (*mknod_fn)(const char *, mode_t, dev_t);
typedef int (*mkdir_fn)(const char *, mode_t);
typedef int (*symlink_fn)(const char *, const char *);
typedef int (*create_fn)(const char *, mode_t, void *);
typedef void *(*fuse_new_fn)(void *, void *, const void *, size_t, void *);
typedef struct fuse_context_26 *(*get_context_fn)(void);

static mknod_fn real_mknod;
static mkdir_fn real_mkdir;
static symlink_fn real_symlink;
static create_fn real_create;
static get_context_fn get_context;

/* The caller of the one creating operation in flight; valid while `active`. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int active;
static volatile uint32_t caller_uid, caller_gid, caller_pid, caller_umask;
/* How many times fuse_new came through here (the test that interposition took effect). */
static volatile int wrapped;

static void publish(void) {
  pthread_mutex_lock(&lock);
  struct fuse_context_26 *c = get_context();
  caller_uid = c->uid;
  caller_gid = c->gid;
  caller_pid = (uint32_t) c->pid;
  caller_umask = c->umask;
  __atomic_store_n(&active, 1, __ATOMIC_RELEASE);
}

static void unpublish(void) {
  __atomic_store_n(&active, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&lock);
}

static int wrap_mknod(const char *path, mode_t mode, dev_t dev) {
  publish();
  int r = real_mknod(path, mode, dev);
  unpublish();
  return r;
}

static int wrap_mkdir(const char *path, mode_t mode) {
  publish();
  int r = real_mkdir(path, mode);
  unpublish();
  return r;
}

static int wrap_symlink(const char *target, const char *path) {
  publish();
  int r = real_symlink(target, path);
  unpublish();
  return r;
}

static int wrap_create(const char *path, mode_t mode, void *fi) {
  publish();
  int r = real_create(path, mode, fi);
  unpublish();
  return r;
}

static void *libfuse(void) {
  void *h = dlopen("libfuse.so.2", RTLD_NOW | RTLD_NOLOAD);
  return h ? h : dlopen("libfuse.so.2", RTLD_NOW);
}

void *fuse_new(void *ch, void *args, const void *op, size_t op_size, void *user_data) {
  void *h = libfuse();
  fuse_new_fn real = h ? (fuse_new_fn) dlvsym(h, "fuse_new", "FUSE_2.6") : NULL;
  if (real == NULL) return NULL;
  get_context = (get_context_fn) dlvsym(h, "fuse_get_context", "FUSE_2.8");
  if (get_context == NULL || op_size != OPS_SIZE) return real(ch, args, op, op_size, user_data);

  /* libfuse copies the operations; this copy only has to live through the call. */
  void *slots[OPS_SIZE / sizeof(void *)];
  memcpy(slots, op, OPS_SIZE);
  if (slots[SLOT_MKNOD]) { real_mknod = (mknod_fn) slots[SLOT_MKNOD]; slots[SLOT_MKNOD] = (void *) wrap_mknod; }
  if (slots[SLOT_MKDIR]) { real_mkdir = (mkdir_fn) slots[SLOT_MKDIR]; slots[SLOT_MKDIR] = (void *) wrap_mkdir; }
  if (slots[SLOT_SYMLINK]) { real_symlink = (symlink_fn) slots[SLOT_SYMLINK]; slots[SLOT_SYMLINK] = (void *) wrap_symlink; }
  if (slots[SLOT_CREATE]) { real_create = (create_fn) slots[SLOT_CREATE]; slots[SLOT_CREATE] = (void *) wrap_create; }
  void *f = real(ch, args, slots, op_size, user_data);
  if (f) __atomic_add_fetch(&wrapped, 1, __ATOMIC_RELEASE);
  return f;
}

/* How many mounts have their creating operations wrapped. */
int tsovl_wrapped(void) {
  return __atomic_load_n(&wrapped, __ATOMIC_ACQUIRE);
}

/* The caller of the creating operation JS is serving: 1 and out[0..3] = uid, gid, pid, umask; else 0. */
int tsovl_caller(uint32_t *out) {
  if (!__atomic_load_n(&active, __ATOMIC_ACQUIRE)) return 0;
  out[0] = caller_uid;
  out[1] = caller_gid;
  out[2] = caller_pid;
  out[3] = caller_umask;
  return 1;
}
