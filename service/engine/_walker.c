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
 * Batches of 12 rows or more (7 with AVX2) take another route when the CPU has AVX-512BW or AVX2
 * (checked at run time; the walk stays the fallback): QuickScorer (Lucchese et al., SIGIR 2015), which visits
 * no tree, in the byte layout further down (64 rows a block with AVX-512BW, 32 with AVX2). The
 * word layout (16 rows with AVX-512, 8 with AVX2) is the route a caller can still ask for.
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
     * per node and word its left subtree's leaves touch, sorted by feature then
     * threshold: the threshold, the tree word it clears bits of, the mask; per tree, its first
     * word and word count; per leaf word slot, the leaf's value. */
    Py_ssize_t qs_words;
    int qs_lanes; /* rows a block: 64 (AVX-512BW) or 32 (AVX2), the byte kernel; 16 (AVX-512), 8 (AVX2); 0: walked */
    float *qs_threshold;
    uint32_t *qs_word;
    uint64_t *qs_mask;
    Py_ssize_t *qs_feature_start; /* n_features + 1 */
    int32_t *qs_tree_word;
    uint8_t *qs_tree_words;
    double *qs_leaf_value; /* qs_words * 64 */
    /* The byte kernel's tables (lanes 64), the trees in groups whose state fits the L1 cache: per
     * group and feature, where its entries start; per tree, its first byte line in its group's
     * state, its line count, and where its leaves' values start. */
    Py_ssize_t rs_groups, rs_max_lines;
    int32_t *rs_group_tree; /* rs_groups + 1: each group's first tree */
    Py_ssize_t *rs_entry_start; /* rs_groups * n_features + 1: a group's nodes on a feature */
    struct RsEntry *rs_entries;
    int32_t *rs_tree_line, *rs_tree_lines;
    Py_ssize_t *rs_tree_value;
    double *rs_leaf_value;
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
    for (Py_ssize_t i = 0; i < w->n_features; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        double d;
        if (PyFloat_CheckExact(item)) {
            d = PyFloat_AS_DOUBLE(item);
        } else { /* its __float__ may be Python code, which may change a list row: the item is held */
            Py_INCREF(item);
            d = PyFloat_AsDouble(item);
            Py_DECREF(item);
            if (d == -1.0 && PyErr_Occurred()) goto fail;
            if (PySequence_Fast_GET_SIZE(fast) != w->n_features) {
                PyErr_SetString(PyExc_RuntimeError, "the row changed while it was read");
                goto fail;
            }
        }
        x[i] = (float)d;
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    return -1;
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
/* Numbers the leaves of the tree at root left to right, without recursion; a subtree's leaves are
 * then [first, end). stack: 2 * (nodes + 1) ints. Returns the tree's leaf count. */
static int32_t number_leaves(const Node *nodes, int32_t root, int32_t *first, int32_t *end, int32_t *stack) {
    int32_t leaves = 0;
    Py_ssize_t sp = 0;
    stack[sp++] = root; stack[sp++] = 0; /* (node, 0: go left, 1: go right, 2: close) */
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
    return leaves;
}

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
    QsEntry *entries = NULL;
    w->qs_tree_word = PyMem_Malloc(T * sizeof(int32_t));
    w->qs_tree_words = PyMem_Malloc(T);
    w->qs_feature_start = PyMem_Malloc((w->n_features + 1) * sizeof(Py_ssize_t));
    int result = -1;
    if (!first || !end || !stack || !w->qs_tree_word || !w->qs_tree_words || !w->qs_feature_start) {
        PyErr_NoMemory();
        goto done;
    }
    /* A node has an entry per word its left subtree's leaves touch: counted first, as a deep tree's
     * nodes can have many each (far more than two a node in all). */
    Py_ssize_t words = 0, n_entries = 0;
    for (Py_ssize_t t = 0; t < T; t++) {
        int32_t leaves = number_leaves(nodes, roots[t], first, end, stack);
        int32_t tree_words = (leaves + 63) / 64;
        if (tree_words > 255) {
            PyErr_SetString(PyExc_ValueError, "a tree has more than 16,320 leaves");
            goto done;
        }
        w->qs_tree_word[t] = (int32_t)words;
        w->qs_tree_words[t] = (uint8_t)tree_words;
        words += tree_words;
        Py_ssize_t stop = t + 1 < T ? roots[t + 1] : n;
        for (Py_ssize_t i = roots[t]; i < stop; i++)
            if (nodes[i].feature >= 0) n_entries += (end[nodes[i].left] - 1) / 64 - first[nodes[i].left] / 64 + 1;
    }
    entries = PyMem_Malloc((n_entries + 1) * sizeof(QsEntry));
    if (!entries) {
        PyErr_NoMemory();
        goto done;
    }
    n_entries = 0;
    for (Py_ssize_t t = 0; t < T; t++) {
        const Py_ssize_t tree_word = w->qs_tree_word[t];
        Py_ssize_t stop = t + 1 < T ? roots[t + 1] : n;
        for (Py_ssize_t i = roots[t]; i < stop; i++) {
            if (nodes[i].feature < 0) continue;
            int32_t a = first[nodes[i].left], b = end[nodes[i].left];
            for (int32_t wd = a / 64; wd <= (b - 1) / 64; wd++) {
                int32_t lo = a > wd * 64 ? a - wd * 64 : 0, hi = b < (wd + 1) * 64 ? b - wd * 64 : 64;
                uint64_t bits = hi - lo == 64 ? ~0ULL : ((1ULL << (hi - lo)) - 1) << lo;
                entries[n_entries++] = (QsEntry){nodes[i].threshold, nodes[i].feature, (uint32_t)(tree_word + wd), ~bits};
            }
        }
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

/* ---- The byte kernel (AVX-512BW): QuickScorer's bits a byte a row, 64 rows a block ----
 *
 * The same rule as above (the exit leaf is the lowest bit no failing node clears), laid out as in
 * RapidScorer (Ye et al., KDD 2018): a tree's leaf bits are bytes, and each byte is a "line" of 64
 * bytes, one per row of the block. A node's left subtree is a run of leaves, so it clears bits in
 * a few consecutive lines (one, for 80 % of the nodes of perf's model): the 64 rows' comparisons
 * make one 64-bit mask, and each line is one blended store. The trees are cut into groups of at
 * most 64 KiB of lines, so that a large forest's state stays in cache, each group's nodes sorted
 * by feature and threshold. */

typedef struct RsEntry {
    float threshold;
    uint16_t line;       /* its first line in its group's state */
    uint8_t first, last; /* the bits its first and last line keep (one mask when lines == 1) */
    uint32_t lines;      /* lines touched; those between the first and the last are cleared whole */
} RsEntry;

#define RS_LANES 64 /* AVX-512BW's block; AVX2's is RS_LANES_AVX2 */
#define RS_LANES_AVX2 32
#define RS_MIN_ROWS 12 /* fewer rows are walked: a block costs about what twelve rows walked cost */
#define RS_MIN_ROWS_AVX2 7 /* a 32-row block (AVX2) costs about what six or seven rows walked cost */
#define RS_GROUP_LINES 1024 /* 64 KiB of state a group: faster than groups that fit L1 (perf/README.md) */

static void rs_free(Walker *w) {
    PyMem_Free(w->rs_group_tree); PyMem_Free(w->rs_entry_start); PyMem_Free(w->rs_entries);
    PyMem_Free(w->rs_tree_line); PyMem_Free(w->rs_tree_lines); PyMem_Free(w->rs_tree_value);
    PyMem_Free(w->rs_leaf_value);
    w->rs_group_tree = NULL; w->rs_entry_start = NULL; w->rs_entries = NULL; w->rs_tree_line = NULL;
    w->rs_tree_lines = NULL; w->rs_tree_value = NULL; w->rs_leaf_value = NULL;
}

typedef struct {
    RsEntry entry;
    Py_ssize_t list; /* group * n_features + feature: a group's nodes on a feature, sorted by threshold */
} RsSortable;

static int rs_order(const void *a, const void *b) {
    const RsSortable *x = a, *y = b;
    if (x->list != y->list) return x->list < y->list ? -1 : 1;
    if (x->entry.threshold != y->entry.threshold) return x->entry.threshold < y->entry.threshold ? -1 : 1;
    return 0;
}

/* 0 on success, -1 with an exception set. Runs after Walker_init has validated the arrays. */
static int rs_build(Walker *w) {
    const Node *nodes = NODES(w);
    const int32_t *roots = ROOTS(w);
    const double *value = w->value.buf;
    const Py_ssize_t n = w->n_nodes, T = w->n_trees, nf = w->n_features;
    int32_t *first = PyMem_Malloc(n * sizeof(int32_t));
    int32_t *end = PyMem_Malloc(n * sizeof(int32_t));
    int32_t *stack = PyMem_Malloc(2 * (n + 1) * sizeof(int32_t));
    RsSortable *sortable = PyMem_Malloc(n * sizeof(RsSortable));
    w->rs_group_tree = PyMem_Malloc((T + 1) * sizeof(int32_t));
    w->rs_tree_line = PyMem_Malloc(T * sizeof(int32_t));
    w->rs_tree_lines = PyMem_Malloc(T * sizeof(int32_t));
    w->rs_tree_value = PyMem_Malloc((T + 1) * sizeof(Py_ssize_t));
    int result = -1;
    if (!first || !end || !stack || !sortable || !w->rs_group_tree || !w->rs_tree_line || !w->rs_tree_lines ||
        !w->rs_tree_value) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t groups = 0, group_lines = 0, n_entries = 0, values = 0;
    w->rs_max_lines = 0;
    for (Py_ssize_t t = 0; t < T; t++) {
        int32_t lines = (number_leaves(nodes, roots[t], first, end, stack) + 7) / 8;
        if (lines > 8160) {
            PyErr_SetString(PyExc_ValueError, "a tree has more than 65,280 leaves");
            goto done;
        }
        if (t == 0 || group_lines + lines > RS_GROUP_LINES) {
            w->rs_group_tree[groups++] = (int32_t)t;
            group_lines = 0;
        }
        w->rs_tree_line[t] = (int32_t)group_lines;
        w->rs_tree_lines[t] = lines;
        w->rs_tree_value[t] = values;
        Py_ssize_t stop = t + 1 < T ? roots[t + 1] : n;
        for (Py_ssize_t i = roots[t]; i < stop; i++) {
            if (nodes[i].feature < 0) continue;
            int32_t a = first[nodes[i].left], b = end[nodes[i].left]; /* the leaves it rules out */
            int32_t la = a / 8, lb = (b - 1) / 8;
            uint8_t keep_first = (uint8_t)~(0xFFu << (a % 8)), keep_last = (uint8_t)(0xFEu << ((b - 1) % 8));
            if (la == lb) keep_first = keep_last = keep_first | keep_last;
            sortable[n_entries++] = (RsSortable){
                {nodes[i].threshold, (uint16_t)(group_lines + la), keep_first, keep_last, (uint32_t)(lb - la + 1)},
                (groups - 1) * nf + nodes[i].feature};
        }
        group_lines += lines;
        values += 8 * lines;
        if (group_lines > w->rs_max_lines) w->rs_max_lines = group_lines;
    }
    w->rs_group_tree[groups] = (int32_t)T;
    w->rs_tree_value[T] = values;
    qsort(sortable, n_entries, sizeof(RsSortable), rs_order);
    w->rs_entries = PyMem_Malloc((n_entries + 1) * sizeof(RsEntry));
    w->rs_entry_start = PyMem_Malloc((groups * nf + 1) * sizeof(Py_ssize_t));
    w->rs_leaf_value = PyMem_Calloc(values, sizeof(double));
    if (!w->rs_entries || !w->rs_entry_start || !w->rs_leaf_value) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_entries; i++) w->rs_entries[i] = sortable[i].entry;
    Py_ssize_t k = 0;
    for (Py_ssize_t list = 0; list <= groups * nf; list++) {
        while (k < n_entries && sortable[k].list < list) k++;
        w->rs_entry_start[list] = k;
    }
    for (Py_ssize_t t = 0; t < T; t++) { /* first[] still holds every tree's leaf numbers */
        Py_ssize_t stop = t + 1 < T ? roots[t + 1] : n;
        for (Py_ssize_t i = roots[t]; i < stop; i++)
            if (nodes[i].feature < 0) w->rs_leaf_value[w->rs_tree_value[t] + first[i]] = value[i];
    }
    w->rs_groups = groups;
    result = 0;
done:
    PyMem_Free(first); PyMem_Free(end); PyMem_Free(stack); PyMem_Free(sortable);
    if (result < 0) rs_free(w);
    return result;
}

/* The scratch memory of the byte kernels (a block of `lanes` rows): the state, the block's rows by
 * feature, its totals, and a zero-padded copy of the last, partial block. */
static Py_ssize_t rs_scratch_bytes(const Walker *w, int lanes) {
    return (w->rs_max_lines + w->n_features * 4 + 8 + w->n_features * 4) * lanes + 64;
}

/* The block of `lanes` rows at row r: in place, or the last, partial one copied into `padded` and
 * zero-filled; `rows` the block's real rows. */
static inline const float *rs_block(const float *x, Py_ssize_t r, Py_ssize_t n_rows, Py_ssize_t nf, int lanes,
                                    float *padded, Py_ssize_t *rows) {
    *rows = n_rows - r < lanes ? n_rows - r : lanes;
    if (*rows == lanes) return x + r * nf;
    memset(padded, 0, lanes * nf * sizeof(float));
    memcpy(padded, x + r * nf, *rows * nf * sizeof(float));
    return padded;
}

/* A tree of more lines than a byte can number: each row's exit leaf found without vectors. */
static void rs_exit_leaves(const uint8_t *tree, int lanes, const double *values, double *total) {
    for (int i = 0; i < lanes; i++) {
        int32_t b = 0;
        while (tree[(Py_ssize_t)b * lanes + i] == 0) b++; /* the exit leaf's bit is never cleared */
        total[i] += values[8 * b + __builtin_ctz(tree[(Py_ssize_t)b * lanes + i])];
    }
}

/* The block's rows going right at a node: !(x <= threshold), NaN included; a bit a row. */
__attribute__((target("avx512f,avx512bw")))
static inline __mmask64 rs_right(__m512 x0, __m512 x1, __m512 x2, __m512 x3, float threshold) {
    __m512 t = _mm512_set1_ps(threshold);
    return _mm512_kunpackd(
        _mm512_kunpackw(_mm512_cmp_ps_mask(x3, t, _CMP_NLE_UQ), _mm512_cmp_ps_mask(x2, t, _CMP_NLE_UQ)),
        _mm512_kunpackw(_mm512_cmp_ps_mask(x1, t, _CMP_NLE_UQ), _mm512_cmp_ps_mask(x0, t, _CMP_NLE_UQ)));
}

/* In the rows going right, a line keeps only the bits of keep (0: none). */
__attribute__((target("avx512f,avx512bw")))
static inline void rs_keep(uint8_t *line, __mmask64 right, uint8_t keep) {
    __m512i v = _mm512_load_si512(line);
    _mm512_store_si512(line, _mm512_mask_blend_epi8(right, v, _mm512_and_si512(v, _mm512_set1_epi8((char)keep))));
}

__attribute__((target("avx512f,avx512bw")))
static void rs_rows_avx512bw(const Walker *w, const float *x, Py_ssize_t n_rows, double *proba, void *scratch) {
    const Py_ssize_t nf = w->n_features, T = w->n_trees;
    const RsEntry *entries = w->rs_entries;
    const Py_ssize_t *entry_start = w->rs_entry_start;
    const int32_t *group_tree = w->rs_group_tree, *tree_line = w->rs_tree_line, *tree_lines = w->rs_tree_lines;
    const Py_ssize_t *tree_value = w->rs_tree_value;
    const double *leaf_value = w->rs_leaf_value;
    const Py_ssize_t groups = w->rs_groups;
    uint8_t *state = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *by_feature = (float *)(state + w->rs_max_lines * RS_LANES);
    double *total = (double *)(by_feature + nf * RS_LANES);
    float *padded = (float *)(total + RS_LANES);
    const __m512i row_start = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)nf));
    const __m512i ones = _mm512_set1_epi8(-1), zero = _mm512_setzero_si512(), nibble = _mm512_set1_epi8(0x0F);
    /* The lowest set bit of a byte, by its nibbles: the isolated bit is in one of them, the other is 0. */
    const __m512i low_bit = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0));
    const __m512i high_bit = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 5, 0, 6, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0));
    for (Py_ssize_t r = 0; r < n_rows; r += RS_LANES) {
        Py_ssize_t rows;
        const float *block = rs_block(x, r, n_rows, nf, RS_LANES, padded, &rows);
        for (Py_ssize_t f = 0; f < nf; f++)
            for (int part = 0; part < 4; part++)
                _mm512_store_ps(by_feature + f * RS_LANES + 16 * part,
                                _mm512_i32gather_ps(_mm512_add_epi32(row_start, _mm512_set1_epi32((int)f)),
                                                    block + 16 * part * nf, 4));
        for (int i = 0; i < RS_LANES; i += 8) _mm512_store_pd(total + i, _mm512_setzero_pd());
        for (Py_ssize_t g = 0; g < groups; g++) {
            int32_t t0 = group_tree[g], t1 = group_tree[g + 1];
            Py_ssize_t lines = tree_line[t1 - 1] + tree_lines[t1 - 1];
            for (Py_ssize_t i = 0; i < lines; i++) _mm512_store_si512(state + i * RS_LANES, ones);
            for (Py_ssize_t f = 0; f < nf; f++) {
                const float *xf = by_feature + f * RS_LANES;
                __m512 x0 = _mm512_load_ps(xf), x1 = _mm512_load_ps(xf + 16);
                __m512 x2 = _mm512_load_ps(xf + 32), x3 = _mm512_load_ps(xf + 48);
                const Py_ssize_t list = g * nf + f;
                for (Py_ssize_t k = entry_start[list]; k < entry_start[list + 1]; k++) {
                    const RsEntry e = entries[k];
                    __mmask64 right = rs_right(x0, x1, x2, x3, e.threshold);
                    if (_kortestz_mask64_u8(right, right)) break; /* all 64 <= this threshold, so <= every later one */
                    uint8_t *line = state + (Py_ssize_t)e.line * RS_LANES;
                    rs_keep(line, right, e.first);
                    if (e.lines > 1) {
                        for (uint32_t j = 1; j + 1 < e.lines; j++) rs_keep(line + j * RS_LANES, right, 0);
                        rs_keep(line + (Py_ssize_t)(e.lines - 1) * RS_LANES, right, e.last);
                    }
                }
            }
            for (int32_t t = t0; t < t1; t++) {
                const uint8_t *tree = state + (Py_ssize_t)tree_line[t] * RS_LANES;
                const double *values = leaf_value + tree_value[t];
                if (tree_lines[t] <= 32) {
                    /* Each row's first line with a bit left (the lines from the last to the first, so that
                     * it is written last), then that byte's lowest bit. */
                    __m512i exit_line = zero, exit_byte = zero;
                    for (int32_t b = tree_lines[t] - 1; b >= 0; b--) {
                        __m512i v = _mm512_load_si512(tree + (Py_ssize_t)b * RS_LANES);
                        __mmask64 any = _mm512_test_epi8_mask(v, v);
                        exit_byte = _mm512_mask_mov_epi8(exit_byte, any, v);
                        exit_line = _mm512_mask_mov_epi8(exit_line, any, _mm512_set1_epi8((char)(8 * b)));
                    }
                    __m512i lowest = _mm512_and_si512(exit_byte, _mm512_sub_epi8(zero, exit_byte));
                    __m512i bit = _mm512_or_si512(
                        _mm512_shuffle_epi8(low_bit, _mm512_and_si512(lowest, nibble)),
                        _mm512_shuffle_epi8(high_bit, _mm512_and_si512(_mm512_srli_epi16(lowest, 4), nibble)));
                    __m512i exit_leaf = _mm512_add_epi8(exit_line, bit);
                    for (int i = 0; i < RS_LANES; i += 16) { /* 16 rows' leaves as int32, gathered 8 at a time */
                        __m512i index = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(exit_leaf, i / 16));
                        _mm512_store_pd(total + i, _mm512_add_pd(_mm512_load_pd(total + i),
                                                                 _mm512_i32gather_pd(_mm512_castsi512_si256(index), values, 8)));
                        _mm512_store_pd(total + i + 8, _mm512_add_pd(_mm512_load_pd(total + i + 8),
                                                                     _mm512_i32gather_pd(_mm512_extracti64x4_epi64(index, 1), values, 8)));
                    }
                } else {
                    rs_exit_leaves(tree, RS_LANES, values, total);
                }
            }
        }
        for (Py_ssize_t i = 0; i < rows; i++) proba[r + i] = total[i] / (double)T;
    }
}

