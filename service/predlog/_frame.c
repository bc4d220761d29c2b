/* A single-row request's spool frame, built in one pass where it belongs: in the mapping of the
 * worker's open segment (service/predlog/sink.py describes the frame and builds every other one;
 * service/predlog/spool.py keeps the segment). Writer holds the mapping and the accounts a write
 * checks (the segment's size and age, the spool's size, when to scan it again), so that a logged
 * single score costs one C call; when the spool has work to do first (open or seal a segment, scan,
 * allocate) or refuses the frame, `single` hands the frame to Spool.write instead. Python's dict,
 * JSON, struct and checksum took about 12 µs of a served request, then this pass into a bytes object
 * and Spool.write about 10; the one call about 4 (perf.experiments.prediction_log_cost).
 *
 * The output is byte for byte what the Python of a batch's frame (PredictionLog._meta, the numbers
 * as struct packs them, spool.frame) makes of the same request: tests/test_frame.py checks it over
 * random requests. The meta is JSON written as orjson writes it (keys in the same order; a string's
 * `"`, `\` and control characters escaped, the rest of its UTF-8 as it is), then the row's numbers
 * little-endian, and the payload's CRC-32 (zlib's) in the frame's head, written last. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
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

/* sink.Entry's fields, by position (service/predlog/sink.py keeps this order). */
enum { E_REQUEST_ID, E_ROUTE, E_KEY_ID, E_TRANSACTION_IDS, E_EXPLAINED, E_STARTED, E_DUE, E_CLIENT, E_TRACE, N_ENTRY };

/* Writer.single's arguments. */
enum {
    A_HEAD, A_ENTRY, A_EXTRA, A_ROW, A_PROBABILITY, A_SCORE, A_IS_FRAUD, A_WEIGHT, A_CHALLENGER_P,
    A_CHALLENGER_IS_FRAUD, N_ARGS
};

/* One single-row request's record, parsed and measured before a byte of its frame is written. */
typedef struct {
    PyObject *head, *extra; /* borrowed */
    Text request_id, route, key_id, tid, client, trace;
    int has_deadline, explained, is_fraud, challenged, challenger_is_fraud;
    int16_t score;
    double numbers[N_FEATURES + 3]; /* the row, probability, weight[, challenger's probability] */
    char ts_text[24], service_text[24], deadline_text[24];
    int ts_size, service_size, deadline_size;
    Py_ssize_t meta;    /* the meta's JSON */
    Py_ssize_t payload; /* the frame's length field: the meta's length, the meta, the numbers */
} Record;

/* zlib's CRC-32 of a payload. Debian's zlib (1.2.13) reads a byte a cycle, a fifth of a logged
 * request's pass; x86-64's carry-less multiply folds 16 bytes a step instead (the folding of Intel's
 * "Fast CRC computation for generic polynomials using PCLMULQDQ"): each step multiplies the
 * state's halves by x^160 and x^96 mod P (bit-reflected, as zlib's CRC is) and adds the next 16
 * bytes, which keeps the state congruent to the message read so far; zlib then takes the CRC of the
 * 16-byte state and the last bytes. tests/test_frame.py checks frames against zlib.crc32. */
#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("pclmul,sse2"))) static uint32_t folded_crc32(const unsigned char *data, size_t size) {
    const __m128i k = _mm_set_epi64x(0xccaa009e, 0x1751997d0); /* x^96, x^160 mod P, reflected */
    __m128i state = _mm_xor_si128(_mm_loadu_si128((const __m128i *)data), _mm_cvtsi32_si128((int)0xffffffff));
    size_t at = 16;
    for (; at + 16 <= size; at += 16) {
        __m128i low = _mm_clmulepi64_si128(state, k, 0x00), high = _mm_clmulepi64_si128(state, k, 0x11);
        state = _mm_xor_si128(_mm_xor_si128(low, high), _mm_loadu_si128((const __m128i *)(data + at)));
    }
    unsigned char bytes[16];
    _mm_storeu_si128((__m128i *)bytes, state);
    /* the state's CRC with no initial value (zlib's start 0xffffffff undoes its own), then the rest */
    uLong crc = crc32(0xffffffffUL, bytes, 16);
    return (uint32_t)crc32(crc, data + at, (uInt)(size - at));
}
#endif

