// Packed 1-bit (±1) and ternary weights times fp32 activations, fp32 accumulation, for CPU inference.
//
// Layouts follow cress_bitnet/quantization/packing.py: rows packed along the input dim, each row padded to whole
// bytes, little-endian inside a byte (bit j of byte k <-> element 8k+j for signs; bits 2j..2j+1 of byte k <->
// element 4k+j for ternary codes 0 -> 0, 1 -> +1, 2 -> -1).
//
// Signs: y[n, o] = sum_i s[o, i] x[n, i] = 2 * sum_{bit = 1} x[n, i] - sum_i x[n, i]. The bit-1 sum needs no
// multiplies: with AVX-512 each 16 input bits are used directly as the write mask of one masked add.
// Ternary: y = sum_{code = 1} x - sum_{code = 2} x; the two 16-bit masks are extracted from 32 code bits with PEXT.
//
// Register blocking: a tile of NR activation rows x OR weight rows keeps NR*OR accumulators in registers, so every
// mask load is reused NR times and every activation load OR times. Work is split over output rows with
// at::parallel_for (torch's own OpenMP pool, so torch.set_num_threads applies).
//
// With AVX-512 and a prepacked weight (see `prepack`) both modes instead run a lookup-table kernel (T-MAC, Wei et
// al., arXiv 2407.00088; microsoft/T-MAC): every 4-bit nibble of a weight row indexes a 16-entry fp32 table built
// once per activation row -- all 16 sign patterns of 4 inputs (signs), or all pairs of 2 ternary codes (ternary) --
// so one VPERMPS looks up 16 output rows' partial sums at once and one add accumulates them. The prepacked layout
// interleaves 16 output rows byte by byte (`prepack`), so one 16-byte load yields the indices of all 16 rows.
// Per 4 signs x 16 rows this is 1 permute + 1 add, against 4 masked adds for the mask kernel, and the tables of a
// block of activation rows sit in L1 while the weights stream once per block. AVX2 builds run the same kernel on
// 8-lane halves (two permutes and a blend per 16-entry lookup): 1.2-1.45x their mask kernel at every shape measured.
//
// The ISA path is chosen at compile time (the loader compiles with -march=native on the machine that runs it):
// AVX-512F (+BMI2 for ternary), else AVX2 with a 256-entry mask table, else portable scalar code (no LUT kernel).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

constexpr int kSign = 1;
constexpr int kTernary = 2;

#if defined(__AVX512F__)
const char* kIsa = "avx512";
#elif defined(__AVX2__)
const char* kIsa = "avx2";
#else
const char* kIsa = "scalar";
#endif

// Load up to `n` bytes starting at p as a little-endian integer (never reads past p + n).
inline uint32_t load_le(const uint8_t* p, int n) {
  uint32_t v = 0;
  for (int b = 0; b < n; ++b) v |= static_cast<uint32_t>(p[b]) << (8 * b);
  return v;
}

// Epilogue: signs turn the bit-1 sum into 2 * s - sum(x); ternary sums are final.
template <int MODE>
inline float finish(float s, const float* sx, int n) {
  return MODE == kSign ? 2.0f * s - sx[n] : s;
}

#if defined(__AVX512F__)
// Extract the "+1" (code 1, even bits) and "-1" (code 2, odd bits) masks of 16 ternary codes.
inline void ternary_masks(uint32_t c, __mmask16* plus, __mmask16* minus) {
#if defined(__BMI2__)
  *plus = static_cast<__mmask16>(_pext_u32(c, 0x55555555u));
  *minus = static_cast<__mmask16>(_pext_u32(c, 0xAAAAAAAAu));
#else
  uint32_t p = 0, m = 0;
  for (int j = 0; j < 16; ++j) {
    p |= ((c >> (2 * j)) & 1u) << j;
    m |= ((c >> (2 * j + 1)) & 1u) << j;
  }
  *plus = static_cast<__mmask16>(p);
  *minus = static_cast<__mmask16>(m);
#endif
}

// NR x OR tile: acc[n][r] = sum over the row of the masked activations, reduced to out[n * ldo + r].
template <int MODE, int NR, int OR>
inline void tile(const float* const* xs, const float* sx, const uint8_t* const* ws, int64_t K, float* out,
                 int64_t ldo) {
  __m512 acc[NR][OR];
  for (int n = 0; n < NR; ++n)
    for (int r = 0; r < OR; ++r) acc[n][r] = _mm512_setzero_ps();
  constexpr int kBytesPer16 = MODE == kSign ? 2 : 4;
  const int64_t full = K / 16;
  for (int64_t c = 0; c < full; ++c) {
    __mmask16 mp[OR], mm[OR];
    for (int r = 0; r < OR; ++r) {
      if (MODE == kSign) {
        uint16_t m;
        std::memcpy(&m, ws[r] + c * kBytesPer16, 2);
        mp[r] = m;
      } else {
        uint32_t m;
        std::memcpy(&m, ws[r] + c * kBytesPer16, 4);
        ternary_masks(m, &mp[r], &mm[r]);
      }
    }
    for (int n = 0; n < NR; ++n) {
      const __m512 xv = _mm512_loadu_ps(xs[n] + c * 16);
      for (int r = 0; r < OR; ++r) {
        acc[n][r] = _mm512_mask_add_ps(acc[n][r], mp[r], acc[n][r], xv);
        if (MODE == kTernary) acc[n][r] = _mm512_mask_sub_ps(acc[n][r], mm[r], acc[n][r], xv);
      }
    }
  }
  const int rem = static_cast<int>(K - full * 16);
  if (rem > 0) {
    const __mmask16 tail = static_cast<__mmask16>((1u << rem) - 1u);
    const int per_byte = MODE == kSign ? 8 : 4;
    const int nbytes = (rem + per_byte - 1) / per_byte;
    __mmask16 mp[OR], mm[OR];
    for (int r = 0; r < OR; ++r) {
      const uint32_t bits = load_le(ws[r] + full * kBytesPer16, nbytes);
      if (MODE == kSign) {
        mp[r] = static_cast<__mmask16>(bits) & tail;
      } else {
        ternary_masks(bits, &mp[r], &mm[r]);
        mp[r] &= tail;
        mm[r] &= tail;
      }
    }
    for (int n = 0; n < NR; ++n) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, xs[n] + full * 16);
      for (int r = 0; r < OR; ++r) {
        acc[n][r] = _mm512_mask_add_ps(acc[n][r], mp[r], acc[n][r], xv);
        if (MODE == kTernary) acc[n][r] = _mm512_mask_sub_ps(acc[n][r], mm[r], acc[n][r], xv);
      }
    }
  }
  for (int n = 0; n < NR; ++n)
    for (int r = 0; r < OR; ++r) out[n * ldo + r] = finish<MODE>(_mm512_reduce_add_ps(acc[n][r]), sx, n);
}

