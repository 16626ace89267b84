/*
 * score-file's compiled kernels, called through ctypes by service/kernels.py (which declares
 * their signatures and says what each argument holds).
 *
 * - read_lines: the model's numbers and category codes from simple lines of CSV
 *   (service/line_reader.py says which lines are simple);
 * - scale_rows, nearest: a block's feature vectors, clusters, distances and top reasons
 *   (service/column_verdicts.py);
 * - join_rows: output rows, each line's text and its verdicts' (service/csv_output.py).
 *
 * Equality with numpy, to the last bit, rests on plain IEEE arithmetic: each operation is
 * rounded on its own, in the order written. The build turns contraction into fused
 * multiply-adds off (-ffp-contract=off, see pyproject.toml), and nothing here is built with
 * fast-math. The functions touch no Python object, so ctypes runs them without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(_WIN32)
#define KERNEL __declspec(dllexport)
#else
#define KERNEL __attribute__((visibility("default")))
#endif

enum { SKIP = 0, NUMERIC = 1, CATEGORICAL = 2 };          /* roles of a file's columns */
enum { TERM_NUMERIC = 0, TERM_CATEGORICAL = 1 };           /* kinds of terms and reasons */
enum { PLAIN = 0, COMMA = 1, NEWLINE = 2, QUOTE = 3, RETURN = 4 }; /* bytes' roles in a line */

/* A decimal is read exactly when its digits, as an integer, are at most 2**53 and it has at
   most 22 after the point: both the mantissa and the power of ten are then doubles. */
#define MAX_MANTISSA (INT64_C(1) << 53)
#define MAX_FRACTION 22

static const unsigned char byte_class[256] = {
    [','] = COMMA, ['\n'] = NEWLINE, ['"'] = QUOTE, ['\r'] = RETURN};

