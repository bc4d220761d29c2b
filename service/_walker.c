/* Walks a random forest stored as one array of packed nodes (possibly memory-mapped, read-only).
 *
 * Bit-identical to scikit-learn's predict_proba. sklearn rounds each feature to float32 and
 * compares (double)x32 <= threshold64; a node here holds the threshold rounded *down* to float32,
 * the largest float32 <= threshold64, and for any float32 x, x <= that float32 exactly when
 * x <= threshold64: the same branch, compared in float32. Leaf class-1 fractions are summed in
 * tree order in double precision and divided by the number of trees, exactly as
 * ForestClassifier.predict_proba accumulates them.
 *
 * A node is 16 bytes, everything one step of the walk reads: one cache line access a level.
 *
 * Batches of 16 rows or more (8 with AVX2) take another route when the CPU has AVX-512 or AVX2
 * (checked at run time; the walk above stays the fallback): QuickScorer (Lucchese et al., SIGIR 2015), which visits no tree.
 * A row goes right at a node exactly when !(x <= threshold) (the walk's float32 comparison, NaN
 * going right). Number each tree's leaves left to right; going right at a node rules out the
 * leaves of its left subtree, and the leaf the walk reaches is the leftmost leaf no node on any
 * path rules out. So each tree keeps a bit a leaf (one 64-bit word per 64 leaves), every node whose
 * comparison fails clears its left subtree's bits, and the lowest bit left is the exit leaf. The
 * nodes are sorted by feature and threshold, and 16 (8) rows are compared with one instruction; once
 * their values of a feature are all <= a threshold they are <= every larger one, and that feature's
 * scan stops. The leaves' values are then added in tree order and divided as above: the same
 * double operations as the walk, so the same bits. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX512_KERNEL 1 /* and the AVX2 one */
#endif

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
    /* QuickScorer tables, built once at init when the CPU can run that kernel (NULL otherwise):
     * per node (two if its left subtree's leaves straddle words), sorted by feature then
     * threshold: the threshold, the tree word it clears bits of, the mask; per tree, its first
     * word and word count; per leaf word slot, the leaf's value. */
    Py_ssize_t qs_words;
    int qs_lanes; /* rows a block: 16 (AVX-512), 8 (AVX2); 0 when batches are walked */
    float *qs_threshold;
    uint32_t *qs_word;
    uint64_t *qs_mask;
    Py_ssize_t *qs_feature_start; /* n_features + 1 */
    int32_t *qs_tree_word;
    uint8_t *qs_tree_words;
    double *qs_leaf_value; /* qs_words * 64 */
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


/* ---- QuickScorer (see the top of this file) ---- */

static void qs_free(Walker *w) {
    PyMem_Free(w->qs_threshold); PyMem_Free(w->qs_word); PyMem_Free(w->qs_mask);
    PyMem_Free(w->qs_feature_start); PyMem_Free(w->qs_tree_word); PyMem_Free(w->qs_tree_words);
    PyMem_Free(w->qs_leaf_value);
    w->qs_threshold = NULL; w->qs_word = NULL; w->qs_mask = NULL; w->qs_feature_start = NULL;
    w->qs_tree_word = NULL; w->qs_tree_words = NULL; w->qs_leaf_value = NULL;
}

#ifdef HAVE_AVX512_KERNEL
typedef struct {
    float threshold;
    int32_t feature;
    uint32_t word;
    uint64_t mask;
} QsEntry;

static int qs_order(const void *a, const void *b) {
    const QsEntry *x = a, *y = b;
    if (x->feature != y->feature) return x->feature < y->feature ? -1 : 1;
    if (x->threshold != y->threshold) return x->threshold < y->threshold ? -1 : 1;
    return 0;
}

