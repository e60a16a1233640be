// The coordinatewise LSTM rule (learned_torch_optim.network.CoordinatewiseLSTM.forward) for m coordinates on the
// CPU, fused: preprocessing, every layer (gate product, activations, cell update) and the read-out are computed
// for a tile of R coordinates while they sit in registers and L1, and the new state is written in place.
//
// Built at first use by learned_torch_optim/kernels/native.py with the network's shape as compile-time constants:
//   LTO_HIDDEN (H), LTO_LAYERS (L >= 1), LTO_INPUTS (1: identity, 2: log/sign preprocessing)
// and -march=native; it uses GCC/Clang vector extensions (intrinsics only for a broadcast and the reciprocal
// estimate), and no torch headers.
//
// Math per coordinate (gate order i, f, o, g of the packed weights; see NativeKernel.pack in native.py):
//   G = b + [x, h_l] @ Wt_l          Wt_l is (in_l + H, GP): the transposed [W_ih, W_hh], g columns doubled,
//                                     padded with zero columns to GP = a multiple of the vector width
//   s = sigmoid(G)                   so that tanh(g) = 2 * sigmoid(2 g) - 1 comes out of the same pass
//   c = s_f * c + s_i * (2 s_g - 1);  h = s_o * (2 sigmoid(2 c) - 1)
//   u = output_scale * (w . h_L + b)
// sigmoid(x) = 1 / (1 + exp(-x)) with exp from the Cephes single-precision polynomial (about 1 ulp), log likewise.

#include <cmath>
#include <cstdint>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <cstring>
#include <thread>
#include <vector>

#ifndef LTO_HIDDEN
#error "LTO_HIDDEN must be defined"
#endif

constexpr int H = LTO_HIDDEN;
constexpr int L = LTO_LAYERS;
constexpr int NI = LTO_INPUTS;
constexpr int S = 2 * H * L;  // state floats per coordinate

#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int NREG = 32;
#elif defined(__AVX__)
constexpr int VL = 8;
constexpr int NREG = 16;
#else
constexpr int VL = 4;
constexpr int NREG = 16;
#endif

typedef float vf __attribute__((vector_size(VL * 4), aligned(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));  // unaligned access

constexpr int round_up(int n) { return (n + VL - 1) / VL * VL; }
constexpr int GP = round_up(4 * H);         // gate columns, padded
constexpr int NV = GP / VL;                 // vectors per gate row
constexpr int R = (3 * NREG / 4) / NV > 0 ? (3 * NREG / 4) / NV : 1;  // rows per tile (accumulators in registers)
constexpr int KMAX = (NI > H ? NI : H) + H;  // widest layer input
constexpr int HP = round_up(R * H);         // tanh(c) of a tile, padded

static inline vf splat(float x) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(x);
#elif defined(__AVX__)
    return (vf)_mm256_set1_ps(x);
#else
    vf v = {};
    return v + x;
#endif
}

static inline vf vexp(vf x) {
    x = x < splat(-87.0f) ? splat(-87.0f) : x;
    x = x > splat(88.0f) ? splat(88.0f) : x;
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
    vf t = x * 1.44269504088896341f + magic;
    vf n = t - magic;
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi bits = ((vi)t - 0x4B400000 + 127) << 23;
    return p * (vf)bits;
}

// 1 / d for d >= 1: the hardware reciprocal estimate and one Newton step (about 1 ulp) where there is one.
static inline vf vreciprocal(vf d) {
#if defined(__AVX512F__)
    vf r = (vf)_mm512_rcp14_ps((__m512)d);
#elif defined(__AVX__)
    vf r = (vf)_mm256_rcp_ps((__m256)d);
#else
    vf r = 1.0f / d;
    return r;
#endif
    return r * (2.0f - d * r);
}

static inline vf vsigmoid(vf x) { return vreciprocal(1.0f + vexp(-x)); }

// Natural log of x > 0 (normal numbers), Cephes logf.
static inline vf vlog(vf x) {
    vi bits = (vi)x;
    vf e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, vf);
    vf m = (vf)((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
    vi small = m < splat(0.707106781186547524f);
    e = e - (vf)((vi)splat(1.0f) & small);
    m = m + (vf)((vi)m & small) - 1.0f;
    vf z = m * m;
    vf y = splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y = y + e * -2.12194440e-4f;
    y = y - 0.5f * z;
    return m + y + e * 0.693359375f;
}

struct Args {
    const float* grad;     // (m,)
    float* state;          // (m, S) with row stride ld
    int64_t ld;
    float* update;         // (m,)
    const float* weights;  // per layer: Wt (in_l + H, GP) then bias (GP); then readout w (H), readout b (1)
    float p;               // preprocessing constant (log/sign only)
    float output_scale;
    float threshold;       // e^-p
    float inverse;         // e^p
};

// Preprocessed gradients of VL coordinates starting at grad, as NI feature vectors.
static inline void features(const float* grad, int count, const Args& a, vf* out) {
    alignas(64) float g[VL] = {};
    std::memcpy(g, grad, sizeof(float) * count);
    vf x = *(const vf*)g;
    if constexpr (NI == 1) {
        out[0] = x;
    } else {
        vf magnitude = x < splat(0.0f) ? -x : x;
        vi large = magnitude >= splat(a.threshold);
        vf clamped = large ? magnitude : splat(a.threshold);
        vf log_part = vlog(clamped) / a.p;
        vf sign = x > splat(0.0f) ? splat(1.0f) : (x < splat(0.0f) ? splat(-1.0f) : splat(0.0f));
        out[0] = large ? log_part : splat(-1.0f);
        out[1] = large ? sign : x * a.inverse;
    }
}

// One layer for a tile of `rows` <= R coordinates.  xin[r] holds [x, h_old] (K floats); writes c and h of the
// layer into the state rows and h into next[r] (the next layer's input) when next is not null.
template <int K>
static inline void layer_tile(const float* wt, const float* bias, float (*xin)[KMAX], float* const* st, int hoff,
                              int rows, float (*next)[KMAX]) {
    vf acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = *(const vf*)(bias + v * VL);
    for (int k = 0; k < K; ++k) {
        vf w[NV];
        for (int v = 0; v < NV; ++v) w[v] = *(const vf*)(wt + k * GP + v * VL);
        for (int r = 0; r < R; ++r) {
            vf x = splat(xin[r][k]);
            for (int v = 0; v < NV; ++v) acc[r][v] += x * w[v];
        }
    }
    alignas(64) float gates[R][GP];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) *(vf*)(&gates[r][v * VL]) = vsigmoid(acc[r][v]);
    alignas(64) float tc[HP] = {};
    for (int r = 0; r < rows; ++r) {
        float* c = st[r] + hoff + H;
        for (int j = 0; j < H; ++j) {
            float cn = gates[r][H + j] * c[j] + gates[r][j] * (2.0f * gates[r][3 * H + j] - 1.0f);
            c[j] = cn;
            tc[r * H + j] = 2.0f * cn;
        }
    }
    for (int v = 0; v < HP / VL; ++v) *(vf*)(tc + v * VL) = vsigmoid(*(const vf*)(tc + v * VL));
    for (int r = 0; r < rows; ++r) {
        float* h = st[r] + hoff;
        for (int j = 0; j < H; ++j) {
            float hn = gates[r][2 * H + j] * (2.0f * tc[r * H + j] - 1.0f);
            h[j] = hn;
            if (next) next[r][j] = hn;
        }
    }
}