static uint32_t payload_crc32(const char *data, Py_ssize_t size) {
#if defined(__x86_64__)
    static int pclmul = -1;
    if (pclmul < 0) pclmul = __builtin_cpu_supports("pclmul");
    if (pclmul && size >= 16) return folded_crc32((const unsigned char *)data, (size_t)size);
#endif
    return (uint32_t)crc32(0L, (const Bytef *)data, (uInt)size);
}

/* A decimal integer, as snprintf's "%lld" writes it (which took a third of the pass). */
static int decimal(long long value, char out[24]) {
    char digits[24];
    int n = 0;
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        digits[n++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    int size = 0;
    if (value < 0) out[size++] = '-';
    while (n) out[size++] = digits[--n];
    return size;
}

static long long clock_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* A wall-clock time in seconds as int64 nanoseconds, toward zero as Python's int(due * 1e9); -1 with
 * ValueError out of range. */
static int nanoseconds(double seconds, const char *what, long long *out) {
    double value = seconds * 1e9;
    if (!(value > -9.2e18 && value < 9.2e18)) {
        PyErr_Format(PyExc_ValueError, "%s is out of range", what);
        return -1;
    }
    *out = (long long)value;
    return 0;
}

static int parse(PyObject *const *args, Record *r) {
    r->head = args[A_HEAD];
    r->extra = args[A_EXTRA];
    if (!PyBytes_Check(r->head) || (r->extra != Py_None && !PyBytes_Check(r->extra))) {
        PyErr_SetString(PyExc_TypeError, "the meta's head and extra members must be bytes (extra may be None)");
        return -1;
    }
    PyObject *entry = args[A_ENTRY];
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != N_ENTRY) {
        PyErr_Format(PyExc_TypeError, "the entry must be a sink.Entry (a tuple of %d)", N_ENTRY);
        return -1;
    }
    PyObject *const *e = &PyTuple_GET_ITEM(entry, 0);
    /* a transaction id that is not one string (a list, V2's) is the caller's extra member "tid" */
    PyObject *tid = PyUnicode_Check(e[E_TRANSACTION_IDS]) ? e[E_TRANSACTION_IDS] : Py_None;
    if (text_of(e[E_REQUEST_ID], "request_id", &r->request_id) || text_of(e[E_ROUTE], "route", &r->route) ||
        text_of(e[E_KEY_ID], "key_id", &r->key_id) || text_of(tid, "tid", &r->tid) ||
        text_of(e[E_CLIENT], "client_address", &r->client) || text_of(e[E_TRACE], "trace_id", &r->trace))
        return -1;
    if (!r->request_id.present || !r->route.present || !r->key_id.present) {
        PyErr_SetString(PyExc_TypeError, "request_id, route and key_id must be str");
        return -1;
    }
    double due = 0.0;
    long long started, score, ts, service_us, deadline = 0;
    r->has_deadline = e[E_DUE] != Py_None;
    if (integer_of(e[E_STARTED], "started_ns", &started) ||
        (r->has_deadline && double_of(e[E_DUE], "due", &due)) || integer_of(args[A_SCORE], "score", &score))
        return -1;
    if (score < INT16_MIN || score > INT16_MAX) {
        PyErr_SetString(PyExc_ValueError, "score out of int16's range");
        return -1;
    }
    r->score = (int16_t)score;
    ts = clock_ns(CLOCK_REALTIME); /* time.time_ns() */
    /* the request's time in the app, as perf_counter_ns() counts (CLOCK_MONOTONIC), floored to µs */
    long long elapsed;
    if (__builtin_sub_overflow(clock_ns(CLOCK_MONOTONIC), started, &elapsed) || elapsed == LLONG_MIN) {
        PyErr_SetString(PyExc_ValueError, "started_ns is out of range");
        return -1;
    }
    service_us = elapsed >= 0 ? elapsed / 1000 : -((-elapsed + 999) / 1000);
    if (r->has_deadline && nanoseconds(due, "due", &deadline)) return -1;
    r->explained = PyObject_IsTrue(e[E_EXPLAINED]);
    r->is_fraud = PyObject_IsTrue(args[A_IS_FRAUD]);
    r->challenged = args[A_CHALLENGER_P] != Py_None;
    r->challenger_is_fraud = PyObject_IsTrue(args[A_CHALLENGER_IS_FRAUD]);
    if (r->explained < 0 || r->is_fraud < 0 || r->challenger_is_fraud < 0) return -1;

    PyObject *row = PySequence_Fast(args[A_ROW], "the row must be a sequence");
    if (row == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(row) != N_FEATURES) {
        Py_DECREF(row);
        PyErr_Format(PyExc_ValueError, "the row must have %d features", N_FEATURES);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(row);
    for (int i = 0; i < N_FEATURES; i++) {
        if (double_of(items[i], "a feature", &r->numbers[i])) {
            Py_DECREF(row);
            return -1;
        }
    }
    Py_DECREF(row);
    if (double_of(args[A_PROBABILITY], "probability", &r->numbers[N_FEATURES]) ||
        double_of(args[A_WEIGHT], "weight", &r->numbers[N_FEATURES + 1]) ||
        (r->challenged && double_of(args[A_CHALLENGER_P], "challenger_probability", &r->numbers[N_FEATURES + 2])))
        return -1;

    r->ts_size = decimal(ts, r->ts_text);
    r->service_size = decimal(service_us, r->service_text);
    r->deadline_size = r->has_deadline ? decimal(deadline, r->deadline_text) : 0;
    Py_ssize_t extra_size = r->extra == Py_None ? 0 : PyBytes_GET_SIZE(r->extra);
    Py_ssize_t meta = PyBytes_GET_SIZE(r->head);
    meta += (Py_ssize_t)strlen(LITERAL("ts")) + r->ts_size;
    meta += 1 + (Py_ssize_t)strlen(LITERAL("request_id")) + quoted_size(&r->request_id);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("route")) + quoted_size(&r->route);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("explained")) + (r->explained ? 4 : 5);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("key_id")) + quoted_size(&r->key_id);
    meta += 1 + (Py_ssize_t)strlen(LITERAL("n")) + 1;
    meta += 1 + (Py_ssize_t)strlen(LITERAL("service_us")) + r->service_size;
    if (r->tid.present) meta += 1 + (Py_ssize_t)strlen(LITERAL("tid")) + quoted_size(&r->tid);
    if (extra_size) meta += 1 + extra_size;
    if (r->has_deadline) meta += 1 + (Py_ssize_t)strlen(LITERAL("deadline")) + r->deadline_size;
    if (r->client.present) meta += 1 + (Py_ssize_t)strlen(LITERAL("client_address")) + quoted_size(&r->client);
    if (r->trace.present) meta += 1 + (Py_ssize_t)strlen(LITERAL("trace_id")) + quoted_size(&r->trace);
    meta += 1; /* } */
    Py_ssize_t fixed = (N_FEATURES + 1) * 8 + 2 + 1 + 8 + (r->challenged ? 8 + 1 : 0);
    r->meta = meta;
    r->payload = META_LENGTH + meta + fixed;
    if (r->payload > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "the record is too large for a frame");
        return -1;
    }
    return 0;
}

