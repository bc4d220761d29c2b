/* Walks a random forest stored as flat node arrays (possibly memory-mapped, read-only).
 *
 * Bit-identical to scikit-learn's predict_proba: each feature is rounded to float32 first and
 * compared as (double)x32 <= threshold64, exactly as sklearn's Tree.apply does; leaf class-1
 * fractions are summed in tree order in double precision and divided by the number of trees,
 * exactly as ForestClassifier.predict_proba accumulates them. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    Py_buffer left, right, feature, threshold, value, roots;
    int buffers_held;
    Py_ssize_t n_nodes, n_trees, n_features;
} Walker;

static inline Py_ssize_t leaf_of(const Walker *w, Py_ssize_t tree, const float *x) {
    const int32_t *left = w->left.buf, *right = w->right.buf, *feature = w->feature.buf;
    const double *threshold = w->threshold.buf;
    Py_ssize_t node = ((const int32_t *)w->roots.buf)[tree];
    while (left[node] >= 0)
        node = ((double)x[feature[node]] <= threshold[node]) ? left[node] : right[node];
    return node;
}

static double forest_proba(const Walker *w, const float *x) {
    const double *value = w->value.buf;
    double total = 0.0;
    for (Py_ssize_t t = 0; t < w->n_trees; t++) total += value[leaf_of(w, t, x)];
    return total / (double)w->n_trees;
}

/* Reads a Python sequence of numbers into a float32 row; 0 on success, -1 with an exception set. */
static int read_row(const Walker *w, PyObject *seq, float *x) {
    PyObject *fast = PySequence_Fast(seq, "row must be a sequence of numbers");
    if (!fast) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != w->n_features) {
        PyErr_Format(PyExc_ValueError, "row has %zd values, the model takes %zd",
                     PySequence_Fast_GET_SIZE(fast), w->n_features);
        Py_DECREF(fast);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < w->n_features; i++) {
        double d = PyFloat_AsDouble(items[i]);
        if (d == -1.0 && PyErr_Occurred()) { Py_DECREF(fast); return -1; }
        x[i] = (float)d;
    }
    Py_DECREF(fast);
    return 0;
}

#define MAX_FEATURES 4096

static PyObject *Walker_predict_row(Walker *w, PyObject *seq) {
    float x[MAX_FEATURES];
    if (read_row(w, seq, x) < 0) return NULL;
    return PyFloat_FromDouble(forest_proba(w, x));
}

/* predict_rows(X, out): X a C-contiguous float32 buffer of n_rows * n_features, out a writable
 * float64 buffer of n_rows. Trees are the outer loop so each tree's nodes stay in cache; every
 * row still sums its trees in tree order. */
static PyObject *Walker_predict_rows(Walker *w, PyObject *args) {
    Py_buffer X, out;
    if (!PyArg_ParseTuple(args, "y*w*", &X, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_rows = out.len / (Py_ssize_t)sizeof(double);
    if (X.len != n_rows * w->n_features * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "X must hold n_rows * n_features float32 values");
        goto done;
    }
    const float *x = X.buf;
    double *proba = out.buf;
    const double *value = w->value.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n_rows; r++) proba[r] = 0.0;
    for (Py_ssize_t t = 0; t < w->n_trees; t++)
        for (Py_ssize_t r = 0; r < n_rows; r++)
            proba[r] += value[leaf_of(w, t, x + r * w->n_features)];
    for (Py_ssize_t r = 0; r < n_rows; r++) proba[r] /= (double)w->n_trees;
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&X);
    PyBuffer_Release(&out);
    return result;
}

/* explain_row(seq, out) -> (proba, bias): the exact path decomposition. out, a writable float64
 * buffer of n_features, receives each feature's contribution: along every tree's path, the change
 * of the node's class-1 fraction is credited to the feature split on, and all is averaged over
 * trees, so that bias + sum(out) == proba up to rounding. */
static PyObject *Walker_explain_row(Walker *w, PyObject *args) {
    PyObject *seq;
    Py_buffer out;
    float x[MAX_FEATURES];
    if (!PyArg_ParseTuple(args, "Ow*", &seq, &out)) return NULL;
    PyObject *result = NULL;
    if (out.len != w->n_features * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "out must hold n_features float64 values");
        goto done;
    }
    if (read_row(w, seq, x) < 0) goto done;
    const int32_t *left = w->left.buf, *right = w->right.buf, *feature = w->feature.buf;
    const double *threshold = w->threshold.buf, *value = w->value.buf;
    double *contribution = out.buf, bias = 0.0, total = 0.0;
    for (Py_ssize_t f = 0; f < w->n_features; f++) contribution[f] = 0.0;
    for (Py_ssize_t t = 0; t < w->n_trees; t++) {
        Py_ssize_t node = ((const int32_t *)w->roots.buf)[t];
        bias += value[node];
        while (left[node] >= 0) {
            Py_ssize_t next = ((double)x[feature[node]] <= threshold[node]) ? left[node] : right[node];
            contribution[feature[node]] += value[next] - value[node];
            node = next;
        }
        total += value[node];
    }
    for (Py_ssize_t f = 0; f < w->n_features; f++) contribution[f] /= (double)w->n_trees;
    result = Py_BuildValue("dd", total / (double)w->n_trees, bias / (double)w->n_trees);
