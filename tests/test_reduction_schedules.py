"""CPU replay of the CUDA kernels' warp/block/column reduction schedules.

csrc/cuda/reduction_schedule.h defines each schedule once (butterfly partners, warp slots, the
order in which slots are folded) together with host replays that walk the same steps with lanes as
an array and barriers as loop boundaries. This test compiles those replays with the host compiler
(no GPU, no torch headers) and checks, for the block shapes the kernels launch, that every thread's
value is combined exactly once into the result the kernel reads, and that the BN moments merged in
the kernels' order (Welford per thread, Chan across lanes and warps) match a float64 reference.

It also replays the grouped 3x3 conv kernel block by block, thread by thread: the same tile
mapping, shared-memory staging, register-tile accumulation, epilogue and column reductions
(csrc/cuda/grouped_conv3x3_tile.h) that the CUDA kernel runs, checked against PyTorch's conv.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SHIM = r"""
#include <cstdint>
#include <vector>
#include "cuda/grouped_conv3x3_tile.h"
#include "cuda/reduction_schedule.h"
#include "kernels/bn_stats.h"

using namespace regnet_ext;
using Moments = kernels::MomentStats<float>;

// Coverage probes: each thread contributes {1, id, id^2} (block/column) or {1 << lane, 1} (warp).
struct Cover { uint64_t count, ids, squares; };
static Cover add_cover(Cover a, Cover b) { return {a.count + b.count, a.ids + b.ids, a.squares + b.squares}; }
struct LaneCover { uint32_t mask, count; };
static LaneCover add_lane(LaneCover a, LaneCover b) { return {a.mask | b.mask, a.count + b.count}; }
static Moments merge(Moments a, Moments b) { kernels::chan_merge(a, b); return a; }

static Moments thread_moments(const float* data, int t, int per_thread) {
  Moments m = kernels::moment_stats_empty<float>();
  for (int i = 0; i < per_thread; ++i) kernels::welford_push(m, data[t * per_thread + i]);
  return m;
}

extern "C" {
int butterfly_steps(int keep) { return cuda::butterfly_steps(keep); }

void warp_coverage(int keep, uint32_t* masks, uint32_t* counts) {
  LaneCover lanes[cuda::kWarpSize];
  for (int l = 0; l < cuda::kWarpSize; ++l) lanes[l] = {1u << l, 1u};
  cuda::replay_warp_allreduce(lanes, keep, add_lane);
  for (int l = 0; l < cuda::kWarpSize; ++l) { masks[l] = lanes[l].mask; counts[l] = lanes[l].count; }
}

void block_coverage(int threads, uint64_t* out) {
  Cover values[1024];
  for (int t = 0; t < threads; ++t) values[t] = {1, uint64_t(t), uint64_t(t) * uint64_t(t)};
  const Cover total = cuda::replay_block_allreduce(values, threads, Cover{0, 0, 0}, add_cover);
  out[0] = total.count; out[1] = total.ids; out[2] = total.squares;
}

void column_coverage(int threads, int columns, uint64_t* out) {
  Cover values[1024], totals[32];
  for (int t = 0; t < threads; ++t) values[t] = {1, uint64_t(t), uint64_t(t) * uint64_t(t)};
  cuda::replay_column_allreduce(values, threads, columns, totals, add_cover);
  for (int c = 0; c < columns; ++c) { out[3 * c] = totals[c].count; out[3 * c + 1] = totals[c].ids; out[3 * c + 2] = totals[c].squares; }
}

void block_moments(const float* data, int threads, int per_thread, float* out) {
  Moments values[1024];
  for (int t = 0; t < threads; ++t) values[t] = thread_moments(data, t, per_thread);
  const Moments m = cuda::replay_block_allreduce(values, threads, kernels::moment_stats_empty<float>(), merge);
  out[0] = m.count; out[1] = m.mean; out[2] = m.m2;
}

void column_moments(const float* data, int threads, int columns, int per_thread, float* out) {
  Moments values[1024], totals[32];
  for (int t = 0; t < threads; ++t) values[t] = thread_moments(data, t, per_thread);
  cuda::replay_column_allreduce(values, threads, columns, totals, merge);
  for (int c = 0; c < columns; ++c) { out[3 * c] = totals[c].count; out[3 * c + 1] = totals[c].mean; out[3 * c + 2] = totals[c].m2; }
}
}

