/* See npy.h. The format: the magic "\x93NUMPY", a major and minor version
 * byte, the header length (uint16 little-endian for 1.0, uint32 for 2.0 and
 * 3.0), then the header - a Python dict literal with the keys 'descr',
 * 'fortran_order' and 'shape', padded with spaces and ended by '\n' - and
 * then the raw data. */
#define _POSIX_C_SOURCE 200809L
#include "npy.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
/* A sane upper bound on the header (NumPy's own limit is 10000 bytes
 * unless told otherwise); protects against absurd lengths in corrupt files. */
#define NPY_MAX_HEADER (1u << 20)

static int fail(char *errbuf, size_t errlen, const char *path, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static int fail(char *errbuf, size_t errlen, const char *path, const char *fmt, ...) {
    if (errbuf && errlen) {
        int n = snprintf(errbuf, errlen, "%s: ", path ? path : "(null)");
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(errbuf + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

size_t npy_dtype_size(const char *dtype) {
    static const struct {
        const char *name;
        size_t size;
    } known[] = {{"<u2", 2}, {"<f4", 4}, {"<i4", 4}, {"<i8", 8}};
    if (!dtype) return 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(dtype, known[i].name) == 0) return known[i].size;
    return 0;
}

char *npy_shape_str(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t used = 0;
    if (!buf || len == 0) return buf;
    buf[0] = '\0';
    int n = snprintf(buf, len, "[");
    for (int i = 0; i < ndim && n >= 0; i++) {
        used += (size_t)n;
        if (used >= len) break;
        n = snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (n >= 0) used += (size_t)n;
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}

void npy_free(npy_array *arr) {
    if (!arr) return;
    free(arr->data);
    memset(arr, 0, sizeof *arr);
}

/* ---- header parsing ---------------------------------------------------- */

typedef struct cursor {
    const char *s;
    size_t n, i;
} cursor;

static void skip_ws(cursor *c) {
    while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\n' ||
                           c->s[c->i] == '\r'))
        c->i++;
}

static int peek(const cursor *c) { return c->i < c->n ? (unsigned char)c->s[c->i] : -1; }

/* A quoted string ('..' or ".."), no escapes (none occur in npy headers).
 * 0 on success; out gets at most outlen-1 chars (longer strings fail). */
static int parse_string(cursor *c, char *out, size_t outlen) {
    int q = peek(c);
    if (q != '\'' && q != '"') return -1;
    c->i++;
    size_t start = c->i;
    while (c->i < c->n && c->s[c->i] != q) {
        if (c->s[c->i] == '\\') return -1;
        c->i++;
    }
    if (c->i >= c->n) return -1;
    size_t len = c->i - start;
    c->i++; /* closing quote */
    if (len + 1 > outlen) return -1;
    memcpy(out, c->s + start, len);
    out[len] = '\0';
    return 0;
}

static int match_word(cursor *c, const char *w) {
    size_t len = strlen(w);
    if (c->n - c->i < len || memcmp(c->s + c->i, w, len) != 0) return 0;
    c->i += len;
    return 1;
}

/* A non-negative integer, optionally with Python 2's 'L' suffix. */
static int parse_dim(cursor *c, int64_t *out) {
    int ch = peek(c);
    if (ch < '0' || ch > '9') return -1;
    int64_t v = 0;
    while ((ch = peek(c)) >= '0' && ch <= '9') {
        if (v > (INT64_MAX - (ch - '0')) / 10) return -2;
        v = v * 10 + (ch - '0');
        c->i++;
    }
    if (peek(c) == 'L') c->i++;
    *out = v;
    return 0;
}

/* Parses the header dict; on failure writes the reason into why. */
static int parse_header(const char *text, size_t len, npy_array *arr, char *why, size_t whylen) {
    cursor c = {text, len, 0};
    int have_descr = 0, have_order = 0, have_shape = 0;
    char descr[32] = "";
    int fortran = 0;

    skip_ws(&c);
    if (peek(&c) != '{') {
        snprintf(why, whylen, "header is not a Python dict (it does not start with '{')");
        return -1;
    }
    c.i++;
    for (;;) {
        skip_ws(&c);
        if (peek(&c) == '}') {
            c.i++;
            break;
        }
        if (peek(&c) < 0) {
            snprintf(why, whylen, "header dict is not closed (no '}')");
            return -1;
        }
        char key[32];
        if (parse_string(&c, key, sizeof key) != 0) {
            snprintf(why, whylen, "header dict: expected a quoted key at byte %zu", c.i);
            return -1;
        }
        skip_ws(&c);
        if (peek(&c) != ':') {
            snprintf(why, whylen, "header dict: expected ':' after key '%s'", key);
            return -1;
        }
        c.i++;
        skip_ws(&c);
        if (strcmp(key, "descr") == 0) {
            if (have_descr++) goto duplicate;
            if (peek(&c) == '[') {
                snprintf(why, whylen,
                         "structured dtypes are not supported (descr is a list); expected one "
                         "of <u2, <f4, <i4, <i8");
                return -1;
            }
            if (parse_string(&c, descr, sizeof descr) != 0) {
                snprintf(why, whylen, "header: 'descr' must be a short quoted dtype string");
                return -1;
            }
        } else if (strcmp(key, "fortran_order") == 0) {
            if (have_order++) goto duplicate;
            if (match_word(&c, "True"))
                fortran = 1;
            else if (match_word(&c, "False"))
                fortran = 0;
            else {
                snprintf(why, whylen, "header: 'fortran_order' must be True or False");
                return -1;
            }
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape++) goto duplicate;
            if (peek(&c) != '(') {
                snprintf(why, whylen, "header: 'shape' must be a tuple such as (2, 3)");
                return -1;
            }
            c.i++;
            int nd = 0;
            for (;;) {
                skip_ws(&c);
                if (peek(&c) == ')') {
                    c.i++;
                    break;
                }
                int64_t d;
                int r = parse_dim(&c, &d);
                if (r == -2) {
                    snprintf(why, whylen, "header: a dimension of 'shape' overflows int64");
                    return -1;
                }
                if (r != 0) {
                    snprintf(why, whylen,
                             "header: 'shape' must be a tuple of non-negative integers");
                    return -1;
                }
                if (nd == NPY_MAX_DIMS) {
                    snprintf(why, whylen, "too many dimensions (more than %d)", NPY_MAX_DIMS);
                    return -1;
                }
                arr->shape[nd++] = d;
                skip_ws(&c);
                if (peek(&c) == ',') {
                    c.i++;
                } else if (peek(&c) != ')') {
                    snprintf(why, whylen, "header: 'shape' tuple is malformed");
                    return -1;
                }
            }
            arr->ndim = nd;
        } else {
            snprintf(why, whylen, "header: unexpected key '%s'", key);
            return -1;
        }
        skip_ws(&c);
        if (peek(&c) == ',') {
            c.i++;
        } else if (peek(&c) != '}') {
            snprintf(why, whylen, "header dict: expected ',' or '}' after the value of '%s'",
                     key);
            return -1;
        }
    }
    /* After the dict: only padding. */
    for (; c.i < c.n; c.i++) {
        char ch = c.s[c.i];
        if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t' && ch != '\0') {
            snprintf(why, whylen, "header: unexpected text after the dict");
            return -1;
        }
    }
    if (!have_descr || !have_order || !have_shape) {
        snprintf(why, whylen, "header is missing the key '%s'",
                 !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
        return -1;
    }
    if (fortran) {
        snprintf(why, whylen,
                 "fortran_order is True; only C-order arrays are supported "
                 "(save with np.ascontiguousarray)");
        return -1;
    }
    if (descr[0] == '>' || (descr[0] == '!' && descr[1] != '\0')) {
        snprintf(why, whylen, "dtype '%s' is big-endian; only little-endian is supported", descr);
        return -1;
    }
    arr->itemsize = npy_dtype_size(descr);
    if (!arr->itemsize) {
        snprintf(why, whylen, "unsupported dtype '%s' (supported: <u2 <f4 <i4 <i8)", descr);
        return -1;
    }
    memcpy(arr->dtype, descr, strlen(descr) + 1); /* a known dtype: 3 chars */
    return 0;
duplicate:
    snprintf(why, whylen, "header: a key appears twice");
    return -1;
}

/* count = product of dims and nbytes = count * itemsize, with overflow
 * checks. */
static int sizes(int ndim, const int64_t *shape, size_t itemsize, int64_t *count,
                 size_t *nbytes) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    if ((uint64_t)n > SIZE_MAX / itemsize) return -1;
    *count = n;
    *nbytes = (size_t)n * itemsize;
    return 0;
}

