/* Memory layout shared by the shadow's guest code (shadow_payload.S) and the host.
 *
 * The hijacked process maps the first SHADOW_PARENT_MAP_SIZE bytes, MAP_SHARED anonymous,
 * inherited by the helper child S1 and the shadow S2 (see shadow_process.h). Being shared,
 * the pages never get copied on write, so S1 can report through them and the host sees one
 * physical page per offset. The code page is made read+execute once written. The shadow
 * maps the rest of its region itself. Only #defines here: the assembler includes this file.
 *
 *   +0x000000  code (entry at +0x10; +0x0e holds a `syscall`: the hijacked process makes
 *              its syscalls there and comes back to +0x10, and a clone the kernel
 *              restarts at rip - 2 re-enters the kernel instead of running garbage)
 *   +0x001000  control block
 *   +0x002000  batch: header (op count) then op records
 *   +0x006000  data area for syscall buffers
 */
#ifndef CLOUDVMI_SHADOW_LAYOUT_H
#define CLOUDVMI_SHADOW_LAYOUT_H

#define SHADOW_REGION_SIZE 0x100000
#define SHADOW_PARENT_MAP_SIZE 0x7000 /* code, control block, ops, one page of data */
#define SHADOW_ENTRY_OFFSET 0x10

#define SHADOW_CTRL_OFFSET 0x1000
#define CTRL_MAGIC 0x00
#define CTRL_LEASE 0x08     /* sleeps left; the shadow exits when it reaches 0 */
#define CTRL_REQ_SEQ 0x10   /* host: a new batch is ready when this differs from DONE */
#define CTRL_DONE_SEQ 0x18  /* shadow: copied from REQ_SEQ when the batch is complete */
#define CTRL_SLEEP_CUR 0x20 /* current park interval, ns (doubles while idle) */
#define CTRL_SLEEP_MIN 0x28
#define CTRL_SLEEP_MAX 0x30 /* must stay below 1e9: nanosleep's tv_nsec */
#define CTRL_TS_SEC 0x38    /* struct timespec for nanosleep */
#define CTRL_TS_NSEC 0x40
#define CTRL_S2_PID 0x48      /* written by S1: the shadow's pid, or -errno of its clone */
#define CTRL_WAIT_STATUS 0x50 /* wait4 status of S1, for the hijacked parent */
#define CTRL_HEARTBEAT 0x58   /* incremented on every loop iteration */
#define CTRL_GENERATION 0x60  /* host: a random number per shadow, checked before each use */
#define CTRL_SPIN_TICKS 0x68  /* host: after a batch, poll without sleeping this many TSC ticks */
#define CTRL_SPIN_UNTIL 0x70  /* shadow: the TSC value its polling without sleep lasts to */
#define CTRL_TAKEN_SEQ 0x78   /* shadow: REQ_SEQ of the batch it started */
#define CTRL_BATCH_PID 0x80   /* shadow: getpid() of the process that ran the last batch */
#define CTRL_CANCEL_SEQ 0x88  /* host: withdraws the batch of this number if not yet taken */
#define CTRL_SKIPPED_SEQ 0x90 /* shadow: the withdrawn batch it skipped */
#define CTRL_BATCH_TSC 0x98   /* shadow: the TSC when its last batch ended */
#define CTRL_WATCHED_END 0xa0 /* the host polls CTRL_MAGIC..here in one read */
#define CTRL_NAME 0x100       /* "cloudvmi-shadow\0": comm and cmdline of the shadow */
#define CTRL_NAME_SIZE 16
#define CTRL_SIGSET 0x120  /* all-ones signal mask */
#define CTRL_SCRATCH 0x200 /* small scratch for bootstrap syscalls */
#define CTRL_SCRATCH_SIZE 0xe00

#define SHADOW_OPS_OFFSET 0x2000
#define SHADOW_OPS_SIZE 0x4000
#define BATCH_NOPS 0x00 /* header: number of ops */
#define BATCH_HEADER_SIZE 0x10
#define OP_SIZE 0x50
#define OP_NR 0x00
#define OP_ARGS 0x08 /* six u64 */
#define OP_REFS 0x38 /* bit i set: args[i] is the index of an earlier op whose result to use */
#define OP_FLAGS 0x40
#define OP_RESULT 0x48
#define OPF_STOP_ON_ERROR 0x1 /* cancel the remaining ops if this one fails */
#define SHADOW_MAX_OPS ((SHADOW_OPS_SIZE - BATCH_HEADER_SIZE) / OP_SIZE)

#define SHADOW_DATA_OFFSET 0x6000
#define SHADOW_DATA_SIZE (SHADOW_REGION_SIZE - SHADOW_DATA_OFFSET)

#define SHADOW_MAGIC 0x776f646168734d56 /* "VMshadow" */

#endif