/* ---- The byte kernel with AVX2: 32 rows a block, a line 32 bytes ----
 *
 * The same tables, state and rule as rs_rows_avx512bw; without mask registers, a comparison's 32
 * rows become a byte mask (0xFF: goes right) by packing the four 8-row comparisons, which leaves
 * the bytes of a line in the order of `rs_avx2_row` (two packs work within 128-bit halves), and the
 * block's totals are handed back to their rows in that order. */

/* The row of the block whose byte is at position k of a line. */
static inline int rs_avx2_row(int k) { return 8 * ((k % 16) / 4) + 4 * (k / 16) + k % 4; }

__attribute__((target("avx2")))
static inline __m256i rs_right_avx2(__m256 x0, __m256 x1, __m256 x2, __m256 x3, float threshold) {
    __m256 t = _mm256_set1_ps(threshold);
    __m256i r01 = _mm256_packs_epi32(_mm256_castps_si256(_mm256_cmp_ps(x0, t, _CMP_NLE_UQ)),
                                     _mm256_castps_si256(_mm256_cmp_ps(x1, t, _CMP_NLE_UQ)));
    __m256i r23 = _mm256_packs_epi32(_mm256_castps_si256(_mm256_cmp_ps(x2, t, _CMP_NLE_UQ)),
                                     _mm256_castps_si256(_mm256_cmp_ps(x3, t, _CMP_NLE_UQ)));
    return _mm256_packs_epi16(r01, r23);
}

