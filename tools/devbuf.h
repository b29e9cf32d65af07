/* Device buffers for the tools, tests and benchmarks (not the library,
 * which never allocates): thin wrappers over the CUDA runtime that report
 * errors as text, and that say "not built" when libgdn has no CUDA. */
#ifndef GDN_DEVBUF_H
#define GDN_DEVBUF_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when built with CUDA and a device is present. */
int gdn_dev_available(void);
/* Make device `dev` current, so later buffers land on it. */
int gdn_dev_set_device(int dev);
/* Each returns 0 on success, else -1 with a message in gdn_dev_error(). */
int gdn_dev_alloc(void **ptr, size_t bytes);
void gdn_dev_free(void *ptr);
int gdn_dev_upload(void *dst, const void *src, size_t bytes);
int gdn_dev_download(void *dst, const void *src, size_t bytes);
/* Fill bytes with one byte value (for poisoning outputs). */
int gdn_dev_fill(void *dst, int byte, size_t bytes);
int gdn_dev_sync(void);
const char *gdn_dev_error(void);
/* Device timer: start, then stop returns elapsed milliseconds on the
 * default stream (CUDA events), or -1 on error. */
int gdn_dev_timer_start(void);
double gdn_dev_timer_stop(void);
/* Device-to-device copy bandwidth of the current device, read + write
 * bytes per second: a 1 GiB cudaMemcpy timed with CUDA events (the median
 * of a few, after a warm-up) - the memory floor the tools compare against.
 * -1 with a message in gdn_dev_error() on failure or without CUDA. */
double gdn_dev_copy_bandwidth(void);
/* Device name, or "none". */
const char *gdn_dev_name(void);
/* Free and total device memory of the current device, bytes. */
int gdn_dev_mem_info(size_t *free_bytes, size_t *total_bytes);

#ifdef __cplusplus
}
#endif
#endif
