// Fused CPU inference kernel for a reparameterized XSepConv and the norm + activation after it.
//
// The op's contract (arguments, layouts, variants) is documented in xsep_zoo/fused.py. A work item is
// one image (or, at small batch, a group of its channels or a band of its rows). It streams through the
// rows: an input row is copied once into a zero-padded buffer, each stage's rows are computed once into
// small ring buffers (a few rows, in L1/L2), and each output row is written once. Channels are processed
// 16 at a time (one vector); the padded buffers make every stage a branch-free sum of shifted rows, so
// boundaries, odd sizes and a channel tail need no special case beyond the copy in and out.
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

namespace {

#define XS_INLINE inline __attribute__((always_inline))

constexpr int L = 16;      // channels per vector: one 64-byte cache line of fp32
constexpr int kMaxK = 31;  // largest separated kernel

typedef float vec __attribute__((vector_size(L * sizeof(float))));
typedef float uvec __attribute__((vector_size(L * sizeof(float)), aligned(alignof(float))));

XS_INLINE vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
XS_INLINE void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
XS_INLINE vec splat(float a) { return vec{} + a; }

enum Act : int { kIdentity = 0, kRelu = 1, kHardswish = 2 };
enum Variant : int { kStandard = 0, kNo2x2 = 1, kBehind = 2, kParallel = 3 };

#if defined(__AVX512F__)
// max(a, b) and min(a, b) that return b where either is NaN, as maxps and minps do
XS_INLINE vec vmax(vec a, vec b) { return (vec)_mm512_max_ps((__m512)a, (__m512)b); }
XS_INLINE vec vmin(vec a, vec b) { return (vec)_mm512_min_ps((__m512)a, (__m512)b); }
#else
XS_INLINE vec vmax(vec a, vec b) { return a > b ? a : b; }
XS_INLINE vec vmin(vec a, vec b) { return a < b ? a : b; }
#endif

// relu keeps NaN as torch's does; hardswish is torch's x * min(max(x + 3, 0), 6) / 6 written as
// x * min(max(x / 6 + 1/2, 0), 1): four vector ops, within a few ulps of torch.
template <int A>
XS_INLINE vec act(vec x) {
  if constexpr (A == kRelu) {
    return vmax(vec{}, x);
  } else if constexpr (A == kHardswish) {
    const vec t = x * splat(1.f / 6.f) + splat(0.5f);
    return x * vmin(splat(1.f), vmax(vec{}, t));
  } else {
    return x;
  }
}

// calls f(std::integral_constant<int, A>()) for the activation code a: one instantiation per activation
template <typename F>
inline void with_act(int a, F&& f) {
  switch (a) {
    case kRelu: f(std::integral_constant<int, kRelu>()); break;
    case kHardswish: f(std::integral_constant<int, kHardswish>()); break;
    default: f(std::integral_constant<int, kIdentity>()); break;
  }
}

// What follows the last stage's sum before the block's activation: (y + add) * scale + shift, each part
// optional (add: the 3x3 branch of 'parallel'; scale, shift: the block's BN where it was not folded).
struct Epilogue {
  const float* add = nullptr;
  const vec* scale = nullptr;
  const vec* shift = nullptr;
};

template <bool POST>
XS_INLINE vec finish(vec a, const Epilogue& e, int64_t i) {
  if constexpr (POST) {
    if (e.add) a += load(e.add + i * L);
    if (e.scale) a = a * *e.scale + *e.shift;
  }
  return a;
}

// out[i * os] = act(b + sum_t w[t] * src[t][i]) for i < n: one row of 16 channels of a depthwise conv whose
// taps' input rows are passed pre-offset (pixels 16 floats apart). Four outputs at a time, the weights in
// registers. NT = 0: `nt` taps at runtime.
template <int NT, int A, bool POST>
inline void taps_row(const float* const* src, int nt, float* out, int64_t os, int64_t n, const float* w, vec b,
                     const Epilogue& e) {
  constexpr int M = NT ? NT : kMaxK;
  const int taps = NT ? NT : nt;
  vec wv[M];
  const float* s[M];
  for (int t = 0; t < taps; ++t) {
    wv[t] = load(w + t * L);
    s[t] = src[t];
  }
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    vec a0 = b, a1 = b, a2 = b, a3 = b;
    for (int t = 0; t < taps; ++t) {
      const float* p = s[t] + i * L;
      a0 += wv[t] * load(p);
      a1 += wv[t] * load(p + L);
      a2 += wv[t] * load(p + 2 * L);
      a3 += wv[t] * load(p + 3 * L);
    }
    store(out + i * os, act<A>(finish<POST>(a0, e, i)));
    store(out + (i + 1) * os, act<A>(finish<POST>(a1, e, i + 1)));
    store(out + (i + 2) * os, act<A>(finish<POST>(a2, e, i + 2)));
    store(out + (i + 3) * os, act<A>(finish<POST>(a3, e, i + 3)));
  }
  for (; i < n; ++i) {
    vec a = b;
    for (int t = 0; t < taps; ++t) a += wv[t] * load(s[t] + i * L);
    store(out + i * os, act<A>(finish<POST>(a, e, i)));
  }
}

