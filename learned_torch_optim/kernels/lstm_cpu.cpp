// The coordinatewise LSTM rule (learned_torch_optim.network.CoordinatewiseLSTM.forward) for m coordinates on the
// CPU, fused: the inputs (preprocessing, gradient averages, step counts), every layer (gate product, activations,
// cell update) and the read-out are computed for a tile of R coordinates while they sit in registers and L1, and
// the new state is written in place.
//
// Built at first use by learned_torch_optim/kernels/native.py with the network's form as compile-time constants:
//   LTO_HIDDEN (H), LTO_LAYERS (L >= 1), LTO_PREPROCESSING (0 identity, 1 log/sign, 2 Adam-normalised),
//   LTO_MOMENTA (number of momentum decays), LTO_TIMESCALES (number of step timescales), LTO_READOUT_SKIP (0/1),
//   LTO_OUTPUTS (1 additive, 2 direction-magnitude), LTO_UPDATE_CLIP (0/1), LTO_RMS_CLIP (0/1)
// and -march=native; it uses GCC/Clang vector extensions (intrinsics only for a broadcast, a square root and the
// reciprocal estimate), and no torch headers.  The values of the options (decays, timescales, scales, clips) are
// passed at run time in `config` (layout: NativeKernel.pack in native.py).
//
// Math per coordinate, with t its step count (the last accumulator + 1):
//   g <- clip(g, +-k sqrt(v / (1 - b2^max(t-1,1))))   where v > 0         gradient RMS clip
//   m_j <- b_j m_j + (1 - b_j) g;  v <- b2 v + (1 - b2) g g              accumulators, in place in the state
//   values = [g, m_j / (1 - b_j^t)];  x = pre(values), tanh(t / tau)     inputs (pre: identity, log/sign, or
//                                                                         division by sqrt(v / (1 - b2^t)) + 1e-8)
//   G = b + [x, h_l] @ Wt_l          Wt_l is (in_l + H, GP): the transposed [W_ih, W_hh], gate order i, f, o, g,
//                                     g columns doubled, zero columns up to GP = a multiple of the vector width
//   s = sigmoid(G)                   so that tanh(g) = 2 * sigmoid(2 g) - 1 comes out of the same pass
//   c = s_f * c + s_i * (2 s_g - 1);  h = s_o * (2 sigmoid(2 c) - 1)
//   o = W_r [h_L, x if read-out skip] + b_r
//   u = output_scale * o_0 (* exp(magnitude_scale * o_1)), clipped to +-update_clip
// The powers b^t and tanh(t / tau) are computed in double once per distinct step count and rounded to fp32 (what
// torch's fp32 pow and tanh give to 1 ulp); sigmoid(x) = 1 / (1 + exp(-x)) with exp from the Cephes
// single-precision polynomial (about 1 ulp), log likewise.

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
constexpr int PRE = LTO_PREPROCESSING;
constexpr int NM = LTO_MOMENTA;
constexpr int NT = LTO_TIMESCALES;
constexpr bool SKIP = LTO_READOUT_SKIP;
constexpr int NOUT = LTO_OUTPUTS;
constexpr bool UPDATE_CLIP = LTO_UPDATE_CLIP;
constexpr bool RMS_CLIP = LTO_RMS_CLIP;

constexpr int NPV = PRE == 1 ? 2 : 1;           // inputs per gradient-like value
constexpr int NI = NPV * (1 + NM) + NT;         // network inputs
constexpr int NMOM = NM + (PRE == 2);           // moving averages: the momenta, then the second moment
constexpr int NACC = NMOM + ((NMOM || NT) ? 1 : 0);  // accumulators: the averages, then the step count
constexpr int SL = 2 * H * L;                   // LSTM state floats per coordinate (h then c, per layer)
constexpr int S = SL + NACC;                    // state floats per coordinate
constexpr int NRO = H + (SKIP ? NI : 0);        // read-out inputs
constexpr int NMA = NM > 0 ? NM : 1;            // array sizes (no zero-length arrays)
constexpr int NTA = NT > 0 ? NT : 1;

