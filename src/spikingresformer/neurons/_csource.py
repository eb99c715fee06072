"""C source of the fused CPU neuron kernels, generated per storage dtype and neuron kind.

Each kernel is one pass over time for a block of neurons: the membrane of a block stays in a small
local array while ``t`` runs, so every element of ``x`` is read once and every output written once.
Arithmetic copies the reference loop operation for operation (``-ffp-contract=off`` keeps the
compiler from fusing multiplies and adds), and for the 16-bit dtypes every intermediate is rounded
to the storage dtype exactly where PyTorch's element-wise kernels round, so spikes are bit-identical
to :func:`spikingresformer.neurons.reference.reference_multistep`.

The same library holds the spike bit packing of :mod:`spikingresformer.model.spike_saving`
(``srf_pack_<dtype>`` / ``srf_unpack_<dtype>``): one pass each, element ``i`` at bit ``i % 8`` of
byte ``i // 8``. They work on the bit patterns (``x != 0`` is "any bit but the sign bit set"), so
they need no floating-point support for the 16-bit dtypes.
"""

from __future__ import annotations

__all__ = ["C_SOURCE", "DTYPES", "KINDS", "PACK_DTYPES", "ABI_VERSION"]

from .common import KIND_CODES as KINDS  # noqa: E402  (the kernels number kinds the same way)

# name -> (storage C type, compute C type, load expression, store expression, round expression)
DTYPES = {
    "f32": ("float", "float", "(p)", "(v)", "(v)"),
    "f64": ("double", "double", "(p)", "(v)", "(v)"),
    "bf16": ("uint16_t", "float", "bf2f(p)", "f2bf(v)", "bf2f(f2bf(v))"),
    "f16": ("_Float16", "float", "((float)(p))", "((_Float16)(v))", "((float)(_Float16)(v))"),
}

#: Bumped whenever the library's functions or their signatures change (checked after loading).
ABI_VERSION = 4

# name -> (unsigned storage type of the same width, mask of all bits but the sign, bit pattern of 1.0)
PACK_DTYPES = {
    "f32": ("uint32_t", "0x7fffffffu", "0x3f800000u"),
    "f64": ("uint64_t", "0x7fffffffffffffffull", "0x3ff0000000000000ull"),
    "bf16": ("uint16_t", "0x7fffu", "0x3f80u"),
    "f16": ("uint16_t", "0x7fffu", "0x3c00u"),
}

_HEADER = r"""
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLK 1024
#define PACK_CHUNK 4096  /* bytes of packed spikes per OpenMP iteration */

/* end (exclusive) of the chunk of bytes that starts at b0, of nfull bytes in all */
static inline int64_t chunk_end(int64_t b0, int64_t nfull) {
    return (nfull - b0) < PACK_CHUNK ? nfull : b0 + PACK_CHUNK;
}

static inline int pack_threads(int64_t nchunks, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    return nchunks < nthreads ? (nchunks < 1 ? 1 : (int)nchunks) : nthreads;
}

static inline float bf2f(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? 0x7fc0u : r);
}
int srf_abi_version(void) { return @ABI@; }
""".replace("@ABI@", str(ABI_VERSION))