static void rows_range(const Args& a, int64_t begin, int64_t end) {
    const float* readout = a.weights;
    for (int l = 0; l < L; ++l) readout += ((l == 0 ? NI : H) + H) * GP + GP;
    alignas(64) float xin[R][KMAX];
    alignas(64) float nxt[R][KMAX] = {};
    for (int64_t base = begin; base < end; base += VL) {
        const int count = (int)(end - base < VL ? end - base : VL);
        vf feat[NI];
        features(a.grad + base, count, a, feat);
        alignas(64) float fbuf[NI][VL];
        for (int i = 0; i < NI; ++i) *(vf*)fbuf[i] = feat[i];
        for (int t = 0; t < count; t += R) {
            const int rows = count - t < R ? count - t : R;
            float* st[R];
            for (int r = 0; r < R; ++r) st[r] = a.state + (base + t + (r < rows ? r : 0)) * a.ld;
            for (int r = 0; r < R; ++r) {
                for (int i = 0; i < NI; ++i) xin[r][i] = r < rows ? fbuf[i][t + r] : 0.0f;
                std::memcpy(&xin[r][NI], st[r], sizeof(float) * H);
            }
            // Layer 0 reads [x, h_0] from xin; layer l > 0 reads [h_{l-1}, h_l] from nxt, and writes its new h
            // into the first half of nxt (its product is complete before any output is written).
            const float* w = a.weights;
            for (int l = 0; l < L; ++l) {
                float(*dst)[KMAX] = l + 1 < L ? nxt : nullptr;
                if (l == 0) {
                    layer_tile<NI + H>(w, w + (NI + H) * GP, xin, st, 0, rows, dst);
                    w += (NI + H) * GP + GP;
                } else {
                    for (int r = 0; r < R; ++r) std::memcpy(&nxt[r][H], st[r] + 2 * l * H, sizeof(float) * H);
                    layer_tile<2 * H>(w, w + 2 * H * GP, nxt, st, 2 * l * H, rows, dst);
                    w += 2 * H * GP + GP;
                }
            }
            for (int r = 0; r < rows; ++r) {
                const float* h = st[r] + 2 * (L - 1) * H;
                float sum = 0.0f;
                for (int j = 0; j < H; ++j) sum += readout[j] * h[j];
                a.update[base + t + r] = a.output_scale * (sum + readout[H]);
            }
        }
    }
}

extern "C" {

int lto_abi_version() { return 2; }

int lto_config(int* hidden, int* layers, int* inputs, int* padded_gates) {
    *hidden = H;
    *layers = L;
    *inputs = NI;
    *padded_gates = GP;
    return VL;
}

// update[k] = output_scale * (w . h_L + b) for coordinates k < m; state rows updated in place.
// p, e^-p and e^p are passed as the fp32 numbers torch uses for them in CoordinatewiseLSTM.features.
void lto_lstm_rows(int64_t m, int threads, const float* grad, float* state, int64_t ld, float* update,
                   const float* weights, float p, float threshold, float inverse, float output_scale) {
    Args a{grad, state, ld, update, weights, p, output_scale, threshold, inverse};
    constexpr int64_t MIN_ROWS_PER_THREAD = 2048;  // a thread's start costs about as much as ~100 rows
    int64_t chunks = (m + VL - 1) / VL;
    int64_t most = m / MIN_ROWS_PER_THREAD;
    int n = threads < 1 ? 1 : threads;
    if (n > most) n = (int)(most > 0 ? most : 1);
    if (n == 1) {
        rows_range(a, 0, m);
        return;
    }
    std::vector<std::thread> pool;
    int64_t per = (chunks + n - 1) / n * VL;
    for (int i = 1; i < n; ++i) {
        int64_t b = i * per, e = b + per < m ? b + per : m;
        if (b < e) pool.emplace_back(rows_range, std::cref(a), b, e);
    }
    rows_range(a, 0, per < m ? per : m);
    for (auto& t : pool) t.join();
}
}