// ---- grouped 3x3 conv: the kernel's phases, with one loop over threads per barrier interval ----
using cuda::ConvTile;
using cuda::ConvThread;
using cuda::GroupedConv3x3Params;

static kernels::ConvGeometry geometry(int64_t batch, int64_t h, int64_t w, int64_t c_in, int64_t c_out,
                                      int64_t stride, int64_t padding, int64_t groups) {
  return kernels::make_conv_geometry(batch, h, w, c_in, c_out, 3, stride, padding, groups);
}

template <int kStride>
static void replay_conv(const GroupedConv3x3Params& p) {
  const kernels::ConvGeometry& g = p.geom;
  const int tiles_per_image = int(((g.out_h + cuda::kConvTileH - 1) / cuda::kConvTileH) *
                                  ((g.out_w + cuda::kConvTileW - 1) / cuda::kConvTileW));
  const int channel_tiles = int((g.out_c + cuda::kConvTileC - 1) / cuda::kConvTileC);
  constexpr int kThreads = cuda::kConvThreads;
  std::vector<float> in_s(cuda::ConvHalo<kStride>::words), w_s(cuda::kConvWeightWords);
  auto load8 = [](const float* src, float (&out)[8]) { for (int e = 0; e < 8; ++e) out[e] = src[e]; };
  auto load4 = [](const float* src, float (&out)[4]) { for (int e = 0; e < 4; ++e) out[e] = src[e]; };
  auto store4 = [](float* dst, const float (&v)[4]) { for (int e = 0; e < 4; ++e) dst[e] = v[e]; };
  for (int bz = 0; bz < int(g.batch); ++bz)
    for (int by = 0; by < channel_tiles; ++by)
      for (int bx = 0; bx < tiles_per_image; ++bx) {
        const ConvTile t = cuda::conv_tile_of_block(g, bx, by, bz);
        std::vector<ConvThread> th(kThreads);
        std::vector<float> acc(kThreads * cuda::kConvPixelsPerThread * 4, 0.f);
        auto acc_of = [&](int tid) -> float (&)[cuda::kConvPixelsPerThread][4] {
          return *reinterpret_cast<float (*)[cuda::kConvPixelsPerThread][4]>(&acc[tid * cuda::kConvPixelsPerThread * 4]);
        };
        for (int tid = 0; tid < kThreads; ++tid) th[tid] = cuda::conv_thread(g, t, tid);
        const float* x_n = static_cast<const float*>(p.x) + int64_t(t.n) * g.in_h * g.in_w * g.in_c;
        for (int k0 = 0; k0 < int(g.in_c_per_group); k0 += cuda::kConvChunk) {
          for (int tid = 0; tid < kThreads; ++tid) cuda::conv_stage_input<kStride>(g, x_n, t, k0, tid, in_s.data(), load8);
          for (int tid = 0; tid < kThreads; ++tid) cuda::conv_stage_weights(g, p.packed_weight, t, k0, tid, w_s.data());
          // barrier
          for (int tid = 0; tid < kThreads; ++tid) cuda::conv_accumulate_chunk<kStride>(th[tid], in_s.data(), w_s.data(), acc_of(tid));
          // barrier
        }
        std::vector<cuda::Column4Sums> pool(kThreads);
        std::vector<cuda::Column4Moments> moments(kThreads);
        for (int tid = 0; tid < kThreads; ++tid)
          cuda::conv_thread_epilogue<float>(p, t, th[tid], acc_of(tid), pool[tid], moments[tid], load4, store4);
        if (p.se_pool_sum != nullptr) {
          cuda::Column4Sums totals[cuda::kConvColumns];
          cuda::replay_column_allreduce(pool.data(), kThreads, cuda::kConvColumns, totals, cuda::add_column_sums);
          for (int c = 0; c < cuda::kConvColumns; ++c)
            cuda::conv_write_pool(p, t, th[c], totals[c], [](float* dst, float v) { *dst += v; });
        }
        if (p.stat_partials != nullptr) {
          cuda::Column4Moments totals[cuda::kConvColumns];
          cuda::replay_column_allreduce(moments.data(), kThreads, cuda::kConvColumns, totals, cuda::merge_column_moments);
          for (int c = 0; c < cuda::kConvColumns; ++c) cuda::conv_write_moments(p, t, th[c], totals[c], tiles_per_image, bx);
        }
      }
}