/* 0 on success, -1 with an exception set. Runs after Walker_init has validated the arrays. */
static int qs_build(Walker *w) {
    const Node *nodes = NODES(w);
    const int32_t *roots = ROOTS(w);
    const double *value = w->value.buf;
    const Py_ssize_t n = w->n_nodes, T = w->n_trees;
    int32_t *first = PyMem_Malloc(n * sizeof(int32_t)); /* a subtree's leaves are [first, end) */
    int32_t *end = PyMem_Malloc(n * sizeof(int32_t));
    int32_t *stack = PyMem_Malloc(2 * (n + 1) * sizeof(int32_t));
    QsEntry *entries = PyMem_Malloc(2 * n * sizeof(QsEntry));
    w->qs_tree_word = PyMem_Malloc(T * sizeof(int32_t));
    w->qs_tree_words = PyMem_Malloc(T);
    w->qs_feature_start = PyMem_Malloc((w->n_features + 1) * sizeof(Py_ssize_t));
    int result = -1;
    if (!first || !end || !stack || !entries || !w->qs_tree_word || !w->qs_tree_words || !w->qs_feature_start) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t words = 0, n_entries = 0;
    for (Py_ssize_t t = 0; t < T; t++) {
        /* Leaves numbered left to right, without recursion: (node, 0: go left, 1: go right, 2: close). */
        int32_t leaves = 0;
        Py_ssize_t sp = 0;
        stack[sp++] = roots[t]; stack[sp++] = 0;
        while (sp) {
            int32_t state = stack[--sp], node = stack[--sp];
            if (nodes[node].feature < 0) { first[node] = leaves; end[node] = ++leaves; continue; }
            if (state < 2) {
                stack[sp++] = node; stack[sp++] = state + 1;
                stack[sp++] = state == 0 ? nodes[node].left : nodes[node].right; stack[sp++] = 0;
            } else {
                first[node] = first[nodes[node].left];
                end[node] = end[nodes[node].right];
            }
        }
        int32_t tree_words = (leaves + 63) / 64;
        if (tree_words > 255) {
            PyErr_SetString(PyExc_ValueError, "a tree has more than 16,320 leaves");
            goto done;
        }
        w->qs_tree_word[t] = (int32_t)words;
        w->qs_tree_words[t] = (uint8_t)tree_words;
        Py_ssize_t stop = t + 1 < T ? roots[t + 1] : n;
        for (Py_ssize_t i = roots[t]; i < stop; i++) {
            if (nodes[i].feature < 0) continue;
            int32_t a = first[nodes[i].left], b = end[nodes[i].left];
            for (int32_t wd = a / 64; wd <= (b - 1) / 64; wd++) {
                int32_t lo = a > wd * 64 ? a - wd * 64 : 0, hi = b < (wd + 1) * 64 ? b - wd * 64 : 64;
                uint64_t bits = hi - lo == 64 ? ~0ULL : ((1ULL << (hi - lo)) - 1) << lo;
                entries[n_entries++] = (QsEntry){nodes[i].threshold, nodes[i].feature, (uint32_t)(words + wd), ~bits};
            }
        }
        words += tree_words;
    }
    qsort(entries, n_entries, sizeof(QsEntry), qs_order);
    w->qs_threshold = PyMem_Malloc((n_entries + 1) * sizeof(float));
    w->qs_word = PyMem_Malloc((n_entries + 1) * sizeof(uint32_t));
    w->qs_mask = PyMem_Malloc((n_entries + 1) * sizeof(uint64_t));
    w->qs_leaf_value = PyMem_Calloc(words * 64, sizeof(double));
    if (!w->qs_threshold || !w->qs_word || !w->qs_mask || !w->qs_leaf_value) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_entries; i++) {
        w->qs_threshold[i] = entries[i].threshold;
        w->qs_word[i] = entries[i].word;
        w->qs_mask[i] = entries[i].mask;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t f = 0; f <= w->n_features; f++) {
        while (k < n_entries && entries[k].feature < f) k++;
        w->qs_feature_start[f] = k;
    }
    for (Py_ssize_t t = 0; t < T; t++) {
        Py_ssize_t stop = t + 1 < T ? roots[t + 1] : n;
        for (Py_ssize_t i = roots[t]; i < stop; i++)
            if (nodes[i].feature < 0) w->qs_leaf_value[(Py_ssize_t)w->qs_tree_word[t] * 64 + first[i]] = value[i];
    }
    w->qs_words = words;
    result = 0;
done:
    PyMem_Free(first); PyMem_Free(end); PyMem_Free(stack); PyMem_Free(entries);
    if (result < 0) qs_free(w);
    return result;
}

/* The exit leaves of one block's rows (bits: word-major, `lanes` rows a word), their values
 * added in tree order. */
static void qs_block_sums(const Walker *w, const uint64_t *bits, int lanes, double *proba) {
    double total[32] = {0.0};
    for (Py_ssize_t t = 0; t < w->n_trees; t++) {
        const uint64_t *word = bits + (Py_ssize_t)w->qs_tree_word[t] * lanes;
        const double *leaf_value = w->qs_leaf_value + (Py_ssize_t)w->qs_tree_word[t] * 64;
        if (w->qs_tree_words[t] == 1) {
            for (int i = 0; i < lanes; i++) total[i] += leaf_value[__builtin_ctzll(word[i])];
        } else {
            for (int i = 0; i < lanes; i++) {
                int wd = 0;
                while (word[wd * lanes + i] == 0) wd++; /* the exit leaf's bit is never cleared */
                total[i] += leaf_value[wd * 64 + __builtin_ctzll(word[wd * lanes + i])];
            }
        }
    }
    for (int i = 0; i < lanes; i++) proba[i] = total[i] / (double)w->n_trees;
}

