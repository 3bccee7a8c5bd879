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
// block of activation rows sit in L1 while the weights stream once per block.
//
// The ISA path is chosen at compile time (the loader compiles with -march=native on the machine that runs it):
// AVX-512F (+BMI2 for ternary), else AVX2 with a 256-entry mask table, else portable scalar code.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
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

template <int MODE>
torch::Tensor packed_matmul(const torch::Tensor& x_in, const torch::Tensor& packed_in, int64_t K) {
  const int per_byte = MODE == kSign ? 8 : 4;
  TORCH_CHECK(x_in.device().is_cpu() && packed_in.device().is_cpu(), "packed matmul kernel is CPU-only");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) == K, "x must have ", K, " features in its last dim");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "x must be floating point");
  TORCH_CHECK(packed_in.dim() == 2 && packed_in.scalar_type() == torch::kUInt8, "packed must be a 2-D uint8 tensor");
  TORCH_CHECK(packed_in.size(1) == (K + per_byte - 1) / per_byte, "packed rows hold ", packed_in.size(1),
              " bytes, expected ", (K + per_byte - 1) / per_byte, " for ", K, " features");
  // Done here rather than in Python: each of these is a dispatcher round trip that costs microseconds there.
  torch::Tensor x = x_in.reshape({-1, K}).to(torch::kFloat32);
  if (x.stride(1) != 1) x = x.contiguous();
  const torch::Tensor packed = packed_in.stride(1) == 1 ? packed_in : packed_in.contiguous();
  const int64_t N = x.size(0), O = packed.size(0);
  auto y = torch::empty({N, O}, x.options());
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end() - 1);
  out_shape.push_back(O);
  if (N == 0 || O == 0) return y.reshape(out_shape).to(x_in.scalar_type());
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x.stride(0), ldw = packed.stride(0);
  // Row sums of x for the sign epilogue (computed once, serially: N * K adds are negligible next to the matmul).
  std::vector<float> sx(MODE == kSign ? N : 0);
  for (int64_t n = 0; n < static_cast<int64_t>(sx.size()); ++n) {
    // 16 independent partial sums: vectorizable without -ffast-math (a single scalar chain is latency-bound).
    float part[16] = {0.0f};
    const float* row = xp + n * ldx;
    int64_t i = 0;
    for (; i + 16 <= K; i += 16)
      for (int j = 0; j < 16; ++j) part[j] += row[i + j];
    float s = 0.0f;
    for (; i < K; ++i) s += row[i];
    for (int j = 0; j < 16; ++j) s += part[j];
    sx[n] = s;
  }
  const float* sxp = sx.data();
  // Split output rows so a thread gets at least ~64K multiply-adds' worth of work (tiny layers stay serial).
  const int64_t grain = std::max<int64_t>(8, (int64_t{1} << 16) / std::max<int64_t>(1, N * K));
  at::parallel_for(0, O, grain, [&](int64_t o_begin, int64_t o_end) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) run_rows<MODE, 4>(xp, sxp, ldx, wp, ldw, K, n, o_begin, o_end, yp, O);
    for (; n + 2 <= N; n += 2) run_rows<MODE, 2>(xp, sxp, ldx, wp, ldw, K, n, o_begin, o_end, yp, O);
    for (; n < N; ++n) run_rows<MODE, 1>(xp, sxp, ldx, wp, ldw, K, n, o_begin, o_end, yp, O);
  });
  return y.reshape(out_shape).to(x_in.scalar_type());
}


