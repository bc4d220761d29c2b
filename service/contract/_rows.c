/* Reads decoded JSON objects (dicts) into a float64 matrix and checks them against a flat-numbers
 * schema in the same pass: every named key present, every value a number within [low, high], and
 * each optional string key, where an item has it, a string of [shortest, longest] code points.
 *
 * It answers only what it can answer exactly as jsonschema would, and says "undecided" for the
 * rest, which Python then decides with the per-item validator (service/contract/schema.py):
 *   - a float, or an int of at most 2**53 in magnitude (so that the comparison with a double bound
 *     is exact), is checked here; a bound fails only on < or > (NaN passes, as in jsonschema);
 *   - an item that is not a dict, or lacks a key, is invalid;
 *   - an optional string that is a str (exactly) is checked here; one that is not a str at all is
 *     invalid (jsonschema's "string" is any str);
 *   - anything else (bool, str, None, containers, larger ints, other number types for a number, a
 *     str subclass for a string) is undecided.
 * One C pass replaces three Python passes (look-ups, type checks, conversion) over 30 values a row.
 *
 * `parse` goes one step earlier: it reads a batch body's bytes straight into the matrix, without
 * building a Python object per value, and answers only for a body it reads exactly as orjson and
 * `fill` would (see the comment above it); for any other body it answers 0 rows, and the caller
 * decodes the body and decides as before. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <fenv.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { ROWS_VALID = 0, ROWS_INVALID = 1, ROWS_UNDECIDED = 2 };
#define EXACT_INT_LIMIT (1LL << 53)
#define MAX_STRINGS 8

/* An optional string property: its key (a str for `fill`, bytes for `parse`) and bounds on its length. */
typedef struct {
    PyObject *key;
    Py_ssize_t shortest, longest;
} OptionalString;

/* The optional strings, from a tuple of (key, shortest, longest); their number, or -1 with an error set. */
static Py_ssize_t optional_strings(PyObject *specs, const char *format, OptionalString *strings) {
    const Py_ssize_t m = PyTuple_GET_SIZE(specs);
    if (m > MAX_STRINGS) {
        PyErr_SetString(PyExc_ValueError, "at most 8 optional strings");
        return -1;
    }
    for (Py_ssize_t s = 0; s < m; s++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, s);
        OptionalString *string = &strings[s];
        if (!PyTuple_Check(spec) ||
            !PyArg_ParseTuple(spec, format, &string->key, &string->shortest, &string->longest)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "each optional string is (key, shortest, longest)");
            return -1;
        }
    }
    return m;
}

/* Whether an item's optional strings are valid (ROWS_*): a str (exactly) of a length in bounds, where
 * it has one; -1 with an error set when a look-up failed. */
static int strings_verdict(PyObject *item, const OptionalString *strings, Py_ssize_t m) {
    for (Py_ssize_t s = 0; s < m; s++) {
        PyObject *value = PyDict_GetItemWithError(item, strings[s].key);
        if (value == NULL) {
            if (PyErr_Occurred()) return -1;
            continue;
        }
        if (!PyUnicode_CheckExact(value)) return PyUnicode_Check(value) ? ROWS_UNDECIDED : ROWS_INVALID;
        const Py_ssize_t length = PyUnicode_GET_LENGTH(value);
        if (length < strings[s].shortest || length > strings[s].longest) return ROWS_INVALID;
    }
    return ROWS_VALID;
}

static PyObject *fill(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *items, *keys, *specs;
    Py_buffer low, high, out;
    if (!PyArg_ParseTuple(args, "O!O!y*y*w*O!", &PyList_Type, &items, &PyTuple_Type, &keys, &low, &high, &out,
                          &PyTuple_Type, &specs))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = PyList_GET_SIZE(items), k = PyTuple_GET_SIZE(keys);
    OptionalString strings[MAX_STRINGS];
    const Py_ssize_t m = optional_strings(specs, "Unn", strings);
    if (m < 0) goto done;
    if (low.len != k * (Py_ssize_t)sizeof(double) || high.len != k * (Py_ssize_t)sizeof(double) ||
        out.len != n * k * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "low and high need one double per key, out one per key and item");
        goto done;
    }
    const double *lo = low.buf, *hi = high.buf;
    double *row = out.buf;
    int verdict = ROWS_VALID;
    /* A look-up can run Python code (a key of the same hash compares itself), which may change the
     * list: the row is held while it is read, and a list that changed is left undecided. */
    for (Py_ssize_t i = 0; i < n && verdict == ROWS_VALID; i++, row += k) {
        if (PyList_GET_SIZE(items) != n) {
            verdict = ROWS_UNDECIDED;
            break;
        }
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyDict_Check(item)) {
            verdict = ROWS_INVALID;
            break;
        }
        Py_INCREF(item);
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *value = PyDict_GetItemWithError(item, PyTuple_GET_ITEM(keys, j));
            double x;
            if (value == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(item);
                    goto done;
                }
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
        /* An item holding the k keys and no more holds no optional string: the common case. */
        if (verdict == ROWS_VALID && m && PyDict_GET_SIZE(item) != k) {
            verdict = strings_verdict(item, strings, m);
            if (verdict < 0) {
                Py_DECREF(item);
                goto done;
            }
        }
        Py_DECREF(item);
    }
    if (verdict == ROWS_VALID && PyList_GET_SIZE(items) != n) verdict = ROWS_UNDECIDED;
    result = PyLong_FromLong(verdict);