extern "C" {
// packed[conv_pack_index(...)] = weight[co][ci][kh][kw]: what pack_weight_kernel does per element.
void pack_weight(int64_t c_out, int64_t c_in, int64_t groups, const float* weight, float* packed) {
  const kernels::ConvGeometry g = geometry(1, 3, 3, c_in, c_out, 1, 1, groups);
  const int64_t cig = g.in_c_per_group;
  for (int64_t i = 0; i < c_out * cig * 9; ++i)
    packed[kernels::conv_pack_index(g, i / (cig * 9), (i / 9) % cig, (i % 9) / 3, i % 3)] = weight[i];
}

int supported(int64_t c_in, int64_t c_out, int64_t groups) {
  const kernels::ConvGeometry g = geometry(1, 8, 8, c_in, c_out, 1, 1, groups);
  return g.in_c_per_group % cuda::kConvChunk == 0 && g.out_c_per_group % cuda::kConvChunk == 0;
}

void replay_grouped_conv3x3(int64_t batch, int64_t h, int64_t w, int64_t c_in, int64_t c_out, int64_t stride,
                            int64_t padding, int64_t groups, const float* x, const float* packed,
                            const float* affine, const float* residual, float* y, float* pool,
                            float* partials, int relu) {
  GroupedConv3x3Params p{geometry(batch, h, w, c_in, c_out, stride, padding, groups), x, packed,
                         reinterpret_cast<const kernels::ChannelAffine<float>*>(affine), residual, y, pool,
                         reinterpret_cast<Moments*>(partials), relu != 0};
  if (stride == 1) replay_conv<1>(p); else replay_conv<2>(p);
}
}
"""

# (threads, columns) of the kernels that use column_allreduce: the grouped 3x3 conv's epilogue
# (128 threads, 8 channel columns) and the NHWC row reductions of bn_kernels.cu / SE pooling
# (256 threads, 32 channel columns); plus other legal shapes.
COLUMN_SHAPES = [(128, 8), (256, 32), (64, 4), (1024, 16), (32, 1), (96, 2)]
BLOCK_THREADS = [32, 64, 96, 128, 256, 480, 1024]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.fail("a C++ compiler (g++) is needed to replay the CUDA reduction schedules")
    build = tmp_path_factory.mktemp("schedules")
    source = build / "shim.cpp"
    source.write_text(SHIM)
    out = build / "libschedules.so"
    subprocess.run([compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall",
                    f"-I{ROOT / 'csrc'}",
                    str(source), "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


def _u32(n):
    return (ctypes.c_uint32 * n)()


def _u64(n):
    return (ctypes.c_uint64 * n)()


def _floats(values):
    return (ctypes.c_float * len(values))(*values)


@pytest.mark.parametrize("keep", [1, 2, 4, 8, 16, 32])
def test_butterfly_reduces_each_lane_class_exactly_once(lib, keep):
    assert lib.butterfly_steps(keep) == int(np.log2(32 // keep))
    masks, counts = _u32(32), _u32(32)
    lib.warp_coverage(keep, masks, counts)
    for lane in range(32):
        expected = sum(1 << other for other in range(32) if other % keep == lane % keep)
        assert masks[lane] == expected, f"lane {lane}: combined lanes {masks[lane]:#x}, expected {expected:#x}"
        assert counts[lane] == 32 // keep, f"lane {lane}: {counts[lane]} values combined, expected {32 // keep}"


@pytest.mark.parametrize("threads", BLOCK_THREADS)
def test_block_reduction_counts_every_thread_once(lib, threads):
    out = _u64(3)
    lib.block_coverage(threads, out)
    ids = np.arange(threads, dtype=np.uint64)
    assert list(out) == [threads, int(ids.sum()), int((ids * ids).sum())]


@pytest.mark.parametrize("threads,columns", COLUMN_SHAPES)
def test_column_reduction_gathers_its_column(lib, threads, columns):
    out = _u64(3 * columns)
    lib.column_coverage(threads, columns, out)
    for column in range(columns):
        ids = np.arange(column, threads, columns, dtype=np.uint64)
        got = list(out[3 * column:3 * column + 3])
        assert got == [len(ids), int(ids.sum()), int((ids * ids).sum())], f"column {column}"


@pytest.mark.parametrize("threads,per_thread", [(256, 3), (128, 4), (96, 7)])
def test_block_moments_match_float64(lib, threads, per_thread):
    rng = np.random.default_rng(threads)
    data = (rng.standard_normal(threads * per_thread) * 3.0 + 10.0).astype(np.float32)
    out = (ctypes.c_float * 3)()
    lib.block_moments(_floats(data), threads, per_thread, out)
    ref = data.astype(np.float64)
    assert out[0] == len(ref)
    np.testing.assert_allclose(out[1], ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(out[2] / out[0], ref.var(), rtol=1e-4)


@pytest.mark.parametrize("threads,columns", COLUMN_SHAPES)
def test_column_moments_match_float64(lib, threads, columns):
    per_thread = 4
    rng = np.random.default_rng(threads + columns)
    data = (rng.standard_normal(threads * per_thread) * 2.0 - 5.0).astype(np.float32)
    out = (ctypes.c_float * (3 * columns))()
    lib.column_moments(_floats(data), threads, columns, per_thread, out)
    per = data.reshape(threads, per_thread).astype(np.float64)
    for column in range(columns):
        ref = per[column::columns].ravel()
        count, mean, m2 = out[3 * column:3 * column + 3]
        assert count == len(ref)
        np.testing.assert_allclose(mean, ref.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m2 / count, ref.var(), rtol=1e-4)


# ---- grouped 3x3 conv kernel, replayed ----------------------------------------------------------

# (batch, channels_in, channels_out, groups, height, width, stride, residual, relu, affine, what it covers)
CONV_REPLAYS = [
    (2, 32, 32, 4, 9, 9, 1, False, True, True),        # group width 8: four groups per 32-channel tile
    (1, 72, 72, 3, 11, 13, 2, True, True, True),       # width 24: tiles straddle group boundaries
    (2, 112, 112, 2, 8, 8, 1, True, False, False),     # width 56, exact 8x8 tiles, identity affine
    (1, 16, 40, 1, 10, 7, 2, False, True, True),       # dense conv, partial channel tile
    (1, 232, 232, 1, 6, 5, 1, True, True, True),       # width 232, one 29-chunk group
]


def _as_ptr(array):
    return array.ctypes.data_as(ctypes.c_void_p) if array is not None else None


def _replay_conv(lib, x, weight, affine, residual, stride, groups, relu):
    """Runs the kernel's replay on NCHW float tensors; returns y (NCHW), pool sums and partial moments."""
    import torch

    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    h_out, w_out = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    tiles = ((h_out + 7) // 8) * ((w_out + 7) // 8)
    as_nhwc = lambda t: np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy(), dtype=np.float32)
    packed = np.zeros(weight.numel(), dtype=np.float32)
    for fn in (lib.pack_weight, lib.replay_grouped_conv3x3):
        fn.restype = None
    lib.pack_weight(ctypes.c_int64(c_out), ctypes.c_int64(c_in), ctypes.c_int64(groups),
                    _as_ptr(np.ascontiguousarray(weight.numpy(), dtype=np.float32)), _as_ptr(packed))
    y = np.full((n, h_out, w_out, c_out), np.nan, dtype=np.float32)
    pool = np.zeros((n, c_out), dtype=np.float32)
    partials = np.full((n * tiles, c_out, 3), np.nan, dtype=np.float32)
    x_nhwc = as_nhwc(x)
    res = as_nhwc(residual) if residual is not None else None
    aff = np.ascontiguousarray(affine.numpy(), dtype=np.float32) if affine is not None else None
    args = [ctypes.c_int64(v) for v in (n, h, w, c_in, c_out, stride, 1, groups)]
    lib.replay_grouped_conv3x3(*args, _as_ptr(x_nhwc), _as_ptr(packed), _as_ptr(aff), _as_ptr(res), _as_ptr(y),
                               _as_ptr(pool), _as_ptr(partials), ctypes.c_int(int(relu)))
    return torch.from_numpy(y).permute(0, 3, 1, 2), torch.from_numpy(pool), partials


