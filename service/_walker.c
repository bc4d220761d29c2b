/* Walks a random forest stored as one array of packed nodes (possibly memory-mapped, read-only).
 *
 * Bit-identical to scikit-learn's predict_proba. sklearn rounds each feature to float32 and
 * compares (double)x32 <= threshold64; a node here holds the threshold rounded *down* to float32,
 * the largest float32 <= threshold64, and for any float32 x, x <= that float32 exactly when
 * x <= threshold64: the same branch, compared in float32. Leaf class-1 fractions are summed in
 * tree order in double precision and divided by the number of trees, exactly as
 * ForestClassifier.predict_proba accumulates them.
 *
 * A node is 16 bytes, everything one step of the walk reads: one cache line access a level. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    float threshold;  /* rounded down to float32; unused on leaves */
    int32_t feature;  /* < 0 on leaves */
    int32_t left, right;
} Node;

typedef struct {
    PyObject_HEAD
    Py_buffer nodes, value, roots;
    int buffers_held;
    int left_is_next; /* every left child is its parent's next node, as sklearn's depth-first builder lays them out */
    Py_ssize_t n_nodes, n_trees, n_features;
} Walker;

#define NODES(w) ((const Node *)(w)->nodes.buf)
#define ROOTS(w) ((const int32_t *)(w)->roots.buf)

#define CHILD(n, x, f, left_is_next) \
    (((x)[f] <= nodes[n].threshold) ? ((left_is_next) ? (n) + 1 : nodes[n].left) : nodes[n].right)

static inline int32_t step(const Node *n, const float *x) {
    return (x[n->feature] <= n->threshold) ? n->left : n->right;
}

static inline int32_t leaf_of(const Node *nodes, int32_t node, const float *x) {
    while (nodes[node].feature >= 0) node = step(&nodes[node], x);
    return node;
}

/* One row, four trees at a time (the same overlap of loads as add_tree's four rows); the leaves'
 * values are still added in tree order. */