#elif defined(__AVX2__)
// Table of 256 lane masks: entry b has lane j all-ones iff bit j of b is set.
struct MaskTable {
  alignas(32) int32_t m[256][8];
  MaskTable() {
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) m[b][j] = ((b >> j) & 1) ? -1 : 0;
  }
};
const MaskTable kMasks;

inline __m256 lane_mask(uint32_t byte) {
  return _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(kMasks.m[byte])));
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Even (code 1) / odd (code 2) bits of 8 ternary codes (16 bits) compressed to one byte each.
inline void ternary_bytes(uint32_t c, uint32_t* plus, uint32_t* minus) {
  uint32_t p = 0, m = 0;
  for (int j = 0; j < 8; ++j) {
    p |= ((c >> (2 * j)) & 1u) << j;
    m |= ((c >> (2 * j + 1)) & 1u) << j;
  }
  *plus = p;
  *minus = m;
}

template <int MODE, int NR, int OR>
inline void tile(const float* const* xs, const float* sx, const uint8_t* const* ws, int64_t K, float* out,
                 int64_t ldo) {
  __m256 acc[NR][OR];
  for (int n = 0; n < NR; ++n)
    for (int r = 0; r < OR; ++r) acc[n][r] = _mm256_setzero_ps();
  constexpr int kBytesPer8 = MODE == kSign ? 1 : 2;
  const int64_t full = K / 8;
  for (int64_t c = 0; c < full; ++c) {
    __m256 mp[OR], mm[OR];
    for (int r = 0; r < OR; ++r) {
      if (MODE == kSign) {
        mp[r] = lane_mask(ws[r][c]);
      } else {
        uint32_t p, m;
        ternary_bytes(load_le(ws[r] + c * kBytesPer8, 2), &p, &m);
        mp[r] = lane_mask(p);
        mm[r] = lane_mask(m);
      }
    }
    for (int n = 0; n < NR; ++n) {
      const __m256 xv = _mm256_loadu_ps(xs[n] + c * 8);
      for (int r = 0; r < OR; ++r) {
        acc[n][r] = _mm256_add_ps(acc[n][r], _mm256_and_ps(xv, mp[r]));
        if (MODE == kTernary) acc[n][r] = _mm256_sub_ps(acc[n][r], _mm256_and_ps(xv, mm[r]));
      }
    }
  }
  for (int n = 0; n < NR; ++n) {
    for (int r = 0; r < OR; ++r) {
      float s = hsum256(acc[n][r]);
      for (int64_t i = full * 8; i < K; ++i) {
        const uint8_t* w = ws[r];
        if (MODE == kSign) {
          if ((w[i >> 3] >> (i & 7)) & 1) s += xs[n][i];
        } else {
          const int code = (w[i >> 2] >> (2 * (i & 3))) & 3;
          s += code == 1 ? xs[n][i] : (code == 2 ? -xs[n][i] : 0.0f);
        }
      }
      out[n * ldo + r] = finish<MODE>(s, sx, n);
    }
  }
}

#else
template <int MODE, int NR, int OR>
inline void tile(const float* const* xs, const float* sx, const uint8_t* const* ws, int64_t K, float* out,
                 int64_t ldo) {
  for (int n = 0; n < NR; ++n) {
    for (int r = 0; r < OR; ++r) {
      const uint8_t* w = ws[r];
      const float* x = xs[n];
      float s = 0.0f;
      for (int64_t i = 0; i < K; ++i) {
        if (MODE == kSign) {
          s += ((w[i >> 3] >> (i & 7)) & 1) ? x[i] : 0.0f;
        } else {
          const int code = (w[i >> 2] >> (2 * (i & 3))) & 3;
          s += code == 1 ? x[i] : (code == 2 ? -x[i] : 0.0f);
        }
      }
      out[n * ldo + r] = finish<MODE>(s, sx, n);
    }
  }
}
#endif

