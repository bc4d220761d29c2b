/* A single-row request's spool frame in one pass (service/predlog/sink.py describes the frame and
 * builds every other one; service/predlog/spool.py the frame's head). In Python the meta's dict, its
 * JSON, the row's struct and the checksum took about 12 µs of a served request (timed inside the
 * requests, in caches the forest's walk has just emptied); this pass takes about 4 there, 1.4 in a
 * tight loop.
 *
 * The output is byte for byte what the Python of a batch's frame (PredictionLog._meta, the numbers
 * as struct packs them, spool.frame) makes of the same request: tests/test_prediction_log.py checks
 * it over random requests. The meta is JSON written as orjson writes it (keys in the same order; a
 * string's `"`, `\` and control characters escaped, the rest of its UTF-8 as it is), then the row's
 * numbers little-endian, and the payload's CRC-32 (zlib's) in the frame's head. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the spool's frames are little-endian: this build copies numbers as they are in memory"
#endif

#define N_FEATURES 30
#define HEAD 8 /* <u32 length><u32 CRC-32> */
#define META_LENGTH 4

/* A string argument as UTF-8, or absent (None). */
typedef struct {
    const char *text;
    Py_ssize_t size;
    int present;
} Text;

static int text_of(PyObject *value, const char *what, Text *out) {
    out->present = value != Py_None;
    out->text = NULL;
    out->size = 0;
    if (!out->present) return 0;
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or None", what);
        return -1;
    }
    out->text = PyUnicode_AsUTF8AndSize(value, &out->size);
    return out->text == NULL ? -1 : 0;
}

/* Bytes of a JSON string (quotes included), as orjson escapes it. */
static Py_ssize_t quoted_size(const Text *t) {
    Py_ssize_t size = 2;
    for (Py_ssize_t i = 0; i < t->size; i++) {
        unsigned char c = (unsigned char)t->text[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\t' || c == '\n' || c == '\f' || c == '\r')
            size += 2;
        else if (c < 0x20)
            size += 6;
        else
            size += 1;
    }
    return size;
}

static char *put_quoted(char *at, const Text *t) {
    static const char hex[] = "0123456789abcdef";
    *at++ = '"';
    for (Py_ssize_t i = 0; i < t->size; i++) {
        unsigned char c = (unsigned char)t->text[i];
        char short_escape = 0;
        switch (c) {
            case '"': short_escape = '"'; break;
            case '\\': short_escape = '\\'; break;
            case '\b': short_escape = 'b'; break;
            case '\t': short_escape = 't'; break;
            case '\n': short_escape = 'n'; break;
            case '\f': short_escape = 'f'; break;
            case '\r': short_escape = 'r'; break;
            default: break;
        }
        if (short_escape) {
            *at++ = '\\';
            *at++ = short_escape;
        } else if (c < 0x20) {
            memcpy(at, "\\u00", 4);
            at[4] = hex[c >> 4];
            at[5] = hex[c & 0xf];
            at += 6;
        } else {
            *at++ = (char)c;
        }
    }
    *at++ = '"';
    return at;
}

static int integer_of(PyObject *value, const char *what, long long *out) {
    *out = PyLong_AsLongLong(value);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s must be an int of 64 bits", what);
        return -1;
    }
    return 0;
}

static int double_of(PyObject *value, const char *what, double *out) {
    *out = PyFloat_AsDouble(value);
    if (*out == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s must be a number", what);
        return -1;
    }
    return 0;
}

/* A literal member: `,"name":` then its already formatted value. */
#define LITERAL(name) ("\"" name "\":")

enum {
    A_HEAD, A_TS, A_REQUEST_ID, A_ROUTE, A_EXPLAINED, A_KEY_ID, A_SERVICE_US, A_TID, A_EXTRA, A_DEADLINE,
    A_CLIENT, A_TRACE, A_ROW, A_PROBABILITY, A_SCORE, A_IS_FRAUD, A_WEIGHT, A_CHALLENGER_P, A_CHALLENGER_IS_FRAUD,
    N_ARGS
};