// ---------------------------------------------------------------------------------------------------------------
// Lookup-table kernel (AVX-512). Nibble n of a row covers inputs [n * G, (n + 1) * G) with G = 4 (signs, 1 bit each)
// or G = 2 (ternary, 2 bits each); byte k holds nibbles 2k (low) and 2k + 1 (high), exactly as packing.py lays out
// the row-major bytes, so only the order of rows changes in the prepacked form.

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
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX512F__)
// Tables of one activation row: tab[n * 16 + b] = partial sum of nibble value b over the inputs of nibble n.
// Inputs past K read as 0, so the padding bits of the last byte contribute nothing whatever they hold.
template <int MODE>
void build_tables(const float* x, int64_t K, int64_t NG, float* tab) {
  constexpr int G = MODE == kSign ? 4 : 2;
  __m512 s[G];
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
  for (int j = 0; j < G; ++j) s[j] = _mm512_load_ps(lanes[j]);
  const int64_t full = std::min(NG, K / G);
  for (int64_t n = 0; n < NG; ++n) {
    float v[G];
    if (n < full) {
      for (int j = 0; j < G; ++j) v[j] = x[n * G + j];
    } else {
      for (int j = 0; j < G; ++j) v[j] = n * G + j < K ? x[n * G + j] : 0.0f;
    }
    // ±x_j are exact, so each lane is the sum of its (signed) inputs in the order j = 0, 1, ... (one rounding each).
    __m512 t = _mm512_mul_ps(s[0], _mm512_set1_ps(v[0]));
    for (int j = 1; j < G; ++j) t = _mm512_fmadd_ps(s[j], _mm512_set1_ps(v[j]), t);
    _mm512_storeu_ps(tab + n * 16, t);
  }
}

// MB activation rows x NB blocks of 16 output rows, bytes [k0, k1) of every row. acc starts at 0 (first chunk) or
// at the partial sums already in y.
template <int MB, int NB>
inline void lut_tile(const float* tab, int64_t tld, const uint8_t* wb, int64_t KB, int64_t k0, int64_t k1, float* y,
                     int64_t ldy, bool first) {
  __m512 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + m * ldy + b * kBlock);
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
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(y + m * ldy + b * kBlock, acc[m][b]);
}

// Rows [n0, n0 + MB) x blocks [ob0, ob1). K is walked in chunks of kChunk bytes so that the MB rows' tables for the
// chunk (MB * kChunk * 128 bytes) stay in L1 while every block of the range streams its weights past them.
// Tiles: 8 rows x 2 blocks (16 accumulators) where 8 rows are left, else MB x 4 blocks: measured 10-20% faster at
// M = 16-40 than 4 x 4 on Zen 5, the same at M <= 8.
template <int MB, int NB = 4>
void lut_rows(const float* tab, int64_t tld, const uint8_t* wb, int64_t KB, int64_t n0, int64_t ob0, int64_t ob1,
              float* y, int64_t ldy) {
  constexpr int64_t kChunk = 32;
  for (int64_t k0 = 0; k0 < KB; k0 += kChunk) {
    const int64_t k1 = std::min(KB, k0 + kChunk);
    int64_t ob = ob0;
    const float* t = tab + n0 * tld;
    float* yr = y + n0 * ldy;
    for (; ob + NB <= ob1; ob += NB)
      lut_tile<MB, NB>(t, tld, wb + ob * KB * kBlock, KB, k0, k1, yr + ob * kBlock, ldy, k0 == 0);
    for (; ob < ob1; ++ob) lut_tile<MB, 1>(t, tld, wb + ob * KB * kBlock, KB, k0, k1, yr + ob * kBlock, ldy, k0 == 0);
  }
}

