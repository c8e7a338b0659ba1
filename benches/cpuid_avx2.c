/* Makes a process see an AVX2 CPU: loaded with LD_PRELOAD, it hides AVX-512, AMX and
 * AVX-VNNI from the CPUID instruction in every thread, so that runtimes which pick their
 * kernels from CPUID at run time (ONNX Runtime's MLAS, PyTorch's oneDNN and MKL, OpenBLAS, the
 * `gemm` crate and Rust's is_x86_feature_detected!, hence tandem) all take the paths a
 * Haswell-to-Zen-3 class CPU (AVX2 + FMA) would run. ONNX Runtime has no switch of its own.
 *
 * How: Linux's CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`, /proc/cpuinfo flag
 * `cpuid_fault`) turns each CPUID into a SIGSEGV; the handler runs the real instruction with
 * faulting lifted for that moment, clears the bits, and steps over it. The setting is per
 * thread and inherited by threads created later, so it is made before any other code runs.
 * glibc's loader reads CPUID before this library loads, so its own string functions keep their
 * AVX-512 variants. A process that installs its own SIGSEGV handler afterwards would receive
 * the faults itself: not for those.
 *
 * Build: cc -O2 -shared -fPIC -o cpuid_avx2.so cpuid_avx2.c (benches/cpu_compare.py --isa avx2
 * does). Set TANDEM_CPUID_AVX2_VERBOSE=1 to print each emulated leaf to stderr. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int verbose;

static long set_cpuid_allowed(int allowed) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, allowed); }

/* Leaf 7, subleaf 0. EBX: AVX512 F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31. */
#define LEAF7_EBX_AVX512 ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
/* ECX: AVX512 VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14. */
#define LEAF7_ECX_AVX512 ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* EDX: AVX512 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24,
 * AMX-INT8 25. */
#define LEAF7_EDX_HIDDEN ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* Leaf 7, subleaf 1. EAX: AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21. */
#define LEAF7_1_EAX_HIDDEN ((1u << 4) | (1u << 5) | (1u << 21))
/* Leaf 0xD, subleaf 0, EAX: the state components the OS may enable: opmask 5, ZMM_Hi256 6,
 * Hi16_ZMM 7, AMX TILECFG 17, TILEDATA 18. (XGETBV still reports them enabled; every runtime
 * here checks CPUID's feature bits as well.) */
#define LEAFD_EAX_HIDDEN ((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18))

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)info;
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        /* A real fault: let it happen again without this handler. */
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], subleaf = (uint32_t)r[REG_RCX], a, b, c, d;
    set_cpuid_allowed(1);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(subleaf));
    set_cpuid_allowed(0);
    if (leaf == 7 && subleaf == 0) {
        b &= ~LEAF7_EBX_AVX512;
        c &= ~LEAF7_ECX_AVX512;
        d &= ~LEAF7_EDX_HIDDEN;
    } else if (leaf == 7 && subleaf == 1) {
        a &= ~LEAF7_1_EAX_HIDDEN;
    } else if (leaf == 0xd && subleaf == 0) {
        a &= ~LEAFD_EAX_HIDDEN;
    }
    if (verbose) {
        char line[96];
        int n = snprintf(line, sizeof line, "cpuid_avx2: leaf %#x.%u\n", leaf, subleaf);
        if (n > 0) (void)!write(2, line, (size_t)n);
    }
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    verbose = getenv("TANDEM_CPUID_AVX2_VERBOSE") != NULL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || set_cpuid_allowed(0) != 0) {
        fprintf(stderr, "cpuid_avx2: this kernel or CPU cannot fault on CPUID (no cpuid_fault in /proc/cpuinfo?)\n");
        _exit(97);
    }
}
