// The x86-64 Linux user ABI as the guest sees it: syscall numbers, flag values and the
// binary layouts of the structures syscalls fill in.
//
// Spelled out here instead of taken from the host's <sys/syscall.h>/<sys/stat.h>: the
// host may be another architecture (an arm64 host emulating x86-64 guests), and these
// values describe the guest, never the host.
#pragma once

#include <cstdint>

namespace cloudvmi::x86abi {

// Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
enum Sys : uint64_t {
    kRead = 0,
    kWrite = 1,
    kClose = 3,
    kLseek = 8,
    kMmap = 9,
    kMprotect = 10,
    kMunmap = 11,
    kRtSigprocmask = 14,
    kPread64 = 17,
    kPwrite64 = 18,
    kNanosleep = 35,
    kGetpid = 39,
    kClone = 56,
    kExit = 60,
    kWait4 = 61,
    kKill = 62,
    kUname = 63,
    kFsync = 74,
    kTruncate = 76,
    kFtruncate = 77,
    kFchmod = 91,
    kChdir = 80,
    kUmask = 95,
    kGetuid = 102,
    kGetppid = 110,
    kSetsid = 112,
    kGetsid = 124,
    kMlock = 149,
    kPrctl = 157,
    kGettid = 186,
    kSetxattr = 188,
    kLsetxattr = 189,
    kFsetxattr = 190,
    kLgetxattr = 192,
    kLlistxattr = 195,
    kLremovexattr = 198,
    kGetdents64 = 217,
    kClockGettime = 228,
    kExitGroup = 231,
    kOpenat = 257,
    kMkdirat = 258,
    kFchownat = 260,
    kNewfstatat = 262,
    kUnlinkat = 263,
    kSymlinkat = 266,
    kReadlinkat = 267,
    kFchmodat = 268,
    kUtimensat = 280,
    kRenameat2 = 316,
    kStatx = 332,
    kCloseRange = 436,
    kOpenat2 = 437,
};

// Flags and constants (include/uapi/asm-generic, x86-64 values).
constexpr int64_t kAtFdcwd = -100;
constexpr uint64_t kAtSymlinkNofollow = 0x100;
constexpr uint64_t kAtRemovedir = 0x200;
constexpr uint64_t kAtEmptyPath = 0x1000;
constexpr uint64_t kAtStatxSyncAsStat = 0x0000;

constexpr uint64_t kORdonly = 0;
constexpr uint64_t kOWronly = 1;
constexpr uint64_t kORdwr = 2;
constexpr uint64_t kOAccmode = 3;
constexpr uint64_t kOCreat = 0100;
constexpr uint64_t kOExcl = 0200;
constexpr uint64_t kONoctty = 0400;
constexpr uint64_t kOTrunc = 01000;
constexpr uint64_t kOAppend = 02000;
constexpr uint64_t kONonblock = 04000;
constexpr uint64_t kODirectory = 0200000;
constexpr uint64_t kONofollow = 0400000;
constexpr uint64_t kOCloexec = 02000000;
constexpr uint64_t kOPath = 010000000;

// struct open_how of openat2(2): flags, mode, resolve; 24 bytes.
constexpr uint64_t kResolveNoMagiclinks = 0x02;
constexpr uint64_t kResolveNoSymlinks = 0x04;
constexpr size_t kOpenHowSize = 24;
// renameat2(2) flags.
constexpr uint64_t kRenameNoreplace = 1;
constexpr uint64_t kRenameExchange = 2;
// utimensat(2): a time left as it is, or set to now.
constexpr int64_t kUtimeNow = (1L << 30) - 1;
constexpr int64_t kUtimeOmit = (1L << 30) - 2;

constexpr uint64_t kProtRead = 1;
constexpr uint64_t kProtWrite = 2;
constexpr uint64_t kProtExec = 4;
constexpr uint64_t kMapShared = 0x01;
constexpr uint64_t kMapPrivate = 0x02;
constexpr uint64_t kMapFixed = 0x10;
constexpr uint64_t kMapAnonymous = 0x20;
constexpr uint64_t kMapPopulate = 0x8000;
constexpr uint64_t kMapFixedNoreplace = 0x100000;

constexpr uint64_t kSigchld = 17;
constexpr uint64_t kWall = 0x40000000;
constexpr uint64_t kSigSetmask = 2;

constexpr uint64_t kPrSetName = 15;
constexpr uint64_t kPrSetMm = 35;
constexpr uint64_t kPrSetMmArgStart = 8;
constexpr uint64_t kPrSetMmArgEnd = 9;

constexpr uint64_t kStatxBasicStats = 0x7ff;

// Largest errno the kernel returns as -errno in rax.
constexpr uint64_t kMaxErrno = 4095;

inline bool is_error_result(uint64_t rax) {
    return rax >= ~kMaxErrno + 1;
}
inline int64_t as_signed(uint64_t rax) {
    return static_cast<int64_t>(rax);
}

// struct stat on x86-64 (arch/x86/include/uapi/asm/stat.h), 144 bytes.
struct Stat {
    uint64_t st_dev;
    uint64_t st_ino;
    uint64_t st_nlink;
    uint32_t st_mode;
    uint32_t st_uid;
    uint32_t st_gid;
    uint32_t pad0;
    uint64_t st_rdev;
    int64_t st_size;
    int64_t st_blksize;
    int64_t st_blocks;
    uint64_t st_atime_sec;
    uint64_t st_atime_nsec;
    uint64_t st_mtime_sec;
    uint64_t st_mtime_nsec;
    uint64_t st_ctime_sec;
    uint64_t st_ctime_nsec;
    int64_t reserved[3];
};
static_assert(sizeof(Stat) == 144);

// struct linux_dirent64 header; the name follows, NUL-terminated, up to d_reclen.
struct Dirent64Header {
    uint64_t d_ino;
    int64_t d_off;
    uint16_t d_reclen;
    uint8_t d_type;
};
constexpr size_t kDirent64NameOffset = 19;

// struct new_utsname: six fields of 65 bytes.
constexpr size_t kUtsFieldSize = 65;
constexpr size_t kUtsnameSize = 6 * kUtsFieldSize;

// struct timespec
struct Timespec {
    int64_t tv_sec;
    int64_t tv_nsec;
};

}  // namespace cloudvmi::x86abi