static_assert(L >= 1, "networks without LSTM layers run the torch path");
static_assert(!RMS_CLIP || PRE == 2, "the gradient RMS clip needs the second moment");

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

// min and max as one instruction each (a comparison and a blend otherwise); operands are never NaN here.
static inline vf vmin(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
    return (vf)_mm256_min_ps((__m256)a, (__m256)b);
#else
    return a < b ? a : b;
#endif
}

static inline vf vmax(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
    return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return a > b ? a : b;
#endif
}

static inline vf vexp(vf x) {
    x = vmax(vmin(x, splat(88.0f)), splat(-87.0f));
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


static inline vf vsqrt(vf x) {
#if defined(__AVX512F__)
    return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
    return (vf)_mm256_sqrt_ps((__m256)x);
#else
    vf r;
    for (int k = 0; k < VL; ++k) r[k] = std::sqrt(x[k]);
    return r;
#endif
}

// The run-time values of the options, in the order NativeKernel.pack writes them.
struct Config {
    float p, threshold, inverse;  // log/sign preprocessing: p, e^-p, e^p
    float output_scale, magnitude_scale, update_clip, rms_clip;
    float beta2, one_minus_beta2;
    float betas[NMA], one_minus_betas[NMA];
    float timescales[NTA];
};

struct Args {
    const float* grad;     // (m,)
    float* state;          // (m, S) with row stride ld
    int64_t ld;
    float* update;         // (m,): u is written here, or, when theta is not null, ...
    float* theta;          // (m,): ... the parameters get theta <- decay * theta + lr * u instead
    float lr, decay, sign;  // sign: -1 to maximize (the gradient is negated)
    const float* weights;  // per layer: Wt (in_l + H, GP) then bias (GP); then the read-out: W_r (NOUT, NRO), b_r
    Config cfg;
};

// What depends on a coordinate's step count t alone: the bias corrections 1 - b^t and the step inputs.
struct StepTerms {
    float correction[NMA];    // 1 - b_j^t
    float correction2;        // 1 - b2^t
    float previous2;          // 1 - b2^max(t-1, 1)
    float timescale[NTA];     // tanh(t / tau)
};

static void step_terms(float t, const Config& c, StepTerms& out) {
    // torch computes these in fp32 (pow and tanh to about 1 ulp); double rounded once to fp32 matches that.
    for (int j = 0; j < NM; ++j) out.correction[j] = 1.0f - (float)std::pow((double)c.betas[j], (double)t);
    out.correction2 = 1.0f - (float)std::pow((double)c.beta2, (double)t);
    out.previous2 = 1.0f - (float)std::pow((double)c.beta2, (double)(t - 1.0f > 1.0f ? t - 1.0f : 1.0f));
    for (int j = 0; j < NT; ++j) out.timescale[j] = (float)std::tanh((double)(t / c.timescales[j]));
}

// The terms of each lane as vectors: broadcast from `cached` when every lane has its step count, else per lane.
struct LaneTerms {
    vf correction[NMA], correction2, previous2, timescale[NTA];
};

static inline void lane_terms(vf t, int count, const Config& c, float& cached_t, StepTerms& cached, LaneTerms& out) {
    bool same = true;
    for (int k = 0; k < count; ++k) same &= t[k] == t[0];
    if (same) {
        if (t[0] != cached_t) {
            step_terms(t[0], c, cached);
            cached_t = t[0];
        }
        for (int j = 0; j < NM; ++j) out.correction[j] = splat(cached.correction[j]);
        out.correction2 = splat(cached.correction2);
        out.previous2 = splat(cached.previous2);
        for (int j = 0; j < NT; ++j) out.timescale[j] = splat(cached.timescale[j]);
        return;
    }
    for (int k = 0; k < VL; ++k) {
        StepTerms lane;
        step_terms(k < count ? t[k] : t[0], c, lane);
        for (int j = 0; j < NM; ++j) out.correction[j][k] = lane.correction[j];
        out.correction2[k] = lane.correction2;
        out.previous2[k] = lane.previous2;
        for (int j = 0; j < NT; ++j) out.timescale[j][k] = lane.timescale[j];
    }
}

// log/sign preprocessing (paper, Appendix A) of one value vector into two input vectors.
static inline void log_sign(vf x, const Config& c, vf* out) {
    vf magnitude = x < splat(0.0f) ? -x : x;
    vi large = magnitude >= splat(c.threshold);
    vf clamped = large ? magnitude : splat(c.threshold);
    vf log_part = vlog(clamped) / c.p;
    vf sign = x > splat(0.0f) ? splat(1.0f) : (x < splat(0.0f) ? splat(-1.0f) : splat(0.0f));
    out[0] = large ? log_part : splat(-1.0f);
    out[1] = large ? sign : x * c.inverse;
}

// The inputs of the `count` coordinates from `base` as NI vectors; their accumulators are updated in the state.
static inline void features(const Args& a, int64_t base, int count, float& cached_t, StepTerms& cached, vf* out) {
    alignas(64) float gbuf[VL] = {};
    std::memcpy(gbuf, a.grad + base, sizeof(float) * count);
    vf g = a.sign * *(const vf*)gbuf;
    vf values[1 + NMA];
    values[0] = g;
    if constexpr (NACC > 0) {
        const Config& c = a.cfg;
        vf acc[NACC] = {};
        for (int k = 0; k < count; ++k)
            for (int j = 0; j < NACC; ++j) acc[j][k] = a.state[(base + k) * a.ld + SL + j];
        vf t = acc[NACC - 1] + 1.0f;
        LaneTerms terms;
        lane_terms(t, count, c, cached_t, cached, terms);
        if constexpr (RMS_CLIP) {
            vf previous = acc[NM];
            vf bound = c.rms_clip * vsqrt(previous / terms.previous2);
            vf clipped = vmax(vmin(g, bound), -bound);
            g = previous > splat(0.0f) ? clipped : g;
            values[0] = g;
        }
        for (int j = 0; j < NM; ++j) {
            acc[j] = c.betas[j] * acc[j] + c.one_minus_betas[j] * g;
            values[1 + j] = acc[j] / terms.correction[j];
        }
        if constexpr (PRE == 2) {
            acc[NM] = c.beta2 * acc[NM] + c.one_minus_beta2 * g * g;
            vf denominator = vsqrt(acc[NM] / terms.correction2) + 1e-8f;
            for (int j = 0; j <= NM; ++j) values[j] = values[j] / denominator;
        }
        acc[NACC - 1] = t;
        for (int k = 0; k < count; ++k)
            for (int j = 0; j < NACC; ++j) a.state[(base + k) * a.ld + SL + j] = acc[j][k];
        for (int j = 0; j < NT; ++j) out[NPV * (1 + NM) + j] = terms.timescale[j];
    }
    for (int j = 0; j <= NM; ++j) {
        if constexpr (PRE == 1)
            log_sign(values[j], a.cfg, out + 2 * j);
        else
            out[j] = values[j];
    }
}

// One layer for a tile of `rows` <= R coordinates.  xin[r] holds [x, h_old] (K floats); writes c and h of the
// layer into the state rows, and h into next[r] (the next layer's input) when next is not null, else (the top
// layer) into top[j * VL + r], the read-out's inputs with coordinates along vectors.
template <int K>
static inline void layer_tile(const float* wt, const float* bias, float (*xin)[KMAX], float* const* st, int hoff,
                              int rows, float (*next)[KMAX], float* top) {
    vf acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = *(const vf*)(bias + v * VL);
#pragma GCC unroll 64
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
    alignas(64) float tc[HP];
    for (int k = rows * H; k < HP; ++k) tc[k] = 0.0f;  // lanes past the tile's rows
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
            if (next)
                next[r][j] = hn;
            else
                top[j * VL + r] = hn;
        }
    }
}