/* In the rows going right (their bytes 0xFF), a line keeps only the bits of keep. */
__attribute__((target("avx2")))
static inline void rs_keep_avx2(uint8_t *line, __m256i right, uint8_t keep) {
    __m256i v = _mm256_load_si256((const __m256i *)line);
    __m256i cleared = _mm256_andnot_si256(_mm256_set1_epi8((char)keep), right);
    _mm256_store_si256((__m256i *)line, _mm256_andnot_si256(cleared, v));
}

__attribute__((target("avx2")))
static void rs_rows_avx2(const Walker *w, const float *x, Py_ssize_t n_rows, double *proba, void *scratch) {
    enum { L = RS_LANES_AVX2 };
    const Py_ssize_t nf = w->n_features, T = w->n_trees;
    const RsEntry *entries = w->rs_entries;
    const Py_ssize_t *entry_start = w->rs_entry_start;
    const int32_t *group_tree = w->rs_group_tree, *tree_line = w->rs_tree_line, *tree_lines = w->rs_tree_lines;
    const Py_ssize_t *tree_value = w->rs_tree_value;
    const double *leaf_value = w->rs_leaf_value;
    const Py_ssize_t groups = w->rs_groups;
    uint8_t *state = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *by_feature = (float *)(state + w->rs_max_lines * L);
    double *total = (double *)(by_feature + nf * L);
    float *padded = (float *)(total + L);
    uint8_t exit_leaf[L] __attribute__((aligned(32)));
    const __m256i row_start = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)nf));
    const __m256i ones = _mm256_set1_epi8(-1), zero = _mm256_setzero_si256(), nibble = _mm256_set1_epi8(0x0F);
    const __m256i low_bit = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 0, 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0));
    const __m256i high_bit = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 4, 5, 0, 6, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0));
    for (Py_ssize_t r = 0; r < n_rows; r += L) {
        Py_ssize_t rows;
        const float *block = rs_block(x, r, n_rows, nf, L, padded, &rows);
        for (Py_ssize_t f = 0; f < nf; f++)
            for (int part = 0; part < 4; part++)
                _mm256_store_ps(by_feature + f * L + 8 * part,
                                _mm256_i32gather_ps(block + 8 * part * nf, _mm256_add_epi32(row_start, _mm256_set1_epi32((int)f)), 4));
        for (int i = 0; i < L; i += 4) _mm256_store_pd(total + i, _mm256_setzero_pd());
        for (Py_ssize_t g = 0; g < groups; g++) {
            int32_t t0 = group_tree[g], t1 = group_tree[g + 1];
            Py_ssize_t lines = tree_line[t1 - 1] + tree_lines[t1 - 1];
            for (Py_ssize_t i = 0; i < lines; i++) _mm256_store_si256((__m256i *)(state + i * L), ones);
            for (Py_ssize_t f = 0; f < nf; f++) {
                const float *xf = by_feature + f * L;
                __m256 x0 = _mm256_load_ps(xf), x1 = _mm256_load_ps(xf + 8);
                __m256 x2 = _mm256_load_ps(xf + 16), x3 = _mm256_load_ps(xf + 24);
                const Py_ssize_t list = g * nf + f;
                for (Py_ssize_t k = entry_start[list]; k < entry_start[list + 1]; k++) {
                    const RsEntry e = entries[k];
                    __m256i right = rs_right_avx2(x0, x1, x2, x3, e.threshold);
                    if (_mm256_testz_si256(right, right)) break; /* all 32 <= this threshold, so <= every later one */
                    uint8_t *line = state + (Py_ssize_t)e.line * L;
                    rs_keep_avx2(line, right, e.first);
                    if (e.lines > 1) {
                        for (uint32_t j = 1; j + 1 < e.lines; j++) rs_keep_avx2(line + j * L, right, 0);
                        rs_keep_avx2(line + (Py_ssize_t)(e.lines - 1) * L, right, e.last);
                    }
                }
            }
            for (int32_t t = t0; t < t1; t++) {
                const uint8_t *tree = state + (Py_ssize_t)tree_line[t] * L;
                const double *values = leaf_value + tree_value[t];
                if (tree_lines[t] <= 32) {
                    /* As in rs_rows_avx512bw: each row's first line with a bit left, its lowest bit. */
                    __m256i exit_line = zero, exit_byte = zero;
                    for (int32_t b = tree_lines[t] - 1; b >= 0; b--) {
                        __m256i v = _mm256_load_si256((const __m256i *)(tree + (Py_ssize_t)b * L));
                        __m256i empty = _mm256_cmpeq_epi8(v, zero);
                        exit_byte = _mm256_blendv_epi8(v, exit_byte, empty);
                        exit_line = _mm256_blendv_epi8(_mm256_set1_epi8((char)(8 * b)), exit_line, empty);
                    }
                    __m256i lowest = _mm256_and_si256(exit_byte, _mm256_sub_epi8(zero, exit_byte));
                    __m256i bit = _mm256_or_si256(
                        _mm256_shuffle_epi8(low_bit, _mm256_and_si256(lowest, nibble)),
                        _mm256_shuffle_epi8(high_bit, _mm256_and_si256(_mm256_srli_epi16(lowest, 4), nibble)));
                    _mm256_store_si256((__m256i *)exit_leaf, _mm256_add_epi8(exit_line, bit));
                    for (int i = 0; i < L; i += 4) { /* 4 rows' leaves as int32, their values gathered */
                        int32_t four;
                        memcpy(&four, exit_leaf + i, 4);
                        __m128i index = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(four));
                        _mm256_store_pd(total + i, _mm256_add_pd(_mm256_load_pd(total + i), _mm256_i32gather_pd(values, index, 8)));
                    }
                } else {
                    rs_exit_leaves(tree, L, values, total);
                }
            }
        }
        for (int k = 0; k < L; k++) {
            int row = rs_avx2_row(k);
            if (row < rows) proba[r + row] = total[k] / (double)T;
        }
    }
}

