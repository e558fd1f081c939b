// Index builders for GPT pretraining datasets: the pybind11 extension `megatron_zh._helpers`.
//
// Drop-in for megatron-core 0.16.1's `megatron.core.datasets.helpers_cpp`: the same function names,
// positional argument order, dtypes and outputs (bit for bit, but see the last point), so either
// module can stand in for the other. Differences, all deliberate:
//   * Inputs are validated (dtype, shape, contiguity, bounds) and bad ones raise TypeError /
//     ValueError / IndexError naming the argument, instead of an assert (compiled out) or a silent
//     copy whose output is then lost.
//   * The GIL is released while an index is built, so other Python threads (a data loader, a
//     heartbeat, another dataset being built) keep running.
//   * Faster (bench/bench_index.py): build_sample_idx walks the documents once with a software
//     prefetch of the randomly accessed lengths; blending keeps a few datasets' counts in registers.
//   * build_sample_idx counts samples in exact integer arithmetic: megatron-core computes the count
//     of a kept partial last sample through a float, which rounds above 2**24 tokens.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace py = pybind11;

// Bit-identical blending needs `weight * position - taken` rounded twice, as megatron-core's x86
// build and NumPy compute it; GCC would fuse it into one FMA by default wherever the target has
// FMA (aarch64, or -march=native), which changes ties and so the chosen dataset.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

// ---------------------------------------------------------------------------------------------------
// Argument checking. Large inputs must already have the exact dtype: converting a billion-entry
// array behind the caller's back would double peak memory. Outputs must be writeable and
// contiguous, since a converted copy would receive the results and be thrown away.

std::string dtype_name(const py::array &a) { return py::str(a.dtype()).cast<std::string>(); }

py::array as_ndarray(const py::object &obj, const char *name) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    return py::reinterpret_borrow<py::array>(obj);
}

template <typename T>
py::array exact_vector(const py::object &obj, const char *name, bool writeable) {
    py::array a = as_ndarray(obj, name);
    const std::string want = py::str(py::dtype::of<T>()).cast<std::string>();
    if (!a.dtype().is(py::dtype::of<T>())) {
        throw py::type_error(std::string(name) + " must have dtype " + want + ", got " + dtype_name(a) +
                             " (convert it with .astype(numpy." + want + "))");
    }
    if (a.ndim() != 1) {
        throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                              " dimensions");
    }
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) +
                              " must be C-contiguous (pass numpy.ascontiguousarray(...))");
    }
    if (writeable && !a.writeable()) {
        throw py::value_error(std::string(name) + " is read-only; it receives the output");
    }
    return a;
}

// Small parameter vectors (blend weights, per-dataset sizes) may come as lists, as megatron-core's
// own callers pass them; they are converted, but never with a lossy cast.
py::array_t<double> weight_vector(const py::object &obj, const char *name) {
    auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(obj);
    if (!a) {
        throw py::type_error(std::string(name) + " must be a sequence of numbers");
    }
    if (a.ndim() != 1) {
        throw py::value_error(std::string(name) + " must be 1-D");
    }
    return a;
}

py::array_t<int64_t> count_vector(const py::object &obj, const char *name) {
    py::array raw = py::array::ensure(obj);
    if (!raw) {
        throw py::type_error(std::string(name) + " must be a sequence of integers");
    }
    const char kind = raw.dtype().kind();
    if (kind == 'f') {
        auto as_double = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(raw);
        const double *p = as_double.data();
        for (py::ssize_t i = 0; i < as_double.size(); ++i) {
            if (!(std::isfinite(p[i]) && p[i] == std::floor(p[i]))) {
                throw py::value_error(std::string(name) + "[" + std::to_string(i) +
                                      "] must be a whole number, got " + std::to_string(p[i]));
            }
        }
    } else if (kind != 'i' && kind != 'u') {
        throw py::type_error(std::string(name) + " must hold integers, got dtype " + dtype_name(raw));
    }
    auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(raw);
    if (a.ndim() != 1) {
        throw py::value_error(std::string(name) + " must be 1-D");
    }
    return a;
}

void check_num_datasets(int32_t num_datasets, py::ssize_t given, const char *vector_name) {
    if (num_datasets < 1 || num_datasets > std::numeric_limits<int16_t>::max()) {
        throw py::value_error("num_datasets must be in [1, 32767] (dataset ids are int16), got " +
                              std::to_string(num_datasets));
    }
    if (given != num_datasets) {
        throw py::value_error(std::string(vector_name) + " has " + std::to_string(given) +
                              " entries but num_datasets is " + std::to_string(num_datasets));
    }
}