int npy_read(const char *path, npy_array *arr, char *errbuf, size_t errlen) {
    if (errbuf && errlen) errbuf[0] = '\0';
    if (!arr) return fail(errbuf, errlen, path, "npy_read: arr is NULL");
    memset(arr, 0, sizeof *arr);
    if (!path) return fail(errbuf, errlen, path, "npy_read: path is NULL");
    if (!host_is_little_endian())
        return fail(errbuf, errlen, path, "this host is big-endian, which npy.c does not support");

    FILE *f = fopen(path, "rb");
    if (!f) return fail(errbuf, errlen, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fail(errbuf, errlen, path, "not a regular file");
    }
    const uint64_t fsize = (uint64_t)st.st_size;

    unsigned char pre[12];
    size_t got = fread(pre, 1, 10, f);
    if (got == 0) {
        fclose(f);
        return fail(errbuf, errlen, path, "not a .npy file (empty file, no magic bytes)");
    }
    if (memcmp(pre, MAGIC, got < sizeof MAGIC ? got : sizeof MAGIC) != 0) {
        fclose(f);
        return fail(errbuf, errlen, path, "not a .npy file (bad magic bytes)");
    }
    if (got < 10) {
        fclose(f);
        return fail(errbuf, errlen, path, "truncated: the file ends inside the preamble");
    }
    const int major = pre[6], minor = pre[7];
    uint64_t hlen;
    size_t pre_len;
    if (major == 1) {
        hlen = (uint64_t)pre[8] | ((uint64_t)pre[9] << 8);
        pre_len = 10;
    } else if (major == 2 || major == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            fclose(f);
            return fail(errbuf, errlen, path, "truncated: the file ends inside the preamble");
        }
        hlen = (uint64_t)pre[8] | ((uint64_t)pre[9] << 8) | ((uint64_t)pre[10] << 16) |
               ((uint64_t)pre[11] << 24);
        pre_len = 12;
    } else {
        fclose(f);
        return fail(errbuf, errlen, path,
                    "unsupported .npy format version %d.%d (supported: 1.0, 2.0, 3.0)", major,
                    minor);
    }
    if (minor != 0) {
        fclose(f);
        return fail(errbuf, errlen, path,
                    "unsupported .npy format version %d.%d (supported: 1.0, 2.0, 3.0)", major,
                    minor);
    }
    if (hlen > NPY_MAX_HEADER) {
        fclose(f);
        return fail(errbuf, errlen, path, "header length %llu is implausibly large (corrupt file?)",
                    (unsigned long long)hlen);
    }
    if (pre_len + hlen > fsize) {
        fclose(f);
        return fail(errbuf, errlen, path,
                    "truncated: the header claims %llu bytes but the file has only %llu after "
                    "the preamble",
                    (unsigned long long)hlen, (unsigned long long)(fsize - pre_len));
    }
    char *header = (char *)malloc((size_t)hlen + 1);
    if (!header) {
        fclose(f);
        return fail(errbuf, errlen, path, "out of memory reading the header");
    }
    if (fread(header, 1, (size_t)hlen, f) != (size_t)hlen) {
        free(header);
        fclose(f);
        return fail(errbuf, errlen, path, "truncated: the file ends inside the header");
    }
    header[hlen] = '\0';
    char why[256];
    int rc = parse_header(header, (size_t)hlen, arr, why, sizeof why);
    free(header);
    if (rc != 0) {
        fclose(f);
        memset(arr, 0, sizeof *arr);
        return fail(errbuf, errlen, path, "%s", why);
    }
    if (sizes(arr->ndim, arr->shape, arr->itemsize, &arr->count, &arr->nbytes) != 0) {
        fclose(f);
        memset(arr, 0, sizeof *arr);
        return fail(errbuf, errlen, path, "shape is too large (element count overflows)");
    }
    const uint64_t have = fsize - pre_len - hlen;
    if (have != (uint64_t)arr->nbytes) {
        char sh[160];
        npy_shape_str(arr->ndim, arr->shape, sh, sizeof sh);
        fclose(f);
        const int trunc = have < (uint64_t)arr->nbytes;
        rc = fail(errbuf, errlen, path,
                  "%s: shape %s of %s needs %zu data bytes, but the file has %llu",
                  trunc ? "truncated data" : "size mismatch (extra bytes after the data)", sh,
                  arr->dtype, arr->nbytes, (unsigned long long)have);
        memset(arr, 0, sizeof *arr);
        return rc;
    }
    arr->data = malloc(arr->nbytes ? arr->nbytes : 1);
    if (!arr->data) {
        fclose(f);
        rc = fail(errbuf, errlen, path, "out of memory (%zu bytes of data)", arr->nbytes);
        memset(arr, 0, sizeof *arr);
        return rc;
    }
    if (arr->nbytes && fread(arr->data, 1, arr->nbytes, f) != arr->nbytes) {
        fclose(f);
        npy_free(arr);
        return fail(errbuf, errlen, path, "read error or truncated data");
    }
    fclose(f);
    return 0;
}