// The 3x3 conv whose only nonzero taps are a 2x2 corner: rows r0, r1 and the taps w (3x3, 16 floats a tap)
// start at the corner's top-left tap. Neighbouring outputs share half of their loads.
template <int A, bool POST>
inline void corner_row(const float* r0, const float* r1, float* out, int64_t os, int64_t n, const float* w,
                       vec b, const Epilogue& e) {
  const vec w00 = load(w), w01 = load(w + L), w10 = load(w + 3 * L), w11 = load(w + 4 * L);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    vec t0 = load(r0 + i * L), u0 = load(r1 + i * L), a[4];
    for (int j = 0; j < 4; ++j) {
      const vec t1 = load(r0 + (i + j + 1) * L), u1 = load(r1 + (i + j + 1) * L);
      a[j] = b + w00 * t0 + w01 * t1 + w10 * u0 + w11 * u1;
      t0 = t1;
      u0 = u1;
    }
    for (int j = 0; j < 4; ++j) store(out + (i + j) * os, act<A>(finish<POST>(a[j], e, i + j)));
  }
  for (; i < n; ++i) {
    const float* p0 = r0 + i * L;
    const float* p1 = r1 + i * L;
    const vec a = b + w00 * load(p0) + w01 * load(p0 + L) + w10 * load(p1) + w11 * load(p1 + L);
    store(out + i * os, act<A>(finish<POST>(a, e, i)));
  }
}

// out[i] = act(b + sum_t w[t] * in[i * S + t]) for i < n: a 1 x k row (`in` starts at the left padding).
// Four outputs at a time share their overlapping input loads.
template <int K, int S, int A>
inline void row_1xk(const float* in, int k, float* out, int64_t n, const float* w, vec b) {
  constexpr int M = K ? K : kMaxK;
  const int kk = K ? K : k;
  vec wv[M];
  for (int t = 0; t < kk; ++t) wv[t] = load(w + t * L);
  int64_t i = 0;
  if constexpr (K != 0) {
    for (; i + 4 <= n; i += 4) {
      const float* p = in + i * S * L;
      vec a[4] = {b, b, b, b};
      for (int j = 0; j < 4; ++j)
        for (int t = 0; t < K; ++t) a[j] += wv[t] * load(p + (j * S + t) * L);
      for (int j = 0; j < 4; ++j) store(out + (i + j) * L, act<A>(a[j]));
    }
  }
  for (; i < n; ++i) {
    const float* p = in + i * S * L;
    vec a = b;
    for (int t = 0; t < kk; ++t) a += wv[t] * load(p + t * L);
    store(out + i * L, act<A>(a));
  }
}

struct Spec {
  const float* x;
  float* y;
  int64_t N, C, H, W, Ho, Wo;
  int64_t xn, xc, xh, xw, yn, yc, yh, yw;  // strides
  int k, s, p, variant;
  const float *w3, *b3, *w1, *b1, *wk, *bk, *scale, *shift;  // packed weights; nullptr where absent
  int act, act_out;
};

// One chunk of 16 channels: where its weights are, and its biases as vectors. The 3x3 conv holds a 2x2
// kernel in one corner: only those 4 taps run where the whole chunk uses one corner (always, except where
// Wu's symmetric padding groups meet inside the chunk).
struct ChunkWeights {
  int cl = 0;                 // channels in the chunk
  int corner = -1;            // the top-left tap of the 2x2 corner holding every nonzero 3x3 tap; -1: all 9
  const float *w3, *w1, *wk;  // 9, k and k taps of 16 floats
  vec b3, b1, bk, scale, shift;
};