static PyObject *single(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != N_ARGS) {
        PyErr_Format(PyExc_TypeError, "single takes %d arguments (%zd given)", N_ARGS, nargs);
        return NULL;
    }
    PyObject *head = args[A_HEAD], *extra = args[A_EXTRA];
    if (!PyBytes_Check(head) || (extra != Py_None && !PyBytes_Check(extra))) {
        PyErr_SetString(PyExc_TypeError, "the meta's head and extra members must be bytes (extra may be None)");
        return NULL;
    }
    Text request_id, route, key_id, tid, client, trace;
    if (text_of(args[A_REQUEST_ID], "request_id", &request_id) || text_of(args[A_ROUTE], "route", &route) ||
        text_of(args[A_KEY_ID], "key_id", &key_id) || text_of(args[A_TID], "tid", &tid) ||
        text_of(args[A_CLIENT], "client_address", &client) || text_of(args[A_TRACE], "trace_id", &trace))
        return NULL;
    if (!request_id.present || !route.present || !key_id.present) {
        PyErr_SetString(PyExc_TypeError, "request_id, route and key_id must be str");
        return NULL;
    }
    long long ts, service_us, deadline = 0, score;
    int has_deadline = args[A_DEADLINE] != Py_None;
    if (integer_of(args[A_TS], "ts", &ts) || integer_of(args[A_SERVICE_US], "service_us", &service_us) ||
        (has_deadline && integer_of(args[A_DEADLINE], "deadline", &deadline)) ||
        integer_of(args[A_SCORE], "score", &score))
        return NULL;
    if (score < INT16_MIN || score > INT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "score out of int16's range");
        return NULL;
    }
    int explained = PyObject_IsTrue(args[A_EXPLAINED]);
    int is_fraud = PyObject_IsTrue(args[A_IS_FRAUD]);
    int challenged = args[A_CHALLENGER_P] != Py_None;
    int challenger_is_fraud = PyObject_IsTrue(args[A_CHALLENGER_IS_FRAUD]);
    if (explained < 0 || is_fraud < 0 || challenger_is_fraud < 0) return NULL;

    /* numbers: the row, then probability, fraud_score, is_fraud, sample_weight[, challenger's] */
    double numbers[N_FEATURES + 3];
    PyObject *row = PySequence_Fast(args[A_ROW], "the row must be a sequence");
    if (row == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(row) != N_FEATURES) {
        Py_DECREF(row);
        PyErr_Format(PyExc_ValueError, "the row must have %d features", N_FEATURES);
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(row);
    for (int i = 0; i < N_FEATURES; i++) {
        if (double_of(items[i], "a feature", &numbers[i])) {
            Py_DECREF(row);
            return NULL;
        }
    }
    Py_DECREF(row);
    if (double_of(args[A_PROBABILITY], "probability", &numbers[N_FEATURES]) ||
        double_of(args[A_WEIGHT], "weight", &numbers[N_FEATURES + 1]) ||
        (challenged && double_of(args[A_CHALLENGER_P], "challenger_probability", &numbers[N_FEATURES + 2])))
        return NULL;

    /* The meta's members after the head, formatted where they are numbers. */
    char ts_text[24], service_text[24], deadline_text[24];
    int ts_size = snprintf(ts_text, sizeof ts_text, "%lld", ts);
    int service_size = snprintf(service_text, sizeof service_text, "%lld", service_us);
    int deadline_size = has_deadline ? snprintf(deadline_text, sizeof deadline_text, "%lld", deadline) : 0;
    const char *explained_text = explained ? "true" : "false";
    Py_ssize_t head_size = PyBytes_GET_SIZE(head), extra_size = extra == Py_None ? 0 : PyBytes_GET_SIZE(extra);

    Py_ssize_t meta = head_size;
    meta += (Py_ssize_t)strlen(LITERAL("ts")) + ts_size;
    meta += 1 + (Py_ssize_t)strlen(LITERAL("request_id")) + quoted_size(&request_id);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("route")) + quoted_size(&route);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("explained")) + (Py_ssize_t)strlen(explained_text);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("key_id")) + quoted_size(&key_id);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("n")) + 1;
    meta += 1 + (Py_ssize_t)strlen(LITERAL("service_us")) + service_size;
    if (tid.present) meta += 1 + (Py_ssize_t)strlen(LITERAL("tid")) + quoted_size(&tid);
    if (extra_size) meta += 1 + extra_size;
    if (has_deadline) meta += 1 + (Py_ssize_t)strlen(LITERAL("deadline")) + deadline_size;
    if (client.present) meta += 1 + (Py_ssize_t)strlen(LITERAL("client_address")) + quoted_size(&client);
    if (trace.present) meta += 1 + (Py_ssize_t)strlen(LITERAL("trace_id")) + quoted_size(&trace);
    meta += 1; /* } */
    Py_ssize_t fixed = (N_FEATURES + 1) * 8 + 2 + 1 + 8 + (challenged ? 8 + 1 : 0);
    Py_ssize_t payload = META_LENGTH + meta + fixed;
    if (payload > UINT32_MAX || meta > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "the record is too large for a frame");
        return NULL;
    }

    PyObject *out = PyBytes_FromStringAndSize(NULL, HEAD + payload);
    if (out == NULL) return NULL;
    char *start = PyBytes_AS_STRING(out), *at = start + HEAD;
    uint32_t u32 = (uint32_t)meta;
    memcpy(at, &u32, 4);
    at += 4;
    char *meta_start = at;