int npy_write(const char *path, const char *dtype, int ndim, const int64_t *shape,
              const void *data, char *errbuf, size_t errlen) {
    if (errbuf && errlen) errbuf[0] = '\0';
    if (!path) return fail(errbuf, errlen, path, "npy_write: path is NULL");
    if (!host_is_little_endian())
        return fail(errbuf, errlen, path, "this host is big-endian, which npy.c does not support");
    const size_t itemsize = npy_dtype_size(dtype);
    if (!itemsize)
        return fail(errbuf, errlen, path, "npy_write: unsupported dtype '%s' (supported: <u2 <f4 "
                    "<i4 <i8)", dtype ? dtype : "(null)");
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return fail(errbuf, errlen, path, "npy_write: ndim %d must be 0..%d", ndim, NPY_MAX_DIMS);
    if (ndim > 0 && !shape) return fail(errbuf, errlen, path, "npy_write: shape is NULL");
    int64_t count;
    size_t nbytes;
    if (sizes(ndim, shape, itemsize, &count, &nbytes) != 0)
        return fail(errbuf, errlen, path, "npy_write: shape has a negative or too large dim");
    if (nbytes && !data) return fail(errbuf, errlen, path, "npy_write: data is NULL");

    /* Header: the dict, padded with spaces so that the data starts at a
     * multiple of 64 bytes, ended by '\n'. */
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype);
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%lld%s", i ? " " : "",
                      (long long)shape[i], (ndim == 1 || i + 1 < ndim) ? "," : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    char header[600];
    memcpy(header, dict, (size_t)n);
    memset(header + n, ' ', hlen - (size_t)n - 1);
    header[hlen - 1] = '\n';

    unsigned char pre[10];
    memcpy(pre, MAGIC, sizeof MAGIC);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)(hlen >> 8);

    FILE *f = fopen(path, "wb");
    if (!f) return fail(errbuf, errlen, path, "cannot create: %s", strerror(errno));
    int ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre &&
             fwrite(header, 1, hlen, f) == hlen &&
             (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        remove(path);
        return fail(errbuf, errlen, path, "write failed: %s", strerror(err));
    }
    return 0;
}