// Dispatch a block of rows [n0, n0 + nr) x [o0, o0 + orows) with compile-time tile sizes.
template <int MODE, int NR, int OR>
void run_tile(const float* x, const float* sx, int64_t ldx, const uint8_t* w, int64_t ldw, int64_t K, int64_t n0,
              int64_t o0, float* y, int64_t ldy) {
  const float* xs[NR];
  const uint8_t* ws[OR];
  for (int n = 0; n < NR; ++n) xs[n] = x + (n0 + n) * ldx;
  for (int r = 0; r < OR; ++r) ws[r] = w + (o0 + r) * ldw;
  tile<MODE, NR, OR>(xs, sx + n0, ws, K, y + n0 * ldy + o0, ldy);
}

template <int MODE, int NR>
void run_rows(const float* x, const float* sx, int64_t ldx, const uint8_t* w, int64_t ldw, int64_t K, int64_t n0,
              int64_t o_begin, int64_t o_end, float* y, int64_t ldy) {
  // Batch-1 rows use 8 output rows (8 independent add chains hide the add latency); wider tiles use 4.
  constexpr int OR = NR == 1 ? 8 : 4;
  int64_t o = o_begin;
  for (; o + OR <= o_end; o += OR) run_tile<MODE, NR, OR>(x, sx, ldx, w, ldw, K, n0, o, y, ldy);
  for (; o < o_end; ++o) run_tile<MODE, NR, 1>(x, sx, ldx, w, ldw, K, n0, o, y, ldy);
}

// Sum of n floats in 16 independent partial sums (vectorizable without -ffast-math; one chain is latency-bound).
template <typename F>
inline float lane_sum(int64_t n, F term) {
  float part[16] = {0.0f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += term(i + j);
  float s = 0.0f;
  for (; i < n; ++i) s += term(i);
  for (int j = 0; j < 16; ++j) s += part[j];
  return s;
}

template <int MODE>
void rowmajor_matmul(const float* xp, int64_t ldx, int64_t N, int64_t K, const uint8_t* wp, int64_t ldw, int64_t O,
                     float* yp, int64_t ldy) {
  // Row sums of x for the sign epilogue (computed once, serially: N * K adds are negligible next to the matmul).
  std::vector<float> sx(MODE == kSign ? N : 0);
  for (int64_t n = 0; n < static_cast<int64_t>(sx.size()); ++n) {
    const float* row = xp + n * ldx;
    sx[n] = lane_sum(K, [row](int64_t i) { return row[i]; });
  }
  const float* sxp = sx.data();
  // Split output rows so a thread gets at least ~64K multiply-adds' worth of work (tiny layers stay serial).
  const int64_t grain = std::max<int64_t>(8, (int64_t{1} << 16) / std::max<int64_t>(1, N * K));
  at::parallel_for(0, O, grain, [&](int64_t o_begin, int64_t o_end) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) run_rows<MODE, 4>(xp, sxp, ldx, wp, ldw, K, n, o_begin, o_end, yp, ldy);
    for (; n + 2 <= N; n += 2) run_rows<MODE, 2>(xp, sxp, ldx, wp, ldw, K, n, o_begin, o_end, yp, ldy);
    for (; n < N; ++n) run_rows<MODE, 1>(xp, sxp, ldx, wp, ldw, K, n, o_begin, o_end, yp, ldy);
  });
}


// ---------------------------------------------------------------------------------------------------------------
// Lookup-table kernel (AVX-512 or AVX2). Nibble n of a row covers inputs [n * G, (n + 1) * G) with G = 4 (signs,
// 1 bit each) or G = 2 (ternary, 2 bits each); byte k holds nibbles 2k (low) and 2k + 1 (high), exactly as packing.py
// lays out the row-major bytes, so only the order of rows changes in the prepacked form.

constexpr int64_t kBlock = 16;  // output rows per lookup (one zmm of fp32 partial sums)

// (O, KB) row-major bytes -> (ceil(O / 16), KB, 16): byte k of the 16 rows of a block is contiguous. Rows past O
// are zero; their outputs are computed and dropped.
torch::Tensor prepack_rows(const torch::Tensor& packed_in) {
  TORCH_CHECK(packed_in.dim() == 2 && packed_in.scalar_type() == torch::kUInt8, "packed must be a 2-D uint8 tensor");
  const torch::Tensor packed = packed_in.contiguous();
  const int64_t O = packed.size(0), KB = packed.size(1), OB = (O + kBlock - 1) / kBlock;
  auto out = torch::zeros({OB, KB, kBlock}, packed.options());
  const uint8_t* src = packed.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t o = 0; o < O; ++o) {
    const uint8_t* row = src + o * KB;
    uint8_t* d = dst + (o / kBlock) * KB * kBlock + (o % kBlock);
    for (int64_t k = 0; k < KB; ++k) d[k * kBlock] = row[k];
  }
  return out;
}

