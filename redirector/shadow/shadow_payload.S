/* The code the shadow process runs inside the guest.
 *
 * Assembled into the host binary as data (never executed on the host) and copied into the
 * guest. It must be position independent: every address is rip-relative to the region.
 *
 *  child_entry   first instruction of S1, the clone child of the hijacked thread: S1
 *                clones again (S2, the shadow), reports S2's pid and exits, so that S2 is
 *                adopted by init and leaves no zombie behind when it ends.
 *  park_loop     S2's loop: run a batch if one is posted (the mailbox: REQ_SEQ differs
 *                from DONE_SEQ); after a batch poll again at once for SPIN_TICKS of the
 *                TSC, then nanosleep with exponential back-off, counting the sleeps
 *                against the lease.
 *  after_sleep   the trap path's breakpoint to catch a parked shadow.
 *  run_posted    takes a batch from the mailbox unless the host withdrew it (CANCEL_SEQ,
 *                a store-fence-load handshake with the host's), then runs it.
 *  run_batch     executes the op records of the batch area in order.
 *  batch_done    the trap path's breakpoint for "batch complete".
 *  exit          exit_group(0).
 */
#include "redirector/shadow/shadow_layout.h"

        .intel_syntax noprefix
        .section .rodata.cloudvmi_shadow, "a", @progbits
        .balign 64

        .globl cloudvmi_shadow_begin
        .globl cloudvmi_shadow_child_entry
        .globl cloudvmi_shadow_park_loop
        .globl cloudvmi_shadow_sleep_syscall
        .globl cloudvmi_shadow_after_sleep
        .globl cloudvmi_shadow_run_posted
        .globl cloudvmi_shadow_run_batch
        .globl cloudvmi_shadow_batch_done
        .globl cloudvmi_shadow_exit
        .globl cloudvmi_shadow_end

        .set CTRL, cloudvmi_shadow_begin + SHADOW_CTRL_OFFSET
        .set OPS, cloudvmi_shadow_begin + SHADOW_OPS_OFFSET + BATCH_HEADER_SIZE
        .set BATCH, cloudvmi_shadow_begin + SHADOW_OPS_OFFSET

cloudvmi_shadow_begin:
        .fill 14, 1, 0xcc
        syscall                         /* +0x0e: landing pad for a restarted clone */

cloudvmi_shadow_child_entry:            /* +0x10: S1, rax = 0 */
        lea rbx, [rip + CTRL]
        mov eax, 56                     /* clone(SIGCHLD, 0, 0, 0, 0) */
        mov edi, 17
        xor esi, esi
        xor edx, edx
        xor r10d, r10d
        xor r8d, r8d
        xor r9d, r9d
        syscall
        test rax, rax
        jz cloudvmi_shadow_park_loop    /* S2 */
        mov [rbx + CTRL_S2_PID], rax    /* S1: report, then leave */
        xor edi, edi
        test rax, rax
        jns 1f
        mov edi, 1
1:      mov eax, 231                    /* exit_group */
        syscall
        ud2

cloudvmi_shadow_park_loop:
        lea rbx, [rip + CTRL]
.Lloop:
        inc qword ptr [rbx + CTRL_HEARTBEAT]
        mov rax, [rbx + CTRL_REQ_SEQ]
        cmp rax, [rbx + CTRL_DONE_SEQ]
        jne cloudvmi_shadow_run_posted
        rdtsc                           /* requests flow: poll again at once until */
        shl rdx, 32                     /* SPIN_UNTIL */
        or rax, rdx
        cmp rax, [rbx + CTRL_SPIN_UNTIL]
        jae .Lsleep
        pause
        jmp .Lloop
.Lsleep:
        dec qword ptr [rbx + CTRL_LEASE]
        jz cloudvmi_shadow_exit         /* nobody renewed the lease: the host is gone */
        mov rax, [rbx + CTRL_SLEEP_CUR]
        mov qword ptr [rbx + CTRL_TS_SEC], 0
        mov [rbx + CTRL_TS_NSEC], rax
        mov eax, 35                     /* nanosleep(&ts, NULL) */
        lea rdi, [rbx + CTRL_TS_SEC]
        xor esi, esi
cloudvmi_shadow_sleep_syscall:
        syscall