/* Rows in blocks of 16, two blocks a pass while 32 rows remain (the loop's loads and the break
 * shared by both), the rest walked; bits: qs_words * 32 words, 64-byte aligned. */
__attribute__((target("avx512f")))
static void qs_rows_avx512(const Walker *w, const float *x, Py_ssize_t n_rows, double *proba, uint64_t *bits) {
    const Py_ssize_t nf = w->n_features;
    const __m512i row_start = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)nf));
    const __m512i ones = _mm512_set1_epi64(-1);
    Py_ssize_t r = 0;
    for (; r + 32 <= n_rows; r += 32) {
        const float *block = x + r * nf;
        for (Py_ssize_t i = 0; i < w->qs_words * 4; i++) _mm512_store_si512(bits + i * 8, ones);
        for (Py_ssize_t f = 0; f < nf; f++) {
            __m512i at = _mm512_add_epi32(row_start, _mm512_set1_epi32((int)f));
            __m512 xa = _mm512_i32gather_ps(at, block, 4), xb = _mm512_i32gather_ps(at, block + 16 * nf, 4);
            for (Py_ssize_t k = w->qs_feature_start[f]; k < w->qs_feature_start[f + 1]; k++) {
                __m512 threshold = _mm512_set1_ps(w->qs_threshold[k]);
                __mmask16 ra = _mm512_cmp_ps_mask(xa, threshold, _CMP_NLE_UQ);
                __mmask16 rb = _mm512_cmp_ps_mask(xb, threshold, _CMP_NLE_UQ);
                if (!(ra | rb)) break; /* all 32 values <= this threshold, so <= every later one */
                uint64_t *word = bits + (Py_ssize_t)w->qs_word[k] * 32;
                __m512i mask = _mm512_set1_epi64((long long)w->qs_mask[k]);
                __m512i v0 = _mm512_load_si512(word), v1 = _mm512_load_si512(word + 8);
                __m512i v2 = _mm512_load_si512(word + 16), v3 = _mm512_load_si512(word + 24);
                _mm512_store_si512(word, _mm512_mask_and_epi64(v0, (__mmask8)ra, v0, mask));
                _mm512_store_si512(word + 8, _mm512_mask_and_epi64(v1, (__mmask8)(ra >> 8), v1, mask));
                _mm512_store_si512(word + 16, _mm512_mask_and_epi64(v2, (__mmask8)rb, v2, mask));
                _mm512_store_si512(word + 24, _mm512_mask_and_epi64(v3, (__mmask8)(rb >> 8), v3, mask));
            }
        }
        qs_block_sums(w, bits, 32, proba + r);
    }
    for (; r + 16 <= n_rows; r += 16) {
        const float *block = x + r * nf;
        for (Py_ssize_t i = 0; i < w->qs_words * 2; i++) _mm512_store_si512(bits + i * 8, ones);
        for (Py_ssize_t f = 0; f < nf; f++) {
            __m512 xf = _mm512_i32gather_ps(_mm512_add_epi32(row_start, _mm512_set1_epi32((int)f)), block, 4);
            for (Py_ssize_t k = w->qs_feature_start[f]; k < w->qs_feature_start[f + 1]; k++) {
                __mmask16 right = _mm512_cmp_ps_mask(xf, _mm512_set1_ps(w->qs_threshold[k]), _CMP_NLE_UQ);
                if (!right) break;
                uint64_t *word = bits + (Py_ssize_t)w->qs_word[k] * 16;
                __m512i mask = _mm512_set1_epi64((long long)w->qs_mask[k]);
                __m512i lo = _mm512_load_si512(word), hi = _mm512_load_si512(word + 8);
                _mm512_store_si512(word, _mm512_mask_and_epi64(lo, (__mmask8)right, lo, mask));
                _mm512_store_si512(word + 8, _mm512_mask_and_epi64(hi, (__mmask8)(right >> 8), hi, mask));
            }
        }
        qs_block_sums(w, bits, 16, proba + r);
    }
    for (; r < n_rows; r++) proba[r] = forest_proba(w, x + r * nf);
}