void check_output_length(py::ssize_t length, int64_t needed, const char *name) {
    if (length < needed) {
        throw py::value_error(std::string(name) + " has " + std::to_string(length) +
                              " entries, fewer than the " + std::to_string(needed) + " to be written");
    }
}

// ---------------------------------------------------------------------------------------------------
// Sample index.
//
// The documents listed in document_idx are concatenated into one token stream of
// T = num_epochs * tokens_per_epoch tokens. Sample s spans stream positions
// [s * seq_length, (s + 1) * seq_length + extra), so consecutive samples share `extra` (0 or 1)
// tokens. Row s of the output locates position s * seq_length as (index into document_idx, token
// offset in that document). Which document a boundary position is charged to follows megatron-core:
// row s names the document holding stream token q = s * seq_length - 1 + extra, at offset
// (q - start of that document) + 1 - extra. With extra = 1 that is the document holding the
// boundary token itself; with extra = 0 it is "one past the end" of the previous document when
// the boundary falls between documents. Empty documents never hold a token, so they are skipped.

enum class SampleIdxStatus { ok, bad_document_index, negative_size, too_few_tokens };

struct SampleIdxResult {
    SampleIdxStatus status = SampleIdxStatus::ok;
    int64_t where = 0;  // position in document_idx of the offending entry
    int64_t tokens_seen = 0;
};

// How far ahead (in document_idx entries) the document length is prefetched. The lengths are read
// in a random order (document_idx is shuffled), so every read would otherwise miss the cache.
constexpr int64_t kPrefetchDistance = 32;

template <typename T>
SampleIdxResult fill_sample_idx(T *out, const int32_t *sizes, int64_t num_sizes, const int32_t *document_idx,
                                int64_t num_documents, int64_t seq_length, int64_t num_samples, int64_t extra) {
    SampleIdxResult result;
    out[0] = 0;
    out[1] = 0;
    if (num_samples == 0) {
        return result;
    }
    int64_t row = 1;
    int64_t target = seq_length - 1 + extra;  // stream token q that locates the boundary of `row`
    int64_t document_start = 0;               // stream position of the current document's first token
    for (int64_t j = 0; j < num_documents; ++j) {
        if (j + kPrefetchDistance < num_documents) {
            const uint64_t ahead = static_cast<uint32_t>(document_idx[j + kPrefetchDistance]);
            if (ahead < static_cast<uint64_t>(num_sizes)) {
                __builtin_prefetch(sizes + ahead);
            }
        }
        const int32_t document = document_idx[j];
        if (document < 0 || document >= num_sizes) {
            result.status = SampleIdxStatus::bad_document_index;
            result.where = j;
            return result;
        }
        const int32_t length = sizes[document];
        if (length < 0) {
            result.status = SampleIdxStatus::negative_size;
            result.where = j;
            return result;
        }
        const int64_t document_end = document_start + length;
        while (target < document_end) {
            out[2 * row] = static_cast<T>(j);
            out[2 * row + 1] = static_cast<T>(target - document_start + 1 - extra);
            if (++row > num_samples) {
                return result;
            }
            target += seq_length;
        }
        document_start = document_end;
    }
    result.tokens_seen = document_start;
    if (row == num_samples) {
        // The kept partial last sample (drop_last_partial_sequence=false) runs past the end of the
        // stream; megatron-core marks its end at the last document's final token.
        const int64_t last = num_documents - 1;
        out[2 * row] = static_cast<T>(last);
        out[2 * row + 1] = static_cast<T>(sizes[document_idx[last]] - extra);
        return result;
    }
    result.status = SampleIdxStatus::too_few_tokens;
    result.where = row;
    return result;
}