static void rows_range(const Args& a, int64_t begin, int64_t end) {
    const float* readout = a.weights;
    for (int l = 0; l < L; ++l) readout += ((l == 0 ? NI : H) + H) * GP + GP;
    alignas(64) float xin[R][KMAX];
    alignas(64) float nxt[R][KMAX] = {};
    alignas(64) float top[H][VL] = {};  // lanes past `count` keep old (finite) values, and are not stored
    float cached_t = -1.0f;  // no step count is negative: the first vector fills the cache
    StepTerms cached;
    for (int64_t base = begin; base < end; base += VL) {
        const int count = (int)(end - base < VL ? end - base : VL);
        vf feat[NI];
        features(a, base, count, cached_t, cached, feat);
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
                    layer_tile<NI + H>(w, w + (NI + H) * GP, xin, st, 0, rows, dst, &top[0][t]);
                    w += (NI + H) * GP + GP;
                } else {
                    for (int r = 0; r < R; ++r) std::memcpy(&nxt[r][H], st[r] + 2 * l * H, sizeof(float) * H);
                    layer_tile<2 * H>(w, w + 2 * H * GP, nxt, st, 2 * l * H, rows, dst, &top[0][t]);
                    w += 2 * H * GP + GP;
                }
            }
        }
        // The read-out for the VL coordinates at once: o = W_r [h_L, x] + b_r (two partial sums per output).
        vf out[NOUT];
        for (int o = 0; o < NOUT; ++o) {
            const float* wr = readout + o * NRO;
            vf even = splat(readout[NOUT * NRO + o]), odd = splat(0.0f);
            for (int j = 0; j + 1 < H; j += 2) {
                even += wr[j] * *(const vf*)top[j];
                odd += wr[j + 1] * *(const vf*)top[j + 1];
            }
            if constexpr (H % 2) even += wr[H - 1] * *(const vf*)top[H - 1];
            if constexpr (SKIP)
                for (int i = 0; i < NI; ++i) even += wr[H + i] * feat[i];
            out[o] = even + odd;
        }
        const Config& c = a.cfg;
        vf u = c.output_scale * out[0];
        if constexpr (NOUT == 2) u = u * vexp(c.magnitude_scale * out[1]);
        if constexpr (UPDATE_CLIP) u = vmax(vmin(u, splat(c.update_clip)), splat(-c.update_clip));
        alignas(64) float ubuf[VL];
        if (a.theta) {
            std::memcpy(ubuf, a.theta + base, sizeof(float) * count);
            *(vf*)ubuf = a.decay * *(const vf*)ubuf + a.lr * u;
            std::memcpy(a.theta + base, ubuf, sizeof(float) * count);
        } else {
            *(vf*)ubuf = u;
            std::memcpy(a.update + base, ubuf, sizeof(float) * count);
        }
    }
}

extern "C" {

int lto_abi_version() { return 4; }

// The compile-time form (H, L, preprocessing, momenta, timescales, read-out skip, outputs, the two clips), the
// floats of `config` and the padded gate width; returns the vector width.
int lto_config(int* form, int* padded_gates) {
    const int values[] = {H, L, PRE, NM, NT, SKIP, NOUT, UPDATE_CLIP, RMS_CLIP, (int)(sizeof(Config) / 4)};
    std::memcpy(form, values, sizeof(values));
    *padded_gates = GP;
    return VL;
}

// For coordinates k < m of gradient sign * grad: update[k] = u, or, when theta is not null, theta[k] <- decay *
// theta[k] + lr * u; state rows updated in place.  `config` holds the floats of struct Config.
void lto_lstm_rows(int64_t m, int threads, const float* grad, float* state, int64_t ld, float* update, float* theta,
                   float lr, float decay, float sign, const float* weights, const float* config) {
    Args a{grad, state, ld, update, theta, lr, decay, sign, weights, {}};
    std::memcpy(&a.cfg, config, sizeof(Config));
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