bool lut_supported() {
#if defined(__AVX512F__) || defined(__AVX2__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX512F__) || defined(__AVX2__)
// Tables of one activation row: tab[n * 16 + b] = partial sum of nibble value b over the inputs of nibble n.
// Inputs past K read as 0, so the padding bits of the last byte contribute nothing whatever they hold.
template <int MODE>
void build_tables(const float* x, int64_t K, int64_t NG, float* tab) {
  constexpr int G = MODE == kSign ? 4 : 2;
  alignas(64) float lanes[G][16];
  for (int b = 0; b < 16; ++b) {
    for (int j = 0; j < G; ++j) {
      if (MODE == kSign) {
        lanes[j][b] = ((b >> j) & 1) ? 1.0f : -1.0f;
      } else {
        const int code = (b >> (2 * j)) & 3;
        lanes[j][b] = code == 1 ? 1.0f : (code == 2 ? -1.0f : 0.0f);
      }
    }
  }
#if defined(__AVX512F__)
  __m512 s[G];
  for (int j = 0; j < G; ++j) s[j] = _mm512_load_ps(lanes[j]);
#else
  __m256 s[G][2];
  for (int j = 0; j < G; ++j) {
    s[j][0] = _mm256_load_ps(lanes[j]);
    s[j][1] = _mm256_load_ps(lanes[j] + 8);
  }
#endif
  const int64_t full = std::min(NG, K / G);
  for (int64_t n = 0; n < NG; ++n) {
    float v[G];
    if (n < full) {
      for (int j = 0; j < G; ++j) v[j] = x[n * G + j];
    } else {
      for (int j = 0; j < G; ++j) v[j] = n * G + j < K ? x[n * G + j] : 0.0f;
    }
    // ±x_j are exact, so each lane is the sum of its (signed) inputs in the order j = 0, 1, ... (one rounding each).
#if defined(__AVX512F__)
    __m512 t = _mm512_mul_ps(s[0], _mm512_set1_ps(v[0]));
    for (int j = 1; j < G; ++j) t = _mm512_fmadd_ps(s[j], _mm512_set1_ps(v[j]), t);
    _mm512_storeu_ps(tab + n * 16, t);
#else
    for (int h = 0; h < 2; ++h) {
      __m256 t = _mm256_mul_ps(s[0][h], _mm256_set1_ps(v[0]));
      for (int j = 1; j < G; ++j) t = _mm256_add_ps(t, _mm256_mul_ps(s[j][h], _mm256_set1_ps(v[j])));
      _mm256_storeu_ps(tab + n * 16 + 8 * h, t);
    }
#endif
  }
}

#if defined(__AVX512F__)
// MB activation rows x NB blocks of 16 output rows, bytes [k0, k1) of every row. acc starts at 0 (first chunk) or
// at the partial sums already in y. `cols` is the number of valid output columns from the tile's first block on: a
// last, partial block is loaded and stored under a mask, so y needs no padding columns.
template <int MB, int NB>
inline void lut_tile(const float* tab, int64_t tld, const uint8_t* wb, int64_t KB, int64_t k0, int64_t k1, float* y,
                     int64_t ldy, bool first, int64_t cols) {
  __mmask16 keep[NB];
  for (int b = 0; b < NB; ++b) {
    const int64_t c = cols - b * kBlock;
    keep[b] = c >= kBlock ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << c) - 1u);
  }
  __m512 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b)
      acc[m][b] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(keep[b], y + m * ldy + b * kBlock);
  for (int64_t k = k0; k < k1; ++k) {
    __m512i lo[NB], hi[NB];
    for (int b = 0; b < NB; ++b) {
      // VPERMPS reads only the low 4 bits of each index, so the low nibble needs no mask.
      lo[b] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + (b * KB + k) * kBlock)));
      hi[b] = _mm512_srli_epi32(lo[b], 4);
    }
    for (int m = 0; m < MB; ++m) {
      const __m512 tl = _mm512_loadu_ps(tab + m * tld + 32 * k);
      const __m512 th = _mm512_loadu_ps(tab + m * tld + 32 * k + 16);
      for (int b = 0; b < NB; ++b)
        acc[m][b] = _mm512_add_ps(acc[m][b],
                                  _mm512_add_ps(_mm512_permutexvar_ps(lo[b], tl), _mm512_permutexvar_ps(hi[b], th)));
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) _mm512_mask_storeu_ps(y + m * ldy + b * kBlock, keep[b], acc[m][b]);
}
#else
// AVX2 form of the same tile: a 16-row block is two halves of 8 fp32 lanes, and a 16-entry table two registers.
// VPERMPS picks by the low 3 bits of each index in both table halves; bit 3, shifted to the sign bit, picks the half
// (BLENDVPS reads only sign bits). Per 4 inputs x 8 rows: 2 permutes + 1 blend + 1 add, against 4 and + 4 add for the
// masked-add kernel. The last, partial block is loaded and stored with lane masks.
inline __m256 lookup16(__m256 t0, __m256 t1, __m256i idx) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx),
                          _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

template <int MB, int NB>
inline void lut_tile(const float* tab, int64_t tld, const uint8_t* wb, int64_t KB, int64_t k0, int64_t k1, float* y,
                     int64_t ldy, bool first, int64_t cols) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i keep[NB][2];
  for (int b = 0; b < NB; ++b)
    for (int h = 0; h < 2; ++h) {
      const int64_t c = std::min<int64_t>(8, std::max<int64_t>(0, cols - b * kBlock - h * 8));
      keep[b][h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(c)), iota);
    }
  __m256 acc[MB][NB][2];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b)
      for (int h = 0; h < 2; ++h)
        acc[m][b][h] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(y + m * ldy + b * kBlock + 8 * h, keep[b][h]);
  for (int64_t k = k0; k < k1; ++k) {
    __m256i lo[NB][2], hi[NB][2];
    for (int b = 0; b < NB; ++b) {
      const uint8_t* p = wb + (b * KB + k) * kBlock;
      for (int h = 0; h < 2; ++h) {
        lo[b][h] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
        hi[b][h] = _mm256_srli_epi32(lo[b][h], 4);
      }
    }
    for (int m = 0; m < MB; ++m) {
      const float* t = tab + m * tld + 32 * k;
      const __m256 l0 = _mm256_loadu_ps(t), l1 = _mm256_loadu_ps(t + 8);
      const __m256 u0 = _mm256_loadu_ps(t + 16), u1 = _mm256_loadu_ps(t + 24);
      for (int b = 0; b < NB; ++b)
        for (int h = 0; h < 2; ++h)
          acc[m][b][h] = _mm256_add_ps(acc[m][b][h],
                                       _mm256_add_ps(lookup16(l0, l1, lo[b][h]), lookup16(u0, u1, hi[b][h])));
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b)
      for (int h = 0; h < 2; ++h) _mm256_maskstore_ps(y + m * ldy + b * kBlock + 8 * h, keep[b][h], acc[m][b][h]);
}
#endif