template <typename T>
py::array_t<T> build_sample_idx(const py::object &sizes_obj, const py::object &document_idx_obj,
                                int32_t seq_length, int32_t num_epochs, int64_t tokens_per_epoch,
                                bool drop_last_partial_sequence, int32_t add_extra_token_to_sequence) {
    const auto sizes = exact_vector<int32_t>(sizes_obj, "sizes", false);
    const auto document_idx = exact_vector<int32_t>(document_idx_obj, "document_idx", false);
    if (seq_length < 2) {
        throw py::value_error("seq_length must be at least 2, got " + std::to_string(seq_length));
    }
    if (num_epochs < 1) {
        throw py::value_error("num_epochs must be at least 1, got " + std::to_string(num_epochs));
    }
    if (tokens_per_epoch < 2) {
        throw py::value_error("tokens_per_epoch must be at least 2, got " + std::to_string(tokens_per_epoch));
    }
    if (add_extra_token_to_sequence != 0 && add_extra_token_to_sequence != 1) {
        throw py::value_error("add_extra_token_to_sequence must be 0 or 1, got " +
                              std::to_string(add_extra_token_to_sequence));
    }
    if (document_idx.size() == 0) {
        throw py::value_error("document_idx is empty: there are no documents to draw samples from");
    }
    if (tokens_per_epoch > std::numeric_limits<int64_t>::max() / num_epochs) {
        throw py::value_error("num_epochs * tokens_per_epoch overflows int64");
    }
    if (document_idx.size() - 1 > static_cast<py::ssize_t>(std::numeric_limits<T>::max())) {
        throw py::value_error("document_idx has " + std::to_string(document_idx.size()) +
                              " entries, too many for this index dtype; use build_sample_idx_int64");
    }

    const int64_t extra = add_extra_token_to_sequence;
    const int64_t usable = static_cast<int64_t>(num_epochs) * tokens_per_epoch - extra;
    const int64_t num_samples =
        drop_last_partial_sequence ? usable / seq_length : (usable + seq_length - 1) / seq_length;

    py::array_t<T> out({static_cast<py::ssize_t>(num_samples + 1), static_cast<py::ssize_t>(2)});
    T *out_ptr = out.mutable_data();
    const auto *sizes_ptr = static_cast<const int32_t *>(sizes.data());
    const auto *document_idx_ptr = static_cast<const int32_t *>(document_idx.data());
    const int64_t num_sizes = sizes.size();
    const int64_t num_documents = document_idx.size();

    SampleIdxResult result;
    {
        py::gil_scoped_release release;
        result = fill_sample_idx<T>(out_ptr, sizes_ptr, num_sizes, document_idx_ptr, num_documents, seq_length,
                                    num_samples, extra);
    }
    switch (result.status) {
        case SampleIdxStatus::ok:
            return out;
        case SampleIdxStatus::bad_document_index:
            throw py::index_error("document_idx[" + std::to_string(result.where) + "] = " +
                                  std::to_string(document_idx_ptr[result.where]) +
                                  " is out of range for sizes of length " + std::to_string(num_sizes));
        case SampleIdxStatus::negative_size:
            throw py::value_error("sizes[" + std::to_string(document_idx_ptr[result.where]) +
                                  "] is negative (" +
                                  std::to_string(sizes_ptr[document_idx_ptr[result.where]]) + ")");
        case SampleIdxStatus::too_few_tokens:
        default:
            throw py::value_error(
                "the documents in document_idx hold " + std::to_string(result.tokens_seen) +
                " tokens, fewer than num_epochs * tokens_per_epoch = " +
                std::to_string(static_cast<int64_t>(num_epochs) * tokens_per_epoch) +
                " (sample " + std::to_string(result.where) + " of " + std::to_string(num_samples) +
                " cannot be completed); tokens_per_epoch must be the sum of the listed documents' sizes");
    }
}

// ---------------------------------------------------------------------------------------------------
// Document chunks (sample_mode "document", as UER-py's LmDataset cuts documents).
//
// Document d of [begin, end), of length n, is cut into ceil(n / chunk_length) consecutive,
// non-overlapping chunks: chunk j covers tokens [j * chunk_length, min((j + 1) * chunk_length, n)).
// Nothing crosses a document boundary; the last chunk may be short (the dataset pads it); an empty
// document has no chunk. Row r of the output is (document id, token offset) of chunk r, documents
// in increasing id order. Not in megatron-core: this is megatron_zh's own.

enum class ChunkStatus { ok, negative_size };

