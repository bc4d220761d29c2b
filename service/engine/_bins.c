/* Counts scored rows into per-column bins (drift against the training distribution).
 *
 * A row's column c lands in bin k = the number of column c's edges <= value, as numpy's
 * searchsorted(edges, value, side="right"), which is how the training shares were computed.
 * Columns are the row's features followed by its fraud-score. The counts are a writable int64
 * buffer (in the service, a file in the metrics directory mapped by this worker alone), so that
 * a count is one increment in shared memory and nothing needs flushing. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    Py_buffer edges;  /* float64: every column's edges, one column after another */
    Py_buffer starts; /* int64, n_columns + 1: column c's edges are edges[starts[c]:starts[c + 1]] */
    Py_buffer counts; /* int64, writable: column c's bins are counts[starts[c] + c : starts[c + 1] + c + 1] */
    int held;
    Py_ssize_t n_columns;
} Bins;

/* The number of edges <= v. A few edges (the deciles: 9, the score's: 10) are counted one by one,
 * with no branch on the data and no chain of dependent loads (live rows are unpredictable, and a
 * mispredicted branch costs more than the comparisons); more by a binary search without
 * data-dependent branches (a conditional move a step). */
#define FEW_EDGES 16
static inline Py_ssize_t bin_of(const double *e, Py_ssize_t n, double v) {
    if (n <= FEW_EDGES) {
        Py_ssize_t k = 0;
        for (Py_ssize_t i = 0; i < n; i++) k += e[i] <= v;
        return k;
    }
    const double *base = e;
    while (n > 1) {
        Py_ssize_t half = n >> 1;
        base = (base[half - 1] <= v) ? base + half : base;
        n -= half;
    }
    return (base - e) + (base[0] <= v);
}

static inline void count(Bins *b, Py_ssize_t c, double v) {
    const double *edges = b->edges.buf;
    const int64_t *starts = b->starts.buf;
    int64_t *counts = b->counts.buf;
    int64_t s = starts[c];
    counts[s + c + bin_of(edges + s, starts[c + 1] - s, v)] += 1;
}