int npy_to_int32(npy_array *arr, const char *path, char *errbuf, size_t errlen) {
    if (errbuf && errlen) errbuf[0] = '\0';
    if (!arr) return fail(errbuf, errlen, path, "npy_to_int32: arr is NULL");
    if (strcmp(arr->dtype, "<i4") == 0) return 0;
    if (strcmp(arr->dtype, "<i8") != 0)
        return fail(errbuf, errlen, path, "dtype is %s, expected an integer dtype <i4 or <i8",
                    arr->dtype[0] ? arr->dtype : "(none)");
    const int64_t *src = (const int64_t *)arr->data;
    for (int64_t i = 0; i < arr->count; i++) {
        int64_t v = src[i];
        if (v < INT32_MIN || v > INT32_MAX)
            return fail(errbuf, errlen, path,
                        "element %lld (%lld) does not fit in int32", (long long)i, (long long)v);
    }
    int32_t *dst = (int32_t *)malloc(arr->count ? (size_t)arr->count * 4 : 1);
    if (!dst) return fail(errbuf, errlen, path, "out of memory converting int64 to int32");
    for (int64_t i = 0; i < arr->count; i++) dst[i] = (int32_t)src[i];
    free(arr->data);
    arr->data = dst;
    snprintf(arr->dtype, sizeof arr->dtype, "<i4");
    arr->itemsize = 4;
    arr->nbytes = (size_t)arr->count * 4;
    return 0;
}