/* The whole frame at `start` (HEAD + r->payload bytes): the payload first, the head (length and
 * checksum) last, so that a frame a kill interrupts has no valid head. */
static int put_frame(char *start, const Record *r) {
    char *at = start + HEAD;
    uint32_t u32 = (uint32_t)r->meta;
    memcpy(at, &u32, 4);
    at += 4;
    char *meta_start = at;
#define PUT(text, size) (memcpy(at, (text), (size)), at += (size))
#define PUT_KEY(name, first) (((first) ? 0 : (*at++ = ',')), PUT(LITERAL(name), strlen(LITERAL(name))))
    PUT(PyBytes_AS_STRING(r->head), PyBytes_GET_SIZE(r->head)); /* `{"v":…,"challenger_version":…,` */
    PUT_KEY("ts", 1);
    PUT(r->ts_text, r->ts_size);
    PUT_KEY("request_id", 0);
    at = put_quoted(at, &r->request_id);
    PUT_KEY("route", 0);
    at = put_quoted(at, &r->route);
    PUT_KEY("explained", 0);
    PUT(r->explained ? "true" : "false", r->explained ? 4 : 5);
    PUT_KEY("key_id", 0);
    at = put_quoted(at, &r->key_id);
    PUT_KEY("n", 0);
    *at++ = '1';
    PUT_KEY("service_us", 0);
    PUT(r->service_text, r->service_size);
    if (r->tid.present) {
        PUT_KEY("tid", 0);
        at = put_quoted(at, &r->tid);
    }
    if (r->extra != Py_None && PyBytes_GET_SIZE(r->extra)) {
        *at++ = ',';
        PUT(PyBytes_AS_STRING(r->extra), PyBytes_GET_SIZE(r->extra));
    }
    if (r->has_deadline) {
        PUT_KEY("deadline", 0);
        PUT(r->deadline_text, r->deadline_size);
    }
    if (r->client.present) {
        PUT_KEY("client_address", 0);
        at = put_quoted(at, &r->client);
    }
    if (r->trace.present) {
        PUT_KEY("trace_id", 0);
        at = put_quoted(at, &r->trace);
    }
    *at++ = '}';
#undef PUT_KEY
    if (at - meta_start != r->meta) {
        PyErr_SetString(PyExc_SystemError, "the frame's meta came out at another length than counted");
        return -1;
    }
    PUT(r->numbers, (N_FEATURES + 1) * 8); /* the row, then the probability */
    PUT(&r->score, 2);
    *at++ = (char)r->is_fraud;
    PUT(&r->numbers[N_FEATURES + 1], 8); /* the weight */
    if (r->challenged) {
        PUT(&r->numbers[N_FEATURES + 2], 8);
        *at++ = (char)r->challenger_is_fraud;
    }
#undef PUT
    uint32_t head[2] = {(uint32_t)r->payload, payload_crc32(start + HEAD, r->payload)};
    memcpy(start, head, HEAD);
    return 0;
}

