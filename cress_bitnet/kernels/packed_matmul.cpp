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

}  // namespace

torch::Tensor signed_matmul(const torch::Tensor& x, const torch::Tensor& packed, int64_t in_features) {
  return packed_matmul<kSign>(x, packed, in_features);
}

torch::Tensor ternary_matmul(const torch::Tensor& x, const torch::Tensor& packed, int64_t in_features) {
  return packed_matmul<kTernary>(x, packed, in_features);
}

// Whole SVCD inference forward in one call: y = Act(signs · LN'(x) + b) ⊙ h, LN' with g already folded in.
// At batch 1 the ~10 small torch ops of the Python epilogue cost more than the matmul itself; here they are one
// pass per row. The per-token quantizer repeats fake_quant_per_token's fp32 arithmetic (scale = 127 / max(max|z|,
// eps), round half to even, divide back), so results match the Python path bit for bit given the same z.
torch::Tensor svcd_forward(const torch::Tensor& x, const torch::Tensor& ln_weight, const torch::Tensor& ln_bias,
                           double ln_eps, const torch::Tensor& signs, const c10::optional<torch::Tensor>& bias,
                           const torch::Tensor& h, bool per_token, double act_eps) {
  const int64_t K = x.size(-1);
  const auto f32 = torch::kFloat32;
  torch::Tensor u = at::layer_norm(x.to(f32), {K}, ln_weight.to(f32), ln_bias.to(f32), ln_eps);
  torch::Tensor y = packed_matmul<kSign>(u, signs, K).contiguous();
  const int64_t O = signs.size(0), N = O ? y.numel() / O : 0;
  torch::Tensor hf = h.to(f32).contiguous();
  torch::Tensor bf = bias.has_value() ? bias->to(f32).contiguous() : torch::Tensor();
  const float* hp = hf.data_ptr<float>();
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const float qmax = 127.0f, eps = static_cast<float>(act_eps);
  for (int64_t n = 0; n < N; ++n) {
    float* row = yp + n * O;
    if (bp)
      for (int64_t o = 0; o < O; ++o) row[o] += bp[o];
    if (per_token) {
      float m = 0.0f;
      for (int64_t o = 0; o < O; ++o) m = std::max(m, std::fabs(row[o]));
      const float scale = qmax / std::max(m, eps);
      for (int64_t o = 0; o < O; ++o) row[o] = std::nearbyint(row[o] * scale) / scale;
    }
    for (int64_t o = 0; o < O; ++o) row[o] *= hp[o];
  }
  return y.to(x.scalar_type());
}

std::string isa() { return kIsa; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("signed_matmul", &signed_matmul, "x (..., K) @ packed ±1 rows (O, ceil(K/8)) -> (..., O), fp32 accumulation");
  m.def("ternary_matmul", &ternary_matmul, "x (..., K) @ packed ternary rows (O, ceil(K/4)) -> (..., O), fp32 accum.");
  m.def("svcd_forward", &svcd_forward, "fused PackedSVCDLinear forward (LayerNorm, sign matmul, bias, act, h)");
  m.def("isa", &isa, "instruction set the kernel was compiled for");
}