// Rows [n0, n0 + MB) x blocks [ob0, ob1) of an O-column result. K is walked in chunks of kChunk bytes so that the MB
// rows' tables for the chunk (MB * kChunk * 128 bytes) stay in L1 while every block of the range streams its weights
// past them. Tiles: 8 rows x 2 blocks (16 accumulators) where 8 rows are left, else MB x 4 blocks: measured 10-20%
// faster at M = 16-40 than 4 x 4 on Zen 5, the same at M <= 8.
template <int MB, int NB = 4>
void lut_rows(const float* tab, int64_t tld, const uint8_t* wb, int64_t KB, int64_t n0, int64_t ob0, int64_t ob1,
              float* y, int64_t ldy, int64_t O) {
  constexpr int64_t kChunk = 32;
  for (int64_t k0 = 0; k0 < KB; k0 += kChunk) {
    const int64_t k1 = std::min(KB, k0 + kChunk);
    int64_t ob = ob0;
    const float* t = tab + n0 * tld;
    float* yr = y + n0 * ldy;
    for (; ob + NB <= ob1; ob += NB)
      lut_tile<MB, NB>(t, tld, wb + ob * KB * kBlock, KB, k0, k1, yr + ob * kBlock, ldy, k0 == 0, O - ob * kBlock);
    for (; ob < ob1; ++ob)
      lut_tile<MB, 1>(t, tld, wb + ob * KB * kBlock, KB, k0, k1, yr + ob * kBlock, ldy, k0 == 0, O - ob * kBlock);
  }
}
#endif

// Per-call scratch memory, one set per calling thread and kept between calls: allocating it through ATen costs a
// dispatcher round trip per buffer, which at batch-1 decoder sizes is comparable to the whole matmul.
enum Scratch { kRows = 0, kTables, kLnWeight, kLnBias, kScale, kBias, kNumScratch };

float* scratch(Scratch slot, int64_t n) {
  thread_local std::vector<float> bufs[kNumScratch];
  std::vector<float>& b = bufs[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

// Rows processed at a time by the fused forwards and the LUT matmul: enough for ~512 KB of lookup tables (16 bytes per
// input of a row with signs, 32 with ternary codes), never fewer than 64. At beam-search sizes this is all rows at
// once; the cross-attention keys and values of a batched decode (encoder frames x beam x sentences: ~16K rows) would
// otherwise build tens of MB of tables that stream through L2 instead of staying in it (measured 3x slower per row at
// 128-d).
inline int64_t row_chunk(int64_t K) {
  return std::max<int64_t>(64, (int64_t{1} << 19) / std::max<int64_t>(1, 16 * K));
}

#if defined(__AVX512F__) || defined(__AVX2__)
// y (N, O; row stride ldy) = x (N, K; row stride ldx) times the prepacked rows (OB, KB, 16).
template <int MODE>
void lut_matmul(const float* xp, int64_t ldx, int64_t N, int64_t K, const uint8_t* wb, int64_t OB, int64_t KB,
                float* yp, int64_t ldy, int64_t O) {
  const int64_t NG = 2 * KB, tld = NG * 16, chunk = row_chunk(K);
  float* tab = scratch(kTables, std::min(N, chunk) * tld);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nc = std::min(chunk, N - n0);
    const float* x = xp + n0 * ldx;
    float* y = yp + n0 * ldy;
    at::parallel_for(0, nc, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, K)), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) build_tables<MODE>(x + n * ldx, K, NG, tab + n * tld);
    });
    // Split blocks so a thread gets at least ~256K table lookups' worth of work (small layers stay serial).
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, nc * NG * kBlock));
    at::parallel_for(0, OB, grain, [&](int64_t ob0, int64_t ob1) {
      int64_t n = 0;
#if defined(__AVX512F__)
      for (; n + 8 <= nc; n += 8) lut_rows<8, 2>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
      for (; n + 4 <= nc; n += 4) lut_rows<4>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
      for (; n + 2 <= nc; n += 2) lut_rows<2>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
      for (; n < nc; ++n) lut_rows<1>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
#else  // 16 ymm registers: at most 4 rows x 1 block (8 accumulators) with its indices and tables
      for (; n + 4 <= nc; n += 4) lut_rows<4, 1>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
      for (; n + 2 <= nc; n += 2) lut_rows<2, 1>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
      for (; n < nc; ++n) lut_rows<1, 2>(tab, tld, wb, KB, n, ob0, ob1, y, ldy, O);
#endif
    });
  }
}
#endif

// Activations (..., K) as N fp32 rows with unit stride: the tensor's own memory when it already is fp32 and
// contiguous (no ATen call at all), else a converted copy held in `hold`.
struct Rows {
  const float* p = nullptr;
  int64_t ld = 0, n = 1;
  torch::Tensor hold;
};