def _merge_moments(rows):
    """Chan's merge of [k, 3] (count, mean, m2) rows in float64: (count, mean, biased var)."""
    rows = rows.astype(np.float64)
    count = rows[:, 0].sum()
    mean = (rows[:, 0] * rows[:, 1]).sum() / count
    m2 = rows[:, 2].sum() + (rows[:, 0] * (rows[:, 1] - mean) ** 2).sum()
    return count, mean, m2 / count


@pytest.mark.parametrize("case", CONV_REPLAYS, ids=lambda c: f"N{c[0]}_{c[1]}to{c[2]}_g{c[3]}_{c[4]}x{c[5]}_s{c[6]}")
def test_grouped_conv3x3_kernel_replay_matches_pytorch(lib, case):
    import torch
    import torch.nn.functional as F

    n, c_in, c_out, groups, h, w, stride, with_residual, relu, with_affine = case
    assert lib.supported(ctypes.c_int64(c_in), ctypes.c_int64(c_out), ctypes.c_int64(groups))
    gen = torch.Generator().manual_seed(c_in + h)
    x = torch.rand(n, c_in, h, w, generator=gen, dtype=torch.float64) * 2 - 1
    weight = (torch.rand(c_out, c_in // groups, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1) / (c_in // groups)
    affine = torch.stack([torch.rand(c_out, generator=gen, dtype=torch.float64) + 0.5,
                          torch.rand(c_out, generator=gen, dtype=torch.float64) - 0.5], 1) if with_affine else None
    z = F.conv2d(x, weight, None, stride, 1, 1, groups)
    residual = torch.rand(z.shape, generator=gen, dtype=torch.float64) - 0.5 if with_residual else None

    ref = z * affine[:, 0].view(1, -1, 1, 1) + affine[:, 1].view(1, -1, 1, 1) if with_affine else z.clone()
    if residual is not None:
        ref = ref + residual
    if relu:
        ref = ref.clamp_min(0)
    y, pool, partials = _replay_conv(lib, x.float(), weight.float(), affine.float() if with_affine else None,
                                     residual.float() if with_residual else None, stride, groups, relu)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)  # every output written (no NaN left)
    torch.testing.assert_close(pool.double(), ref.sum((2, 3)), atol=1e-4, rtol=1e-5)
    per_sample = partials.reshape(n, -1, c_out, 3)
    for s in range(n):
        for c in range(c_out):
            count, mean, var = _merge_moments(per_sample[s, :, c])
            values = ref[s, c].flatten()
            assert count == values.numel()
            assert mean == pytest.approx(values.mean().item(), rel=1e-5, abs=1e-6)
            assert var == pytest.approx(values.var(unbiased=False).item(), rel=1e-4, abs=1e-7)


def test_grouped_conv3x3_kernel_refuses_narrow_groups(lib):
    assert not lib.supported(ctypes.c_int64(24), ctypes.c_int64(24), ctypes.c_int64(6))  # width 4
    assert not lib.supported(ctypes.c_int64(3), ctypes.c_int64(16), ctypes.c_int64(1))   # the stem