// y (N, OB * 16) = x (N, K) times the prepacked rows. Returns the padded-width result.
template <int MODE>
torch::Tensor lut_matmul_2d(const torch::Tensor& x, const torch::Tensor& pre, int64_t K) {
  const int64_t N = x.size(0), OB = pre.size(0), KB = pre.size(1), NG = 2 * KB, OP = OB * kBlock;
  auto y = torch::empty({N, OP}, x.options());
  if (N == 0 || OB == 0) return y;
  auto tab_t = torch::empty({N, NG * 16}, x.options());
  const float* xp = x.data_ptr<float>();
  float* tab = tab_t.data_ptr<float>();
  const int64_t ldx = x.stride(0), tld = NG * 16;
  at::parallel_for(0, N, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, K)), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) build_tables<MODE>(xp + n * ldx, K, NG, tab + n * tld);
  });
  const uint8_t* wb = pre.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  // Split blocks so a thread gets at least ~256K table lookups' worth of work (small layers stay serial).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, N * NG * kBlock));
  at::parallel_for(0, OB, grain, [&](int64_t ob0, int64_t ob1) {
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) lut_rows<8, 2>(tab, tld, wb, KB, n, ob0, ob1, yp, OP);
    for (; n + 4 <= N; n += 4) lut_rows<4>(tab, tld, wb, KB, n, ob0, ob1, yp, OP);
    for (; n + 2 <= N; n += 2) lut_rows<2>(tab, tld, wb, KB, n, ob0, ob1, yp, OP);
    for (; n < N; ++n) lut_rows<1>(tab, tld, wb, KB, n, ob0, ob1, yp, OP);
  });
  return y;
}
#endif

// x (..., K) -> fp32 (N, K) with unit stride in K.
torch::Tensor as_rows(const torch::Tensor& x_in, int64_t K) {
  TORCH_CHECK(x_in.device().is_cpu(), "packed matmul kernel is CPU-only");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) == K, "x must have ", K, " features in its last dim");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "x must be floating point");
  torch::Tensor x = x_in.reshape({-1, K}).to(torch::kFloat32);
  return x.stride(1) == 1 ? x : x.contiguous();
}

// fp32 (N, O') result with O' >= O columns (padding of the LUT path) for rows x (N, K).
template <int MODE>
torch::Tensor matmul_rows(const torch::Tensor& x, const torch::Tensor& packed, const c10::optional<torch::Tensor>& pre,
                          int64_t K) {
  const int per_byte = MODE == kSign ? 8 : 4;
  const int64_t KB = (K + per_byte - 1) / per_byte;
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == torch::kUInt8, "packed must be a 2-D uint8 tensor");
  TORCH_CHECK(packed.size(1) == KB, "packed rows hold ", packed.size(1), " bytes, expected ", KB, " for ", K,
              " features");
#if defined(__AVX512F__)
  if (pre.has_value() && pre->defined()) {
    const int64_t O = packed.size(0);
    TORCH_CHECK(pre->dim() == 3 && pre->scalar_type() == torch::kUInt8 && pre->is_contiguous() &&
                    pre->size(0) == (O + kBlock - 1) / kBlock && pre->size(1) == KB && pre->size(2) == kBlock,
                "prepacked weight does not match the packed one (", O, " rows of ", KB, " bytes)");
    return lut_matmul_2d<MODE>(x, *pre, K);
  }
#endif
  (void)pre;
  return packed_matmul<MODE>(x, packed, K);
}

torch::Tensor finish_shape(torch::Tensor y, const torch::Tensor& x_in, int64_t O) {
  if (y.size(1) != O) y = y.narrow(1, 0, O);
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end() - 1);
  shape.push_back(O);
  return y.reshape(shape).to(x_in.scalar_type());
}

template <int MODE>
torch::Tensor matmul_entry(const torch::Tensor& x_in, const torch::Tensor& packed, int64_t K,
                           const c10::optional<torch::Tensor>& pre) {
  return finish_shape(matmul_rows<MODE>(as_rows(x_in, K), packed, pre, K), x_in, packed.size(0));
}

