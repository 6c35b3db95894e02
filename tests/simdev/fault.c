/* GPU-like faults: when a worker's operation touches memory without access,
 * the SIGSEGV/SIGBUS is caught and turned into the context's sticky
 * CUDA_ERROR_ILLEGAL_ADDRESS instead of killing the process. Faults anywhere
 * else go to whatever handler was installed before ours. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <string.h>

#include "simdev_internal.h"

/* initial-exec: the handler must not allocate on first TLS access. */
static __thread sigjmp_buf *armed __attribute__((tls_model("initial-exec")));
static __thread void *fault_addr __attribute__((tls_model("initial-exec")));

static struct sigaction prev_segv, prev_bus;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static atomic_int faulted;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *jump = armed;
    if (jump) {
        armed = NULL;
        fault_addr = si->si_addr;
        siglongjmp(*jump, 1);
    }

    struct sigaction *prev = sig == SIGSEGV ? &prev_segv : &prev_bus;
    if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction) {
        prev->sa_sigaction(sig, si, uc);
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
    } else {
        /* Default action: restore it; the faulting instruction runs again and
         * the process dies as it would have without us. */
        signal(sig, SIG_DFL);
        if (si->si_code <= 0)
            raise(sig); /* sent, not a fault: nothing will repeat it */
    }
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &prev_segv);
    sigaction(SIGBUS, &sa, &prev_bus);
}

bool sd_guarded(void (*fn)(void *), void *arg, void **addr)
{
    pthread_once(&install_once, install);
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) {
        *addr = fault_addr;
        return false;
    }
    armed = &jump;
    fn(arg);
    armed = NULL;
    return true;
}

void sd_fault_record(struct sd_ctx *ctx, void *addr, const char *what, unsigned long long stream_id)
{
    int healthy = CUDA_SUCCESS;
    if (atomic_compare_exchange_strong(&ctx->sticky, &healthy, CUDA_ERROR_ILLEGAL_ADDRESS))
        sd_say("simdev: illegal address %p in a %s on stream %llu (device %d); the context is now unusable",
               addr, what, stream_id, ctx->dev);
    atomic_store(&faulted, 1);
}

int simdev_faulted(void)
{
    return atomic_load(&faulted);
}

static void clear_ctx(struct sd_ctx *ctx, void *unused)
{
    (void)unused;
    atomic_store(&ctx->sticky, CUDA_SUCCESS);
}

void simdev_clear_fault(void)
{
    sd_ctx_foreach(clear_ctx, NULL);
    atomic_store(&faulted, 0);
}
