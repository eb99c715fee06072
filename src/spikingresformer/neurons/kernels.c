/* Fused CPU neuron kernels and spike bit packing (built and loaded by spikingresformer.neurons.fused).
 *
 * srf_fwd/bwd_<dtype>_<kind>: one pass over time for a block of neurons whose membranes stay in a
 * local array. Arithmetic copies the reference loop operation for operation (-ffp-contract=off, and
 * for 16-bit dtypes every intermediate rounded (RND) where PyTorch's element-wise kernels round), so
 * spikes are bit-identical to spikingresformer.neurons.reference.
 * srf_pack/unpack_<dtype> (spikingresformer.neurons.bits): element i at bit i % 8 of byte i / 8, on
 * bit patterns (x != 0 is "any bit but the sign set"; unpacking writes 1.0 or +0.0).
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLK 1024
#define PACK_MIN_PARALLEL 4096 /* bytes of packed spikes below which packing stays on one thread */
#define KIND_IF 0
#define KIND_LIF 1
#define KIND_PLIF 2

static inline float bf2f(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? 0x7fc0u : r);
}

/* Per storage dtype: load to the compute type, store from it, round a computed value to storage. */
#define ID(v) (v)
#define LD_bf16(p) bf2f(p)
#define ST_bf16(v) f2bf(v)
#define RND_bf16(v) bf2f(f2bf(v))
#define LD_f16(p) ((float)(p))
#define ST_f16(v) ((_Float16)(v))
#define RND_f16(v) ((float)(_Float16)(v))

/* Charge in the reference:  if: h = v + x;  lif: h = v + (x - (v - vr)) / k;  plif: h = v + (x - (v - vr)) * k */
#define CHARGE(KIND, R, vv, xv)                                                       \
    ((KIND) == KIND_IF ? R((vv) + (xv))                                               \
     : (KIND) == KIND_LIF ? R((vv) + R(R((xv) - R((vv) - vr)) / k))                   \
                          : R((vv) + R(R((xv) - R((vv) - vr)) * k)))

