/* Reads decoded JSON objects (dicts) into a float64 matrix and checks them against a flat-numbers
 * schema in the same pass: every named key present, every value a number within [low, high].
 *
 * It answers only what it can answer exactly as jsonschema would, and says "undecided" for the
 * rest, which Python then decides with the per-item validator (service/schema.py):
 *   - a float, or an int of at most 2**53 in magnitude (so that the comparison with a double bound
 *     is exact), is checked here; a bound fails only on < or > (NaN passes, as in jsonschema);
 *   - an item that is not a dict, or lacks a key, is invalid;
 *   - anything else (bool, str, None, containers, larger ints, other number types) is undecided.
 * One C pass replaces three Python passes (look-ups, type checks, conversion) over 30 values a row. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { ROWS_VALID = 0, ROWS_INVALID = 1, ROWS_UNDECIDED = 2 };
#define EXACT_INT_LIMIT (1LL << 53)

static PyObject *fill(PyObject *self, PyObject *args) {
    PyObject *items, *keys;
    Py_buffer low, high, out;
    if (!PyArg_ParseTuple(args, "O!O!y*y*w*", &PyList_Type, &items, &PyTuple_Type, &keys, &low, &high, &out))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = PyList_GET_SIZE(items), k = PyTuple_GET_SIZE(keys);
    if (low.len != k * (Py_ssize_t)sizeof(double) || high.len != k * (Py_ssize_t)sizeof(double) ||
        out.len != n * k * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "low and high need one double per key, out one per key and item");
        goto done;
    }
    const double *lo = low.buf, *hi = high.buf;
    double *row = out.buf;
    int verdict = ROWS_VALID;
    for (Py_ssize_t i = 0; i < n && verdict == ROWS_VALID; i++, row += k) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyDict_Check(item)) {
            verdict = ROWS_INVALID;
            break;
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *value = PyDict_GetItemWithError(item, PyTuple_GET_ITEM(keys, j));
            double x;
            if (value == NULL) {
                if (PyErr_Occurred()) goto done;
                verdict = ROWS_INVALID;
                break;
            }
            if (PyFloat_CheckExact(value)) {
                x = PyFloat_AS_DOUBLE(value);
            } else if (PyLong_CheckExact(value)) {
                int overflow;
                long long whole = PyLong_AsLongLongAndOverflow(value, &overflow);
                if (overflow || whole > EXACT_INT_LIMIT || whole < -EXACT_INT_LIMIT) {
                    verdict = ROWS_UNDECIDED;
                    break;
                }
                x = (double)whole;
            } else {
                verdict = ROWS_UNDECIDED;
                break;
            }
            if (x < lo[j] || x > hi[j]) {
                verdict = ROWS_INVALID;
                break;
            }
            row[j] = x;
        }
    }
    result = PyLong_FromLong(verdict);
done:
    PyBuffer_Release(&low);
    PyBuffer_Release(&high);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(items, keys, low, high, out) -> 0 valid (out filled), 1 invalid, 2 undecided"},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
    if (PyModule_AddIntConstant(module, "VALID", ROWS_VALID) < 0) return -1;
    if (PyModule_AddIntConstant(module, "INVALID", ROWS_INVALID) < 0) return -1;
    return PyModule_AddIntConstant(module, "UNDECIDED", ROWS_UNDECIDED);
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rows",
    .m_doc = "Flat-numbers rows: read and validated in one pass.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__rows(void) { return PyModuleDef_Init(&module_def); }