#define PUT(text, size) (memcpy(at, (text), (size)), at += (size))
#define PUT_KEY(name, first) (((first) ? 0 : (*at++ = ',')), PUT(LITERAL(name), strlen(LITERAL(name))))
    PUT(PyBytes_AS_STRING(head), head_size); /* `{"v":…,"challenger_version":…,` */
    PUT_KEY("ts", 1);
    PUT(ts_text, ts_size);
    PUT_KEY("request_id", 0);
    at = put_quoted(at, &request_id);
    PUT_KEY("route", 0);
    at = put_quoted(at, &route);
    PUT_KEY("explained", 0);
    PUT(explained_text, strlen(explained_text));
    PUT_KEY("key_id", 0);
    at = put_quoted(at, &key_id);
    PUT_KEY("n", 0);
    *at++ = '1';
    PUT_KEY("service_us", 0);
    PUT(service_text, service_size);
    if (tid.present) {
        PUT_KEY("tid", 0);
        at = put_quoted(at, &tid);
    }
    if (extra_size) {
        *at++ = ',';
        PUT(PyBytes_AS_STRING(extra), extra_size);
    }
    if (has_deadline) {
        PUT_KEY("deadline", 0);
        PUT(deadline_text, deadline_size);
    }
    if (client.present) {
        PUT_KEY("client_address", 0);
        at = put_quoted(at, &client);
    }
    if (trace.present) {
        PUT_KEY("trace_id", 0);
        at = put_quoted(at, &trace);
    }
    *at++ = '}';
#undef PUT_KEY
    if (at - meta_start != meta) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "the frame's meta came out at another length than counted");
        return NULL;
    }
    int16_t score16 = (int16_t)score;
    PUT(numbers, (N_FEATURES + 1) * 8); /* the row, then the probability */
    PUT(&score16, 2);
    *at++ = (char)is_fraud;
    PUT(&numbers[N_FEATURES + 1], 8); /* the weight */
    if (challenged) {
        PUT(&numbers[N_FEATURES + 2], 8);
        *at++ = (char)challenger_is_fraud;
    }
#undef PUT
    uint32_t length = (uint32_t)payload;
    uint32_t crc = (uint32_t)crc32(0L, (const Bytef *)(start + HEAD), (uInt)payload);
    memcpy(start, &length, 4);
    memcpy(start + 4, &crc, 4);
    return out;
}

static PyMethodDef methods[] = {
    {"single", (PyCFunction)(void (*)(void))single, METH_FASTCALL,
     "single(head, ts, request_id, route, explained, key_id, service_us, tid, extra, deadline, client_address, "
     "trace_id, row, probability, score, is_fraud, weight, challenger_probability, challenger_is_fraud) -> "
     "the whole frame (head, meta, numbers) of a single-row request"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_frame", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__frame(void) { return PyModule_Create(&module); }