// Per-token absmax fake quantization of one row, the exact fp32 arithmetic of common._per_token_quant:
// scale = qmax / max(max|v|, eps), round half to even, divide back.
inline void quant_row(float* row, int64_t n, float qmax, float eps) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(row[i]));
  const float scale = qmax / std::max(m, eps);
  for (int64_t i = 0; i < n; ++i) row[i] = std::nearbyint(row[i] * scale) / scale;
}

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
// At batch 1 the ~10 small torch ops of the Python epilogue cost more than the matmul itself; here they are one
// pass per row. The per-token quantizer repeats fake_quant_per_token's fp32 arithmetic, so results match the
// Python path bit for bit given the same z.
torch::Tensor svcd_forward(const torch::Tensor& x, const torch::Tensor& ln_weight, const torch::Tensor& ln_bias,
                           double ln_eps, const torch::Tensor& signs, const c10::optional<torch::Tensor>& bias,
                           const torch::Tensor& h, bool per_token, double act_eps,
                           const c10::optional<torch::Tensor>& prepacked) {
  const int64_t K = x.size(-1), O = signs.size(0);
  const auto f32 = torch::kFloat32;
  torch::Tensor u = at::layer_norm(as_rows(x, K), {K}, ln_weight.to(f32), ln_bias.to(f32), ln_eps);
  torch::Tensor y = matmul_rows<kSign>(u, signs, prepacked, K);
  const int64_t N = y.size(0), ldy = y.size(1);
  torch::Tensor hf = h.to(f32).contiguous();
  torch::Tensor bf = bias.has_value() && bias->defined() ? bias->to(f32).contiguous() : torch::Tensor();
  const float* hp = hf.data_ptr<float>();
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    float* row = yp + n * ldy;
    if (bp)
      for (int64_t o = 0; o < O; ++o) row[o] += bp[o];
    if (per_token) quant_row(row, O, 127.0f, static_cast<float>(act_eps));
    for (int64_t o = 0; o < O; ++o) row[o] *= hp[o];
  }
  return finish_shape(y, x, O);
}

// BitNet b1 / b1.58 inference forward in one call: normalize (LayerNorm without affine, or RMSNorm), per-token
// act_bits fake quantization (act_bits = 0: none), packed matmul (signs or ternary codes), times the scale of each
// output row's group (groups as common.row_group_ids: O // G rows each, the last takes the remainder), + bias.
torch::Tensor normquant_forward(const torch::Tensor& x, bool rms, double norm_eps, int64_t act_bits, double act_eps,
                                const torch::Tensor& packed, bool ternary, const torch::Tensor& scales,
                                const c10::optional<torch::Tensor>& bias,
                                const c10::optional<torch::Tensor>& prepacked) {
  const int64_t K = x.size(-1), O = packed.size(0), G = scales.numel();
  TORCH_CHECK(G >= 1 && G <= std::max<int64_t>(O, 1), "scales must hold 1..out_features group scales, got ", G);
  TORCH_CHECK(act_bits == 0 || act_bits >= 2, "act_bits must be 0 (no quantization) or >= 2, got ", act_bits);
  torch::Tensor xr = as_rows(x, K);
  torch::Tensor u = rms ? at::rms_norm(xr, {K}, c10::nullopt, norm_eps) : at::layer_norm(xr, {K}, {}, {}, norm_eps);
  u = u.contiguous();
  if (act_bits) {
    const float qmax = static_cast<float>((int64_t{1} << (act_bits - 1)) - 1);
    float* up = u.data_ptr<float>();
    for (int64_t n = 0; n < u.size(0); ++n) quant_row(up + n * K, K, qmax, static_cast<float>(act_eps));
  }
  torch::Tensor y = ternary ? matmul_rows<kTernary>(u, packed, prepacked, K) : matmul_rows<kSign>(u, packed, prepacked, K);
  const int64_t N = y.size(0), ldy = y.size(1), size = std::max<int64_t>(1, O / G);
  torch::Tensor sf = scales.to(torch::kFloat32).contiguous();
  torch::Tensor bf = bias.has_value() && bias->defined() ? bias->to(torch::kFloat32).contiguous() : torch::Tensor();
  const float* sp = sf.data_ptr<float>();
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    float* row = yp + n * ldy;
    for (int64_t o = 0; o < O; ++o) {
      const float v = row[o] * sp[std::min(o / size, G - 1)];
      row[o] = bp ? v + bp[o] : v;
    }
  }
  return finish_shape(y, x, O);
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
  m.def("lut_supported", &lut_supported, "whether this build has the lookup-table (AVX-512) kernel");
  m.def("isa", &isa, "instruction set the kernel was compiled for");
}