/* The fastest route this CPU runs: 64, 32, or 0 (walk). */
static int cpu_lanes(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return RS_LANES;
    return __builtin_cpu_supports("avx2") ? RS_LANES_AVX2 : 0;
}

/* Whether this CPU runs the route of `lanes` rows a block. */
static int cpu_runs(int lanes) {
    __builtin_cpu_init();
    switch (lanes) {
        case 0: return 1;
        case RS_LANES: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
        case 16: return __builtin_cpu_supports("avx512f");
        case RS_LANES_AVX2: case 8: return __builtin_cpu_supports("avx2");
        default: return 0;
    }
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
    if ((w->qs_lanes == RS_LANES && n_rows >= RS_MIN_ROWS) || (w->qs_lanes == RS_LANES_AVX2 && n_rows >= RS_MIN_ROWS_AVX2)) {
        void *scratch = PyMem_RawMalloc(rs_scratch_bytes(w, w->qs_lanes));
        if (!scratch) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        if (w->qs_lanes == RS_LANES)
            rs_rows_avx512bw(w, x, n_rows, proba, scratch);
        else
            rs_rows_avx2(w, x, n_rows, proba, scratch);
        Py_END_ALLOW_THREADS
        PyMem_RawFree(scratch);
        result = Py_NewRef(Py_None);
        goto done;
    }
    if ((w->qs_lanes == 16 || w->qs_lanes == 8) && n_rows >= w->qs_lanes) {
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

/* What the walk and the table builders take for granted, checked once so that neither needs a bounds
 * check: the trees partition the nodes in order (tree t's are [roots[t], roots[t + 1]), the first
 * tree's from node 0, the last tree's to the end); a split's children come after it and inside its
 * own tree (so no walk leaves its tree or loops); every node of a tree but its root has exactly one
 * parent (so the tree's nodes are exactly those its root reaches, each once, as number_leaves
 * needs); a split's feature is one of the row's and its threshold a number (the builders sort by
 * it). parents: n zeroed bytes. NULL when the forest is sound, else what is wrong. */
static const char *check_forest(const Node *node, Py_ssize_t n, const int32_t *root, Py_ssize_t T,
                                Py_ssize_t n_features, uint8_t *parents, int *left_is_next) {
    if (T < 1) return "the forest has no trees";
    if (root[0] != 0) return "the first tree does not start at node 0";
    for (Py_ssize_t t = 1; t < T; t++)
        if (root[t] <= root[t - 1]) return "the tree roots are not increasing";
    if (root[T - 1] >= n) return "a tree root is out of range";
    *left_is_next = 1;
    for (Py_ssize_t t = 0; t < T; t++) {
        const Py_ssize_t stop = t + 1 < T ? root[t + 1] : n;
        for (Py_ssize_t i = root[t]; i < stop; i++) {
            const Node *split = &node[i];
            if (split->feature < 0) continue;
            if (split->left <= i || split->left >= stop || split->right <= i || split->right >= stop)
                return "a child is out of range (before its parent or outside its tree)";
            if (split->feature >= n_features) return "a split feature is out of range";
            if (split->threshold != split->threshold) return "a split threshold is NaN";
            if (parents[split->left]++ || parents[split->right]++) return "a node has two parents";
            if (split->left != i + 1) *left_is_next = 0;
        }
        for (Py_ssize_t i = root[t] + 1; i < stop; i++)
            if (!parents[i]) return "a node is not reached from its tree's root";
    }
    return NULL;
}

static int Walker_init(Walker *w, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"nodes", "value", "roots", "n_features", "lanes", NULL};
    PyObject *nodes, *value, *roots;
    Py_ssize_t n_features;
    int lanes = -1; /* -1: the fastest this CPU runs; 64, 32, 16, 8: that route if the CPU runs it; 0: walk */
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
    uint8_t *parents = PyMem_Calloc(n ? n : 1, 1);
    if (!parents) {
        PyErr_NoMemory();
        goto fail_roots;
    }
    const char *bad = check_forest(w->nodes.buf, n, w->roots.buf, w->n_trees, n_features, parents, &w->left_is_next);
    PyMem_Free(parents);
    if (!bad) {
        w->buffers_held = 1;
        const int chosen = lanes != -1;
        int runs = lanes == 0;
#ifdef HAVE_AVX512_KERNEL
        if (!chosen) lanes = cpu_lanes();
        runs = cpu_runs(lanes);
#else
        if (!chosen) lanes = 0, runs = 1;
#endif
        if (!runs) {
            char these[32] = "0";
#ifdef HAVE_AVX512_KERNEL
            static const int routes[] = {8, 16, 32, 64};
            for (int i = 0; i < 4; i++)
                if (cpu_runs(routes[i])) snprintf(these + strlen(these), sizeof these - strlen(these), ", %d", routes[i]);
#endif
            PyErr_Format(PyExc_ValueError, "lanes=%d: this CPU runs %s", lanes, these);
            return -1;
        }
#ifdef HAVE_AVX512_KERNEL
        if (lanes && (lanes == RS_LANES || lanes == RS_LANES_AVX2 ? rs_build(w) : qs_build(w)) < 0) {
            /* A tree with more leaves than the tables number: its batches are walked, unless the
             * caller asked for this route. */
            if (chosen || !PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
            PyErr_Clear();
            lanes = 0;
        }
#endif
        w->qs_lanes = lanes;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "invalid forest arrays: %s", bad);
fail_roots: PyBuffer_Release(&w->roots);
fail_value: PyBuffer_Release(&w->value);
fail_nodes: PyBuffer_Release(&w->nodes);
    return -1;
}

static void Walker_dealloc(Walker *w) {
    qs_free(w);
#ifdef HAVE_AVX512_KERNEL
    rs_free(w);
#endif
    if (w->buffers_held) {
        PyBuffer_Release(&w->nodes);
        PyBuffer_Release(&w->value);
        PyBuffer_Release(&w->roots);
    }
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *Walker_get_n_trees(Walker *w, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(w->n_trees); }
static PyObject *Walker_get_n_nodes(Walker *w, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(w->n_nodes); }
static PyObject *Walker_get_left_is_next(Walker *w, void *Py_UNUSED(closure)) { return PyBool_FromLong(w->left_is_next); }
static PyObject *Walker_get_lanes(Walker *w, void *Py_UNUSED(closure)) { return PyLong_FromLong(w->qs_lanes); }
static PyObject *Walker_get_groups(Walker *w, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(w->rs_groups); }

static PyGetSetDef Walker_getset[] = {
    {"n_trees", (getter)Walker_get_n_trees, NULL, "number of trees", NULL},
    {"n_nodes", (getter)Walker_get_n_nodes, NULL, "number of nodes in all trees", NULL},
    {"left_is_next", (getter)Walker_get_left_is_next, NULL, "whether every left child follows its parent", NULL},
    {"lanes", (getter)Walker_get_lanes, NULL, "rows a block (64: AVX-512BW bytes, 16: AVX-512, 8: AVX2), 0 when batches are walked", NULL},
    {"groups", (getter)Walker_get_groups, NULL, "groups of trees the 64-row kernel scores in turn (0 on other routes)", NULL},
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
    .tp_name = "service.engine._walker.Walker",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A random forest over packed, possibly memory-mapped, nodes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Walker_init,
    .tp_dealloc = (destructor)Walker_dealloc,
    .tp_methods = Walker_methods,
    .tp_getset = Walker_getset,
};

static struct PyModuleDef walker_module = {PyModuleDef_HEAD_INIT, .m_name = "_walker", .m_size = -1};

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
