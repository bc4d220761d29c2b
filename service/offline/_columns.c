/* A table's feature columns (float64, one array a feature) to the walker's input in one pass.
 *
 * `rows` writes the row-major float32 matrix the walker reads, and for every row two bit sets
 * (bit j = feature j): the features the service would refuse (NaN, +-inf, beyond the float32
 * range: !(|x| <= FLT_MAX), NaN included by the negation) and the features out of distribution
 * (low[j] > x or high[j] < x, the same double comparisons as service/engine/ood.py, so NaN is never
 * out). Each float64 becomes float32 by C's conversion (round to nearest even), as numpy's
 * astype and sklearn's check_array round it. Rows are done in blocks that fit in L1, so that each
 * column is read in order and the block's rows are written once. Given the positions of its
 * columns, it does some of a row's columns only (their places and bits), the rest of each row left
 * as it is: processes converting different columns of the same rows, whose bit sets are then OR-ed.
 *
 * `names` turns the out-of-distribution bit sets into the Arrow string column the service's
 * comma-separated names make: one offsets buffer (int32, rows + 1) and one data buffer. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_COLUMNS 32 /* one bit a feature in a uint32 */
#define BLOCK 256      /* rows a block: 256 x 32 floats = 32 KiB */

/* "d", "=d" or "@d"; "<d" on a little-endian machine (numpy writes "=d" for an unaligned array). */
static int native_double(const char *format) {
    if (format == NULL) return 1;
    if (format[0] == '=' || format[0] == '@' || (format[0] == '<' && PY_LITTLE_ENDIAN)) format++;
    return strcmp(format, "d") == 0;
}

static PyObject *rows(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *columns, *positions = NULL;
    Py_buffer low, high, out, bad, outside;
    if (!PyArg_ParseTuple(args, "O!y*y*w*w*w*|O!", &PyTuple_Type, &columns, &low, &high, &out, &bad, &outside,
                          &PyTuple_Type, &positions))
        return NULL;
    const Py_ssize_t k = PyTuple_GET_SIZE(columns), width = low.len / (Py_ssize_t)sizeof(double);
    Py_buffer views[MAX_COLUMNS];
    int at[MAX_COLUMNS]; /* where column j goes in a row, and its bit */
    Py_ssize_t held = 0, n = -1;
    PyObject *result = NULL;
    if (k < 1 || k > MAX_COLUMNS || width > MAX_COLUMNS || (positions ? PyTuple_GET_SIZE(positions) != k : width != k)) {
        PyErr_Format(PyExc_ValueError, "between 1 and %d columns, a position each, in rows of at most %d", MAX_COLUMNS,
                     MAX_COLUMNS);
        goto done;
    }
    /* Each column's place in the row: its own (all the row's columns), or the one given (some of them, so
     * that processes can each convert some columns of the same rows). */
    for (Py_ssize_t j = 0; j < k; j++) {
        const long place = positions ? PyLong_AsLong(PyTuple_GET_ITEM(positions, j)) : (long)j;
        if (place == -1 && PyErr_Occurred()) goto done;
        if (place < 0 || place >= width) {
            PyErr_SetString(PyExc_ValueError, "a position is outside the row");
            goto done;
        }
        at[j] = (int)place;
    }
    for (; held < k; held++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(columns, held), &views[held], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        const Py_buffer *v = &views[held];
        if (v->itemsize != sizeof(double) || !native_double(v->format)) {
            held++;
            PyErr_SetString(PyExc_TypeError, "every column must hold float64");
            goto done;
        }
        const Py_ssize_t length = v->len / (Py_ssize_t)sizeof(double);
        if (n >= 0 && length != n) {
            held++;
            PyErr_SetString(PyExc_ValueError, "the columns differ in length");
            goto done;
        }
        n = length;
    }
    if (low.len != width * (Py_ssize_t)sizeof(double) || high.len != width * (Py_ssize_t)sizeof(double) ||
        out.len != n * width * (Py_ssize_t)sizeof(float) || bad.len != n * (Py_ssize_t)sizeof(uint32_t) ||
        outside.len != n * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "low and high need a double a feature; out a float a feature and row; bad and outside a uint32 a row");
        goto done;
    }
    const double *lo = low.buf, *hi = high.buf;
    float *X = out.buf;
    uint32_t *refused = bad.buf, *far = outside.buf;
    Py_ssize_t refused_rows = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        const Py_ssize_t m = start + BLOCK < n ? BLOCK : n - start;
        uint32_t no[BLOCK], out_of[BLOCK];
        float *restrict rows_out = X + start * width;
        for (Py_ssize_t i = 0; i < m; i++) no[i] = out_of[i] = 0;
        for (Py_ssize_t j = 0; j < k; j++) {
            const double *restrict column = (const double *)views[j].buf + start;
            const int place = at[j];
            const double l = lo[place], h = hi[place];
            const uint32_t bit = (uint32_t)1 << place;
            for (Py_ssize_t i = 0; i < m; i++) {
                const double x = column[i];
                rows_out[i * width + place] = (float)x;
                no[i] |= (fabs(x) <= (double)FLT_MAX) ? 0 : bit;
                out_of[i] |= (l > x || h < x) ? bit : 0;
            }
        }
        for (Py_ssize_t i = 0; i < m; i++) {
            refused[start + i] = no[i];
            far[start + i] = out_of[i];
            refused_rows += no[i] != 0;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(refused_rows);
done:
    for (Py_ssize_t j = 0; j < held; j++) PyBuffer_Release(&views[j]);
    PyBuffer_Release(&low);
    PyBuffer_Release(&high);
    PyBuffer_Release(&out);
    PyBuffer_Release(&bad);
    PyBuffer_Release(&outside);
    return result;
}

