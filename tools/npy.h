/* npy.h - read and write NumPy .npy files (the tools' and tests' file format).
 *
 * Read: format versions 1.0, 2.0 (and 3.0, which differs from 2.0 only in
 * the header's text encoding). Write: version 1.0. C order only. Dtypes:
 *   "<u2"  uint16 (libgdn stores bf16 tensors as their raw bits)
 *   "<f4"  float32
 *   "<i4"  int32
 *   "<i8"  int64
 * A malformed file is never a crash: every failure returns -1 and writes a
 * message naming the file and the problem into errbuf. */
#ifndef GDN_NPY_H
#define GDN_NPY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NPY_MAX_DIMS 8

typedef struct npy_array {
    char dtype[8];               /* "<u2", "<f4", "<i4" or "<i8" */
    int ndim;                    /* 0 (a scalar) .. NPY_MAX_DIMS */
    int64_t shape[NPY_MAX_DIMS]; /* unused entries are 0 */
    int64_t count;               /* number of elements: product of shape */
    size_t itemsize;             /* bytes per element */
    size_t nbytes;               /* count * itemsize */
    void *data;                  /* malloc'd, nbytes (at least 1) bytes; NULL after npy_free */
} npy_array;

/* Bytes per element of a supported dtype, 0 if it is not supported. */
size_t npy_dtype_size(const char *dtype);

/* Read path into *arr (which is zeroed first). 0 on success; on failure -1,
 * *arr empty, and a message in errbuf (errbuf may be NULL). */
int npy_read(const char *path, npy_array *arr, char *errbuf, size_t errlen);

/* Write a version 1.0 file holding ndim dims of shape and count elements of
 * dtype from data (data may be NULL only when the count is 0). */
int npy_write(const char *path, const char *dtype, int ndim, const int64_t *shape,
              const void *data, char *errbuf, size_t errlen);

/* Release arr's data; arr becomes empty. NULL is a no-op. */
void npy_free(npy_array *arr);

/* Convert an "<i8" array to "<i4" in place (an "<i4" array is left as is);
 * -1 with a message naming path if an element does not fit in int32 or the
 * dtype is neither. */
int npy_to_int32(npy_array *arr, const char *path, char *errbuf, size_t errlen);

/* "[2, 3, 4]" into buf (for messages). Returns buf. */
char *npy_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
