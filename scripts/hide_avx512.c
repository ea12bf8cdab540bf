// LD_PRELOAD shim that hides AVX-512 (and AMX) from a process's CPUID, so that every library in
// it (ONNX Runtime's MLAS, PyTorch's oneDNN and MKL, numpy, wgpose's runtime dispatch) takes the
// code paths it takes on an AVX2-only x86-64 CPU. For `scripts/compare_cpu.py --hide-avx512`:
// the AVX2 half measured on an AVX-512 machine (the code paths of an AVX2 CPU, not its
// microarchitecture: caches, clocks and port layout stay this machine's).
//
// How: Linux's CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`, needs the `cpuid_fault` CPU
// flag) makes the CPUID instruction raise SIGSEGV; the handler runs the real CPUID with faulting
// switched off for a moment, clears the AVX-512 and AMX feature bits of leaf 7 and steps over the
// instruction. The setting is per thread, kept by threads and forks, reset by execve (the shim is
// preloaded again in a child). glibc picks its string functions before any preload runs, so those
// may still use AVX-512 (EVEX) forms. Any other SIGSEGV gets the default action (a crash, as
// without the shim). Runtimes that replace a SIGSEGV handler already set keep it (Rust's std
// installs its own only over the default), but one that overrides it would crash at its next CPUID.
//
// Build: gcc -O2 -shared -fPIC -o hide_avx512.so scripts/hide_avx512.c
// Check: LD_PRELOAD=./hide_avx512.so python3 -c "import torch; print(torch.backends.cpu.get_cpu_capability())"
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

// Leaf 7, subleaf 0. EBX: AVX512F (16), DQ (17), IFMA (21), PF (26), ER (27), CD (28), BW (30),
// VL (31). ECX: VBMI (1), VBMI2 (6), VNNI (11), BITALG (12), VPOPCNTDQ (14). EDX: 4VNNIW (2),
// 4FMAPS (3), VP2INTERSECT (8), AMX-BF16 (22), FP16 (23), AMX-TILE (24), AMX-INT8 (25).
#define EBX_MASK ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
#define ECX_MASK ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
#define EDX_MASK ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
// Leaf 7, subleaf 1, EAX: AVX512_BF16 (5).
#define EAX1_MASK (1u << 5)

static long cpuid_faulting(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)info;
    greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        // Not a CPUID: the default action when the instruction faults again.
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    cpuid_faulting(0);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    cpuid_faulting(1);
    if (leaf == 7 && sub == 0) {
        b &= ~EBX_MASK;
        c &= ~ECX_MASK;
        d &= ~EDX_MASK;
    } else if (leaf == 7 && sub == 1) {
        a &= ~EAX1_MASK;
    }
    // CPUID writes the 32-bit registers, clearing their upper halves.
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || cpuid_faulting(1) != 0) {
        static const char msg[] = "hide_avx512: CPUID faulting is not available on this machine (no cpuid_fault flag)\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(97);
    }
}