static double forest_proba(const Walker *w, const float *x) {
    const Node *nodes = NODES(w);
    const int32_t *roots = ROOTS(w);
    const double *value = w->value.buf;
    double total = 0.0;
    Py_ssize_t t = 0;
    for (; t + 4 <= w->n_trees; t += 4) {
        int32_t n0 = roots[t], n1 = roots[t + 1], n2 = roots[t + 2], n3 = roots[t + 3];
        for (;;) {
            int32_t f0 = nodes[n0].feature, f1 = nodes[n1].feature, f2 = nodes[n2].feature, f3 = nodes[n3].feature;
            if ((f0 & f1 & f2 & f3) < 0) break;
            if (f0 >= 0) n0 = CHILD(n0, x, f0, 0);
            if (f1 >= 0) n1 = CHILD(n1, x, f1, 0);
            if (f2 >= 0) n2 = CHILD(n2, x, f2, 0);
            if (f3 >= 0) n3 = CHILD(n3, x, f3, 0);
        }
        total += value[n0];
        total += value[n1];
        total += value[n2];
        total += value[n3];
    }
    for (; t < w->n_trees; t++) total += value[leaf_of(nodes, roots[t], x)];
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

/* Four rows walk one tree together: each step of one row waits on a load, and the other three
 * rows' loads fill that wait (4 rows beat 1 and 8: perf/README.md). With
 * left_is_next a constant, the compiler makes two copies; the depth-first one saves a load a step. */

static inline void add_tree(const Node *nodes, int32_t root, const double *value, const float *x, Py_ssize_t nf,
                            Py_ssize_t n_rows, double *proba, const int left_is_next) {
    Py_ssize_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const float *x0 = x + r * nf, *x1 = x0 + nf, *x2 = x1 + nf, *x3 = x2 + nf;
        int32_t n0 = root, n1 = root, n2 = root, n3 = root;
        for (;;) {
            int32_t f0 = nodes[n0].feature, f1 = nodes[n1].feature, f2 = nodes[n2].feature, f3 = nodes[n3].feature;
            if ((f0 & f1 & f2 & f3) < 0) break; /* all four at leaves: every sign bit set */
            if (f0 >= 0) n0 = CHILD(n0, x0, f0, left_is_next);
            if (f1 >= 0) n1 = CHILD(n1, x1, f1, left_is_next);
            if (f2 >= 0) n2 = CHILD(n2, x2, f2, left_is_next);
            if (f3 >= 0) n3 = CHILD(n3, x3, f3, left_is_next);
        }
        proba[r] += value[n0];
        proba[r + 1] += value[n1];
        proba[r + 2] += value[n2];
        proba[r + 3] += value[n3];
    }
    for (; r < n_rows; r++) proba[r] += value[leaf_of(nodes, root, x + r * nf)];
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
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n_rows; r++) proba[r] = 0.0;
    for (Py_ssize_t t = 0; t < w->n_trees; t++) {
        if (w->left_is_next)
            add_tree(NODES(w), ROOTS(w)[t], w->value.buf, x, w->n_features, n_rows, proba, 1);
        else
            add_tree(NODES(w), ROOTS(w)[t], w->value.buf, x, w->n_features, n_rows, proba, 0);
    }
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
    const Node *nodes = NODES(w);
    const double *value = w->value.buf;
    double *contribution = out.buf, bias = 0.0, total = 0.0;
    for (Py_ssize_t f = 0; f < w->n_features; f++) contribution[f] = 0.0;
    for (Py_ssize_t t = 0; t < w->n_trees; t++) {
        int32_t node = ROOTS(w)[t];
        bias += value[node];
        while (nodes[node].feature >= 0) {
            int32_t next = step(&nodes[node], x);
            contribution[nodes[node].feature] += value[next] - value[node];
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
    if (view->len % itemsize != 0 || (count >= 0 && view->len != count * itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, view->len,
                     count >= 0 ? count * itemsize : itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int Walker_init(Walker *w, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"nodes", "value", "roots", "n_features", NULL};
    PyObject *nodes, *value, *roots;
    Py_ssize_t n_features;
    if (w->buffers_held) {
        PyErr_SetString(PyExc_RuntimeError, "Walker is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOn", kwlist, &nodes, &value, &roots, &n_features))
        return -1;
    if (n_features < 1 || n_features > MAX_FEATURES) {
        PyErr_SetString(PyExc_ValueError, "n_features out of range");
        return -1;
    }
    if (hold(nodes, &w->nodes, sizeof(Node), -1, "nodes") < 0) return -1;
    Py_ssize_t n = w->nodes.len / (Py_ssize_t)sizeof(Node);
    if (hold(value, &w->value, sizeof(double), n, "value") < 0) goto fail_nodes;
    if (hold(roots, &w->roots, sizeof(int32_t), -1, "roots") < 0) goto fail_value;
    w->n_nodes = n;
    w->n_trees = w->roots.len / (Py_ssize_t)sizeof(int32_t);
    w->n_features = n_features;
    /* Validate once here so the walk itself needs no bounds checks. */
    const Node *node = w->nodes.buf;
    const int32_t *root = w->roots.buf;
    const char *bad = NULL;
    w->left_is_next = 1;
    if (w->n_trees < 1) bad = "the forest has no trees";
    for (Py_ssize_t t = 0; !bad && t < w->n_trees; t++)
        if (root[t] < 0 || root[t] >= n) bad = "a tree root is out of range";
    for (Py_ssize_t i = 0; !bad && i < n; i++) {
        if (node[i].feature < 0) continue;
        /* Children always come after their parent, which also rules out cycles. */
        if (node[i].left <= i || node[i].left >= n || node[i].right <= i || node[i].right >= n)
            bad = "a child index is out of range";
        else if (node[i].feature >= n_features) bad = "a split feature is out of range";
        if (node[i].left != i + 1) w->left_is_next = 0;
    }
    if (!bad) { w->buffers_held = 1; return 0; }
    PyErr_Format(PyExc_ValueError, "invalid forest arrays: %s", bad);
    PyBuffer_Release(&w->roots);
fail_value: PyBuffer_Release(&w->value);
fail_nodes: PyBuffer_Release(&w->nodes);
    return -1;
}

static void Walker_dealloc(Walker *w) {
    if (w->buffers_held) {
        PyBuffer_Release(&w->nodes);
        PyBuffer_Release(&w->value);
        PyBuffer_Release(&w->roots);
    }
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *Walker_get_n_trees(Walker *w, void *closure) { return PyLong_FromSsize_t(w->n_trees); }
static PyObject *Walker_get_n_nodes(Walker *w, void *closure) { return PyLong_FromSsize_t(w->n_nodes); }
static PyObject *Walker_get_left_is_next(Walker *w, void *closure) { return PyBool_FromLong(w->left_is_next); }

static PyGetSetDef Walker_getset[] = {
    {"n_trees", (getter)Walker_get_n_trees, NULL, "number of trees", NULL},
    {"n_nodes", (getter)Walker_get_n_nodes, NULL, "number of nodes in all trees", NULL},
    {"left_is_next", (getter)Walker_get_left_is_next, NULL, "whether every left child follows its parent", NULL},
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
    .tp_doc = "A random forest over packed, possibly memory-mapped, nodes.",
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
    if (PyModule_AddIntConstant(m, "NODE_SIZE", (long)sizeof(Node)) < 0 ||
        PyModule_AddObjectRef(m, "Walker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