/* The hot path's side of a worker's open segment (service/predlog/spool.py's Spool keeps the rest:
 * the file, its lock, rotation, the scans, drops): the segment's shared mapping, and the accounts a
 * write checks, so that a single row's frame is built in place with no Python between. */
typedef struct {
    PyObject_HEAD
    char *base; /* the mapping, NULL when there is none */
    Py_ssize_t allocated;
    long long size, spool_bytes, unscanned, seal_at_ns, scan_at_ns;
    long long max_bytes, scan_bytes, segment_bytes, page;
    PyObject *on_written;
} Writer;

static int writer_init(Writer *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"max_bytes", "scan_bytes", "segment_bytes", "on_written", NULL};
    PyObject *on_written;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLO:Writer", names, &self->max_bytes, &self->scan_bytes,
                                     &self->segment_bytes, &on_written))
        return -1;
    if (!PyCallable_Check(on_written)) {
        PyErr_SetString(PyExc_TypeError, "on_written must be callable");
        return -1;
    }
    Py_INCREF(on_written);
    Py_XSETREF(self->on_written, on_written);
    self->page = sysconf(_SC_PAGESIZE);
    return 0;
}

static int writer_traverse(Writer *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_written);
    return 0;
}

static int writer_clear(Writer *self) {
    Py_CLEAR(self->on_written);
    return 0;
}

static void writer_dealloc(Writer *self) {
    PyObject_GC_UnTrack(self);
    if (self->base != NULL) munmap(self->base, (size_t)self->allocated);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *writer_map(Writer *self, PyObject *args) {
    int fd;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "in:map", &fd, &length)) return NULL;
    if (length < self->allocated || length <= 0) {
        PyErr_SetString(PyExc_ValueError, "a mapping only grows");
        return NULL;
    }
    void *base = self->base == NULL
                     ? mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                     : mremap(self->base, (size_t)self->allocated, (size_t)length, MREMAP_MAYMOVE);
    if (base == MAP_FAILED) return PyErr_SetFromErrno(PyExc_OSError);
    self->base = base;
    self->allocated = length;
    Py_RETURN_NONE;
}