inline vec load_part(const float* p, int n) {
  if (n == L) return load(p);
  alignas(64) float t[L] = {};
  std::memcpy(t, p, n * sizeof(float));
  return load(t);
}

inline bool any_nonzero(vec v) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)v, _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0;
#else
  for (int l = 0; l < L; ++l)
    if (v[l] != 0.f) return true;
  return false;
#endif
}

ChunkWeights chunk_weights(const Spec& sp, int64_t q) {
  ChunkWeights cw;
  cw.cl = static_cast<int>(std::min<int64_t>(L, sp.C - q * L));
  auto bias = [&](const float* b) { return b ? load(b + q * L) : vec{}; };
  cw.w3 = sp.w3 ? sp.w3 + q * 9 * L : nullptr;
  cw.w1 = sp.w1 + q * sp.k * L;
  cw.wk = sp.wk + q * sp.k * L;
  cw.b3 = bias(sp.b3);
  cw.b1 = bias(sp.b1);
  cw.bk = bias(sp.bk);
  cw.scale = bias(sp.scale);
  cw.shift = bias(sp.shift);
  if (!cw.w3) return cw;
  int used = 0;  // bit t: tap t is nonzero for some channel of the chunk
  for (int t = 0; t < 9; ++t)
    if (any_nonzero(load(cw.w3 + t * L))) used |= 1 << t;
  for (const int t0 : {0, 1, 3, 4})
    if ((used & ~(0x1b << t0)) == 0) {  // 0x1b: taps 0, 1, 3, 4 of a 3x3 kernel
      cw.corner = t0;
      break;
    }
  return cw;
}

// Per-thread rows for a group of chunks, chunk-major: chunk q's part of a row is `pixels * 16` contiguous
// floats on a 64-byte boundary. Padding columns are zeroed here and stay zero: only the interior of a row is
// ever written. The rest is not initialized (a tail chunk's unused lanes are zeroed when a row is read in).
struct Workspace {
  std::unique_ptr<float[]> mem;
  const float* zero;       // zeros as long as any row of the group: the rows outside the image
  int nx, nb;
  int64_t xw, bw, cw, tw;  // floats per chunk of an input / 1xk / kx1 ('behind') / 3x3-branch row
  float* xr[kMaxK + 2];    // input rows, padded by p columns each side
  float* ar;               // 3x3 stage row of one chunk ('standard'), padded by p
  float* br[kMaxK];        // 1 x k stage rows
  float* cr[3];            // k x 1 stage rows ('behind'), padded by 1
  float* tr;               // 3x3 branch row ('parallel')
  float* orow;             // output row, for chunks not written straight into the output
  int64_t xt[kMaxK + 2], bt[kMaxK], ct[3];  // the row each slot holds

  Workspace(const Spec& sp, int64_t chunks)
      : nx(sp.variant == kParallel ? sp.k + 2 : 3), nb(sp.k),
        xw((sp.W + 2 * sp.p) * L), bw(sp.Wo * L), cw((sp.Wo + 2) * L), tw(sp.W * L) {
    const int64_t zw = chunks * std::max({xw, bw, cw});
    const bool behind = sp.variant == kBehind, parallel = sp.variant == kParallel;
    const int64_t size = zw + chunks * (nx * xw + nb * bw + (behind ? 3 * cw : 0) + (parallel ? tw : 0) + bw) + xw;
    mem.reset(new float[size + L]);
    float* m = mem.get();
    m += (L - (reinterpret_cast<uintptr_t>(m) / sizeof(float)) % L) % L;  // 64-byte alignment
    zero = m;
    std::fill(m, m + zw, 0.f);
    m += zw;
    const int64_t xpad = sp.p * L, xin = sp.W * L;
    for (int i = 0; i < nx; ++i, m += chunks * xw) {
      xr[i] = m;
      for (int64_t q = 0; q < chunks; ++q) pad(m + q * xw, xpad, xin);
    }
    ar = m;
    pad(ar, xpad, xin);
    m += xw;
    for (int i = 0; i < nb; ++i, m += chunks * bw) br[i] = m;
    for (int i = 0; i < 3; ++i, m += behind ? chunks * cw : 0) {
      cr[i] = m;
      for (int64_t q = 0; behind && q < chunks; ++q) pad(m + q * cw, L, bw);
    }
    tr = m;
    m += parallel ? chunks * tw : 0;
    orow = m;
  }

