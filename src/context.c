/* Context lifetime, status strings and per-context error messages. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gdn_internal.h"

const char *gdn_status_string(gdn_status status) {
    switch (status) {
    case GDN_SUCCESS: return "GDN_SUCCESS";
    case GDN_ERROR_INVALID_ARGUMENT: return "GDN_ERROR_INVALID_ARGUMENT";
    case GDN_ERROR_NOT_SUPPORTED: return "GDN_ERROR_NOT_SUPPORTED";
    case GDN_ERROR_OUT_OF_MEMORY: return "GDN_ERROR_OUT_OF_MEMORY";
    case GDN_ERROR_WORKSPACE: return "GDN_ERROR_WORKSPACE";
    case GDN_ERROR_CUDA: return "GDN_ERROR_CUDA";
    case GDN_ERROR_INTERNAL: return "GDN_ERROR_INTERNAL";
    }
    return "GDN_STATUS_UNKNOWN";
}

gdn_status gdn_fail(gdn_context *ctx, gdn_status status, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
    }
    return status;
}

void gdn_clear_error(gdn_context *ctx) {
    if (ctx) ctx->error[0] = '\0';
}

const char *gdn_last_error(const gdn_context *ctx) {
    return ctx ? ctx->error : "gdn_last_error: ctx is NULL";
}

int gdn_cuda_available(void) { return gdn_cuda_device_count() > 0; }

gdn_status gdn_context_create(gdn_context **out, gdn_backend backend, int device) {
    if (!out) return GDN_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    if (backend != GDN_BACKEND_AUTO && backend != GDN_BACKEND_CPU && backend != GDN_BACKEND_CUDA)
        return GDN_ERROR_INVALID_ARGUMENT;
    gdn_context *ctx = (gdn_context *)calloc(1, sizeof *ctx);
    if (!ctx) return GDN_ERROR_OUT_OF_MEMORY;
    if (backend == GDN_BACKEND_AUTO)
        backend = gdn_cuda_available() ? GDN_BACKEND_CUDA : GDN_BACKEND_CPU;
    ctx->backend = backend;
    ctx->device = device;
    if (backend == GDN_BACKEND_CUDA) {
        gdn_status st = gdn_cuda_context_init(ctx, device);
        if (st != GDN_SUCCESS) {
            free(ctx);
            return st;
        }
    }
    *out = ctx;
    return GDN_SUCCESS;
}

void gdn_context_destroy(gdn_context *ctx) { free(ctx); }

gdn_backend gdn_context_backend(const gdn_context *ctx) {
    return ctx ? ctx->backend : GDN_BACKEND_AUTO;
}

gdn_status gdn_context_set_stream(gdn_context *ctx, void *stream) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    if (ctx->backend == GDN_BACKEND_CPU) {
        if (stream)
            return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                            "gdn_context_set_stream: stream must be NULL for the CPU backend");
        return GDN_SUCCESS;
    }
    return gdn_cuda_set_stream(ctx, stream);
}

gdn_status gdn_context_set_num_threads(gdn_context *ctx, int num_threads) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    if (num_threads < 0)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_context_set_num_threads: num_threads (%d) must be >= 0", num_threads);
    ctx->num_threads = num_threads;
    return GDN_SUCCESS;
}