static PyObject *writer_unmap(Writer *self, PyObject *Py_UNUSED(ignored)) {
    if (self->base != NULL && munmap(self->base, (size_t)self->allocated) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->base = NULL;
    self->allocated = 0;
    Py_RETURN_NONE;
}

static PyObject *writer_forget(Writer *self, PyObject *Py_UNUSED(ignored)) {
    /* after fork: the mapping is the parent's segment's, left as it is */
    self->base = NULL;
    self->allocated = 0;
    self->size = self->spool_bytes = self->unscanned = self->seal_at_ns = self->scan_at_ns = 0;
    Py_RETURN_NONE;
}

static PyObject *writer_put(Writer *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) != 0) return NULL;
    if (self->base == NULL || self->size < 0 || data.len > self->allocated - self->size) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "the frame does not fit the mapping");
        return NULL;
    }
    memcpy(self->base + self->size, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *writer_single(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != N_ARGS) {
        PyErr_Format(PyExc_TypeError, "single takes %d arguments (%zd given)", N_ARGS, nargs);
        return NULL;
    }
    Record r;
    if (parse(args, &r)) return NULL;
    long long frame = HEAD + r.payload;
    /* Spool.write's checks, in its order; any that fails sends the frame there */
    long long now = clock_ns(CLOCK_REALTIME);
    if (self->base != NULL && now < self->seal_at_ns && self->size < self->segment_bytes && now < self->scan_at_ns &&
        self->unscanned < self->scan_bytes && self->spool_bytes + frame <= self->max_bytes &&
        self->size + frame <= self->allocated && frame <= self->page) {
        if (put_frame(self->base + self->size, &r)) return NULL;
        self->size += frame;
        self->spool_bytes += frame;
        self->unscanned += frame;
        PyObject *one = PyLong_FromLong(1), *counted = NULL;
        if (one != NULL) counted = PyObject_CallOneArg(self->on_written, one);
        Py_XDECREF(one);
        if (counted == NULL) return NULL;
        Py_DECREF(counted);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, frame);
    if (out == NULL) return NULL;
    if (put_frame(PyBytes_AS_STRING(out), &r)) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyMethodDef writer_methods[] = {
    {"single", (PyCFunction)(void (*)(void))writer_single, METH_FASTCALL,
     "single(head, entry, extra, row, probability, score, is_fraud, weight, challenger_probability, "
     "challenger_is_fraud) -> None when the single-row request's frame was written into the mapping (and "
     "counted), else the frame, for Spool.write (no mapping, a rotation or scan due, the spool full, the "
     "allocation short, or a frame longer than a page)"},
    {"map", (PyCFunction)writer_map, METH_VARARGS, "map(fd, length): map the segment's file, or grow the mapping"},
    {"unmap", (PyCFunction)writer_unmap, METH_NOARGS, "unmap(): the mapping goes (the segment is sealed)"},
    {"forget", (PyCFunction)writer_forget, METH_NOARGS, "forget(): no segment and no accounts (a fork's child)"},
    {"put", (PyCFunction)writer_put, METH_O, "put(frame): copy a frame into the mapping at `size`"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef writer_members[] = {
    {"size", T_LONGLONG, offsetof(Writer, size), 0, "bytes of whole frames in the segment"},
    {"spool_bytes", T_LONGLONG, offsetof(Writer, spool_bytes), 0, "the spool's size as this process knows it"},
    {"unscanned", T_LONGLONG, offsetof(Writer, unscanned), 0, "bytes written since the spool was last scanned"},
    {"seal_at_ns", T_LONGLONG, offsetof(Writer, seal_at_ns), 0, "when the segment is due to be sealed"},
    {"scan_at_ns", T_LONGLONG, offsetof(Writer, scan_at_ns), 0, "when the spool is due to be scanned again"},
    {"allocated", T_PYSSIZET, offsetof(Writer, allocated), READONLY, "the mapping's length (the file's)"},
    {"max_bytes", T_LONGLONG, offsetof(Writer, max_bytes), READONLY, "PREDICTION_LOG_MAX_BYTES"},
    {"scan_bytes", T_LONGLONG, offsetof(Writer, scan_bytes), READONLY, "bytes written that call for a scan"},
    {"segment_bytes", T_LONGLONG, offsetof(Writer, segment_bytes), READONLY, "a segment's size at rotation"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "service.predlog._frame.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Writer(max_bytes, scan_bytes, segment_bytes, on_written): a process's open segment, as the hot path "
              "writes it",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
    .tp_methods = writer_methods,
    .tp_members = writer_members,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_frame", .m_size = -1};

PyMODINIT_FUNC PyInit__frame(void) {
    if (PyType_Ready(&WriterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