# {K}: 0 if, 1 lif, 2 plif.  Charge in the reference:  lif: h = v + (x - (v - vr)) / tau
#                                                     plif: h = v + (x - (v - vr)) * k
#                                                     if:   h = v + x
_FWD = r"""
void srf_fwd_{name}_{kname}(const {ST}* restrict x, {ST}* restrict s_out, {ST}* restrict h_out,
                            int64_t T, int64_t N, double dk, double dvth, double dvr, int nthreads) {{
    const {CT} k = ({CT})dk, vth = ({CT})dvth, vr = ({CT})dvr;
    const {CT} vr_st = {RND_VR};
    const int64_t nblk = (N + BLK - 1) / BLK;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {{
        const int64_t i0 = b * BLK;
        const int64_t n = (N - i0) < BLK ? (N - i0) : BLK;
        {CT} v[BLK];
        for (int64_t i = 0; i < n; ++i) v[i] = vr;
        for (int64_t t = 0; t < T; ++t) {{
            const {ST}* restrict xt = x + t * N + i0;
            {ST}* restrict st = s_out + t * N + i0;
            if (h_out) {{
                {ST}* restrict ht = h_out + t * N + i0;
                for (int64_t i = 0; i < n; ++i) {{
                    const {CT} xv = {LOAD_X};
                    const {CT} vv = v[i];
                    const {CT} h = {CHARGE};
                    const int s = h >= vth;
                    ht[i] = {STORE_H};
                    st[i] = s ? {ONE} : {ZERO};
                    v[i] = s ? vr_st : h;
                }}
            }} else {{
                for (int64_t i = 0; i < n; ++i) {{
                    const {CT} xv = {LOAD_X};
                    const {CT} vv = v[i];
                    const {CT} h = {CHARGE};
                    const int s = h >= vth;
                    st[i] = s ? {ONE} : {ZERO};
                    v[i] = s ? vr_st : h;
                }}
            }}
        }}
    }}
}}

double srf_bwd_{name}_{kname}(const {ST}* restrict hs, const {ST}* restrict x, const {ST}* restrict gs,
                              {ST}* restrict gx, int64_t T, int64_t N, double dk, double dvth, double dvr,
                              double dalpha, int nthreads) {{
    const {CT} k = ({CT})dk, vth = ({CT})dvth, vr = ({CT})dvr;
    const {CT} vr_st = {RND_VR};
    const {CT} c1 = ({CT})(dalpha / 2.0);
    const {CT} c2 = ({CT})(3.14159265358979323846 / 2.0 * dalpha);
    const int64_t nblk = (N + BLK - 1) / BLK;
    double gk = 0.0;
    #pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+:gk)
    for (int64_t b = 0; b < nblk; ++b) {{
        const int64_t i0 = b * BLK;
        const int64_t n = (N - i0) < BLK ? (N - i0) : BLK;
        {CT} gv[BLK];
        double acc[BLK];
        for (int64_t i = 0; i < n; ++i) {{ gv[i] = 0; acc[i] = 0.0; }}
        for (int64_t t = T - 1; t >= 0; --t) {{
            const {ST}* restrict ht = hs + t * N + i0;
            const {ST}* restrict gst = gs + t * N + i0;
            {ST}* restrict gxt = gx + t * N + i0;
            {PLIF_PRE}
            for (int64_t i = 0; i < n; ++i) {{
                const {CT} h = {LOAD_H};
                const {CT} u = h - vth;
                const {CT} q = c2 * u;
                const {CT} sg = c1 / (({CT})1 + q * q);
                const {CT} g = {LOAD_GS} * sg + (h >= vth ? ({CT})0 : gv[i]);
                {BWD_BODY}
            }}
        }}
        {PLIF_POST}
    }}
    return gk;
}}
"""

_CHARGE = {
    "if": "{R}(vv + xv)",
    "lif": "{R}(vv + {R}({R}(xv - {R}(vv - vr)) / k))",
    "plif": "{R}(vv + {R}({R}(xv - {R}(vv - vr)) * k))",
}

_BWD_BODY = {
    "if": "gxt[i] = {STORE_G}; gv[i] = g;",
    "lif": "gxt[i] = {STORE_G_LIF}; gv[i] = g - g / k;",
    "plif": (
        "gxt[i] = {STORE_G_PLIF}; gv[i] = g - g * k;\n"
        "                {{ const {CT} vp = hp ? ({LOAD_HP} >= vth ? vr_st : {LOAD_HP}) : vr;\n"
        "                  acc[i] += (double)g * (double)({LOAD_XT} - (vp - vr)); }}"
    ),
}


