/*
 * gdn.h - libgdn, Gated DeltaNet kernels for CPUs and NVIDIA GPUs.
 *
 * The whole public API. Conventions, shared by every operation:
 *
 *  - Every call returns a gdn_status. On failure the context keeps a
 *    message naming the argument and the rule it broke: gdn_last_error().
 *  - Tensors are dense, row-major, innermost dimension last, as listed per
 *    operation. bf16 tensors are passed as raw bf16 bit patterns (gdn_bf16,
 *    the upper 16 bits of an IEEE float32).
 *  - Pointers are host pointers for the CPU backend and device pointers
 *    (cudaMalloc, or managed) for the CUDA backend; the library checks this
 *    and refuses the wrong kind. The exception: gdn_problem.cu_seqlens is
 *    always a host array (the library validates it before any work).
 *  - CUDA calls are asynchronous on the context's stream. They do not
 *    allocate and do not synchronise the host when cu_seqlens_device is
 *    given (or there is no cu_seqlens), so they can be captured in a graph.
 *  - Results are deterministic: no atomics, the same bits on every run.
 *
 * See ../shared/SPEC.md in the project for the math.
 */
#ifndef GDN_H
#define GDN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(GDN_SHARED_BUILD)
#define GDN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define GDN_API __attribute__((visibility("default")))
#else
#define GDN_API
#endif

#define GDN_VERSION_MAJOR 0
#define GDN_VERSION_MINOR 1
#define GDN_VERSION_PATCH 0

/* Chunk length of the chunked algorithm (SPEC section 3). */
#define GDN_CHUNK 64
/* Largest supported head dimension, K and V alike. */
#define GDN_MAX_HEAD_DIM 256

/* Raw bf16 bits. */
typedef uint16_t gdn_bf16;

typedef enum gdn_status {
    GDN_SUCCESS = 0,
    GDN_ERROR_INVALID_ARGUMENT = 1, /* a shape, pointer, layout or cu_seqlens rule broken */
    GDN_ERROR_NOT_SUPPORTED = 2,    /* backend not built, or no usable device */
    GDN_ERROR_OUT_OF_MEMORY = 3,    /* a host allocation failed (CPU backend) */
    GDN_ERROR_WORKSPACE = 4,        /* workspace missing or smaller than required */
    GDN_ERROR_CUDA = 5,             /* a CUDA runtime call or launch failed */
    GDN_ERROR_INTERNAL = 6
} gdn_status;

typedef enum gdn_backend {
    GDN_BACKEND_AUTO = 0, /* CUDA when built and a device is present, else CPU */
    GDN_BACKEND_CPU = 1,
    GDN_BACKEND_CUDA = 2
} gdn_backend;

/* Layout of every recurrent state tensor (h0, h_out, final_state). */
typedef enum gdn_state_layout {
    GDN_STATE_VK = 0, /* [.., V, K], K innermost: vLLM, FlashInfer, the seed (default) */
    GDN_STATE_KV = 1  /* [.., K, V], V innermost: FLA's default; holds S^T */
} gdn_state_layout;

/* Which key head value head h reads (r = Hv / Hk). */
typedef enum gdn_head_map {
    GDN_HEAD_MAP_BLOCK = 0, /* key head h / r: FLA, HF transformers (default) */
    GDN_HEAD_MAP_TILED = 1  /* key head h % Hk: GGUF / llama.cpp head order */
} gdn_head_map;

typedef struct gdn_context gdn_context;

/* Short name of a status ("GDN_ERROR_INVALID_ARGUMENT", ...). Never NULL. */
GDN_API const char *gdn_status_string(gdn_status status);

/* Create a context. backend AUTO picks CUDA when it was built and a device
 * exists. device is the CUDA device index (ignored for CPU). The context
 * starts on the default stream (NULL) and, for CPU, all available threads. */
GDN_API gdn_status gdn_context_create(gdn_context **ctx, gdn_backend backend, int device);
/* Destroy a context; NULL is a no-op. */
GDN_API void gdn_context_destroy(gdn_context *ctx);
/* The backend the context runs on (CPU or CUDA, never AUTO). */
GDN_API gdn_backend gdn_context_backend(const gdn_context *ctx);
/* CUDA: the cudaStream_t later calls run on (NULL = default stream).
 * CPU: only NULL is accepted. */
GDN_API gdn_status gdn_context_set_stream(gdn_context *ctx, void *stream);
/* CPU: number of threads (0 = all available). CUDA: ignored. */
GDN_API gdn_status gdn_context_set_num_threads(gdn_context *ctx, int num_threads);
/* The message of the last failed call on ctx ("" after a success). */
GDN_API const char *gdn_last_error(const gdn_context *ctx);
/* 1 when the library was built with CUDA and at least one device is usable. */
GDN_API int gdn_cuda_available(void);