Rows float_rows(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu(), "packed matmul kernel is CPU-only");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x has ", x.dim() ? x.size(-1) : 0,
                    " features, expected in_features=", K);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point");
  Rows r;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) r.n *= x.size(d);
  if (x.scalar_type() == torch::kFloat32 && x.is_contiguous()) {
    r.p = x.data_ptr<float>();
    r.ld = K;
    return r;
  }
  r.hold = x.reshape({r.n, K}).to(torch::kFloat32);
  if (r.hold.stride(1) != 1 && K > 1) r.hold = r.hold.contiguous();
  r.p = r.hold.data_ptr<float>();
  r.ld = r.hold.stride(0);
  return r;
}

// fp32 result (..., O) for activations x (..., K); the caller converts it to x's dtype with `in_dtype`.
torch::Tensor new_output(const torch::Tensor& x, int64_t O) {
  c10::SmallVector<int64_t, 4> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(O);
  return at::empty(shape, x.options().dtype(torch::kFloat32));
}

torch::Tensor in_dtype(const torch::Tensor& y, const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat32 ? y : y.to(x.scalar_type());
}

void half_to_float(const at::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// A per-feature vector (LayerNorm affine, h, bias, scales: fp16 as exported, or fp32) as n fp32 values: the
// tensor's memory, or a conversion into scratch slot `slot` (fp16), or into `hold` (any other dtype or layout).
const float* float_vector(const torch::Tensor& t, int64_t n, Scratch slot, torch::Tensor& hold, const char* what) {
  TORCH_CHECK_VALUE(t.numel() == n, what, " holds ", t.numel(), " values, expected ", n);
  TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU");
  if (t.is_contiguous() && t.scalar_type() == torch::kFloat32) return t.data_ptr<float>();
  if (t.is_contiguous() && t.scalar_type() == torch::kHalf) {
    float* dst = scratch(slot, n);
    half_to_float(t.data_ptr<at::Half>(), dst, n);
    return dst;
  }
  hold = t.to(torch::kFloat32).contiguous();
  return hold.data_ptr<float>();
}

// y (N, O; ldy) = rows x (N, K; ldx) times the packed weight, on the LUT kernel when a prepacked layout is given
// (AVX-512 and AVX2 builds), else the row-major kernel.
template <int MODE>
void matmul_into(const float* x, int64_t ldx, int64_t N, int64_t K, const torch::Tensor& packed,
                 const c10::optional<torch::Tensor>& pre, float* y, int64_t ldy) {
  const int per_byte = MODE == kSign ? 8 : 4;
  const int64_t KB = (K + per_byte - 1) / per_byte;
  TORCH_CHECK(packed.device().is_cpu(), "packed matmul kernel is CPU-only");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == torch::kUInt8, "packed must be a 2-D uint8 tensor");
  TORCH_CHECK_VALUE(packed.size(1) == KB, "packed weight (", packed.size(0), ", ", packed.size(1),
                    ") does not hold rows of ", K, " values (", KB, " bytes)");
  const int64_t O = packed.size(0);
  if (N == 0 || O == 0) return;
  if (K == 0) {  // an empty sum
    for (int64_t n = 0; n < N; ++n) std::fill(y + n * ldy, y + n * ldy + O, 0.0f);
    return;
  }
#if defined(__AVX512F__) || defined(__AVX2__)
  if (pre.has_value() && pre->defined()) {
    TORCH_CHECK(pre->dim() == 3 && pre->scalar_type() == torch::kUInt8 && pre->is_contiguous() &&
                    pre->size(0) == (O + kBlock - 1) / kBlock && pre->size(1) == KB && pre->size(2) == kBlock,
                "prepacked weight does not match the packed one (", O, " rows of ", KB, " bytes)");
    lut_matmul<MODE>(x, ldx, N, K, pre->data_ptr<uint8_t>(), pre->size(0), KB, y, ldy, O);
    return;
  }
#endif
  (void)pre;
  const torch::Tensor w = packed.stride(1) == 1 ? packed : packed.contiguous();
  rowmajor_matmul<MODE>(x, ldx, N, K, w.data_ptr<uint8_t>(), w.stride(0), O, y, ldy);
}

template <int MODE>
torch::Tensor matmul_entry(const torch::Tensor& x, const torch::Tensor& packed, int64_t K,
                           const c10::optional<torch::Tensor>& pre) {
  const Rows r = float_rows(x, K);
  torch::Tensor y = new_output(x, packed.size(0));
  matmul_into<MODE>(r.p, r.ld, r.n, K, packed, pre, y.data_ptr<float>(), packed.size(0));
  return in_dtype(y, x);
}

// u = (x - mean) / sqrt(var + eps) [* w + b], biased variance over the row, as torch's layer_norm (two passes in
// fp32; the result may differ from ATen's in the last bits, which the matmul's own rounding already exceeds).
// Per-token absmax fake quantization (quant_row) repeats the exact fp32 arithmetic of common._per_token_quant:
// scale = qmax / max(max|v|, eps), round half to even, divide back; the AVX-512 forms give the same bits (IEEE
// division, round-to-nearest-even) and exist because a libm call per element costs more than the matmul at M ~ 300.
// svcd_row: the SVCD epilogue (v + b, then the quantizer or nothing, then * h) in one or two passes over a row.
#if defined(__AVX512F__)
inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// round(v * scale) / scale, rounding half to even: fake_quant_per_token's arithmetic on 16 lanes.
inline __m512 fake_quant(__m512 v, __m512 scale) {
  return _mm512_div_ps(_mm512_roundscale_ps(_mm512_mul_ps(v, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                       scale);
}

inline void layer_norm_row(const float* x, int64_t K, const float* w, const float* b, float eps, float* u) {
  if (K == 0) return;
  __m512 s = _mm512_setzero_ps();
  for (int64_t i = 0; i < K; i += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(lanes(K - i), x + i));
  const float mean = _mm512_reduce_add_ps(s) / static_cast<float>(K);
  const __m512 mv = _mm512_set1_ps(mean);
  __m512 q = _mm512_setzero_ps();
  for (int64_t i = 0; i < K; i += 16) {
    const __mmask16 m = lanes(K - i);
    const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), mv);
    q = _mm512_fmadd_ps(d, d, q);
  }
  const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(q) / static_cast<float>(K) + eps));
  for (int64_t i = 0; i < K; i += 16) {
    const __mmask16 m = lanes(K - i);
    __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv), rstd);
    if (w) d = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(u + i, m, d);
  }
}