static void Bins_dealloc(Bins *self) {
    if (self->held) {
        PyBuffer_Release(&self->edges);
        PyBuffer_Release(&self->starts);
        PyBuffer_Release(&self->counts);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Bins_init(Bins *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"edges", "starts", "counts", NULL};
    PyObject *edges, *starts, *counts;
    if (self->held) {
        PyErr_SetString(PyExc_RuntimeError, "Bins is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &edges, &starts, &counts)) return -1;
    if (PyObject_GetBuffer(edges, &self->edges, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (PyObject_GetBuffer(starts, &self->starts, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&self->edges);
        return -1;
    }
    if (PyObject_GetBuffer(counts, &self->counts, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&self->edges);
        PyBuffer_Release(&self->starts);
        return -1;
    }
    self->held = 1;
    const char *why = NULL;
    if (self->edges.itemsize != 8 || self->edges.format[0] != 'd') why = "edges must be float64";
    else if (self->starts.itemsize != 8 || (self->starts.format[0] != 'l' && self->starts.format[0] != 'q'))
        why = "starts must be int64";
    else if (self->counts.itemsize != 8 || (self->counts.format[0] != 'l' && self->counts.format[0] != 'q'))
        why = "counts must be int64";
    if (!why) {
        Py_ssize_t n_starts = self->starts.len / 8;
        const int64_t *s = self->starts.buf;
        self->n_columns = n_starts - 1;
        if (self->n_columns < 1 || s[0] != 0 || s[self->n_columns] != self->edges.len / 8) why = "starts do not match edges";
        for (Py_ssize_t c = 0; !why && c < self->n_columns; c++)
            if (s[c + 1] < s[c]) why = "starts must not decrease";
        if (!why && self->counts.len / 8 != self->edges.len / 8 + self->n_columns)
            why = "counts must hold one more bin than edges per column";
    }
    if (why) {
        PyErr_SetString(PyExc_ValueError, why);
        return -1;
    }
    return 0;
}

/* add(row, score): row is a sequence of the n_columns - 1 feature values. */
static PyObject *Bins_add(Bins *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(row, score)");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(args[0], "row must be a sequence of numbers");
    if (!fast) return NULL;
    Py_ssize_t n = self->n_columns - 1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(PyExc_ValueError, "row has %zd values, expected %zd", PySequence_Fast_GET_SIZE(fast), n);
        Py_DECREF(fast);
        return NULL;
    }
    double values[256];
    double *v = n + 1 <= 256 ? values : PyMem_Malloc((n + 1) * sizeof(double));
    if (!v) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t c = 0; c < n; c++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, c);
        if (PyFloat_CheckExact(item)) {
            v[c] = PyFloat_AS_DOUBLE(item);
            continue;
        }
        Py_INCREF(item); /* its __float__ may be Python code, which may change a list row */
        v[c] = PyFloat_AsDouble(item);
        Py_DECREF(item);
        if (v[c] == -1.0 && PyErr_Occurred()) goto fail;
        if (PySequence_Fast_GET_SIZE(fast) != n) {
            PyErr_SetString(PyExc_RuntimeError, "the row changed while it was read");
            goto fail;
        }
    }
    v[n] = PyFloat_AsDouble(args[1]);
    if (v[n] == -1.0 && PyErr_Occurred()) goto fail;
    /* Only once every value is read: a bad row counts nowhere. */
    for (Py_ssize_t c = 0; c <= n; c++) count(self, c, v[c]);
    if (v != values) PyMem_Free(v);
    Py_DECREF(fast);
    Py_RETURN_NONE;
fail:
    if (v != values) PyMem_Free(v);
    Py_DECREF(fast);
    return NULL;
}

/* add_rows(X, scores): X float64 C-contiguous (n, n_columns - 1), scores float64 (n,). */
static PyObject *Bins_add_rows(Bins *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_rows(X, scores)");
        return NULL;
    }
    Py_buffer x, s;
    if (PyObject_GetBuffer(args[0], &x, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &s, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    Py_ssize_t n = self->n_columns - 1;
    if (x.itemsize != 8 || x.format[0] != 'd' || x.ndim != 2 || x.shape[1] != n || s.itemsize != 8 ||
        s.format[0] != 'd' || s.ndim != 1 || s.shape[0] != x.shape[0]) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&s);
        PyErr_Format(PyExc_ValueError, "X must be float64 (rows, %zd) and scores float64 (rows,)", n);
        return NULL;
    }
    const double *X = x.buf, *scores = s.buf;
    for (Py_ssize_t r = 0; r < x.shape[0]; r++) {
        for (Py_ssize_t c = 0; c < n; c++) count(self, c, X[r * n + c]);
        count(self, n, scores[r]);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&s);
    Py_RETURN_NONE;
}

static PyMethodDef Bins_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Bins_add, METH_FASTCALL, "add(row, score): count one scored row"},
    {"add_rows", (PyCFunction)(void (*)(void))Bins_add_rows, METH_FASTCALL,
     "add_rows(X, scores): count many scored rows (float64 arrays)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BinsType = {
    .ob_base = PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "service.engine._bins.Bins",
    .tp_basicsize = sizeof(Bins),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Bins(edges, starts, counts): counts rows into per-column bins",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Bins_init,
    .tp_dealloc = (destructor)Bins_dealloc,
    .tp_methods = Bins_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_bins", .m_doc = "Drift bin counting", .m_size = -1};

PyMODINIT_FUNC PyInit__bins(void) {
    if (PyType_Ready(&BinsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&BinsType);
    if (PyModule_AddObject(m, "Bins", (PyObject *)&BinsType) < 0) {
        Py_DECREF(&BinsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
