/* The row budget's one atomic step (service/api/budget.py explains the rule and its units).
 *
 * Each API key has one 64-bit slot in memory shared by every gunicorn worker: its theoretical
 * arrival time (GCRA), the monotonic-clock instant at which the key's debt would be fully paid.
 * A compare-and-swap loop updates it, so workers never wait on each other and a worker killed in
 * the middle of a request cannot leave a lock held. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define SLOT_BYTES 64 /* one cache line per key: keys spent by different workers do not contend */
#define TIME_LIMIT (1LL << 62) /* instants and durations below it (146 years): no sum of two overflows */

/* An integer argument in [0, TIME_LIMIT); -1 with an exception set. */
static long long nanoseconds(PyObject *arg, const char *name) {
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) return -1;
    if (ns < 0 || ns >= TIME_LIMIT) {
        PyErr_Format(PyExc_ValueError, "%s must be in [0, 2**62) ns", name);
        return -1;
    }
    return ns;
}

/* spend(memory, slot, now_ns, cost_ns, tolerance_ns) -> 0 if admitted (the cost is added to the
 * key's debt), else the nanoseconds until a request from this key would be admitted. */
static PyObject *spend(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "spend(memory, slot, now_ns, cost_ns, tolerance_ns)");
        return NULL;
    }
    /* One at a time: a conversion can run Python code (__index__), never with an error pending. */
    Py_ssize_t slot = PyLong_AsSsize_t(args[1]);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    long long now = nanoseconds(args[2], "now_ns"), cost, tolerance;
    if (now < 0 || (cost = nanoseconds(args[3], "cost_ns")) < 0 || (tolerance = nanoseconds(args[4], "tolerance_ns")) < 0)
        return NULL;
    Py_buffer memory;
    if (PyObject_GetBuffer(args[0], &memory, PyBUF_WRITABLE) < 0) return NULL;
    if (slot < 0 || slot >= memory.len / SLOT_BYTES || ((uintptr_t)memory.buf % sizeof(int64_t)) != 0) {
        PyBuffer_Release(&memory);
        PyErr_SetString(PyExc_IndexError, "no such budget slot");
        return NULL;
    }
    int64_t *tat = (int64_t *)((char *)memory.buf + slot * SLOT_BYTES);
    int64_t seen = __atomic_load_n(tat, __ATOMIC_ACQUIRE);
    long long wait = 0;
    for (;;) {
        if (seen - now > tolerance) { /* the debt still exceeds the burst */
            wait = seen - now - tolerance;
            break;
        }
        int64_t next = (seen > now ? seen : now) + cost;
        if (__atomic_compare_exchange_n(tat, &seen, next, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
    }
    PyBuffer_Release(&memory);
    return PyLong_FromLongLong(wait);
}

static PyMethodDef methods[] = {
    {"spend", (PyCFunction)(void (*)(void))spend, METH_FASTCALL, "Spend from one key's shared budget, atomically."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_budget", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__budget(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "SLOT_BYTES", SLOT_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