#define DEFINE_NEURON(NAME, KNAME, KIND, ST, CT, LD, STO, R)                                                \
void srf_fwd_##NAME##_##KNAME(const ST* restrict x, ST* restrict s_out, ST* restrict h_out, int64_t T,     \
                              int64_t N, double dk, double dvth, double dvr, int nthreads) {              \
    const CT k = (CT)dk, vth = (CT)dvth, vr = (CT)dvr;                                                     \
    const CT vr_st = R(vr);                                                                                \
    const ST one = STO((CT)1), zero = STO((CT)0);                                                          \
    const int64_t nblk = (N + BLK - 1) / BLK;                                                              \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                                     \
    for (int64_t b = 0; b < nblk; ++b) {                                                                   \
        const int64_t i0 = b * BLK, n = (N - i0) < BLK ? (N - i0) : BLK;                                   \
        CT v[BLK];                                                                                         \
        for (int64_t i = 0; i < n; ++i) v[i] = vr;                                                         \
        for (int64_t t = 0; t < T; ++t) {                                                                  \
            const ST* restrict xt = x + t * N + i0;                                                        \
            ST* restrict st = s_out + t * N + i0;                                                          \
            ST* restrict ht = h_out ? h_out + t * N + i0 : 0;                                              \
            for (int64_t i = 0; i < n; ++i) {                                                              \
                const CT h = CHARGE(KIND, R, v[i], LD(xt[i]));                                             \
                const int s = h >= vth;                                                                    \
                if (ht) ht[i] = STO(h);                                                                    \
                st[i] = s ? one : zero;                                                                    \
                v[i] = s ? vr_st : h;                                                                      \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
double srf_bwd_##NAME##_##KNAME(const ST* restrict hs, const ST* restrict x, const ST* restrict gs,        \
                                ST* restrict gx, int64_t T, int64_t N, double dk, double dvth, double dvr, \
                                double dalpha, int nthreads) {                                             \
    const CT k = (CT)dk, vth = (CT)dvth, vr = (CT)dvr;                                                     \
    const CT vr_st = R(vr);                                                                                \
    const CT c1 = (CT)(dalpha / 2.0), c2 = (CT)(3.14159265358979323846 / 2.0 * dalpha);                    \
    const int64_t nblk = (N + BLK - 1) / BLK;                                                              \
    double gk = 0.0;                                                                                       \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) reduction(+:gk)")                     \
    for (int64_t b = 0; b < nblk; ++b) {                                                                   \
        const int64_t i0 = b * BLK, n = (N - i0) < BLK ? (N - i0) : BLK;                                   \
        CT gv[BLK];                                                                                        \
        double acc[BLK];                                                                                   \
        for (int64_t i = 0; i < n; ++i) { gv[i] = 0; acc[i] = 0.0; }                                       \
        for (int64_t t = T - 1; t >= 0; --t) {                                                             \
            const ST* restrict ht = hs + t * N + i0;                                                       \
            const ST* restrict gst = gs + t * N + i0;                                                      \
            ST* restrict gxt = gx + t * N + i0;                                                            \
            const ST* restrict hp = (KIND == KIND_PLIF && t > 0) ? hs + (t - 1) * N + i0 : 0;              \
            const ST* restrict xtp = KIND == KIND_PLIF ? x + t * N + i0 : 0;                               \
            for (int64_t i = 0; i < n; ++i) {                                                              \
                const CT h = LD(ht[i]);                                                                    \
                const CT q = c2 * (h - vth);                                                               \
                const CT sg = c1 / ((CT)1 + q * q);                                                        \
                const CT g = LD(gst[i]) * sg + (h >= vth ? (CT)0 : gv[i]);                                 \
                if (KIND == KIND_IF) { gxt[i] = STO(g); gv[i] = g; }                                       \
                else if (KIND == KIND_LIF) { gxt[i] = STO(g / k); gv[i] = g - g / k; }                     \
                else {                                                                                     \
                    gxt[i] = STO(g * k); gv[i] = g - g * k;                                                \
                    const CT vp = hp ? (LD(hp[i]) >= vth ? vr_st : LD(hp[i])) : vr;                        \
                    acc[i] += (double)g * (double)(LD(xtp[i]) - (vp - vr));                                \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        if (KIND == KIND_PLIF) for (int64_t i = 0; i < n; ++i) gk += acc[i];                               \
    }                                                                                                      \
    return gk;                                                                                             \
}

#define DEFINE_KINDS(NAME, ST, CT, LD, STO, R)                \
    DEFINE_NEURON(NAME, if, KIND_IF, ST, CT, LD, STO, R)      \
    DEFINE_NEURON(NAME, lif, KIND_LIF, ST, CT, LD, STO, R)    \
    DEFINE_NEURON(NAME, plif, KIND_PLIF, ST, CT, LD, STO, R)

DEFINE_KINDS(f32, float, float, ID, ID, ID)
DEFINE_KINDS(f64, double, double, ID, ID, ID)
DEFINE_KINDS(bf16, uint16_t, float, LD_bf16, ST_bf16, RND_bf16)
#ifdef __FLT16_MAX__ /* compilers without _Float16 leave f16 to the PyTorch implementation */
DEFINE_KINDS(f16, _Float16, float, LD_f16, ST_f16, RND_f16)
#endif

#define DEFINE_PACK(NAME, UT, MASK, ONE)                                                                  \
void srf_pack_##NAME(const UT* restrict s, uint8_t* restrict bits, int64_t n, int nthreads) {            \
    const int64_t nfull = n / 8;                                                                           \
    _Pragma("omp parallel for num_threads(nthreads) if(nfull >= PACK_MIN_PARALLEL) schedule(static)")      \
    for (int64_t b = 0; b < nfull; ++b) {                                                                  \
        unsigned v = 0;                                                                                    \
        for (int j = 0; j < 8; ++j) v |= (unsigned)((s[8 * b + j] & (MASK)) != 0) << j;                    \
        bits[b] = (uint8_t)v;                                                                              \
    }                                                                                                      \
    if (8 * nfull < n) {                                                                                   \
        unsigned v = 0;                                                                                    \
        for (int64_t i = 8 * nfull; i < n; ++i) v |= (unsigned)((s[i] & (MASK)) != 0) << (i - 8 * nfull);  \
        bits[nfull] = (uint8_t)v;                                                                          \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
void srf_unpack_##NAME(const uint8_t* restrict bits, UT* restrict out, int64_t n, int nthreads) {        \
    const int64_t nfull = n / 8;                                                                           \
    _Pragma("omp parallel for num_threads(nthreads) if(nfull >= PACK_MIN_PARALLEL) schedule(static)")      \
    for (int64_t b = 0; b < nfull; ++b)                                                                    \
        for (int j = 0; j < 8; ++j) out[8 * b + j] = ((UT)0 - (UT)((bits[b] >> j) & 1u)) & (UT)(ONE);      \
    for (int64_t i = 8 * nfull; i < n; ++i) out[i] = ((bits[nfull] >> (i - 8 * nfull)) & 1u) ? (UT)(ONE) : 0; \
}

/* unsigned type of the dtype's width, mask of all bits but the sign, bit pattern of 1.0 */
DEFINE_PACK(f32, uint32_t, 0x7fffffffu, 0x3f800000u)
DEFINE_PACK(f64, uint64_t, 0x7fffffffffffffffull, 0x3ff0000000000000ull)
DEFINE_PACK(bf16, uint16_t, 0x7fffu, 0x3f80u)
DEFINE_PACK(f16, uint16_t, 0x7fffu, 0x3c00u)