done:
    PyBuffer_Release(&out);
    return result;
}

static int hold(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t count, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (count >= 0 && view->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, view->len, count * itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int Walker_init(Walker *w, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"left", "right", "feature", "threshold", "value", "roots", "n_features", NULL};
    PyObject *left, *right, *feature, *threshold, *value, *roots;
    Py_ssize_t n_features;
    if (w->buffers_held) {
        PyErr_SetString(PyExc_RuntimeError, "Walker is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOn", kwlist, &left, &right, &feature,
                                     &threshold, &value, &roots, &n_features))
        return -1;
    if (n_features < 1 || n_features > MAX_FEATURES) {
        PyErr_SetString(PyExc_ValueError, "n_features out of range");
        return -1;
    }
    if (hold(left, &w->left, 4, -1, "left") < 0) return -1;
    Py_ssize_t n = w->left.len / 4;
    if (hold(right, &w->right, 4, n, "right") < 0) goto fail_left;
    if (hold(feature, &w->feature, 4, n, "feature") < 0) goto fail_right;
    if (hold(threshold, &w->threshold, 8, n, "threshold") < 0) goto fail_feature;
    if (hold(value, &w->value, 8, n, "value") < 0) goto fail_threshold;
    if (hold(roots, &w->roots, 4, -1, "roots") < 0) goto fail_value;
    w->n_nodes = n;
    w->n_trees = w->roots.len / 4;
    w->n_features = n_features;
    /* Validate once here so the walk itself needs no bounds checks. */
    const int32_t *l = w->left.buf, *r = w->right.buf, *f = w->feature.buf, *root = w->roots.buf;
    const char *bad = NULL;
    if (w->n_trees < 1) bad = "the forest has no trees";
    for (Py_ssize_t t = 0; !bad && t < w->n_trees; t++)
        if (root[t] < 0 || root[t] >= n) bad = "a tree root is out of range";
    for (Py_ssize_t i = 0; !bad && i < n; i++) {
        if (l[i] < 0) continue;
        /* Children always come after their parent, which also rules out cycles. */
        if (l[i] <= i || l[i] >= n || r[i] <= i || r[i] >= n) bad = "a child index is out of range";
        else if (f[i] < 0 || f[i] >= n_features) bad = "a split feature is out of range";
    }
    if (!bad) { w->buffers_held = 1; return 0; }
    PyErr_Format(PyExc_ValueError, "invalid forest arrays: %s", bad);
    PyBuffer_Release(&w->roots);
fail_value: PyBuffer_Release(&w->value);
fail_threshold: PyBuffer_Release(&w->threshold);
fail_feature: PyBuffer_Release(&w->feature);
fail_right: PyBuffer_Release(&w->right);
fail_left: PyBuffer_Release(&w->left);
    return -1;
}

static void Walker_dealloc(Walker *w) {
    if (w->buffers_held) {
        PyBuffer_Release(&w->left); PyBuffer_Release(&w->right); PyBuffer_Release(&w->feature);
        PyBuffer_Release(&w->threshold); PyBuffer_Release(&w->value); PyBuffer_Release(&w->roots);
    }
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *Walker_get_n_trees(Walker *w, void *closure) { return PyLong_FromSsize_t(w->n_trees); }
static PyObject *Walker_get_n_nodes(Walker *w, void *closure) { return PyLong_FromSsize_t(w->n_nodes); }

static PyGetSetDef Walker_getset[] = {
    {"n_trees", (getter)Walker_get_n_trees, NULL, "number of trees", NULL},
    {"n_nodes", (getter)Walker_get_n_nodes, NULL, "number of nodes in all trees", NULL},
    {NULL}
};

static PyMethodDef Walker_methods[] = {
    {"predict_row", (PyCFunction)Walker_predict_row, METH_O, "P(class 1) of one row of numbers."},
    {"predict_rows", (PyCFunction)Walker_predict_rows, METH_VARARGS, "predict_rows(X_float32, out_float64)"},
    {"explain_row", (PyCFunction)Walker_explain_row, METH_VARARGS, "explain_row(row, out) -> (proba, bias)"},
    {NULL}
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "service._walker.Walker",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A random forest over flat node arrays.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Walker_init,
    .tp_dealloc = (destructor)Walker_dealloc,
    .tp_methods = Walker_methods,
    .tp_getset = Walker_getset,
};

static struct PyModuleDef walker_module = {PyModuleDef_HEAD_INIT, "_walker", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__walker(void) {
    if (PyType_Ready(&WalkerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&walker_module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Walker", (PyObject *)&WalkerType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
