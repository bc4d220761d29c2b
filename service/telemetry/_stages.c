/* A finished request's stage timings in one pass (service/telemetry/stages.py names the stages and
 * how each is measured): each duration into the stage histogram's samples and into the text of the
 * Server-Timing header. In Python, formatting the header's numbers and updating the histogram cost
 * about 3.5 µs a request; here well under one.
 *
 * `configure(names, bounds)` is called once, at import, in the gunicorn master: the stages' names
 * in their order and the histogram's upper bounds (+Inf last). Afterwards the module only reads
 * them, so a fork shares them as they are. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define N_STAGES 6
#define MAX_NAME 16
#define MAX_BOUNDS 64
#define HEADER_BYTES 512 /* N_STAGES * (name + ";dur=" + a number + ", ") and the app's, with room */
enum { QUEUE, READ, FETCH, SCORE, CHALLENGER, WRITE };

static char names[N_STAGES][MAX_NAME];
static double bounds[MAX_BOUNDS];
static Py_ssize_t n_bounds = 0;

static PyObject *configure(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *stage_names, *upper;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &stage_names, &PyTuple_Type, &upper)) return NULL;
    if (PyTuple_GET_SIZE(stage_names) != N_STAGES) {
        PyErr_Format(PyExc_ValueError, "configure needs the %d stages' names", N_STAGES);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(upper);
    if (n < 1 || n > MAX_BOUNDS) {
        PyErr_Format(PyExc_ValueError, "configure needs 1 to %d bounds", MAX_BOUNDS);
        return NULL;
    }
    char found[N_STAGES][MAX_NAME];
    for (Py_ssize_t i = 0; i < N_STAGES; i++) {
        Py_ssize_t size;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(stage_names, i), &size);
        if (name == NULL) return NULL;
        if (size < 1 || size >= MAX_NAME) {
            PyErr_Format(PyExc_ValueError, "a stage's name has 1 to %d characters", MAX_NAME - 1);
            return NULL;
        }
        memcpy(found[i], name, (size_t)size + 1);
    }
    double found_bounds[MAX_BOUNDS];
    for (Py_ssize_t i = 0; i < n; i++) {
        found_bounds[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(upper, i));
        if (found_bounds[i] == -1.0 && PyErr_Occurred()) return NULL;
        if (i > 0 && !(found_bounds[i] > found_bounds[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "the bounds must increase");
            return NULL;
        }
    }
    memcpy(names, found, sizeof names);
    memcpy(bounds, found_bounds, (size_t)n * sizeof(double));
    n_bounds = n;
    Py_RETURN_NONE;
}