done:
    PyBuffer_Release(&low);
    PyBuffer_Release(&high);
    PyBuffer_Release(&out);
    return result;
}


/* ---- parse: a batch body's bytes into the matrix ----
 *
 * The body it answers for: {"<field>": [item, ...]} with JSON whitespace anywhere, one to
 * `capacity` items, each an object holding every key once with a number within [low, high], each
 * optional string key at most once with a string of [shortest, longest] characters, and any other
 * keys with a simple value (a string, a number, true, false, null). Keys and strings are printable
 * ASCII without escapes (so a string's bytes are its characters, and an escaped key, which may
 * spell a known one, is never taken for an unknown one). Anything else (another top-level key, a
 * nested container, an escape, a repeated key, a missing key, a value out of bounds or not a
 * number, an optional string that is not a plain string within its bounds) answers 0 rows: the
 * caller then decodes the body and its checks say what is wrong, exactly as before. With the rows
 * it answers the optional strings' values: for each optional key, None when no item has it, else
 * a list of one str (or None) per item.
 *
 * Numbers follow JSON's grammar (RFC 8259) and are read as orjson reads them, then as `fill` takes
 * them: an integer token (no fraction or exponent) of at most 2**53 in magnitude is that integer
 * (so -0 is +0.0, as orjson's int 0 is); a token with a fraction or exponent is the correctly
 * rounded double. This reader handles a token of at most 19 significant digits m with a decimal
 * exponent q, |q| <= 27, and leaves every other token undecided. Then m (< 2**64) and 10**|q|
 * (= 2**|q| * 5**|q|, 5**27 < 2**64) are exact in x87 extended precision (64-bit significand), and
 * v = m * 10**q or m / 10**-q is one correctly rounded operation. Rounding v to double gives the
 * correctly rounded double of the exact value x unless a double midpoint lies between x and v; a
 * midpoint has 54 significant bits, so it is representable in extended precision, and as v is the
 * representable number nearest x, such a midpoint can only be v itself. So every v that is not
 * exactly halfway between two doubles (the 11 low bits of its significand are 10000000000) rounds
 * to the right double; for one that is (rare, but a 1,000-row batch often holds one), x's side of v,
 * decided in exact 128-bit integer arithmetic, picks the double (x == v: the even one). The range
 * keeps v far from subnormals and overflow. It needs round-to-nearest and the x87 unit at 64-bit
 * precision (checked at each call); elsewhere than x86-64 it reads integer tokens only. */

#if LDBL_MANT_DIG == 64 && defined(__x86_64__) && defined(__SIZEOF_INT128__)
#define READS_DECIMALS 1
#define MAX_DECIMAL_EXPONENT 27
typedef unsigned __int128 u128;
static long double POWERS_OF_TEN[MAX_DECIMAL_EXPONENT + 1];
static uint64_t POWERS_OF_FIVE[MAX_DECIMAL_EXPONENT + 1];

/* The sign of a * 2**s - b; 2 when a shift would overflow (never for the operands below). */
static int compare_shifted(u128 a, int s, u128 b) {
    if (s >= 0) {
        if (s > 127 || (s > 0 && a >> (128 - s))) return 2;
        a <<= s;
    } else {
        if (s < -127 || b >> (128 + s)) return 2;
        b <<= -s;
    }
    return a > b ? 1 : a < b ? -1 : 0;
}