/* Exact powers of ten: every one up to 10**22 is a double. */
static const double powers_of_ten[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* FNV-1a (64 bit): the category tables' hash. */
static uint64_t text_hash(const uint8_t *text, int64_t length) {
    uint64_t h = UINT64_C(14695981039346656037);
    for (int64_t i = 0; i < length; i++) {
        h = (h ^ text[i]) * UINT64_C(1099511628211);
    }
    return h;
}

/*
 * An open-addressing table of `size` slots (a power of two, more than `count`): category c,
 * texts[offsets[c]:offsets[c + 1]], at its hash or the next free slot; a free slot is -1.
 */
KERNEL void category_table(const uint8_t *texts, const int64_t *offsets, int64_t count,
                           int64_t *table, int64_t size) {
    uint64_t mask = (uint64_t)size - 1;
    for (int64_t s = 0; s < size; s++) {
        table[s] = -1;
    }
    for (int64_t c = 0; c < count; c++) {
        uint64_t slot = text_hash(texts + offsets[c], offsets[c + 1] - offsets[c]) & mask;
        while (table[slot] >= 0) {
            slot = (slot + 1) & mask;
        }
        table[slot] = c;
    }
}

/* The number of newlines in data[:size]. */
KERNEL int64_t count_lines(const uint8_t *data, int64_t size) {
    int64_t count = 0;
    for (int64_t i = 0; i < size; i++) {
        count += data[i] == '\n';
    }
    return count;
}

/*
 * Read `rows` lines, data[:size], each ending with a newline (data[size - 1] is one); if
 * the last one ends with "\r\n", every one must, and no other "\r" may occur (pyarrow reads
 * a lone one as a line end). Column j of each line is read as roles[j] says, into row
 * slots[j] of `numbers` (a decimal; numbers is (numeric fields, rows)) or of `codes` (the
 * category's position in that field's table, -1 for one not there; codes is (categorical
 * fields, rows)). Field f's table is
 * tables[f * table_size:][:table_size]; its category c is
 * texts[offsets[f * offsets_width + c]:offsets[f * offsets_width + c + 1]].
 * Line r's text, less its line end, is data[starts[r]:ends[r]]. Returns rows, or -1 at the
 * first line that is not simple.
 */
KERNEL int64_t read_lines(const uint8_t *data, int64_t size, int64_t rows, int64_t n_columns,
                          const int64_t *roles, const int64_t *slots, const int64_t *tables,
                          int64_t table_size, const uint8_t *texts, const int64_t *offsets,
                          int64_t offsets_width, double *numbers, int64_t *codes,
                          int64_t *starts, int64_t *ends) {
    if (size == 0 || data[size - 1] != '\n') {
        return -1;
    }
    const int crlf = size >= 2 && data[size - 2] == '\r';
    const uint64_t mask = (uint64_t)table_size - 1;
    const int64_t last = n_columns - 1;
    /* Every scan stops at a newline at the latest, and data[size - 1] is one: so no
       position passes it, and none needs checking against size. */
    int64_t pos = 0;
    for (int64_t row = 0; row < rows; row++) {
        starts[row] = pos;
        for (int64_t column = 0; column <= last; column++) {
            int64_t lo, hi, end;
            if (pos >= size) {
                return -1; /* fewer lines than rows */
            }
            if (data[pos] == '"') { /* quoted: up to the next quote, on this line */
                lo = end = pos + 1;
                while (byte_class[data[end]] < NEWLINE) {
                    end++;
                }
                if (data[end] != '"') {
                    return -1;
                }
                hi = end;
                pos = end + 1;
            } else { /* up to the next comma or line end, no quote in it */
                lo = end = pos;
                while (byte_class[data[end]] == PLAIN) {
                    end++;
                }
                hi = pos = end;
            }
            /* The line ends after the last value; a comma follows any other. (pos is at
               most size - 1, and a "\r" is followed by something: data[size - 1] is a
               newline.) */
            int after = byte_class[data[pos]];
            if (column < last ? after != COMMA
                              : (crlf ? after != RETURN || data[pos + 1] != '\n' : after != NEWLINE)) {
                return -1;
            }
            int64_t role = roles[column];
            if (role == NUMERIC) { /* -?[0-9]+(.[0-9]+)? */
                int64_t i = lo;
                int negative = i < hi && data[i] == '-';
                if (negative) {
                    i++;
                }
                /* The mantissa of the digits, trailing zeros of the fraction left out (they
                   change no value); once over 2**53 it is no longer kept. */
                int64_t mantissa = 0, first = i, fraction = 0, zeros = 0;
                int too_long = 0;
                while (i < hi && data[i] >= '0' && data[i] <= '9') {
                    mantissa = mantissa * 10 + (data[i] - '0');
                    too_long |= mantissa > MAX_MANTISSA;
                    mantissa = too_long ? 0 : mantissa;
                    i++;
                }
                if (i == first) {
                    return -1;
                }
                if (i < hi && data[i] == '.') {
                    first = ++i;
                    while (i < hi && data[i] >= '0' && data[i] <= '9') {
                        if (data[i] == '0') {
                            zeros++;
                        } else {
                            for (; zeros >= 0; zeros--) { /* the zeros before, then this one */
                                mantissa = mantissa * 10;
                                too_long |= mantissa > MAX_MANTISSA;
                                mantissa = too_long ? 0 : mantissa;
                            }
                            mantissa += data[i] - '0';
                            too_long |= mantissa > MAX_MANTISSA;
                            fraction = i - first + 1;
                            zeros = 0;
                        }
                        i++;
                    }
                    if (i == first) {
                        return -1;
                    }
                }
                if (i != hi || too_long || fraction > MAX_FRACTION) {
                    return -1;
                }
                /* Clinger's fast path: an exact mantissa over an exact power of ten, rounded
                   once by the division, is the correctly rounded value of the decimal. */
                double value = (double)mantissa / powers_of_ten[fraction];
                numbers[slots[column] * rows + row] = negative ? -value : value;
            } else if (role == CATEGORICAL) {
                if (hi == lo) {
                    return -1; /* an empty category: the general path reports it */
                }
                int64_t field = slots[column], code = -1;
                const int64_t *table = tables + field * table_size;
                const int64_t *offset = offsets + field * offsets_width;
                uint64_t slot = text_hash(data + lo, hi - lo) & mask;
                while (table[slot] >= 0) {
                    int64_t c = table[slot], start = offset[c];
                    if (offset[c + 1] - start == hi - lo &&
                        memcmp(texts + start, data + lo, (size_t)(hi - lo)) == 0) {
                        code = c;
                        break;
                    }
                    slot = (slot + 1) & mask;
                }
                codes[field * rows + row] = code;
            }
            pos++;
        }
        ends[row] = pos - 1;
        pos += crlf; /* past the newline that follows "\r" */
    }
    return pos == size ? rows : -1;
}

/*
 * |numbers[j, lo + r]| into logged[r * p + j], for m rows and the first n_logged fields:
 * the operand of numpy's log1p, in the layout the reference applies it to.
 */
KERNEL void magnitudes(const double *numbers, int64_t p, int64_t n, int64_t lo, int64_t m,
                       int64_t n_logged, double *logged) {
    for (int64_t r = 0; r < m; r++) {
        for (int64_t j = 0; j < n_logged; j++) {
            logged[r * p + j] = fabs(numbers[j * n + lo + r]);
        }
    }
}

/*
 * FeatureSpec.transform of m rows, block rows lo on. numbers is (p, n) and codes (c, n);
 * logged[r * p + j] is log1p(|numbers[j, lo + r]|) for j < n_logged (computed by numpy, as
 * the reference computes it). Writes scaled[j * stride + r] and the vectors x (m, dim).
 * Returns -1, or the first value (by row, then field) beyond `limit` spreads, as
 * row * p + field.
 */
KERNEL int64_t scale_rows(const double *numbers, int64_t p, int64_t n, int64_t lo, int64_t m,
                          const double *logged, int64_t n_logged, const double *center,
                          const double *spread, double limit, const int64_t *numeric_at,
                          const int64_t *codes, int64_t c, const int64_t *category_start,
                          double *scaled, int64_t stride, double *x, int64_t dim) {
    for (int64_t r = 0; r < m; r++) {
        double *vector = x + r * dim;
        memset(vector, 0, (size_t)dim * sizeof(double));
        for (int64_t j = 0; j < p; j++) {
            double value = numbers[j * n + lo + r];
            if (j < n_logged) { /* sign(value) * log1p(|value|); np.sign(-0.0) is 0.0 */
                double sign = value > 0.0 ? 1.0 : (value < 0.0 ? -1.0 : 0.0);
                value = logged[r * p + j] * sign;
            }
            value = (value - center[j]) / spread[j];
            if (!(fabs(value) <= limit)) { /* NaN is not inside either */
                return r * p + j;
            }
            scaled[j * stride + r] = value;
            vector[numeric_at[j]] = value;
        }
        for (int64_t i = 0; i < c; i++) {
            int64_t code = codes[i * n + lo + r];
            if (code >= 0) {
                vector[category_start[i] + code] = 1.0;
            }
        }
    }
    return -1;
}

/*
 * Each of m rows' cluster, distance and top reason (rows lo on of the block's codes, (c, n)).
 * scaled (p rows of `stride`) and norms (||x||², by numpy) are scale_rows' rows.
 *
 * The product x @ -2C^T is summed as training.kmeans.row_products sums it, term by term in
 * column order: term t is weights[t, 0, c] * scaled[sources[t], r] for a numeric column and
 * weights[t, 1 + code, c] for a categorical field (its one-hot columns add that weight, or
 * zeros, which leave the sum as it is); weights is (terms, width, k). Then ||c||² is added,
 * the first smallest total wins (argmin), and the distance is sqrt(max(total + ||x||², 0)).
 *
 * Reason f, one per field in field order, is reasons[f] = (kind, source, width): a numeric
 * field's part is (scaled[source] - numeric_centres[source, cluster])², ranked below every
 * part if zero; a categorical one's is ranked[f, cluster * width + code + 1] (ranked is
 * (n_fields, L)). The top reason is the first field with the largest part above -1, else
 * n_fields.
 */
KERNEL void nearest(const double *scaled, int64_t stride, const int64_t *codes, int64_t n,
                    int64_t lo, int64_t m, const double *norms, int64_t n_terms,
                    const int64_t *kinds, const int64_t *sources, const double *weights,
                    int64_t width, int64_t k, const double *centroid_norms,
                    const double *numeric_centres, const int64_t *reasons,
                    const double *ranked, int64_t ranked_width, int64_t n_fields,
                    int64_t *labels, double *distance, int64_t *reason) {
    double totals[k > 0 ? k : 1];
    for (int64_t r = 0; r < m; r++) {
        for (int64_t t = 0; t < n_terms; t++) {
            const double *column;
            if (kinds[t] == TERM_NUMERIC) {
                double value = scaled[sources[t] * stride + r];
                column = weights + (t * width) * k;
                if (t == 0) {
                    for (int64_t c = 0; c < k; c++) totals[c] = column[c] * value;
                } else {
                    for (int64_t c = 0; c < k; c++) totals[c] = totals[c] + column[c] * value;
                }
            } else {
                column = weights + (t * width + codes[sources[t] * n + lo + r] + 1) * k;
                if (t == 0) {
                    for (int64_t c = 0; c < k; c++) totals[c] = column[c];
                } else {
                    for (int64_t c = 0; c < k; c++) totals[c] = totals[c] + column[c];
                }
            }
        }
        if (n_terms == 0) {
            for (int64_t c = 0; c < k; c++) totals[c] = 0.0;
        }
        int64_t label = 0;
        double best = totals[0] + centroid_norms[0];
        for (int64_t c = 1; c < k; c++) {
            double total = totals[c] + centroid_norms[c];
            if (total < best) { /* the first smallest, as argmin picks it */
                best = total;
                label = c;
            }
        }
        double squared = best + norms[r];
        labels[r] = label;
        /* np.maximum(squared, 0.0): squared is never -0.0 (a sum with ||x||² >= +0.0). */
        distance[r] = sqrt(squared > 0.0 ? squared : 0.0);
        int64_t top = n_fields;
        double most = -1.0; /* below every part that may be named */
        for (int64_t f = 0; f < n_fields; f++) {
            const int64_t *entry = reasons + 3 * f;
            int64_t source = entry[1];
            double part;
            if (entry[0] == TERM_NUMERIC) {
                double difference = scaled[source * stride + r] - numeric_centres[source * k + label];
                part = difference * difference;
                if (part == 0.0) {
                    part = -1.0; /* named only if positive: zero ranks as never named */
                }
            } else {
                part = ranked[f * ranked_width + label * entry[2] + codes[source * n + lo + r] + 1];
            }
            if (part > most) { /* strictly: the first largest wins, as argmax */
                most = part;
                top = f;
            }
        }
        reason[r] = top;
    }
}

/* A module with no functions: importing it is how Python finds the library (see kernels.py). */
static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, .m_name = "_kernels", .m_size = -1};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }

/*
 * Output rows, laid end to end into `out`: row r is its line, constant cluster[r], its
 * distance, constant n_clusters + cluster[r], its score, constant 2 * n_clusters + verdict[r]
 * (constant c is constants[constant_starts[c]:][:constant_lengths[c]]). Returns the bytes
 * written, or -1, writing nothing, if they would not fit in out[:capacity].
 */
KERNEL int64_t join_rows(const uint8_t *lines, const int64_t *line_starts,
                         const int64_t *line_lengths, const uint8_t *distances,
                         const int64_t *distance_starts, const int64_t *distance_lengths,
                         const uint8_t *scores, const int64_t *score_starts,
                         const int64_t *score_lengths, const uint8_t *constants,
                         const int64_t *constant_starts, const int64_t *constant_lengths,
                         const int64_t *cluster, const int64_t *verdict, int64_t n_clusters,
                         int64_t n, uint8_t *out, int64_t capacity) {
    int64_t size = 0;
    for (int64_t r = 0; r < n; r++) {
        size += line_lengths[r] + distance_lengths[r] + score_lengths[r] +
                constant_lengths[cluster[r]] + constant_lengths[n_clusters + cluster[r]] +
                constant_lengths[2 * n_clusters + verdict[r]];
    }
    if (size > capacity) {
        return -1;
    }
    uint8_t *at = out;
#define PUT(data, start, length)                      \
    do {                                              \
        memcpy(at, (data) + (start), (size_t)(length)); \
        at += (length);                               \
    } while (0)
    for (int64_t r = 0; r < n; r++) {
        int64_t c = cluster[r], t = n_clusters + cluster[r], v = 2 * n_clusters + verdict[r];
        PUT(lines, line_starts[r], line_lengths[r]);
        PUT(constants, constant_starts[c], constant_lengths[c]);
        PUT(distances, distance_starts[r], distance_lengths[r]);
        PUT(constants, constant_starts[t], constant_lengths[t]);
        PUT(scores, score_starts[r], score_lengths[r]);
        PUT(constants, constant_starts[v], constant_lengths[v]);
    }
#undef PUT
    return at - out;
}