static PyObject *names(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer codes;
    PyObject *labels;
    if (!PyArg_ParseTuple(args, "y*O!", &codes, &PyTuple_Type, &labels)) return NULL;
    PyObject *result = NULL, *offsets = NULL, *data = NULL;
    const Py_ssize_t k = PyTuple_GET_SIZE(labels), n = codes.len / (Py_ssize_t)sizeof(uint32_t);
    const char *text[MAX_COLUMNS];
    Py_ssize_t size[MAX_COLUMNS];
    if (k > MAX_COLUMNS || codes.len % (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_Format(PyExc_ValueError, "at most %d labels; codes a uint32 a row", MAX_COLUMNS);
        goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *label = PyTuple_GET_ITEM(labels, j);
        if (!PyBytes_Check(label)) {
            PyErr_SetString(PyExc_TypeError, "labels must be bytes");
            goto done;
        }
        text[j] = PyBytes_AS_STRING(label);
        size[j] = PyBytes_GET_SIZE(label);
    }
    const uint32_t *code = codes.buf;
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t c = code[i];
        if (k < 32) c &= ((uint32_t)1 << k) - 1;
        for (int commas = -1; c; c &= c - 1, commas++) total += size[__builtin_ctz(c)] + (commas >= 0);
    }
    if (total > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "the names exceed a string column's 2 GiB");
        goto done;
    }
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int32_t));
    data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!offsets || !data) goto done;
    int32_t *offset = (int32_t *)PyBytes_AS_STRING(offsets);
    char *at = PyBytes_AS_STRING(data), *const first = at;
    offset[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t c = code[i];
        if (k < 32) c &= ((uint32_t)1 << k) - 1;
        for (int comma = 0; c; c &= c - 1, comma = 1) {
            const int j = __builtin_ctz(c);
            if (comma) *at++ = ',';
            memcpy(at, text[j], (size_t)size[j]);
            at += size[j];
        }
        offset[i + 1] = (int32_t)(at - first);
    }
    result = PyTuple_Pack(2, offsets, data);
done:
    Py_XDECREF(offsets);
    Py_XDECREF(data);
    PyBuffer_Release(&codes);
    return result;
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS,
     "rows(columns, low, high, out, bad, outside[, positions]) -> refused rows: float64 columns to float32 rows, "
     "refused and out-of-distribution bit sets a row; with positions, the columns are some of the row's, "
     "written at those places (and bits), the rest of each row left as it is"},
    {"names", names, METH_VARARGS,
     "names(codes, labels) -> (offsets, data): each row's labels for its set bits, comma-separated, "
     "as an Arrow string column's buffers"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_columns", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__columns(void) { return PyModule_Create(&module); }