// Counts the chunks, or reports the first document of negative length in `where`.
ChunkStatus count_chunks(const int32_t *sizes, int64_t begin, int64_t end, int64_t chunk_length, int64_t &count,
                         int64_t &where) {
    count = 0;
    for (int64_t d = begin; d < end; ++d) {
        if (sizes[d] < 0) {
            where = d;
            return ChunkStatus::negative_size;
        }
        count += (static_cast<int64_t>(sizes[d]) + chunk_length - 1) / chunk_length;
    }
    return ChunkStatus::ok;
}

void fill_chunks(int32_t *out, const int32_t *sizes, int64_t begin, int64_t end, int64_t chunk_length) {
    int64_t row = 0;
    for (int64_t d = begin; d < end; ++d) {
        for (int64_t offset = 0; offset < sizes[d]; offset += chunk_length) {
            out[2 * row] = static_cast<int32_t>(d);
            out[2 * row + 1] = static_cast<int32_t>(offset);
            ++row;
        }
    }
}

py::array_t<int32_t> build_document_chunk_idx(const py::object &sizes_obj, int64_t begin, int64_t end,
                                              int32_t chunk_length) {
    const auto sizes = exact_vector<int32_t>(sizes_obj, "sizes", false);
    if (chunk_length < 1) {
        throw py::value_error("chunk_length must be at least 1, got " + std::to_string(chunk_length));
    }
    if (begin < 0 || begin > end || end > sizes.size()) {
        throw py::index_error("document range [" + std::to_string(begin) + ", " + std::to_string(end) +
                              ") is outside the " + std::to_string(sizes.size()) + " documents of sizes");
    }
    // Document ids are stored as int32, like the packed mode's document index.
    if (end > static_cast<int64_t>(std::numeric_limits<int32_t>::max()) + 1) {
        throw py::value_error("document ids above 2**31 - 1 do not fit the int32 chunk index");
    }
    const auto *sizes_ptr = static_cast<const int32_t *>(sizes.data());
    int64_t count = 0;
    int64_t where = 0;
    ChunkStatus status;
    {
        py::gil_scoped_release release;
        status = count_chunks(sizes_ptr, begin, end, chunk_length, count, where);
    }
    if (status == ChunkStatus::negative_size) {
        throw py::value_error("sizes[" + std::to_string(where) + "] is negative (" +
                              std::to_string(sizes_ptr[where]) + ")");
    }
    py::array_t<int32_t> out({static_cast<py::ssize_t>(count), static_cast<py::ssize_t>(2)});
    int32_t *out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        fill_chunks(out_ptr, sizes_ptr, begin, end, chunk_length);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------------
// Blending. Sample i goes to the dataset whose share so far lags its weight the most
// (error = weight * max(i, 1) - samples taken; the first, lowest index, wins ties); the same
// floating-point expressions as megatron-core, so the choice is identical bit for bit.
//
// The loops keep the per-dataset sample counts as doubles: exact below 2**53 (sizes are checked),
// they equal megatron-core's static_cast<double>(count) while sparing an int -> double conversion
// on the loop-carried path. A dataset whose count reached its limit (exhaustive blending; the limit
// is +inf otherwise) gets error -inf, below the starting best (the lowest double), so it is never
// chosen: exactly megatron-core dropping it from its set of unspent datasets.
constexpr int64_t kExactDoubleLimit = int64_t{1} << 53;

// Any number of datasets.
void blend_any(int16_t *__restrict index_out, int64_t *__restrict sample_out, const double *__restrict weight,
               const double *__restrict limit, int32_t num_datasets, int64_t draws) {
    std::vector<double> counts(num_datasets, 0.0);
    double *__restrict taken = counts.data();
    for (int64_t i = 0; i < draws; ++i) {
        const double position = std::max(static_cast<double>(i), 1.0);
        int32_t best = 0;
        double best_error = std::numeric_limits<double>::lowest();
        for (int32_t d = 0; d < num_datasets; ++d) {
            const double error =
                taken[d] == limit[d] ? -std::numeric_limits<double>::infinity() : weight[d] * position - taken[d];
            if (error > best_error) {
                best_error = error;
                best = d;
            }
        }
        index_out[i] = static_cast<int16_t>(best);
        sample_out[i] = static_cast<int64_t>(taken[best]);
        taken[best] += 1.0;
    }
}

// A few datasets (the usual blend): with N fixed the counts live in registers and the choice is
// made with selects instead of branches, 4-5x faster than blend_any.
template <int N>
void blend_fixed(int16_t *__restrict index_out, int64_t *__restrict sample_out, const double *__restrict weight_in,
                 const double *__restrict limit_in, int64_t draws) {
    double weight[N], limit[N], taken[N];
    for (int d = 0; d < N; ++d) {
        weight[d] = weight_in[d];
        limit[d] = limit_in[d];
        taken[d] = 0.0;
    }
    for (int64_t i = 0; i < draws; ++i) {
        const double position = std::max(static_cast<double>(i), 1.0);
        int32_t best = 0;
        double best_error = std::numeric_limits<double>::lowest();
        double best_taken = 0.0;
        for (int d = 0; d < N; ++d) {
            const double error =
                taken[d] == limit[d] ? -std::numeric_limits<double>::infinity() : weight[d] * position - taken[d];
            const bool better = error > best_error;
            best_error = better ? error : best_error;
            best = better ? d : best;
            best_taken = better ? taken[d] : best_taken;
        }
        index_out[i] = static_cast<int16_t>(best);
        sample_out[i] = static_cast<int64_t>(best_taken);
        for (int d = 0; d < N; ++d) {
            taken[d] += d == best ? 1.0 : 0.0;
        }
    }
}

void blend(int16_t *index_out, int64_t *sample_out, const double *weight, const double *limit, int32_t num_datasets,
           int64_t draws) {
    switch (num_datasets) {
        case 1: return blend_fixed<1>(index_out, sample_out, weight, limit, draws);
        case 2: return blend_fixed<2>(index_out, sample_out, weight, limit, draws);
        case 3: return blend_fixed<3>(index_out, sample_out, weight, limit, draws);
        case 4: return blend_fixed<4>(index_out, sample_out, weight, limit, draws);
        case 5: return blend_fixed<5>(index_out, sample_out, weight, limit, draws);
        case 6: return blend_fixed<6>(index_out, sample_out, weight, limit, draws);
        case 7: return blend_fixed<7>(index_out, sample_out, weight, limit, draws);
        case 8: return blend_fixed<8>(index_out, sample_out, weight, limit, draws);
        default: return blend_any(index_out, sample_out, weight, limit, num_datasets, draws);
    }
}

void build_blending_indices(const py::object &dataset_index_obj, const py::object &dataset_sample_index_obj,
                            const py::object &weights_obj, int32_t num_datasets, int64_t size, bool verbose) {
    auto dataset_index = exact_vector<int16_t>(dataset_index_obj, "dataset_index", true);
    auto dataset_sample_index = exact_vector<int64_t>(dataset_sample_index_obj, "dataset_sample_index", true);
    const auto weights = weight_vector(weights_obj, "weights");
    check_num_datasets(num_datasets, weights.size(), "weights");
    if (size < 0 || size >= kExactDoubleLimit) {
        throw py::value_error("size must be in [0, 2**53), got " + std::to_string(size));
    }
    check_output_length(dataset_index.size(), size, "dataset_index");
    check_output_length(dataset_sample_index.size(), size, "dataset_sample_index");
    const double *w = weights.data();
    for (int32_t d = 0; d < num_datasets; ++d) {
        if (!(std::isfinite(w[d]) && w[d] >= 0.0)) {
            throw py::value_error("weights[" + std::to_string(d) + "] must be finite and non-negative, got " +
                                  std::to_string(w[d]));
        }
    }

    auto *index_out = static_cast<int16_t *>(dataset_index.mutable_data());
    auto *sample_out = static_cast<int64_t *>(dataset_sample_index.mutable_data());
    const std::vector<double> no_limit(num_datasets, std::numeric_limits<double>::infinity());
    {
        py::gil_scoped_release release;
        blend(index_out, sample_out, w, no_limit.data(), num_datasets, size);
    }
    if (verbose) {
        std::vector<int64_t> taken(num_datasets, 0);
        for (int64_t i = 0; i < size; ++i) {
            ++taken[index_out[i]];
        }
        py::print(" > sample ratios:");
        for (int32_t d = 0; d < num_datasets; ++d) {
            const double achieved = size > 0 ? static_cast<double>(taken[d]) / static_cast<double>(size) : 0.0;
            py::print(py::str("   dataset {}, input: {}, achieved: {}").format(d, w[d], achieved));
        }
    }
}

// Exhaustive blending: draw exactly sizes[d] samples from dataset d, interleaved in proportion.
void build_exhaustive_blending_indices(const py::object &dataset_index_obj,
                                       const py::object &dataset_sample_index_obj, const py::object &sizes_obj,
                                       int32_t num_datasets) {
    auto dataset_index = exact_vector<int16_t>(dataset_index_obj, "dataset_index", true);
    auto dataset_sample_index = exact_vector<int64_t>(dataset_sample_index_obj, "dataset_sample_index", true);
    const auto sizes = count_vector(sizes_obj, "sizes");
    check_num_datasets(num_datasets, sizes.size(), "sizes");
    const int64_t *n = sizes.data();
    int64_t total = 0;
    for (int32_t d = 0; d < num_datasets; ++d) {
        // megatron-core never retires a dataset of size 0 and loops forever; say so instead.
        if (n[d] <= 0) {
            throw py::value_error("sizes[" + std::to_string(d) + "] must be positive, got " + std::to_string(n[d]));
        }
        if (n[d] >= kExactDoubleLimit - total) {
            throw py::value_error("the sum of sizes must be below 2**53");
        }
        total += n[d];
    }
    check_output_length(dataset_index.size(), total, "dataset_index");
    check_output_length(dataset_sample_index.size(), total, "dataset_sample_index");

    auto *index_out = static_cast<int16_t *>(dataset_index.mutable_data());
    auto *sample_out = static_cast<int64_t *>(dataset_sample_index.mutable_data());
    std::vector<double> weight(num_datasets), limit(num_datasets);
    for (int32_t d = 0; d < num_datasets; ++d) {
        weight[d] = n[d] / static_cast<double>(total);
        limit[d] = static_cast<double>(n[d]);
    }
    {
        py::gil_scoped_release release;
        blend(index_out, sample_out, weight.data(), limit.data(), num_datasets, total);
    }
}

}  // namespace