  // zeros `width` floats on either side of `interior` floats, from `row`
  static void pad(float* row, int64_t width, int64_t interior) {
    std::fill(row, row + width, 0.f);
    std::fill(row + width + interior, row + 2 * width + interior, 0.f);
  }

  void reset() {
    std::fill(xt, xt + nx, std::numeric_limits<int64_t>::min());
    std::fill(bt, bt + nb, std::numeric_limits<int64_t>::min());
    std::fill(ct, ct + 3, std::numeric_limits<int64_t>::min());
  }
};

// One work item: image n, chunks [q0, q1) of 16 channels, output rows [oh0, oh1). A stage's row holds every
// chunk of the item, so the input and output are read and written along whole rows of pixels.
// K: kernel size (0: at runtime), S: stride, A: the layer's activation.
template <int K, int S, int A>
class Item {
 public:
  Item(const Spec& sp, Workspace& ws, const ChunkWeights* cw, int64_t n, int64_t q0, int64_t q1)
      : sp_(sp), ws_(ws), cw_(cw + q0), k_(K ? K : sp.k), nq_(q1 - q0),
        x_(sp.x + n * sp.xn + q0 * L * sp.xc), y_(sp.y + n * sp.yn + q0 * L * sp.yc) {}

  void run(int64_t oh0, int64_t oh1) {
    const bool parallel = sp_.variant == kParallel, behind = sp_.variant == kBehind;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      // the last stage's input rows: 'behind' ends on a 3x3 conv of k x 1 rows, the others on a k x 1 conv
      const float* rows[kMaxK];
      if (behind) {
        for (int dy = 0; dy < 3; ++dy) {
          const int64_t r = oh - 1 + dy;
          rows[dy] = (r >= 0 && r < sp_.Ho) ? c_row(r) : ws_.zero;
        }
      } else {
        if (parallel) branch_row(oh);
        for (int j = 0; j < k_; ++j) {
          const int64_t r = oh * S - sp_.p + j;
          rows[j] = (r >= 0 && r < sp_.H) ? b_row(r) : ws_.zero;
        }
      }
      // each chunk's output row with the block's norm and activation, straight into y where it is
      // channels last and the chunk whole, else through a row buffer
      float* y_row = y_ + oh * sp_.yh;
      bool staged = false;
      for (int64_t q = 0; q < nq_; ++q) {
        const ChunkWeights& w = cw_[q];
        const bool direct = sp_.yc == 1 && w.cl == L;
        float* out = direct ? y_row + q * L : ws_.orow + q * ws_.bw;
        const int64_t os = direct ? sp_.yw : L;
        staged |= !direct;
        Epilogue e;
        e.add = parallel ? ws_.tr + q * ws_.tw : nullptr;
        e.scale = sp_.scale ? &w.scale : nullptr;
        e.shift = &w.shift;
        const float* src[kMaxK];
        for (int j = 0; j < k_; ++j) src[j] = rows[j] + q * ws_.bw;
        const bool post = e.add || e.scale;  // else the block's BN is folded into the last conv
        with_act(sp_.act_out, [&](auto AO) {  // the block's activation
          constexpr int act_out = decltype(AO)::value;
          if (behind && post)
            conv3x3<act_out, true>(w, rows, q * ws_.cw, 0, out, os, sp_.Wo, e);
          else if (behind)
            conv3x3<act_out, false>(w, rows, q * ws_.cw, 0, out, os, sp_.Wo, e);
          else if (post)
            taps_row<K, act_out, true>(src, k_, out, os, sp_.Wo, w.wk, w.bk, e);
          else
            taps_row<K, act_out, false>(src, k_, out, os, sp_.Wo, w.wk, w.bk, e);
        });
      }
      if (staged) store_row(y_row);
    }
  }

 private:
  // the 3x3 conv (padding 1) of chunk rows rows[dy] + qoff, whose column 0 is at `offset` pixels
  template <int ACT, bool POST>
  void conv3x3(const ChunkWeights& w, const float* const* rows, int64_t qoff, int offset, float* out,
                         int64_t os, int64_t n, const Epilogue& e) {
    if (w.corner >= 0) {
      const int dy = w.corner / 3, dx = w.corner % 3;
      const float* r0 = rows[dy] + qoff + (dx + offset) * L;
      const float* r1 = rows[dy + 1] + qoff + (dx + offset) * L;
      corner_row<ACT, POST>(r0, r1, out, os, n, w.w3 + w.corner * L, w.b3, e);
    } else {
      const float* src[9];
      for (int t = 0; t < 9; ++t) src[t] = rows[t / 3] + qoff + (t % 3 + offset) * L;
      taps_row<9, ACT, POST>(src, 9, out, os, n, w.w3, w.b3, e);
    }
  }

  // input row r of every chunk, zero-padded by p columns; the zero row outside the image
  const float* x_row(int64_t r) {
    if (r < 0 || r >= sp_.H) return ws_.zero;
    const int slot = static_cast<int>(r % ws_.nx);
    float* dst = ws_.xr[slot];
    if (ws_.xt[slot] == r) return dst;
    ws_.xt[slot] = r;
    const float* src = x_ + r * sp_.xh;
    const int64_t W = sp_.W, xw = sp_.xw, xc = sp_.xc;
    for (int64_t q = 0; q < nq_; ++q) {
      const float* s = src + q * L * xc;
      float* d = dst + q * ws_.xw + sp_.p * L;
      const int cl = cw_[q].cl;
      if (xc == 1 && cl == L) {  // channels last: one vector a pixel
        for (int64_t w = 0; w < W; ++w) store(d + w * L, load(s + w * xw));
      } else if (xc == 1) {
        for (int64_t w = 0; w < W; ++w) store(d + w * L, load_part(s + w * xw, cl));
      } else {  // along each channel's row
        if (cl < L)
          for (int64_t w = 0; w < W; ++w) store(d + w * L, vec{});
        for (int l = 0; l < cl; ++l)
          for (int64_t w = 0; w < W; ++w) d[w * L + l] = s[l * xc + w * xw];
      }
    }
    return dst;
  }

  // 1 x k stage row r (inside the image) of every chunk: after the 3x3 stage for 'standard'
  const float* b_row(int64_t r) {
    const int slot = static_cast<int>(r % ws_.nb);
    float* dst = ws_.br[slot];
    if (ws_.bt[slot] == r) return dst;
    const bool standard = sp_.variant == kStandard;
    const float* rows[3] = {ws_.zero, x_row(r), ws_.zero};
    if (standard) {
      rows[0] = x_row(r - 1);
      rows[2] = x_row(r + 1);
    }
    for (int64_t q = 0; q < nq_; ++q) {
      const ChunkWeights& w = cw_[q];
      const float* in = rows[1] + q * ws_.xw;
      if (standard) {
        conv3x3<A, false>(w, rows, q * ws_.xw, sp_.p - 1, ws_.ar + sp_.p * L, L, sp_.W, Epilogue());
        in = ws_.ar;
      }
      row_1xk<K, S, A>(in, k_, dst + q * ws_.bw, sp_.Wo, w.w1, w.b1);
    }
    ws_.bt[slot] = r;
    return dst;
  }

  // k x 1 stage row r of 'behind' (before its 3x3 conv) of every chunk, padded by 1 column
  const float* c_row(int64_t r) {
    const int slot = static_cast<int>(r % 3);
    float* dst = ws_.cr[slot];
    if (ws_.ct[slot] == r) return dst;
    const float* rows[kMaxK];
    for (int j = 0; j < k_; ++j) {
      const int64_t rb = r * S - sp_.p + j;
      rows[j] = (rb >= 0 && rb < sp_.H) ? b_row(rb) : ws_.zero;
    }
    for (int64_t q = 0; q < nq_; ++q) {
      const float* src[kMaxK];
      for (int j = 0; j < k_; ++j) src[j] = rows[j] + q * ws_.bw;
      taps_row<K, A, false>(src, k_, dst + q * ws_.cw + L, L, sp_.Wo, cw_[q].wk, cw_[q].bk, Epilogue());
    }
    ws_.ct[slot] = r;
    return dst;
  }

  // the 3x3 branch of 'parallel' at row r, into the branch row
  void branch_row(int64_t r) {
    const float* rows[3] = {x_row(r - 1), x_row(r), x_row(r + 1)};
    for (int64_t q = 0; q < nq_; ++q)
      conv3x3<A, false>(cw_[q], rows, q * ws_.xw, sp_.p - 1, ws_.tr + q * ws_.tw, L, sp_.W, Epilogue());
  }

  // the staged chunks of the output row (the others were written in place)
  void store_row(float* dst) {
    const int64_t Wo = sp_.Wo, yw = sp_.yw, yc = sp_.yc;
    for (int64_t q = 0; q < nq_; ++q) {
      const float* s = ws_.orow + q * ws_.bw;
      float* d = dst + q * L * yc;
      const int cl = cw_[q].cl;
      if (yc == 1 && cl == L) continue;
      if (yc == 1) {
        for (int64_t w = 0; w < Wo; ++w)
          for (int l = 0; l < cl; ++l) d[w * yw + l] = s[w * L + l];
      } else {
        for (int l = 0; l < cl; ++l)
          for (int64_t w = 0; w < Wo; ++w) d[l * yc + w * yw] = s[w * L + l];
      }
    }
  }

  const Spec& sp_;
  Workspace& ws_;
  const ChunkWeights* cw_;
  const int k_;
  const int64_t nq_;
  const float* x_;
  float* y_;
};