inline float absmax_row(const float* row, int64_t n) {
  __m512 m = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(lanes(n - i), row + i)));
  return _mm512_reduce_max_ps(m);
}

inline void quant_row(float* row, int64_t n, float qmax, float eps) {
  const __m512 scale = _mm512_set1_ps(qmax / std::max(absmax_row(row, n), eps));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, row + i);
    _mm512_mask_storeu_ps(row + i, m, fake_quant(v, scale));
  }
}

inline void svcd_row(float* row, int64_t O, const float* bp, const float* hp, bool per_token, float eps) {
  if (bp)
    for (int64_t o = 0; o < O; o += 16) {
      const __mmask16 m = lanes(O - o);
      const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, row + o), _mm512_maskz_loadu_ps(m, bp + o));
      _mm512_mask_storeu_ps(row + o, m, v);
    }
  const __m512 scale = _mm512_set1_ps(per_token ? 127.0f / std::max(absmax_row(row, O), eps) : 1.0f);
  for (int64_t o = 0; o < O; o += 16) {
    const __mmask16 m = lanes(O - o);
    __m512 v = _mm512_maskz_loadu_ps(m, row + o);
    if (per_token) v = fake_quant(v, scale);
    _mm512_mask_storeu_ps(row + o, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, hp + o)));
  }
}
#else
inline void layer_norm_row(const float* x, int64_t K, const float* w, const float* b, float eps, float* u) {
  const float mean = K ? lane_sum(K, [&](int64_t i) { return x[i]; }) / static_cast<float>(K) : 0.0f;
  const float var =
      K ? lane_sum(K, [&](int64_t i) { const float d = x[i] - mean; return d * d; }) / static_cast<float>(K) : 0.0f;
  const float rstd = 1.0f / std::sqrt(var + eps);
  if (w)
    for (int64_t i = 0; i < K; ++i) u[i] = (x[i] - mean) * rstd * w[i] + b[i];
  else
    for (int64_t i = 0; i < K; ++i) u[i] = (x[i] - mean) * rstd;
}

inline void quant_row(float* row, int64_t n, float qmax, float eps) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(row[i]));
  const float scale = qmax / std::max(m, eps);
  for (int64_t i = 0; i < n; ++i) row[i] = std::nearbyint(row[i] * scale) / scale;
}

inline void svcd_row(float* row, int64_t O, const float* bp, const float* hp, bool per_token, float eps) {
  if (bp)
    for (int64_t o = 0; o < O; ++o) row[o] += bp[o];
  if (per_token) quant_row(row, O, 127.0f, eps);
  for (int64_t o = 0; o < O; ++o) row[o] *= hp[o];
}
#endif

// Rows per parallel task of a per-row pass over n-value rows (~16K values a task: small batches stay serial).
inline int64_t row_grain(int64_t n) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, n)); }

}  // namespace

torch::Tensor signed_matmul(const torch::Tensor& x, const torch::Tensor& packed, int64_t in_features,
                            const c10::optional<torch::Tensor>& prepacked) {
  return matmul_entry<kSign>(x, packed, in_features, prepacked);
}

torch::Tensor ternary_matmul(const torch::Tensor& x, const torch::Tensor& packed, int64_t in_features,
                             const c10::optional<torch::Tensor>& prepacked) {
  return matmul_entry<kTernary>(x, packed, in_features, prepacked);
}

// Whole SVCD inference forward in one call: y = Act(signs · LN'(x) + b) ⊙ h, LN' with g already folded in.
// Written as loops over raw memory with one ATen call (the output's allocation) when x is fp32 and contiguous and
// the vectors are fp16 or fp32: at decoder sizes (128-1024 wide, a few rows a beam step) each ATen op costs about as
// much as the matmul, and a decoder step calls this ~8 times a layer. The per-token quantizer repeats
// fake_quant_per_token's fp32 arithmetic.
torch::Tensor svcd_forward(const torch::Tensor& x, const torch::Tensor& ln_weight, const torch::Tensor& ln_bias,
                           double ln_eps, const torch::Tensor& signs, const c10::optional<torch::Tensor>& bias,
                           const torch::Tensor& h, bool per_token, double act_eps,
                           const c10::optional<torch::Tensor>& prepacked) {
  const int64_t K = x.dim() ? x.size(-1) : 0, O = signs.size(0);
  const Rows r = float_rows(x, K);
  torch::Tensor hw, hb, hh, hbias;
  const float* lw = float_vector(ln_weight, K, kLnWeight, hw, "ln_weight");
  const float* lb = float_vector(ln_bias, K, kLnBias, hb, "ln_bias");
  const float* hp = float_vector(h, O, kScale, hh, "h");
  const float* bp = bias.has_value() && bias->defined() ? float_vector(*bias, O, kBias, hbias, "bias") : nullptr;
  const int64_t N = r.n, chunk = row_chunk(K);
  float* u = scratch(kRows, std::min(N, chunk) * K);
  const float eps = static_cast<float>(ln_eps), aeps = static_cast<float>(act_eps);
  torch::Tensor y = new_output(x, O);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {  // a chunk's normalized rows and tables stay in cache
    const int64_t nc = std::min(chunk, N - n0);
    const float* xc = r.p + n0 * r.ld;
    float* yc = y.data_ptr<float>() + n0 * O;
    at::parallel_for(0, nc, row_grain(K), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) layer_norm_row(xc + n * r.ld, K, lw, lb, eps, u + n * K);
    });
    matmul_into<kSign>(u, K, nc, K, signs, prepacked, yc, O);
    at::parallel_for(0, nc, row_grain(O), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) svcd_row(yc + n * O, O, bp, hp, per_token, aeps);
    });
  }
  return in_dtype(y, x);
}