PYBIND11_MODULE(_helpers, m) {
    m.doc() = "Index builders for GPT datasets (megatron-core helpers_cpp compatible; GIL released).";

    const char *sample_idx_doc =
        "Sample index [num_samples + 1, 2] of (document_idx position, token offset) pairs that cut the\n"
        "documents of `document_idx` (int32 ids into `sizes`, int32 lengths), concatenated, into\n"
        "windows of seq_length (+ add_extra_token_to_sequence) tokens. Same arguments and output as\n"
        "megatron-core's helpers_cpp.build_sample_idx_int32/_int64.";
    m.def("build_sample_idx_int32", &build_sample_idx<int32_t>, sample_idx_doc, py::arg("sizes"),
          py::arg("document_idx"), py::arg("seq_length"), py::arg("num_epochs"), py::arg("tokens_per_epoch"),
          py::arg("drop_last_partial_sequence") = true, py::arg("add_extra_token_to_sequence") = 1);
    m.def("build_sample_idx_int64", &build_sample_idx<int64_t>, sample_idx_doc, py::arg("sizes"),
          py::arg("document_idx"), py::arg("seq_length"), py::arg("num_epochs"), py::arg("tokens_per_epoch"),
          py::arg("drop_last_partial_sequence") = true, py::arg("add_extra_token_to_sequence") = 1);
    m.def("build_document_chunk_idx", &build_document_chunk_idx,
          "Chunk index [chunks, 2] (int32 document id, token offset): each document of sizes[begin:end]\n"
          "cut into consecutive chunks of chunk_length tokens, the last one possibly short; nothing\n"
          "crosses a document. megatron_zh's own (UER-py's LmDataset rule), not in megatron-core.",
          py::arg("sizes"), py::arg("begin"), py::arg("end"), py::arg("chunk_length"));
    m.def("build_blending_indices", &build_blending_indices,
          "Fill dataset_index (int16) and dataset_sample_index (int64) for `size` samples blended by\n"
          "`weights` (float64, one per dataset).",
          py::arg("dataset_index"), py::arg("dataset_sample_index"), py::arg("weights"), py::arg("num_datasets"),
          py::arg("size"), py::arg("verbose") = false);
    m.def("build_exhaustive_blending_indices", &build_exhaustive_blending_indices,
          "Fill dataset_index (int16) and dataset_sample_index (int64) drawing exactly sizes[d] samples\n"
          "from each dataset d, interleaved in proportion to the sizes.",
          py::arg("dataset_index"), py::arg("dataset_sample_index"), py::arg("sizes"), py::arg("num_datasets"));
}