/* The sign of m * 10**q - v, exactly; 2 if undecided. */
static int side_of(uint64_t m, int q, long double v) {
    int e;
    const long double f = frexpl(v, &e);               /* v = f * 2**e, 0.5 <= f < 1 */
    const uint64_t M = (uint64_t)ldexpl(f, 64);         /* exact: v has at most 64 significant bits */
    const int E = e - 64;                               /* v = M * 2**E */
    if (q >= 0) {                                       /* m * 5**q * 2**q against M * 2**E */
        const int s = compare_shifted(M, E - q, (u128)m * POWERS_OF_FIVE[q]);
        return s == 2 ? 2 : -s;
    }
    const int s = compare_shifted((u128)M * POWERS_OF_FIVE[-q], E - q, m); /* m against M * 5**-q * 2**(E-q) */
    return s == 2 ? 2 : -s;
}
#endif
#define MAX_KEYS 64

typedef struct {
    const unsigned char *p, *end;
} Cursor;

static inline void skip_space(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

/* Skips whitespace, then takes `ch` if it is next. */
static inline int take(Cursor *c, unsigned char ch) {
    skip_space(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

/* A string of printable ASCII without escapes, at the cursor: its bytes, or 0. */
static int plain_string(Cursor *c, const char **text, Py_ssize_t *len) {
    skip_space(c);
    if (c->p >= c->end || *c->p != '"') return 0;
    const unsigned char *start = ++c->p;
    for (; c->p < c->end; c->p++) {
        const unsigned char ch = *c->p;
        if (ch == '"') {
            *text = (const char *)start;
            *len = c->p - start;
            c->p++;
            return 1;
        }
        if (ch < 0x20 || ch > 0x7E || ch == '\\') return 0;
    }
    return 0;
}

/* Whether the 8 bytes at p are all digits; if so, their value. (SWAR: 8 digits in a few operations.) */
static inline int eight_digits(const unsigned char *p, uint64_t *value) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    if (((v & 0xF0F0F0F0F0F0F0F0) | (((v + 0x0606060606060606) & 0xF0F0F0F0F0F0F0F0) >> 4)) != 0x3333333333333333)
        return 0;
    v -= 0x3030303030303030;
    v = v * 10 + (v >> 8); /* pairs of digits, little-endian */
    v = (((v & 0x000000FF000000FF) * 0x000F424000000064) + (((v >> 16) & 0x000000FF000000FF) * 0x0000271000000001)) >> 32;
    *value = (uint32_t)v;
    return 1;
}

/* Reads a run of digits at *p into *m (m = m * 10**count + digits); 0 past 19 significant digits. */
static inline int digit_run(const unsigned char **pp, const unsigned char *end, uint64_t *m, int *count) {
    const unsigned char *p = *pp;
    uint64_t value = *m, eight;
    for (;;) {
        if (end - p >= 8 && value < 100000000000ULL && eight_digits(p, &eight)) {
            value = value * 100000000 + eight;
            p += 8;
        } else if (p < end && is_digit(*p)) {
            if (value >= 1000000000000000000ULL) return 0; /* a 20th significant digit */
            value = value * 10 + (uint64_t)(*p - '0');
            p++;
        } else {
            break;
        }
    }
    *count = (int)(p - *pp);
    *pp = p;
    *m = value;
    return 1;
}

/* The number at the cursor as orjson and then `fill` read it (see above), or 0 when undecided. */
static int number(Cursor *c, double *x) {
    skip_space(c);
    const unsigned char *p = c->p, *end = c->end;
    const int negative = p < end && *p == '-';
    p += negative;
    if (p >= end || !is_digit(*p)) return 0;
    uint64_t m = 0;
    int count, exponent = 0, integer = 1;
    if (*p == '0') {
        p++;
    } else if (!digit_run(&p, end, &m, &count)) {
        return 0;
    }
    if (p < end && *p == '.') {
        integer = 0;
        p++;
        if (!digit_run(&p, end, &m, &count) || count == 0) return 0;
        exponent = -count;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integer = 0;
        p++;
        int sign = 1;
        if (p < end && (*p == '+' || *p == '-')) sign = *p++ == '-' ? -1 : 1;
        const unsigned char *first = p;
        int e = 0;
        for (; p < end && is_digit(*p); p++)
            if (e < 100000) e = e * 10 + (*p - '0');
        if (p == first) return 0;
        exponent += sign * e;
    }
    if (p < end && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E' || *p == '-' || *p == '+')) return 0;
    if (integer) {
        if (m > (uint64_t)EXACT_INT_LIMIT) return 0;
        *x = m == 0 ? 0.0 : negative ? -(double)m : (double)m;
    } else if (m == 0) {
        *x = negative ? -0.0 : 0.0;
    } else {
#ifdef READS_DECIMALS
        if (exponent < -MAX_DECIMAL_EXPONENT || exponent > MAX_DECIMAL_EXPONENT) return 0;
        const long double v = exponent < 0 ? (long double)m / POWERS_OF_TEN[-exponent]
                                           : (long double)m * POWERS_OF_TEN[exponent];
        double d = (double)v;
        uint64_t significand; /* x87 extended: the 64-bit significand comes first (little-endian) */
        memcpy(&significand, &v, sizeof significand);
        if ((significand & 0x7FF) == 0x400) { /* the 11 bits a double drops: v is exactly halfway */
            const int side = side_of(m, exponent, v);
            if (side == 2) return 0;
            const double beside = nextafter(d, v > (long double)d ? INFINITY : -INFINITY);
            const double below = fmin(d, beside), above = fmax(d, beside);
            uint64_t bits;
            memcpy(&bits, &below, sizeof bits);
            d = side > 0 ? above : side < 0 ? below : (bits & 1) ? above : below; /* a tie: the even one */
        }
        *x = negative ? -d : d;
#else
        return 0;
#endif
    }
    c->p = p;
    return 1;
}

/* A string, number, true, false or null at the cursor, skipped; 0 for anything else. */
static int simple_value(Cursor *c) {
    skip_space(c);
    if (c->p >= c->end) return 0;
    const char *text;
    Py_ssize_t len;
    double x;
    switch (*c->p) {
    case '"':
        return plain_string(c, &text, &len);
    case 't':
    case 'n':
        if (c->end - c->p < 4 || memcmp(c->p, *c->p == 't' ? "true" : "null", 4)) return 0;
        c->p += 4;
        return 1;
    case 'f':
        if (c->end - c->p < 5 || memcmp(c->p, "false", 5)) return 0;
        c->p += 5;
        return 1;
    default:
        return number(c, &x);
    }
}

/* Whether this thread's floating point reads decimals as the comment above needs. */
static int exact_arithmetic(void) {
#ifdef READS_DECIMALS
    volatile long double one = 1.0L, tiny = 0x1p-63L;
    return fegetround() == FE_TONEAREST && one + tiny != one;
#else
    return 1;
#endif
}

/* The optional strings' values of the rows read so far: `found` (this row's, NULL where absent)
 * appended to each key's list, made (None for the earlier rows) when the first value comes. 0 on
 * a memory error. */
static int append_strings(PyObject **columns, PyObject **found, Py_ssize_t m, Py_ssize_t rows) {
    for (Py_ssize_t s = 0; s < m; s++) {
        if (found[s] != NULL && columns[s] == NULL) {
            columns[s] = PyList_New(rows);
            if (columns[s] == NULL) return 0;
            for (Py_ssize_t r = 0; r < rows; r++) PyList_SET_ITEM(columns[s], r, Py_NewRef(Py_None));
        }
        if (columns[s] != NULL && PyList_Append(columns[s], found[s] != NULL ? found[s] : Py_None) < 0) return 0;
        Py_CLEAR(found[s]);
    }
    return 1;
}

static PyObject *parse(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer body, low, high, out;
    PyObject *keys, *specs;
    const char *field;
    Py_ssize_t field_len;
    if (!PyArg_ParseTuple(args, "y*s#O!y*y*w*O!", &body, &field, &field_len, &PyTuple_Type, &keys, &low, &high, &out,
                          &PyTuple_Type, &specs))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t k = PyTuple_GET_SIZE(keys);
    const char *names[MAX_KEYS];
    Py_ssize_t lengths[MAX_KEYS];
    OptionalString strings[MAX_STRINGS];
    PyObject *found[MAX_STRINGS] = {NULL}, *columns[MAX_STRINGS] = {NULL};
    const Py_ssize_t m = optional_strings(specs, "Snn", strings);
    if (m < 0) goto done;
    if (k < 1 || k > MAX_KEYS || low.len != k * (Py_ssize_t)sizeof(double) ||
        high.len != k * (Py_ssize_t)sizeof(double) || out.len % (k * (Py_ssize_t)sizeof(double))) {
        PyErr_SetString(PyExc_ValueError, "1 to 64 keys; low and high one double per key; out whole rows of them");
        goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *name = PyTuple_GET_ITEM(keys, j);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            goto done;
        }
        names[j] = PyBytes_AS_STRING(name);
        lengths[j] = PyBytes_GET_SIZE(name);
    }
    const double *lo = low.buf, *hi = high.buf;
    const Py_ssize_t capacity = out.len / (k * (Py_ssize_t)sizeof(double));
    const uint64_t every = k == 64 ? ~(uint64_t)0 : ((uint64_t)1 << k) - 1;
    double *row = out.buf;
    Py_ssize_t rows = 0;
    Cursor c = {body.buf, (const unsigned char *)body.buf + body.len};
    const char *text;
    Py_ssize_t len;
    if (!exact_arithmetic() || !take(&c, '{') || !plain_string(&c, &text, &len) || len != field_len ||
        memcmp(text, field, len) || !take(&c, ':') || !take(&c, '['))
        goto undecided;
    do {
        if (rows == capacity || !take(&c, '{')) goto undecided;
        uint64_t seen = 0;
        Py_ssize_t next = 0; /* keys usually come in order: the next one is tried first */
        do {
            if (!plain_string(&c, &text, &len) || !take(&c, ':')) goto undecided;
            Py_ssize_t j = next < k && lengths[next] == len && !memcmp(names[next], text, len) ? next : -1;
            for (Py_ssize_t i = 0; j < 0 && i < k; i++)
                if (lengths[i] == len && !memcmp(names[i], text, len)) j = i;
            if (j < 0) {
                Py_ssize_t s = 0;
                while (s < m && (PyBytes_GET_SIZE(strings[s].key) != len ||
                                 memcmp(PyBytes_AS_STRING(strings[s].key), text, len)))
                    s++;
                if (s == m) {
                    if (!simple_value(&c)) goto undecided;
                    continue;
                }
                const char *value;
                Py_ssize_t value_len;
                if (found[s] != NULL || !plain_string(&c, &value, &value_len) || value_len < strings[s].shortest ||
                    value_len > strings[s].longest)
                    goto undecided;
                found[s] = PyUnicode_FromStringAndSize(value, value_len); /* ASCII: its bytes are its characters */
                if (found[s] == NULL) goto done;
                continue;
            }
            double x;
            if (seen >> j & 1 || !number(&c, &x) || x < lo[j] || x > hi[j]) goto undecided;
            row[j] = x;
            seen |= (uint64_t)1 << j;
            next = j + 1;
        } while (take(&c, ','));
        if (!take(&c, '}') || seen != every) goto undecided;
        if (!append_strings(columns, found, m, rows)) goto done;
        row += k;
        rows++;
    } while (take(&c, ','));
    if (!take(&c, ']') || !take(&c, '}')) goto undecided;
    skip_space(&c);
    if (c.p != c.end) goto undecided;
    int any = 0;
    for (Py_ssize_t s = 0; s < m; s++) any |= columns[s] != NULL;
    PyObject *values = any ? PyList_New(m) : Py_NewRef(Py_None);
    if (values == NULL) goto done;
    for (Py_ssize_t s = 0; any && s < m; s++) { /* the list takes each column's reference */
        PyList_SET_ITEM(values, s, columns[s] != NULL ? columns[s] : Py_NewRef(Py_None));
        columns[s] = NULL;
    }
    result = Py_BuildValue("(nN)", rows, values);
    goto done;
undecided:
    result = Py_BuildValue("(iO)", 0, Py_None);
done:
    for (Py_ssize_t s = 0; s < MAX_STRINGS; s++) {
        Py_XDECREF(found[s]);
        Py_XDECREF(columns[s]);
    }
    PyBuffer_Release(&body);
    PyBuffer_Release(&low);
    PyBuffer_Release(&high);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(items, keys, low, high, out, strings) -> 0 valid (out filled), 1 invalid, 2 undecided; strings: "
     "((key, shortest, longest), ...), the optional string properties"},
    {"parse", parse, METH_VARARGS,
     "parse(body, field, keys, low, high, out, strings) -> (rows read into out, or 0: undecided (decode the "
     "body); each optional string's values, or None when no item has one)"},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
#ifdef READS_DECIMALS
    POWERS_OF_TEN[0] = 1.0L;
    POWERS_OF_FIVE[0] = 1;
    for (int i = 1; i <= MAX_DECIMAL_EXPONENT; i++) {
        POWERS_OF_TEN[i] = POWERS_OF_TEN[i - 1] * 10; /* exact */
        POWERS_OF_FIVE[i] = POWERS_OF_FIVE[i - 1] * 5;
    }
#endif
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