// BitNet b1 / b1.58 inference forward in one call: normalize (LayerNorm without affine, or RMSNorm), per-token
// act_bits fake quantization (act_bits = 0: none), packed matmul (signs or ternary codes), times the scale of each
// output row's group (groups as common.row_group_ids: O // G rows each, the last takes the remainder), + bias.
// The norm is ATen's own (not a loop here): the quantizer that follows rounds it, and a last-bit difference from the
// training form's torch norm could move a value across a rounding boundary.
torch::Tensor normquant_forward(const torch::Tensor& x, bool rms, double norm_eps, int64_t act_bits, double act_eps,
                                const torch::Tensor& packed, bool ternary, const torch::Tensor& scales,
                                const c10::optional<torch::Tensor>& bias,
                                const c10::optional<torch::Tensor>& prepacked) {
  const int64_t K = x.dim() ? x.size(-1) : 0, O = packed.size(0), G = scales.numel();
  TORCH_CHECK(G >= 1 && G <= std::max<int64_t>(O, 1), "scales must hold 1..out_features group scales, got ", G);
  TORCH_CHECK(act_bits == 0 || act_bits >= 2, "act_bits must be 0 (no quantization) or >= 2, got ", act_bits);
  const Rows r = float_rows(x, K);
  const torch::Tensor xr = torch::from_blob(const_cast<float*>(r.p), {r.n, K}, {r.ld, 1}, torch::kFloat32);
  torch::Tensor u = rms ? at::rms_norm(xr, {K}, c10::nullopt, norm_eps) : at::layer_norm(xr, {K}, {}, {}, norm_eps);
  u = u.contiguous();
  float* up = u.data_ptr<float>();
  const int64_t N = r.n;
  if (act_bits) {
    const float qmax = static_cast<float>((int64_t{1} << (act_bits - 1)) - 1);
    const float aeps = static_cast<float>(act_eps);
    at::parallel_for(0, N, row_grain(K), [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) quant_row(up + n * K, K, qmax, aeps);
    });
  }
  torch::Tensor hs, hbias;
  const float* sp = float_vector(scales, G, kScale, hs, "scales");
  const float* bp = bias.has_value() && bias->defined() ? float_vector(*bias, O, kBias, hbias, "bias") : nullptr;
  torch::Tensor y = new_output(x, O);
  float* yp = y.data_ptr<float>();
  if (ternary)
    matmul_into<kTernary>(up, K, N, K, packed, prepacked, yp, O);
  else
    matmul_into<kSign>(up, K, N, K, packed, prepacked, yp, O);
  const int64_t size = std::max<int64_t>(1, O / G);
  at::parallel_for(0, N, row_grain(O), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      float* row = yp + n * O;
      for (int64_t o = 0; o < O; ++o) {
        const float v = row[o] * sp[std::min(o / size, G - 1)];
        row[o] = bp ? v + bp[o] : v;
      }
    }
  });
  return in_dtype(y, x);
}


torch::Tensor prepack(const torch::Tensor& packed) { return prepack_rows(packed); }

std::string isa() { return kIsa; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pybind11::arg;
  m.def("signed_matmul", &signed_matmul, "x (..., K) @ packed ±1 rows (O, ceil(K/8)) -> (..., O), fp32 accumulation",
        arg("x"), arg("packed"), arg("in_features"), arg("prepacked") = pybind11::none());
  m.def("ternary_matmul", &ternary_matmul, "x (..., K) @ packed ternary rows (O, ceil(K/4)) -> (..., O), fp32 accum.",
        arg("x"), arg("packed"), arg("in_features"), arg("prepacked") = pybind11::none());
  m.def("svcd_forward", &svcd_forward, "fused PackedSVCDLinear forward (LayerNorm, sign matmul, bias, act, h)",
        arg("x"), arg("ln_weight"), arg("ln_bias"), arg("ln_eps"), arg("signs"), arg("bias"), arg("h"),
        arg("per_token"), arg("act_eps"), arg("prepacked") = pybind11::none());
  m.def("normquant_forward", &normquant_forward,
        "fused BitNet b1 / b1.58 forward (norm, per-token quant, packed matmul, group scales, bias)", arg("x"),
        arg("rms"), arg("norm_eps"), arg("act_bits"), arg("act_eps"), arg("packed"), arg("ternary"), arg("scales"),
        arg("bias"), arg("prepacked") = pybind11::none());
  m.def("prepack", &prepack, "row-major packed bytes (O, KB) -> LUT layout (ceil(O/16), KB, 16)");
  m.def("lut_supported", &lut_supported, "whether this build has the lookup-table kernel (AVX-512 or AVX2)");
  m.def("isa", &isa, "instruction set the kernel was compiled for");
}