template <int K, int S>
void run_item(const Spec& sp, Workspace& ws, const ChunkWeights* cw, int64_t n, int64_t q0, int64_t q1,
              int64_t oh0, int64_t oh1) {
  with_act(sp.act, [&](auto A) { Item<K, S, decltype(A)::value>(sp, ws, cw, n, q0, q1).run(oh0, oh1); });
}

template <int K>
void run_item(const Spec& sp, Workspace& ws, const ChunkWeights* cw, int64_t n, int64_t q0, int64_t q1,
              int64_t oh0, int64_t oh1) {
  if (sp.s == 1)
    run_item<K, 1>(sp, ws, cw, n, q0, q1, oh0, oh1);
  else
    run_item<K, 2>(sp, ws, cw, n, q0, q1, oh0, oh1);
}

int parse_act(std::string_view name, const char* what) {
  if (name == "identity") return kIdentity;
  if (name == "relu") return kRelu;
  if (name == "hardswish") return kHardswish;
  TORCH_CHECK(false, "fused_xsepconv: ", what, " must be 'identity', 'relu' or 'hardswish', got '", name, "'");
  return kIdentity;
}

// a weight in the op's layout: (chunks, taps, 16), or (chunks, 16) for taps == 0
const float* weight_ptr(const std::optional<at::Tensor>& t, int64_t taps, int64_t chunks, const char* what) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
              "fused_xsepconv: ", what, " must be a contiguous float32 CPU tensor");
  if (taps == 0) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == chunks && t->size(1) == L, "fused_xsepconv: ", what,
                " must have shape (", chunks, ", ", L, "), got ", t->sizes());
  } else {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == chunks && t->size(1) == taps && t->size(2) == L,
                "fused_xsepconv: ", what, " must have shape (", chunks, ", ", taps, ", ", L, "), got ", t->sizes());
  }
  return t->data_ptr<float>();
}