/* A stamp's difference, in nanoseconds; -1 with an exception set when it is not an int. */
static int stamp(PyObject *arg, long long *ns) {
    *ns = PyLong_AsLongLong(arg);
    return (*ns == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Milliseconds to the microsecond, as "%.3f" would print them, from whole microseconds. */
static char *put_ms(char *at, long long us) {
    if (us < 0) {
        *at++ = '-';
        us = -us;
    }
    char digits[24];
    int n = 0;
    long long whole = us / 1000;
    do {
        digits[n++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    while (n) *at++ = digits[--n];
    int fraction = (int)(us % 1000);
    *at++ = '.';
    *at++ = (char)('0' + fraction / 100);
    *at++ = (char)('0' + fraction / 10 % 10);
    *at++ = (char)('0' + fraction % 10);
    return at;
}

/* report(values, slots, app_ms, queue, start, read, fetched, scored, challenger, end) -> str | None
 *
 * values: the histogram sample file's doubles (writable); slots: a list of N_STAGES items, each
 * None (not made yet) or a tuple (sum's slot, bucket slots in bounds' order); app_ms: the app's
 * whole time, already formatted; queue: nginx's queue wait in seconds, or None; the rest: the
 * request's perf_counter_ns stamps (0 where a stage was not reached) and the challenger's ns.
 * Returns the Server-Timing header, or None, having written nothing, when a stage measured here
 * has no slots yet (the caller makes them and calls again). */
static PyObject *report(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "report(values, slots, app_ms, queue, start, read, fetched, scored, challenger, end)");
        return NULL;
    }
    if (n_bounds == 0) {
        PyErr_SetString(PyExc_RuntimeError, "report before configure");
        return NULL;
    }
    PyObject *slots = args[1];
    if (!PyList_Check(slots) || PyList_GET_SIZE(slots) != N_STAGES) {
        PyErr_Format(PyExc_TypeError, "slots must be a list of %d items", N_STAGES);
        return NULL;
    }
    Py_ssize_t app_size;
    const char *app_ms = PyUnicode_AsUTF8AndSize(args[2], &app_size);
    if (app_ms == NULL) return NULL;
    if (app_size > 64) {
        PyErr_SetString(PyExc_ValueError, "app_ms is a number of milliseconds");
        return NULL;
    }
    long long start, read, fetched, scored, challenger, end;
    if (stamp(args[4], &start) || stamp(args[5], &read) || stamp(args[6], &fetched) || stamp(args[7], &scored) ||
        stamp(args[8], &challenger) || stamp(args[9], &end))
        return NULL;

    /* The durations measured, as Stages.durations lists them: seconds for the histogram, whole
     * microseconds for the header. */
    int stage[N_STAGES];
    double seconds[N_STAGES];
    long long micros[N_STAGES];
    int n = 0;
    if (args[3] != Py_None) {
        double queue = PyFloat_AsDouble(args[3]);
        if (queue == -1.0 && PyErr_Occurred()) return NULL;
        stage[n] = QUEUE, seconds[n] = queue, micros[n++] = fabs(queue) < 1e9 ? llround(queue * 1e6) : 0; /* NaN too */
    }
#define MEASURED(which, ns) stage[n] = (which), seconds[n] = (double)(ns) / 1e9, micros[n++] = llround((double)(ns) / 1e3)
    if (read) {
        MEASURED(READ, read - start);
        long long begun = read;
        if (fetched) {
            MEASURED(FETCH, fetched - read);
            begun = fetched;
        }
        if (scored) {
            MEASURED(SCORE, scored - begun - challenger);
            if (challenger) MEASURED(CHALLENGER, challenger);
            MEASURED(WRITE, end - scored);
        }
    }
#undef MEASURED

    PyObject *made[N_STAGES];
    for (int i = 0; i < n; i++) {
        made[i] = PyList_GET_ITEM(slots, stage[i]);
        if (made[i] == Py_None) Py_RETURN_NONE;
        if (!PyTuple_Check(made[i]) || PyTuple_GET_SIZE(made[i]) != 1 + n_bounds) {
            PyErr_SetString(PyExc_TypeError, "a stage's slots: (sum, bucket for each bound)");
            return NULL;
        }
    }
    Py_buffer values;
    if (PyObject_GetBuffer(args[0], &values, PyBUF_CONTIG | PyBUF_FORMAT) < 0) return NULL;
    if (values.itemsize != sizeof(double) || values.format == NULL || strcmp(values.format, "d") != 0) {
        PyBuffer_Release(&values);
        PyErr_SetString(PyExc_TypeError, "values must be a buffer of doubles");
        return NULL;
    }
    double *samples = values.buf;
    Py_ssize_t n_samples = values.len / (Py_ssize_t)sizeof(double);
    /* Every slot checked before the first write: a request's samples go in whole or not at all. */
    Py_ssize_t sum_slot[N_STAGES], bucket_slot[N_STAGES];
    for (int i = 0; i < n; i++) {
        Py_ssize_t bucket = 0;
        while (bucket < n_bounds - 1 && bounds[bucket] < seconds[i]) bucket++; /* bisect_left */
        sum_slot[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(made[i], 0));
        bucket_slot[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(made[i], 1 + bucket));
        if ((sum_slot[i] == -1 || bucket_slot[i] == -1) && PyErr_Occurred()) {
            PyBuffer_Release(&values);
            return NULL;
        }
        if (sum_slot[i] < 0 || sum_slot[i] >= n_samples || bucket_slot[i] < 0 || bucket_slot[i] >= n_samples) {
            PyBuffer_Release(&values);
            PyErr_SetString(PyExc_IndexError, "no such sample slot");
            return NULL;
        }
    }
    for (int i = 0; i < n; i++) {
        samples[bucket_slot[i]] += 1.0;
        samples[sum_slot[i]] += seconds[i];
    }
    PyBuffer_Release(&values);

    char header[HEADER_BYTES];
    char *at = header;
    for (int i = 0; i < n; i++) {
        size_t length = strlen(names[stage[i]]);
        memcpy(at, names[stage[i]], length);
        at += length;
        memcpy(at, ";dur=", 5);
        at = put_ms(at + 5, micros[i]);
        memcpy(at, ", ", 2);
        at += 2;
    }
    memcpy(at, "app;dur=", 8);
    memcpy(at + 8, app_ms, (size_t)app_size);
    at += 8 + app_size;
    return PyUnicode_FromStringAndSize(header, at - header);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "The stages' names and the histogram's bounds, once."},
    {"report", (PyCFunction)(void (*)(void))report, METH_FASTCALL,
     "A finished request's stages into the histogram's samples; returns the Server-Timing header."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_stages", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__stages(void) { return PyModule_Create(&module); }