/* The same in blocks of 8 rows with AVX2: a comparison's lanes widened to 64-bit masks. */
__attribute__((target("avx2")))
static void qs_rows_avx2(const Walker *w, const float *x, Py_ssize_t n_rows, double *proba, uint64_t *bits) {
    const Py_ssize_t nf = w->n_features;
    const __m256i row_start = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)nf));
    const __m256i ones = _mm256_set1_epi64x(-1);
    Py_ssize_t r = 0;
    for (; r + 8 <= n_rows; r += 8) {
        const float *block = x + r * nf;
        for (Py_ssize_t i = 0; i < w->qs_words; i++) {
            _mm256_store_si256((__m256i *)(bits + i * 8), ones);
            _mm256_store_si256((__m256i *)(bits + i * 8 + 4), ones);
        }
        for (Py_ssize_t f = 0; f < nf; f++) {
            __m256 xf = _mm256_i32gather_ps(block, _mm256_add_epi32(row_start, _mm256_set1_epi32((int)f)), 4);
            for (Py_ssize_t k = w->qs_feature_start[f]; k < w->qs_feature_start[f + 1]; k++) {
                __m256 right = _mm256_cmp_ps(xf, _mm256_set1_ps(w->qs_threshold[k]), _CMP_NLE_UQ);
                if (_mm256_testz_ps(right, right)) break;
                __m256i right32 = _mm256_castps_si256(right);
                __m256i clear = _mm256_set1_epi64x(~(long long)w->qs_mask[k]); /* the left subtree's bits */
                __m256i clear_lo = _mm256_and_si256(clear, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(right32)));
                __m256i clear_hi = _mm256_and_si256(clear, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(right32, 1)));
                __m256i *word = (__m256i *)(bits + (Py_ssize_t)w->qs_word[k] * 8);
                _mm256_store_si256(word, _mm256_andnot_si256(clear_lo, _mm256_load_si256(word)));
                _mm256_store_si256(word + 1, _mm256_andnot_si256(clear_hi, _mm256_load_si256(word + 1)));
            }
        }
        qs_block_sums(w, bits, 8, proba + r);
    }
    for (; r < n_rows; r++) proba[r] = forest_proba(w, x + r * nf);
}

/* The fastest route this CPU runs: 16, 8, or 0 (walk). */
static int cpu_lanes(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") ? 8 : 0;
}
#endif

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
#ifdef HAVE_AVX512_KERNEL
    if (w->qs_lanes && n_rows >= w->qs_lanes) {
        void *memory = PyMem_RawMalloc(w->qs_words * 2 * w->qs_lanes * sizeof(uint64_t) + 64);
        if (!memory) {
            PyErr_NoMemory();
            goto done;
        }
        uint64_t *bits = (uint64_t *)(((uintptr_t)memory + 63) & ~(uintptr_t)63);
        Py_BEGIN_ALLOW_THREADS
        if (w->qs_lanes == 16)
            qs_rows_avx512(w, x, n_rows, proba, bits);
        else
            qs_rows_avx2(w, x, n_rows, proba, bits);
        Py_END_ALLOW_THREADS
        PyMem_RawFree(memory);
        result = Py_NewRef(Py_None);
        goto done;
    }
#endif
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
    static char *kwlist[] = {"nodes", "value", "roots", "n_features", "lanes", NULL};
    PyObject *nodes, *value, *roots;
    Py_ssize_t n_features;
    int lanes = -1; /* -1: the fastest this CPU runs; 16, 8: that route if the CPU runs it; 0: walk */
    if (w->buffers_held) {
        PyErr_SetString(PyExc_RuntimeError, "Walker is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOn|i", kwlist, &nodes, &value, &roots, &n_features, &lanes))
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
    if (!bad) {
        w->buffers_held = 1;
        int supported = 0;
#ifdef HAVE_AVX512_KERNEL
        supported = cpu_lanes();
#endif
        if (lanes == -1) lanes = supported;
        if (lanes != 0 && ((lanes != 16 && lanes != 8) || lanes > supported)) {
            PyErr_Format(PyExc_ValueError, "lanes=%d: this CPU runs 0%s", lanes,
                         supported == 16 ? ", 8 or 16" : supported == 8 ? " or 8" : "");
            return -1;
        }
#ifdef HAVE_AVX512_KERNEL
        if (lanes && qs_build(w) < 0) return -1;
#endif
        w->qs_lanes = lanes;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "invalid forest arrays: %s", bad);
    PyBuffer_Release(&w->roots);
fail_value: PyBuffer_Release(&w->value);
fail_nodes: PyBuffer_Release(&w->nodes);
    return -1;
}

static void Walker_dealloc(Walker *w) {
    qs_free(w);
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
static PyObject *Walker_get_lanes(Walker *w, void *closure) { return PyLong_FromLong(w->qs_lanes); }

static PyGetSetDef Walker_getset[] = {
    {"n_trees", (getter)Walker_get_n_trees, NULL, "number of trees", NULL},
    {"n_nodes", (getter)Walker_get_n_nodes, NULL, "number of nodes in all trees", NULL},
    {"left_is_next", (getter)Walker_get_left_is_next, NULL, "whether every left child follows its parent", NULL},
    {"lanes", (getter)Walker_get_lanes, NULL, "rows a QuickScorer block (16: AVX-512, 8: AVX2), 0 when batches are walked", NULL},
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