at::Tensor fused_xsepconv(const at::Tensor& x, std::string_view variant, int64_t stride,
                          const std::optional<at::Tensor>& w3, const std::optional<at::Tensor>& b3,
                          const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wk,
                          const std::optional<at::Tensor>& bk, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift, std::string_view act,
                          std::string_view act_out) {
  TORCH_CHECK(x.dim() == 4, "fused_xsepconv: expected a 4D input (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "fused_xsepconv: expected a float32 input, got ", x.scalar_type());
  int v = -1;
  if (variant == "standard") v = kStandard;
  if (variant == "no2x2") v = kNo2x2;
  if (variant == "behind") v = kBehind;
  if (variant == "parallel") v = kParallel;
  TORCH_CHECK(v >= 0, "fused_xsepconv: variant must be 'standard', 'no2x2', 'behind' or 'parallel', got '", variant,
              "'");
  TORCH_CHECK(stride == 1 || stride == 2, "fused_xsepconv: stride must be 1 or 2, got ", stride);
  TORCH_CHECK(v != kParallel || stride == 1, "fused_xsepconv: variant 'parallel' needs stride 1, got ", stride);
  TORCH_CHECK(w3.has_value() == (v != kNo2x2), "fused_xsepconv: variant '", variant, "' ",
              v == kNo2x2 ? "has no" : "needs a", " 3x3 weight w3");
  TORCH_CHECK(scale.has_value() == shift.has_value(), "fused_xsepconv: scale and shift go together");
  TORCH_CHECK(w1.dim() == 3, "fused_xsepconv: w1 must have shape (chunks, k, 16), got ", w1.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t k = w1.size(1), chunks = (C + L - 1) / L;
  TORCH_CHECK(k % 2 == 1 && k >= 3 && k <= kMaxK, "fused_xsepconv: kernel size must be odd, 3 to ", kMaxK,
              ", got ", k);
  TORCH_CHECK(H > 0 && W > 0, "fused_xsepconv: expected a non-empty image, got shape ", x.sizes());

  Spec sp{};
  sp.w1 = weight_ptr(w1, k, chunks, "w1");
  sp.wk = weight_ptr(wk, k, chunks, "wk");
  sp.b1 = weight_ptr(b1, 0, chunks, "b1");
  sp.w3 = weight_ptr(w3, 9, chunks, "w3");
  sp.b3 = weight_ptr(b3, 0, chunks, "b3");
  sp.bk = weight_ptr(bk, 0, chunks, "bk");
  sp.scale = weight_ptr(scale, 0, chunks, "scale");
  sp.shift = weight_ptr(shift, 0, chunks, "shift");
  sp.act = parse_act(act, "act");
  sp.act_out = parse_act(act_out, "act_out");

  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;

  sp.x = x.data_ptr<float>();
  sp.y = y.data_ptr<float>();
  sp.N = N; sp.C = C; sp.H = H; sp.W = W; sp.Ho = Ho; sp.Wo = Wo;
  sp.xn = x.stride(0); sp.xc = x.stride(1); sp.xh = x.stride(2); sp.xw = x.stride(3);
  sp.yn = y.stride(0); sp.yc = y.stride(1); sp.yh = y.stride(2); sp.yw = y.stride(3);
  sp.k = static_cast<int>(k);
  sp.s = static_cast<int>(stride);
  sp.p = static_cast<int>(k / 2);
  sp.variant = v;

  std::vector<ChunkWeights> cw(chunks);
  for (int64_t q = 0; q < chunks; ++q) cw[q] = chunk_weights(sp, q);

  // Items: (image, group of chunks, band of rows). Groups and then bands only where there are too few
  // images to keep every thread busy; a band recomputes the few rows of its halo, a group nothing.
  const int64_t threads = at::get_num_threads();
  const int64_t target = threads > 1 ? 4 * threads : 1;
  const int64_t groups = std::min(chunks, (target + N - 1) / N);
  const int64_t group_chunks = (chunks + groups - 1) / groups;
  const int64_t ngroups = (chunks + group_chunks - 1) / group_chunks;
  int64_t band_rows = Ho;
  if (N * ngroups < target) band_rows = (Ho + target / (N * ngroups) - 1) / (target / (N * ngroups));
  const int64_t bands = (Ho + band_rows - 1) / band_rows;
  const int64_t items = N * ngroups * bands;
  const int64_t taps = (v == kNo2x2 ? 0 : 4) + 2 * k;
  const int64_t item_cost = band_rows * Wo * group_chunks * taps;  // vector multiply-adds, roughly
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, item_cost));

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    Workspace ws(sp, group_chunks);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t band = i % bands, group = (i / bands) % ngroups, n = i / (bands * ngroups);
      const int64_t q0 = group * group_chunks, q1 = std::min(chunks, q0 + group_chunks);
      const int64_t oh0 = band * band_rows, oh1 = std::min(Ho, oh0 + band_rows);
      ws.reset();
      switch (sp.k) {
        case 3: run_item<3>(sp, ws, cw.data(), n, q0, q1, oh0, oh1); break;
        case 5: run_item<5>(sp, ws, cw.data(), n, q0, q1, oh0, oh1); break;
        case 7: run_item<7>(sp, ws, cw.data(), n, q0, q1, oh0, oh1); break;
        default: run_item<0>(sp, ws, cw.data(), n, q0, q1, oh0, oh1); break;
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(xsep_zoo, m) {
  m.def(
      "fused_xsepconv(Tensor x, str variant, int stride, Tensor? w3, Tensor? b3, Tensor w1, Tensor b1, "
      "Tensor wk, Tensor? bk, Tensor? scale, Tensor? shift, str act, str act_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(xsep_zoo, CPU, m) { m.impl("fused_xsepconv", &fused_xsepconv); }