# Byte b of the packed bits holds elements 8b .. 8b+7, least significant bit first; the last byte
# is zero-padded. Unpacking writes the bit pattern of 1.0 or of +0.0.
_PACK = r"""
void srf_pack_{name}(const {UT}* restrict s, uint8_t* restrict bits, int64_t n, int nthreads) {{
    const int64_t nfull = n / 8;
    const int64_t nchunks = (nfull + PACK_CHUNK - 1) / PACK_CHUNK;
    #pragma omp parallel for num_threads(pack_threads(nchunks, nthreads)) schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {{
        for (int64_t b = c * PACK_CHUNK, b1 = chunk_end(c * PACK_CHUNK, nfull); b < b1; ++b) {{
            const {UT}* restrict p = s + 8 * b;
            unsigned v = 0;
            for (int j = 0; j < 8; ++j) v |= (unsigned)((p[j] & {MASK}) != 0) << j;
            bits[b] = (uint8_t)v;
        }}
    }}
    if (8 * nfull < n) {{
        unsigned v = 0;
        for (int64_t i = 8 * nfull; i < n; ++i) v |= (unsigned)((s[i] & {MASK}) != 0) << (i - 8 * nfull);
        bits[nfull] = (uint8_t)v;
    }}
}}

void srf_unpack_{name}(const uint8_t* restrict bits, {UT}* restrict out, int64_t n, int nthreads) {{
    const int64_t nfull = n / 8;
    const int64_t nchunks = (nfull + PACK_CHUNK - 1) / PACK_CHUNK;
    #pragma omp parallel for num_threads(pack_threads(nchunks, nthreads)) schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {{
        for (int64_t b = c * PACK_CHUNK, b1 = chunk_end(c * PACK_CHUNK, nfull); b < b1; ++b) {{
            const unsigned v = bits[b];
            {UT}* restrict o = out + 8 * b;
            for (int j = 0; j < 8; ++j) o[j] = (({UT})0 - ({UT})((v >> j) & 1u)) & ({UT}){ONE};
        }}
    }}
    for (int64_t i = 8 * nfull; i < n; ++i)
        out[i] = ((bits[nfull] >> (i - 8 * nfull)) & 1u) ? ({UT}){ONE} : 0;
}}
"""


def _render() -> str:
    parts = [_HEADER]
    for name, (st, ct, load, store, rnd) in DTYPES.items():
        def ld(expr: str, load: str = load) -> str:
            return load.replace("p", f"({expr})", 1) if load != "(p)" else f"({expr})"

        def sto(expr: str, store: str = store) -> str:
            return store.replace("v", f"({expr})", 1) if store != "(v)" else f"({expr})"

        r = "" if rnd == "(v)" else ("RND_" + name)
        for kname in KINDS:
            charge = _CHARGE[kname].replace("{R}", r)
            plif_pre = (
                f"const {st}* restrict hp = t > 0 ? hs + (t - 1) * N + i0 : 0; "
                f"const {st}* restrict xtp = x + t * N + i0;"
                if kname == "plif"
                else ""
            )
            body = _BWD_BODY[kname].format(
                STORE_G=sto("g"),
                STORE_G_LIF=sto("g / k"),
                STORE_G_PLIF=sto("g * k"),
                CT=ct,
                LOAD_HP=ld("hp[i]"),
                LOAD_XT=ld("xtp[i]"),
            )
            parts.append(
                _FWD.format(
                    name=name,
                    kname=kname,
                    ST=st,
                    CT=ct,
                    RND_VR=(f"RND_{name}(vr)" if r else "vr"),
                    LOAD_X=ld("xt[i]"),
                    CHARGE=charge,
                    STORE_H=sto("h"),
                    ONE=sto("1"),
                    ZERO=sto("0"),
                    PLIF_PRE=plif_pre,
                    PLIF_POST=("for (int64_t i = 0; i < n; ++i) gk += acc[i];" if kname == "plif" else ""),
                    LOAD_H=ld("ht[i]"),
                    LOAD_GS=ld("gst[i]"),
                    BWD_BODY=body,
                )
            )
        if r:
            parts.insert(1, f"#define RND_{name}(v) {rnd.replace('v', '(v)')}\n")
    for name, (ut, mask, one) in PACK_DTYPES.items():
        parts.append(_PACK.format(name=name, UT=ut, MASK=mask, ONE=one))
    return "\n".join(parts)


C_SOURCE = _render()