cloudvmi_shadow_after_sleep:
        lea rbx, [rip + CTRL]
        mov rax, [rbx + CTRL_SLEEP_CUR] /* back off while idle */
        add rax, rax
        cmp rax, [rbx + CTRL_SLEEP_MAX]
        jbe 2f
        mov rax, [rbx + CTRL_SLEEP_MAX]
2:      mov [rbx + CTRL_SLEEP_CUR], rax
        jmp .Lloop

cloudvmi_shadow_run_posted:             /* rax = REQ_SEQ: a batch posted in the mailbox */
        mov [rbx + CTRL_TAKEN_SEQ], rax
        mfence                          /* the host stores CANCEL then loads TAKEN: one of */
        cmp rax, [rbx + CTRL_CANCEL_SEQ] /* us sees the other's store */
        jne cloudvmi_shadow_run_batch
        mov [rbx + CTRL_SKIPPED_SEQ], rax
        jmp .Lbatch_end

cloudvmi_shadow_run_batch:              /* the trap engine enters here directly */
        lea rbx, [rip + CTRL]
        mov eax, 39                     /* getpid: who runs this batch, for the host */
        syscall
        mov [rbx + CTRL_BATCH_PID], rax
        lea rbp, [rip + OPS]
        mov r14, [rip + BATCH]          /* op count, clamped */
        cmp r14, SHADOW_MAX_OPS
        jbe 3f
        mov r14d, SHADOW_MAX_OPS
3:      xor r13d, r13d                  /* op index */
        xor r15d, r15d                  /* set once an op with OPF_STOP_ON_ERROR failed */
.Lop:
        cmp r13, r14
        jae .Lbatch_end
        imul r12, r13, OP_SIZE
        add r12, rbp
        test r15, r15
        jnz .Lcancel
        mov rdx, [r12 + OP_REFS]
        xor ecx, ecx
.Larg:
        bt rdx, rcx
        jnc .Lnext_arg
        mov rax, [r12 + OP_ARGS + rcx * 8]
        cmp rax, r13
        jae .Lbad_ref                   /* only earlier ops can be referenced */
        imul rax, rax, OP_SIZE
        mov rax, [rbp + rax + OP_RESULT]
        cmp rax, -4095
        jae .Lcancel                    /* the op we depend on failed */
        mov [r12 + OP_ARGS + rcx * 8], rax
.Lnext_arg:
        inc ecx
        cmp ecx, 6
        jb .Larg
        mov rax, [r12 + OP_NR]
        mov rdi, [r12 + OP_ARGS]
        mov rsi, [r12 + OP_ARGS + 8]
        mov rdx, [r12 + OP_ARGS + 16]
        mov r10, [r12 + OP_ARGS + 24]
        mov r8, [r12 + OP_ARGS + 32]
        mov r9, [r12 + OP_ARGS + 40]
        syscall
        mov [r12 + OP_RESULT], rax
.Lcheck_stop:
        cmp rax, -4095
        jb .Lop_next
        test qword ptr [r12 + OP_FLAGS], OPF_STOP_ON_ERROR
        jz .Lop_next
        mov r15d, 1
        jmp .Lop_next
.Lbad_ref:
        mov rax, -22                    /* -EINVAL */
        mov [r12 + OP_RESULT], rax
        jmp .Lcheck_stop
.Lcancel:
        mov qword ptr [r12 + OP_RESULT], -125   /* -ECANCELED */
.Lop_next:
        inc r13
        jmp .Lop
.Lbatch_end:
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov [rbx + CTRL_BATCH_TSC], rax
        add rax, [rbx + CTRL_SPIN_TICKS]
        mov [rbx + CTRL_SPIN_UNTIL], rax
        mov rax, [rbx + CTRL_SLEEP_MIN] /* just busy: poll quickly again */
        mov [rbx + CTRL_SLEEP_CUR], rax
        mov rax, [rbx + CTRL_REQ_SEQ]   /* last: the host reads the rest once it sees this */
        mov [rbx + CTRL_DONE_SEQ], rax
cloudvmi_shadow_batch_done:
        jmp .Lloop

cloudvmi_shadow_exit:
        mov eax, 231                    /* exit_group(0) */
        xor edi, edi
        syscall
        ud2
cloudvmi_shadow_end:

        .section .note.GNU-stack, "", @progbits