/*
 * The problem description every operation takes.
 *
 * Tokens come as a batch of B sequences of length T, or (cu_seqlens != NULL)
 * as B = 1 and N = num_seqs sequences packed along T: sequence n is tokens
 * [cu_seqlens[n], cu_seqlens[n+1]). cu_seqlens has N+1 int32 entries, starts
 * at 0, never decreases and ends at T; empty sequences are allowed (their
 * final state is their h0). Without cu_seqlens, N = B.
 *
 * cu_seqlens is a host array. The CUDA backend needs the same values on the
 * device: pass them as cu_seqlens_device to avoid a host-to-device copy (and
 * to make the call capturable in a CUDA graph); otherwise the library copies
 * them into the workspace on the stream. The caller guarantees both hold the
 * same values.
 */
typedef struct gdn_problem {
    int64_t B, T;   /* batch, tokens per batch row */
    int64_t Hk, Hv; /* key heads, value heads; Hv % Hk == 0 */
    int64_t K, V;   /* head dims, each 1..GDN_MAX_HEAD_DIM */
    const int32_t *cu_seqlens;        /* host, N+1 entries, or NULL */
    const int32_t *cu_seqlens_device; /* CUDA, optional copy of cu_seqlens */
    int64_t num_seqs;                 /* N; used only with cu_seqlens */
    gdn_state_layout state_layout;
    gdn_head_map head_map;
} gdn_problem;

/* Fill *p with the given shape and the defaults: no cu_seqlens, V-first
 * states, block head mapping. */
GDN_API void gdn_problem_init(gdn_problem *p, int64_t B, int64_t T, int64_t Hk, int64_t Hv,
                              int64_t K, int64_t V);
/* Number of sequences: num_seqs with cu_seqlens, else B. */
GDN_API int64_t gdn_problem_num_seqs(const gdn_problem *p);
/* Total number of chunks NT over all sequences: sum of ceil(len_n / 64)
 * (B * ceil(T / 64) without cu_seqlens). This is the chunk dimension of
 * h_out. Returns -1 if cu_seqlens is set but invalid. */
GDN_API int64_t gdn_problem_num_chunks(const gdn_problem *p);

/*
 * gdn_chunk_state: the inter-chunk state recurrence (SPEC section 3 step 4
 * and section 4) - the serial step of the chunked forward.
 *
 * Inputs (NT = gdn_problem_num_chunks, N = gdn_problem_num_seqs):
 *   k            [B, T, Hk, K]  bf16   keys
 *   w            [B, T, Hv, K]  bf16   WY-transformed keys
 *   u            [B, T, Hv, V]  bf16   WY-transformed values
 *   g            [B, T, Hv]     f32    chunk-local cumulative log-decay
 *   h0           [N, Hv, V, K]  f32    initial state, optional (NULL = 0)
 * Outputs:
 *   h_out        [NT, Hv, V, K] bf16   state at each chunk start; without
 *                                      cu_seqlens this is [B, T/64.., Hv, V, K];
 *                                      with it, all sequences' chunks in order
 *   v_new        [B, T, Hv, V]  bf16   u - w h^T, before gating; optional
 *   final_state  [N, Hv, V, K]  f32    state after the last chunk; optional
 * State tensors are [.., K, V] with GDN_STATE_KV.
 *
 * workspace: device memory of gdn_chunk_state_workspace_size() bytes (CUDA;
 * the CPU backend needs none). It may be NULL when the size is 0.
 */
GDN_API gdn_status gdn_chunk_state_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                  size_t *bytes);
GDN_API gdn_status gdn_chunk_state(gdn_context *ctx, const gdn_problem *p, const gdn_bf16 *k,
                                   const gdn_bf16 *w, const gdn_bf16 *u, const float *g,
                                   const float *h0, gdn_bf16 *h_out, gdn_bf16 *v_new,
                                   float *final_state, void *workspace, size_t workspace_bytes);

/*
 * Options shared by the whole-layer operations (gdn_chunk_forward,
 * gdn_recurrent_forward): the pre-processing of SPEC section 1.
 */
typedef struct gdn_forward_options {
    float scale;      /* output scale; 0 means 1/sqrt(K) */
    int l2norm_qk;    /* 1: q and k are L2-normalised per head in the kernel
                         (x / sqrt(sum x^2 + 1e-6)) */
    int beta_sigmoid; /* 1: beta holds logits; the kernel applies sigmoid */
    /* Gate. By default g is the per-token log decay (f32 [B,T,Hv], <= 0).
     * With qwen_gate = 1, g holds the raw a of Qwen3-Next and the decay is
     * g = -exp(A_log[h]) * softplus(a + dt_bias[h]); A_log and dt_bias are
     * f32 [Hv] (device pointers for the CUDA backend). */
    int qwen_gate;
    const float *A_log;
    const float *dt_bias;
} gdn_forward_options;

/* Defaults: scale 1/sqrt(K), no normalisation, beta as given, g as given. */
GDN_API void gdn_forward_options_init(gdn_forward_options *opts);

#ifdef __cplusplus
}
#endif
#endif /* GDN_H */
