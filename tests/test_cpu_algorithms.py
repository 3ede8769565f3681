"""Every fast CPU algorithm, forced, against the reference kernel (the oracle) and torch.

* each (algorithm, pass) on shapes that hit its edges: channel counts around the vector width
  (remainders), padding, odd sizes, stride, dilation, groups, batch 1, NCHW and NHWC;
* the same through the AVX2 path (a subprocess with CONV_EXT_CPU_CAPABILITY=avx2) and the
  portable level (everything falls back to the reference);
* float32 accuracy of the default choice: error against a float64 reference at most 4x torch's
  own float32 error on the same inputs;
* determinism: the same bits on every run and for 1 and 2 threads.

The fast kernels are float32 (compared here with the float64 reference), and float16/bfloat16
run them on float32 copies (rounded once at the end: test_half_types_run_float32_kernels) where
no kernel of their own takes them (bfloat16's, amx_fp16: checked in their dtype); float64 has its
own, simpler kernel (gemm_f64: compared with the reference at float64 precision).
"""
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import conv_ext
from conv_ext import testing

ops = torch.ops.conv_ext
PASSES = testing.PASSES

# (N, C, H, W), K, (R, S), stride, padding, dilation, groups
GENERAL = [
    ((2, 3, 9, 11), 16, (3, 3), 1, 1, 1, 1),           # C=3 (stem-like), odd sizes
    ((2, 3, 7, 37), 8, (3, 3), 1, 1, 1, 1),            # the same, rows > 16: bwd-input 2 vectors a step
    ((1, 16, 8, 8), 24, (3, 3), 1, 1, 1, 1),           # K remainder vs 16 lanes
    ((2, 5, 13, 7), 33, (3, 3), 2, 1, 1, 1),           # stride 2, K = 2*16+1
    ((1, 20, 7, 9), 100, (5, 3), 2, (2, 1), (1, 2), 1),  # rectangular, dilation (dil_w > 1: per-tap segments)
    ((2, 6, 12, 12), 12, (3, 3), 1, 2, 2, 3),          # groups, dilation
    ((1, 4, 9, 9), 6, (3, 2), 3, 0, 1, 2),             # stride > kernel: dx phases without taps
    ((1, 8, 10, 9), 6, (2, 2), 3, 1, 1, 1),            # the same with 8 dx channels, padded
    ((3, 17, 6, 6), 17, (1, 1), 2, 0, 1, 1),           # strided 1x1
    ((2, 9, 7, 9), 12, (1, 1), 2, 0, 1, 1),            # the same, odd sizes (NCHW: pixel pairs, the last alone)
    ((1, 300, 5, 5), 20, (3, 3), 1, 1, 1, 1),          # reduction split in panels
    ((1, 8, 5, 5), 300, (3, 3), 1, 1, 1, 1),           # many output blocks
    ((1, 16, 3, 3), 256, (3, 3), 1, 2, 1, 1),          # NCHW band shared by 4 blocks, built in pieces of rows (some all padding)
    ((1, 3, 32, 32), 70, (7, 7), 2, 3, 1, 1),          # the stem, small
    # 3 channels, > 1 vector of filters: each output row in row tiles (a pointer a tile), the rests gathered
    ((2, 3, 10, 31), 32, (3, 3), 2, 1, 1, 1),          # stride 2: 14 + 2 (AVX2: 6 + 6 + 4)
    ((1, 3, 7, 33), 40, (3, 3), 1, 1, (2, 1), 1),      # stride 1, row dilation, K tail: 9 + 9 + 9 + 6
    ((2, 3, 6, 20), 64, (3, 5), 1, (1, 2), (1, 2), 1),  # column dilation (a segment a tap): 6 + 6 + 6 + 2
    # channels_last: the row tiles read x in place, pixels whose taps reach the padding are edge pixels
    ((2, 3, 11, 40), 32, (3, 3), 2, 2, 1, 1),          # padding 2 at stride 2: first column, last column, top and bottom rows
    ((1, 3, 6, 30), 48, (5, 5), 1, 2, (2, 1), 1),      # every row's filter rows reach the padding: edge pixels only
    ((2, 3, 12, 9), 40, (3, 3), 1, 1, 1, 1),           # 7 inside pixels a row, fewer than a row tile: all rests
    ((1, 3, 6, 20), 32, (3, 3), 1, 4, 1, 1),           # padding beyond the taps: pixels of the bias only
    ((2, 8, 6, 6), 8, (3, 3), 1, 3, 1, 1),             # padding > dil*(R-1): bwd-input not a forward
    ((1, 7, 5, 6), 9, (2, 2), 1, 0, 1, 1),             # even kernel, no padding
    ((2, 16, 11, 13), 16, (5, 5), 2, 2, 1, 1),         # NHWC bwd-weight, few k: (s, c) vectors 64 + 16
    ((1, 12, 9, 10), 10, (3, 3), 1, (0, 1), 1, 1),     # the same, 36 = 32 + 4 (masked), k tiles 6 + 4
    ((2, 24, 8, 8), 16, (3, 3), 1, 1, (2, 1), 2),      # the same with groups and row dilation
    ((4, 64, 9, 9), 32, (3, 3), 2, 1, 1, 1),           # strided, small dy planes: bwd-input by col2im
    ((2, 128, 7, 8), 64, (3, 3), 2, 1, 1, 2),          # the same with groups (N*G = 4)
    ((1, 16, 7, 9), 160, (3, 3), 2, 1, 1, 1),          # many taps, K = 5 x 32: 12x2 micro-tiles
    ((5, 200, 5, 7), 136, (3, 3), 2, 1, 1, 1),         # heavy weights, small planes: 2 images per task
    ((1, 70, 6, 29), 16, (7, 7), 1, 3, 1, 1),          # K <= 16: row runs 16 + 12 + 1 (micro-kernel), 2 panels
    ((2, 5, 7, 40), 7, (2, 6), (2, 1), (0, 2), 1, 1),  # row runs 24 + 14 + 1, S = 6, row stride 2, K tail
    ((1, 9, 6, 20), 12, (3, 4), 1, (1, 2), (2, 1), 3),  # row runs 12 + 8 + 1, S = 4, row dilation, groups
    ((2, 32, 5, 14), 32, (3, 3), 1, 1, 1, 2),          # 16 channels a group, a row of 14 in one run
    ((1, 6, 3, 9), 5, (3, 5), 1, 1, 1, 1),             # a row of 7 in one run, S = 5
    ((2, 8, 4, 5), 8, (3, 3), 1, 1, 1, 1),             # rows of 5: all to the micro-kernel
    ((2, 36, 9, 9), 40, (3, 3), 2, 1, 1, 1),           # bwd-weight: NCHW band transposed (stride 2), K tail (3 vectors)
    ((1, 36, 5, 2), 40, (3, 3), 1, 2, 1, 1),           # the same, padding wider than the row: every column reads some
    ((2, 64, 6, 10), 48, (3, 3), 1, (1, 2), (1, 2), 2),  # the same with groups and column dilation: a segment per tap
    ((2, 64, 9, 11), 64, (3, 3), 2, 2, 1, 8),          # channels_last forward: 8 groups' bands built from whole pixels, stride 2, padding 2
    ((1, 40, 11, 13), 24, (3, 3), 3, 1, (1, 2), 1),    # bwd-weight: channel-major band split in 3 column phases, column dilation
    ((1, 256, 6, 7), 20, (3, 3), 2, 1, 1, 1),          # NHWC bwd-weight band a line more a pixel (2 x 256 floats a step), c-row tiles 42 x 6 + 4
    ((1, 3, 8, 8), 16, (3, 3), 1, 1, 1, 1),            # the README layer: forward over the flattened 8x8 plane, dx tiles of 3 channels x 8 rows
    ((2, 4, 6, 7), 10, (3, 3), 1, (0, 2), (1, 2), 1),  # the same paths: 28 outputs in 2 vectors, K tail, column dilation; dx 2 + 2 channels
    # channels_last groups of <= 16 + 16 channels whose rows the runs cover whole: read in place
    ((2, 64, 12, 14), 64, (3, 3), 1, 1, 1, 4),         # a row of 14 in one run, both its edge columns zeros
    ((1, 32, 10, 28), 16, (3, 3), 1, (2, 1), (2, 1), 2),  # 14 + 14, row dilation and padding, 8 filters (masked)
    ((2, 64, 20, 28), 64, (3, 3), 2, 1, 1, 4),         # stride 2: runs of 7
    ((1, 32, 8, 14), 32, (2, 3), 1, (3, 1), 1, 2),     # padding rows beyond the taps: outputs of bias only
    # strided backward-input with one vector of dx channels, 3 taps a row at stride 2: scatter runs
    ((2, 32, 13, 13), 32, (3, 3), 2, 0, 1, 2),         # even parity (pw 0); 12 + a run of 7 with 1 stored
    ((1, 16, 11, 30), 16, (5, 3), (1, 2), (2, 1), (2, 1), 1),  # row stride 1, 5 row taps dilated; 16 + 14
    ((2, 48, 9, 17), 24, (3, 3), 2, 2, 1, 3),          # 8 filters a group; padding 2; 16 + 1 stored of 7
    ((1, 16, 7, 8), 704, (3, 3), 2, 1, 1, 1),          # 3 panels of dy channels: runs added to dx
    # strided backward-input by phases: a phase's pixels of the rows that meet the same taps in one list of tiles
    ((2, 40, 16, 14), 24, (3, 3), 2, 1, 1, 1),         # 7 pixels a phase row; the last row meets one filter row
    ((1, 48, 17, 10), 20, (4, 3), 3, 2, 1, 2),         # stride 3, 4 filter rows: classes of 1-2 rows, edges both ends
    ((2, 32, 9, 56), 32, (3, 3), 2, 1, 1, 4),          # grouped_interleaved's 3-tap rows at stride 2: tiles of 14
]
ONE_BY_ONE = [
    ((2, 8, 10, 10), 8, (1, 1), 1, 0, 1, 1),
    ((1, 70, 7, 7), 33, (1, 1), 1, 0, 1, 1),           # plane of 49: masked pixel tail
    ((2, 300, 5, 9), 20, (1, 1), 1, 0, 1, 1),          # reduction panels
    ((2, 12, 9, 9), 18, (1, 1), 1, 0, 1, 3),           # groups
    ((2, 24, 20, 17), 40, (1, 1), 1, 0, 1, 1),         # plane >= 256 pixels: bwd-weight pixel pieces
    ((1, 40, 16, 17), 20, (1, 1), 1, 0, 1, 2),         # the same, C > K per group, groups
    ((3, 64, 5, 3), 200, (1, 1), 1, 0, 1, 1),          # NHWC: rows across images, tasks split over K
    ((2, 24, 9, 7), 36, (1, 1), 2, 0, 1, 3),           # NHWC strided, read in place; groups
    ((1, 1040, 2, 5), 1030, (1, 1), 1, 0, 1, 1),       # a filter of > 1M floats: NHWC bwd-input task shapes
    ((2, 24, 13, 11), 144, (1, 1), 1, 0, 1, 1),        # NHWC bwd-weight: V = dy (3 x 48 lanes, 24 = 3 x 8 rows)
    ((1, 96, 9, 8), 24, (1, 1), 1, 0, 1, 1),           # the same turned round: V = x
    ((2, 300, 11, 10), 520, (1, 1), 1, 0, 1, 1),       # NHWC bwd-weight: V's long rows copied into panels
    ((2, 300, 15, 14), 260, (1, 1), 1, 0, 1, 1),       # the same over >= 384 pixels: A transposed, 3 x 128 + 36 pixels
    ((2, 3, 5, 16), 40, (1, 1), 1, 0, 1, 1),           # 3 channels: NHWC forward (direct, one tall image) in row tiles
    ((1, 3, 9, 31), 32, (1, 1), 2, 0, 1, 1),           # the same strided (rows 6 floats apart), 14 + 2
    ((1, 512, 20, 20), 544, (1, 1), 1, 0, 1, 2),       # the same with groups (V = dy, 272 a group, a K tail)
]
DEPTHWISE = [
    ((2, 8, 10, 10), 8, (3, 3), 1, 1, 1, 8),
    ((1, 40, 9, 13), 40, (3, 3), 2, 1, 1, 40),         # stride 2, channel tail
    ((2, 17, 8, 7), 17, (5, 5), 1, 2, 1, 17),
    ((1, 33, 11, 11), 33, (3, 3), 2, 0, 2, 33),        # dilation + stride
    ((1, 5, 6, 9), 5, (3, 1), 3, (1, 0), 1, 5),
    ((1, 70, 12, 12), 70, (7, 7), 1, 3, 1, 70),
    ((2, 32, 7, 7), 32, (3, 3), 1, 1, 1, 32),          # NCHW flat planes: 7x7 = 4 vectors, two planes a task
    ((1, 48, 10, 9), 48, (5, 5), 2, 2, 1, 48),         # small NCHW planes, C % 16 == 0, stride 2: via NHWC
    ((3, 16, 28, 28), 16, (3, 3), 2, 1, 1, 16),        # the same, backward-weight on 2 images a tile, then 1 (summed in order)
    ((1, 40, 5, 21), 40, (3, 3), 1, (1, 0), 1, 40),    # NHWC rows in runs of 8 pixels: 8 + 8 + 3, channel tail
    ((1, 24, 9, 40), 24, (5, 5), 1, 2, 1, 24),         # NHWC forward runs, 5 taps a row
    ((1, 20, 8, 45), 20, (7, 7), 2, 3, 1, 20),         # NHWC forward runs, 7 taps at stride 2; dx phases
    ((2, 300, 7, 7), 300, (3, 3), 1, 1, 1, 300),       # NHWC forward by blocks of channels: 160 + 140 (a tail)
    ((1, 200, 9, 11), 200, (5, 5), 2, 2, 1, 200),      # the same, 5 taps at stride 2: blocks of 80, 80, 40
    ((1, 40, 60, 60), 40, (3, 3), 1, 1, 1, 40),        # an image of > 128K floats: one block of all channels
    ((2, 16, 12, 36), 16, (3, 3), 2, 1, 1, 16),        # runs at stride 2, whole vectors; via NHWC in NCHW
    ((1, 8, 11, 11), 8, (3, 3), 5, 1, 1, 8),           # stride 5: more phases than the per-phase tap lists
    ((1, 16, 520, 520), 16, (3, 3), 2, 1, 1, 16),      # > 4M input elements: NHWC backward-weight copies rows
    ((2, 128, 6, 5), 128, (3, 3), 2, 1, 1, 128),       # NCHW via NHWC in blocks of 64 channels
    ((1, 3, 41, 150), 3, (5, 3), 1, (2, 0), (2, 1), 3),  # NCHW forward in bands of rows: a partial last band
    ((1, 6, 23, 19), 6, (5, 3), (3, 2), (2, 0), (2, 1), 6),  # NCHW dx rows by residue: stride 3, dilation 2
    ((1, 7, 9, 30), 7, (3, 3), 1, (3, 2), 1, 7),       # NCHW dx at stride 1, padding beyond the taps: not a forward
    ((1, 3, 150, 120), 3, (3, 3), 2, 0, 1, 3),         # NCHW strided dx in 2 bands of rows, the last partial; dw in 4
    ((1, 2, 700, 31), 2, (5, 3), (3, 2), (2, 0), (2, 1), 2),  # the same by residue (stride 3, row dilation): 3 and 5 bands
    # NCHW flat planes (stride 1, output as wide as the input): shifted, masked vectors over the plane
    ((2, 16, 16, 16), 16, (3, 3), 1, 1, 1, 16),        # a row a vector; backward-weight two channels a task
    ((1, 9, 5, 3), 9, (3, 3), 1, 1, 1, 9),             # vectors across 5 rows; odd C: a plane a task
    ((1, 6, 9, 4), 6, (3, 3), 1, (2, 4), (1, 4), 6),   # column dilation as wide as the plane: taps never valid
    ((2, 12, 11, 13), 12, (5, 5), 1, 2, 1, 12),        # 25 taps: backward-weight 8 + 8 + 8 + 1
    ((1, 4, 6, 20), 4, (3, 3), 1, (4, 1), 1, 4),       # padding rows beyond the taps: P > H, dx reads past dy
    ((1, 2, 130, 70), 2, (3, 3), 1, 1, 1, 2),          # 569 vectors: groups of 8 and a remainder of 7
    # strided flat planes (Q = ceil(W / stride)): split into phase planes; dx as phase planes, merged
    ((2, 6, 13, 12), 6, (3, 3), 2, 1, 1, 6),           # odd rows: phase row planes of 7 and 6 rows
    ((1, 5, 10, 11), 5, (5, 5), 2, 2, 1, 5),           # odd columns: phase columns of 6 and 5
    ((1, 4, 9, 10), 4, (3, 3), 3, 1, 1, 4),            # stride 3: 9 phase planes, some dx phases without taps
    ((1, 3, 12, 40), 3, (3, 3), (2, 1), 1, 1, 3),      # row phases only
    ((1, 3, 11, 40), 3, (3, 5), (1, 2), (1, 2), 1, 3),  # column phases only
    ((1, 4, 15, 16), 4, (3, 3), 2, 2, 2, 4),           # dilation 2 at stride 2
    ((1, 2, 70, 70), 2, (3, 3), 2, 1, 1, 2),           # rows of 70: 32 + 32 + 6 split by permutes
    ((1, 3, 97, 91), 3, (3, 3), 2, 1, 1, 3),           # planes >= 8K floats: split as the outputs reach the rows
    ((1, 2, 101, 83), 2, (5, 5), 2, 2, 1, 2),          # the same with 5 rows a tap reach, odd rows and columns
]
WINOGRAD = [  # 3x3 stride 1, at least 32 channels per group on both sides
    ((2, 32, 9, 11), 64, (3, 3), 1, 1, 1, 1),          # odd sizes: half tiles at the edges
    ((1, 40, 7, 6), 56, (3, 3), 1, (0, 2), 1, 1),      # padding 0 and 2, channel tails vs 16 lanes
    ((1, 128, 6, 5), 136, (3, 3), 1, (1, 2), 1, 2),    # groups
    ((2, 32, 3, 1), 64, (3, 3), 1, 1, 1, 1),           # one output column
    ((2, 160, 9, 7), 160, (3, 3), 1, 1, 1, 1),         # large U: per-block weights
    ((2, 144, 34, 34), 144, (3, 3), 1, 1, 1, 1),       # large U: a team of tile rows a thread (2 chunks on one); backward-weight's dU > 1 MiB: 2 chunks
    ((2, 96, 40, 40), 96, (3, 3), 1, 1, 1, 1),         # small U; backward-weight: slots of 20 tile rows in blocks of 4
    ((3, 72, 30, 26), 80, (3, 3), 1, 1, 1, 1),         # backward-weight's slots of 22 and 23 tile rows in blocks of 5
    ((1, 264, 5, 6), 264, (3, 3), 1, 1, 1, 1),         # large U in 2 reduction pieces of 132; backward-weight's dU >= 4 MiB: blocks of 88 channels x 64 filters, K tail
    ((1, 512, 4, 5), 520, (3, 3), 1, (1, 2), 1, 2),    # the same in 2 groups (256 channels in 2 blocks, 260 filters)
    ((1, 64, 33, 35), 64, (3, 3), 1, (0, 2), 1, 2),    # channels_last, 8+ tiles a side: patches read from x in place, padding 0 and 2, groups
]
WINOGRAD_S2 = [  # forward, 3x3 stride 2, 64+ channels a group on both sides, U (25 x Cg x Kg) <= 2 MiB
    ((2, 64, 13, 11), 72, (3, 3), 2, 1, 1, 1),         # odd sizes: half tiles at the edges; K tail (72 = 4.5 vectors)
    ((1, 80, 10, 9), 64, (3, 3), 2, (0, 2), 1, 1),     # padding 0 and 2; C tail (80 = 5 vectors)
    ((1, 128, 8, 12), 128, (3, 3), 2, 1, 1, 2),        # groups of 64
    ((2, 64, 3, 1), 64, (3, 3), 2, 1, 1, 1),           # one output column
    ((1, 64, 2, 2), 64, (3, 3), 2, 2, 1, 1),           # padding 2 on a 2x2 image: outputs that read padding only
    ((3, 96, 30, 31), 96, (3, 3), 2, 1, 1, 1),         # several tasks of whole tile rows across images
    ((1, 128, 33, 36), 128, (3, 3), 2, (2, 0), 1, 2),  # channels_last, 8+ tiles a side: patches read from x in place, padding 2 and 0, groups
]
DIRECT_NCHW = [  # <= 4 input channels per group: vectors over output columns, NCHW
    ((2, 3, 21, 50), 13, (7, 7), 2, 3, 1, 1),          # stem-like; K = 3 x 4 + 1; row of 25 = 16 + 9 (masked)
    ((1, 4, 12, 35), 10, (3, 5), 3, (2, 1), (1, 2), 2),  # groups (2 channels each), 3 phases, column dilation
    ((3, 2, 40, 70), 6, (3, 3), 1, 1, 1, 2),           # one channel a group, K 3 a group; parallel row blocks
    ((2, 3, 5, 5), 8, (3, 3), 1, 4, 1, 1),             # padding beyond the kernel: rows of zeros only
    # channels_last forward (grouped only): tasks of 16 // Cg groups, the last block partial
    ((2, 40, 9, 23), 60, (3, 3), 1, 1, 1, 10),         # 4 channels a group: blocks 4 + 4 + 2 groups, K 6 a group
    ((1, 21, 11, 19), 14, (3, 3), 2, 1, 1, 7),         # 3 channels a group: blocks 5 + 2, stride 2
    ((2, 96, 13, 13), 96, (3, 3), 1, 1, 1, 32),        # threaded: 32 groups of 3 in blocks of 5
    ((2, 64, 30, 31), 64, (3, 3), 2, 1, 1, 8),          # 8 channels a group (>= 8 groups), stride 2
    ((2, 48, 12, 37), 96, (3, 3), 1, 1, 1, 8),          # 6 channels a group, 12 filters (NK 4 x 3)
    ((2, 12, 9, 23), 8, (3, 5), (2, 3), (1, 4), (1, 2), 4),  # phase rows from NHWC: 3 phases, padding > stride
    # backward-input runs here only from 2^18 multiply-adds on (smaller ones stay with implicit_gemm)
    ((2, 4, 30, 70), 40, (3, 5), 3, (2, 1), (1, 2), 2),  # groups, 3 phases, column dilation, dy band edges
    ((4, 4, 45, 45), 64, (3, 2), 3, 0, 1, 2),          # stride > kernel: dx classes without taps (zeros)
    ((2, 3, 20, 20), 32, (3, 3), 1, 4, 1, 1),          # padding beyond the kernel
    ((2, 3, 33, 37), 64, (7, 7), 2, 3, 1, 1),          # the stem's classes, odd dx sizes
]
GROUPED_NHWC = [  # backward-weight, 3x3 stride 1 or 2, Cg a power of two, Kg <= Cg
    ((2, 64, 9, 11), 64, (3, 3), 1, 1, 1, 16),        # ResNeXt-like: 4 + 4 channels a group, 4 groups a vector
    ((1, 48, 7, 13), 24, (3, 3), 1, (0, 2), (1, 2), 6),  # Cg 8: 2 groups a vector, Kg 4; padding, column dilation
    ((2, 40, 8, 8), 20, (3, 3), 1, 2, 1, 10),          # Kg 2 < Cg 4; blocks 4 + 4 + 2 groups; padding 2
    ((1, 6, 5, 6), 3, (3, 3), 1, 1, 1, 3),             # one output channel a group
    ((4, 128, 24, 24), 128, (3, 3), 1, 1, 1, 32),      # 10.6M multiply-adds: 2 row chunks, threaded
    ((2, 32, 11, 13), 32, (3, 3), 2, 1, 1, 4),         # stride 2, odd sizes
    ((1, 32, 9, 10), 16, (3, 3), (2, 1), (2, 0), (1, 2), 4),  # strides (2, 1); padding 2, column dilation
    ((1, 24, 10, 9), 12, (3, 3), (1, 2), (0, 1), (2, 1), 3),  # strides (1, 2), Kg 4 < Cg 8, row dilation 2
    ((2, 8, 8, 7), 8, (3, 3), 2, 0, (2, 1), 4),        # row dilation 2 at stride 2, no padding
    ((4, 256, 20, 20), 256, (3, 3), 2, 1, 1, 32),      # ResNeXt's strided 8 + 8, several row chunks
]
GROUPED_INTERLEAVED = [  # channels_last forward, stride-1 backward-input: Kg 4 or 8, Cg <= Kg, AVX-512
    ((2, 64, 9, 28), 64, (3, 3), 1, 1, 1, 8),          # 8 + 8: 2 groups a vector; a row of 28 in one tile
    ((1, 32, 7, 30), 32, (3, 3), 1, 1, 1, 8),          # 4 + 4: 4 groups a vector; rows of 30 = 2 tiles of 16
    ((2, 24, 11, 13), 48, (3, 3), 2, 1, 1, 6),         # Cg 4 < Kg 8, stride 2, 6 groups = 3 vectors
    ((1, 40, 8, 9), 40, (3, 3), (1, 2), (2, 1), (2, 1), 5),  # stride (1, 2), row dilation, padding 2 > taps: bwd no
    ((2, 20, 6, 61), 40, (5, 3), 1, (2, 1), 1, 5),     # 5x3 filter, last block of 1 group (5 = 2 + 2 + 1), row of 61
    ((1, 6, 4, 5), 12, (1, 1), 1, 0, 1, 3),            # 1x1, Cg 2 < Kg 4, a row of 5 (tile of 8)
    ((4, 256, 20, 20), 256, (3, 3), 2, 1, 1, 32),      # ResNeXt's strided 8 + 8
    ((2, 256, 33, 32), 256, (3, 3), 2, 1, 1, 32),      # the same, dx of >= 512K floats: stride classes stream (unequal: 17 + 16 rows)
]
# >= 32 channels in and out, one group (amx_bf16's problems): channels and sizes off the tile sizes
# (32 channels, 16 pixels, 16 filters), stride 1 (tile rows running on across the padded rows)
# and strided (a run of tiles per output row), dilation, unequal strides, a 7x7 filter
AMX = [
    ((2, 40, 9, 11), 33, (3, 3), 2, 1, 1, 1),
    ((1, 64, 5, 5), 40, (5, 5), 1, 2, 1, 1),
    ((1, 33, 12, 13), 47, (3, 2), 1, (2, 1), (2, 3), 1),
    ((3, 96, 7, 7), 64, (1, 1), 1, 0, 1, 1),
    ((1, 32, 20, 21), 32, (3, 3), (2, 3), 1, 1, 1),
    ((2, 64, 30, 30), 96, (7, 7), 3, 3, 1, 1),
    ((2, 3, 20, 22), 64, (7, 7), 2, 3, 1, 1),            # forward with < 32 channels: filter-row steps
    ((1, 16, 9, 10), 32, (3, 3), 2, 1, 1, 1),            # 2 taps (32 values) + 1 tap a row
    ((2, 5, 11, 9), 40, (3, 5), 1, (1, 2), (2, 1), 1),   # 5 taps of 5 channels in one step, dil_h 2
    ((2, 16, 9, 10), 16, (3, 3), 1, 1, 1, 1),            # forward with 16 filters (half a filter pair)
    ((1, 40, 6, 7), 20, (3, 3), 2, 1, 1, 1),             # 20 filters: a block of 16 and one of 4
    ((2, 64, 9, 10), 128, (3, 3), 1, 1, 1, 4),           # groups: 16 channels, 32 filters each
    ((1, 64, 8, 9), 64, (3, 3), 2, 1, 1, 2),             # groups, strided
    ((1, 96, 7, 7), 48, (1, 1), 1, 0, 1, 3),             # groups of 32 channels, 16 filters
    ((2, 64, 9, 10), 64, (3, 3), 1, 1, 1, 2),            # groups of 32: one pass over the band
    ((1, 256, 5, 5), 512, (3, 3), 1, 1, 1, 8),           # 8 groups of 32 channels, 64 filters
    ((1, 96, 6, 5), 96, (1, 1), 1, 0, 1, 3),             # groups, a 1x1 input read in place
    ((2, 128, 7, 8), 128, (3, 3), 1, 1, 1, 8),           # 8 groups of 16: A rows reach the next group
    ((1, 80, 6, 6), 80, (1, 1), 1, 0, 1, 5),             # 5 groups of 16: the last reads band padding
    ((2, 64, 9, 10), 64, (3, 3), 1, 1, 1, 8),            # small groups (8 channels): blocks of 32 channels
    ((1, 32, 8, 9), 64, (3, 3), 2, 1, 1, 8),             # with a block-diagonal filter; 4 -> 8, strided
    ((1, 64, 7, 7), 32, (1, 1), 1, 0, 1, 4),             # 16 channels, 8 filters a group
    ((1, 64, 6, 9), 128, (3, 3), 1, 1, 1, 4),            # groups of 16 channels (channels_last: a band
    ((2, 64, 9, 11), 64, (3, 3), 2, 1, 1, 4),            # per group, 2 taps a step), 32 filters; strided;
    ((1, 32, 7, 8), 32, (5, 5), 1, 2, 1, 2),             # 5 taps a row (2 + 2 + 1); 2x2 filter, one step;
    ((1, 48, 5, 6), 48, (2, 2), 1, 1, 1, 3),             # 24 filters a group (16 + 8);
    ((1, 32, 6, 6), 48, (3, 3), 1, 1, 1, 2),             # dilated rows
    ((1, 32, 9, 8), 32, (3, 3), 1, (2, 1), (2, 1), 2),
    ((1, 32, 7, 9), 32, (3, 3), 2, 1, 1, 8),             # 4 channels, 4 filters a group: backward-weight's
                                                         # 16 x 16 diagonal tiles of 4 groups each
    # 19-36 steps a filter pair: its steps in two halves over the pixel pairs, the sums kept between
    ((2, 96, 9, 10), 40, (3, 3), 1, 1, 1, 1),            # 27 steps (14 + 13); 40 filters: the tail of 8 whole
    ((1, 70, 8, 9), 128, (3, 3), 2, 1, 1, 1),            # strided, 70 channels: 27 steps
    ((2, 48, 7, 9), 112, (3, 3), 1, 1, 1, 1),            # backward-input: 112 dy channels, 36 steps (18 + 18)
    ((1, 32, 9, 9), 48, (5, 5), 1, 2, 1, 1),             # 25 taps of 32 channels; 48 filters: 32 + 16
    # strided 1x1, channels_last forward read in place: tile rows of every other pixel
    ((2, 40, 5, 30), 48, (1, 1), 2, 0, 1, 1),            # 40 channels (A rows read into the next pixel); 3
                                                         # grid rows, the last pair's second tile past x
    ((1, 64, 28, 28), 64, (1, 1), 2, 0, 1, 1),           # rows of 14 in tiles of 16
    ((2, 32, 6, 32), 40, (1, 1), (1, 2), 0, 1, 1),       # unequal strides
    # 17-31 filters, a 1x1 read in place: 32 pixels' rows staged and stored as whole lines
    ((2, 40, 8, 9), 24, (1, 1), 1, 0, 1, 1),             # 144 pixels: 4 staged pairs, a last of 16 not
    ((1, 64, 6, 11), 17, (1, 1), 1, 0, 1, 1),            # 17 filters: rows 34 bytes apart
    # strided, channels_last: the interior read in place, the edge pixels' windows copied side by side
    ((2, 64, 33, 33), 40, (3, 3), 2, 1, 1, 1),           # 15 x 15 inside (odd tiles: the last pair past x)
    ((2, 32, 35, 35), 48, (5, 5), 2, 2, 1, 1),           # 5x5, padding 2: 2 rows and columns of edges
    ((1, 64, 30, 98), 32, (3, 3), (1, 2), 1, (2, 1), 1),  # unequal strides, dilated rows
]
# < 16 channels (amx_bf16_rows' backward passes: the taps of a filter row side by side)
AMX_ROWS = [
    ((2, 3, 37, 35), 64, (7, 7), 2, 3, 1, 1),            # the stem: 21 of 32 window values; rows of 18 pixels
    ((3, 8, 10, 10), 33, (5, 5), 3, 4, 1, 1),            # windows of 40 (2 column blocks), 33 filters, stride 3
    ((1, 2, 8, 40), 17, (3, 9), 1, 0, 1, 1),             # 2 channels, 17 filters (odd), 38 pixels a row (> 32)
    ((2, 15, 6, 7), 20, (2, 3), (2, 1), (1, 2), (3, 1), 1),  # 15 channels: windows of 45, dil_h 3
    ((1, 4, 5, 5), 32, (3, 3), 1, 1, 1, 1),              # 32 filters: channels_last dy read in place
    ((2, 3, 16, 16), 48, (3, 3), 1, 1, 1, 1),            # NCHW dy as A tiles in place: whole steps, 48 filters
]
SHAPES = GENERAL + ONE_BY_ONE + DEPTHWISE + WINOGRAD + WINOGRAD_S2 + DIRECT_NCHW + GROUPED_NHWC + GROUPED_INTERLEAVED + AMX + AMX_ROWS


def make(shape, layout, dtype=torch.float64, seed=0):
    (n, c, h, w), k, (r, s), stride, padding, dilation, groups = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    wt = torch.randn(k, c // groups, r, s, generator=g, dtype=dtype)
    b = torch.randn(k, generator=g, dtype=dtype)
    geo = (_pair(stride), _pair(padding), _pair(dilation), groups)
    y = F.conv2d(x, wt, b, *geo)
    dy = torch.randn(y.shape, generator=g, dtype=dtype)
    if layout == "nhwc":
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    return x, wt, b, dy, geo


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def run_pass(pass_name, x, wt, b, dy, geo):
    if pass_name == "forward":
        return ops.conv2d_forward(x, wt, b, *geo)
    if pass_name == "backward_input":
        return ops.conv2d_backward_input(dy, wt, x.shape, *geo)
    return ops.conv2d_backward_weight(dy, x, wt.shape, *geo)


def rel_error(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def cases():
    for pass_name in PASSES:
        for algo in testing.cpu_algorithms(pass_name):
            if algo == "reference":
                continue
            for shape in SHAPES:
                for layout in ("nchw", "nhwc"):
                    yield pytest.param(algo, pass_name, shape, layout, id=f"{algo}-{pass_name}-{shape}-{layout}")


def forced(algo, pass_name, x, wt, b, dy, geo):
    """The pass run by `algo`, or None when the algorithm does not support the problem."""
    with testing.force_cpu_algorithm({pass_name: algo}):
        try:
            out = run_pass(pass_name, x, wt, b, dy, geo)
        except RuntimeError as e:
            if "does not support" in str(e):
                return None
            raise
    assert testing.last_cpu_algorithm(pass_name) == algo
    return out


# Algorithm::preferred: rules of speed that the automatic choice applies and forcing does not.
# winograd's backward-weight on few pixels (AVX-512): the automatic choice leaves batch 1 128->128
# @7x7 to another algorithm; forced, winograd computes it (its blocking tested on such shapes).
@pytest.mark.skipif(conv_ext._C.cpu_capability() != "avx512", reason="the few-pixel rule is AVX-512's")
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_preferred_binds_only_the_automatic_choice(layout):
    x64, w64, b64, dy64, geo = make(((1, 128, 7, 7), 128, (3, 3), 1, 1, 1, 1), layout)
    x, wt, b, dy = (t.float() for t in (x64, w64, b64, dy64))
    run_pass("backward_weight", x, wt, b, dy, geo)
    assert testing.last_cpu_algorithm("backward_weight") not in ("winograd", "reference")
    out = forced("winograd", "backward_weight", x, wt, b, dy, geo)
    assert out is not None
    with testing.force_cpu_algorithm({"backward_weight": "reference"}):
        ref64 = run_pass("backward_weight", x64, w64, b64, dy64, geo)
    assert rel_error(out, ref64) <= 1e-5


F64_ALGORITHMS = ("gemm_f64",)  # float64 kernels: float64 operands, compared at float64 precision
# bfloat16 kernels (where the CPU has AMX or AVX512-BF16: else "does not support")
BF16_ALGORITHMS = ("amx_bf16", "amx_bf16_rows", "bf16_pairs", "direct_nchw", "grouped_interleaved", "gemm_1x1",
                   "grouped_nhwc")
# ... of which these are float32 kernels too (checked in both dtypes)
FLOAT32_TOO = ("direct_nchw", "grouped_interleaved", "gemm_1x1", "grouped_nhwc")
# integer kernels (forward): a dtype of each lane form they run (uint8 and int16 share int8's on
# `integer`; every dtype is in tests/test_integer.py)
INTEGER_ALGORITHMS = {"integer": (torch.int8, torch.int32, torch.int64), "integer_pairs": (torch.uint8, torch.int16)}


def torch_pass(pass_name, x, wt, b, dy, geo):
    if pass_name == "forward":
        return F.conv2d(x, wt, b, *geo)
    mask = (pass_name == "backward_input", pass_name == "backward_weight", False)
    grads = torch.ops.aten.convolution_backward(dy, x, wt, None, *geo[:3], False, (0, 0), geo[3], mask)
    return grads[0] if pass_name == "backward_input" else grads[1]


def at_thread_counts(fn, counts):
    """fn() run with torch's thread count set to each of counts in turn (restored after)."""
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in counts:
            torch.set_num_threads(threads if n is None else n)
            outs.append(fn())
        return outs
    finally:
        torch.set_num_threads(threads)


def check_integer(algo, pass_name, x64, w64, b64, geo):
    """An integer algorithm (forward) in each dtype it takes, on the shape's data scaled to
    integers over the dtype's range (products and sums wrap): equal to the reference kernel's
    result, and to torch's int64 convolution narrowed to the dtype."""
    for dtype in INTEGER_ALGORITHMS[algo]:
        top = min(torch.iinfo(dtype).max, 2**40)
        x, wt, b = ((t * top / 3).clamp(-top, top).to(torch.int64).to(dtype) for t in (x64, w64, b64))
        out = forced(algo, pass_name, x, wt, b, None, geo)
        if out is None:
            pytest.skip(f"{algo} does not support this problem (or this CPU)")
        with testing.force_cpu_algorithm({pass_name: "reference"}):
            ref = run_pass(pass_name, x, wt, b, None, geo)
        assert out.dtype == dtype and torch.equal(out, ref), dtype
        assert torch.equal(out, F.conv2d(x.long(), wt.long(), b.long(), *geo).to(dtype)), dtype


def check_float64(algo, pass_name, x, wt, b, dy, geo, layout):
    """A float64 algorithm against the reference kernel and torch, at float64 precision; with a
    channels_last filter too (read, or for backward-weight written, in place; the convolution then
    runs channels_last, as torch's does)."""
    out = forced(algo, pass_name, x, wt, b, dy, geo)
    if out is None:
        pytest.skip(f"{algo} does not support this problem")
    with testing.force_cpu_algorithm({pass_name: "reference"}):
        ref = run_pass(pass_name, x, wt, b, dy, geo)
    assert out.dtype == torch.float64 and out.shape == ref.shape
    if pass_name != "backward_weight":
        assert out.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    assert rel_error(out, ref) <= 1e-12, rel_error(out, ref)
    assert rel_error(out, torch_pass(pass_name, x, wt, b, dy, geo)) <= 1e-12
    wt_cl = wt.contiguous(memory_format=torch.channels_last)
    if not wt_cl.is_contiguous():
        assert rel_error(forced(algo, pass_name, x, wt_cl, b, dy, geo), ref) <= 1e-12


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("shape", [
    ((2, 160, 6, 7), 24, (3, 3), 1, (2, 1), (2, 1), 1),  # 160-channel runs across blocks of 128 taps; padding 2
    ((1, 48, 5, 9), 40, (3, 3), (2, 1), 1, 1, 2),        # groups of 24 channels: runs of 24 read in place
    ((2, 16, 7, 5), 80, (1, 1), 1, 0, 1, 1),             # 1x1: one run; 80 filters = 5 blocks of MR 12 + 20
])
def test_gemm_f64_channels_last_in_place(shape, pass_name):
    """gemm_f64 on channels_last tensors: forward and backward-input read the gathered operand in
    place where a tap's channels are a run of 8 or more (row pointers; taps outside the image read
    zeros), with the runs cut by the blocks of the reduction; backward-weight copies x by runs and
    packs dy once for all its blocks of taps (more than one here: 2 tasks a group or more)."""
    x, wt, b, dy, geo = make(shape, "nhwc")
    check_float64("gemm_f64", pass_name, x, wt, b, dy, geo, "nhwc")
    # a channels_last view with a pixel stride past its channels (a channel slice of a wider tensor)
    wide = torch.randn(x.shape[0], x.shape[1] + 5, *x.shape[2:], dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    wide[:, :x.shape[1]] = x
    xs = wide[:, :x.shape[1]]
    assert xs.stride(1) == 1 and xs.stride(3) == x.shape[1] + 5
    check_float64("gemm_f64", pass_name, xs, wt, b, dy, geo, "nhwc")


@pytest.mark.parametrize("pass_name", ["forward", "backward_input"])
@pytest.mark.parametrize("shape", [
    ((2, 200, 29, 29), 70, (1, 1), 1, 0, 1, 1),  # 841 pixels: a partial last panel; 70 outputs: a partial
                                                 # tile; 200 channels: a second block of the reduction
    ((1, 144, 28, 30), 160, (1, 1), 1, 0, 1, 2),  # groups of 72 -> 80: every tile in place but the last
    ((3, 66, 28, 28), 130, (1, 1), 1, 0, 1, 1),
    ((3, 40, 7, 7), 130, (1, 1), 1, 0, 1, 1),     # 49-pixel planes: panels that run on into the next image
    ((5, 24, 3, 3), 40, (1, 1), 1, 0, 1, 1),      # 9-pixel planes: several images a panel; 40 outputs
    ((2, 70, 10, 10), 96, (1, 1), 1, 0, 1, 2),    # two groups of 35 -> 48 on 100-pixel planes
    ((2, 300, 14, 14), 520, (1, 1), 1, 0, 1, 1),  # 520 outputs: A's rows of a block >= 512 KiB, panels inner
])
def test_gemm_f64_1x1_planes(shape, pass_name):
    """gemm_f64's NCHW 1x1 GEMM on the planes as they lie (over 64 output channels a group, or over
    16 on planes under 16x16): panels of the pixels of all the images, copied per task (a panel that
    runs on into the next image, or holds several small planes, in runs), tiles stored into the
    output planes or through a buffer where a panel has several runs, at the last pixel and the last
    output channel; the same bits for 1 and 2 threads."""
    x, wt, b, dy, geo = make(shape, "nchw")
    check_float64("gemm_f64", pass_name, x, wt, b, dy, geo, "nchw")
    outs = at_thread_counts(lambda: forced("gemm_f64", pass_name, x, wt, b, dy, geo), (None, 1))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("shape", [
    ((2, 150, 6, 20), 200, (3, 3), 1, 1, 1, 1),  # 1350 taps: a partial vector of taps; edge pixels one by one
    ((3, 300, 6, 5), 256, (1, 1), 1, 0, 1, 1),  # planes of 30 pixels: pieces of dy that cross images
    ((3, 300, 3, 5), 256, (1, 1), 1, 0, 1, 1),  # planes of 15 pixels: blocks of 8 that cross images go value by value
], ids=str)
def test_gemm_f64_nchw_backward_weight_transposed(shape):
    """gemm_f64's NCHW backward-weight in the gather form (many filters and taps): dy read in place
    by row pointers where its planes hold 16 pixels or more (a block of pixels that crosses images
    in pieces); on smaller planes eight pixels at consecutive addresses, all inside the image, are
    packed by 8x8 transposes, the others value by value; exact to float64 either way."""
    x, wt, b, dy, geo = make(shape, "nchw")
    check_float64("gemm_f64", "backward_weight", x, wt, b, dy, geo, "nchw")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [
    ((1, 40, 8, 8), 250, (1, 1), 1, 0, 1, 1),   # 40 taps: panels of 24 + 16; 250 filters: 31 tiles of 8 + 2
    ((2, 70, 5, 3), 130, (1, 1), 1, 0, 1, 1),   # 70 taps: 24 + 24 + 22; 130 filters: 4 row blocks
    ((1, 64, 6, 6), 192, (1, 1), 1, 0, 1, 2),   # two groups, each its own row blocks
    ((3, 300, 6, 5), 256, (1, 1), 1, 0, 1, 1),  # 5 blocks of taps x 4 row blocks
], ids=str)
def test_gemm_f64_backward_weight_row_blocks(shape, layout):
    """gemm_f64's backward-weight of a 1x1 stride-1 layer with many filters on few pixels: the
    filters cut into blocks of row tiles (each task the whole reduction of its rows, x packed once
    for all of them) instead of the pixels into chunks: float64-exact to the reference, partial
    tiles of filters and taps included, the same bits for 1 and 2 threads."""
    x, wt, b, dy, geo = make(shape, layout)
    check_float64("gemm_f64", "backward_weight", x, wt, b, dy, geo, layout)
    outs = at_thread_counts(lambda: forced("gemm_f64", "backward_weight", x, wt, b, dy, geo), (None, 1))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("shape", [
    ((2, 40, 60, 61), 100, (1, 1), 1, 0, 1, 1),   # 40 taps: panels of 24 + 16; 100 filters: 12 tiles of 8 + 4;
                                                  # blocks of 128 pixels that cross images (3660 a plane)
    ((3, 64, 33, 35), 256, (1, 1), 1, 0, 1, 2),   # two groups of 32 -> 128
    ((1, 128, 48, 48), 300, (1, 1), 1, 0, 1, 1),  # 128 taps, 300 filters
], ids=str)
def test_gemm_f64_backward_weight_whole_rows(shape):
    """gemm_f64's NCHW 1x1 backward-weight with few input channels and many filters on large planes
    (dy and x over 4 MiB): the gather form with dy read in place and all the taps a task, the
    filters in 4 blocks of rows and the pixels in chunks: float64-exact to the reference, the same
    bits for 1 and 2 threads."""
    x, wt, b, dy, geo = make(shape, "nchw")
    check_float64("gemm_f64", "backward_weight", x, wt, b, dy, geo, "nchw")
    outs = at_thread_counts(lambda: forced("gemm_f64", "backward_weight", x, wt, b, dy, geo), (None, 1))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("shape", [
    ((3, 16, 9, 11), 24, (3, 3), 2, 1, 1, 1),          # odd sizes: phases of 5 and 4 rows, 6 and 5 columns
    ((2, 12, 10, 8), 20, (3, 3), 2, 0, 1, 1),          # no padding: dx's last row and column meet no window
    ((2, 10, 13, 12), 14, (5, 4), (3, 2), (2, 1), 1, 1),  # stride 3 x 2, a 5x4 filter
    ((2, 8, 9, 9), 16, (2, 2), 3, 0, 1, 1),            # 2 taps at stride 3: phases without taps (zeros)
    ((2, 24, 8, 9), 32, (3, 3), (2, 1), 2, 1, 2),      # two groups; stride 2 x 1, padding 2
    ((1, 40, 12, 12), 36, (3, 3), 2, 1, 1, 1),         # 40 dx channels: a partial tile of filters (6)
], ids=str)
def test_gemm_f64_strided_backward_input_phases(shape):
    """gemm_f64's strided NCHW backward-input with few dx channels: each stride phase of dx as a
    stride-1 convolution of dy with that phase's taps of the filter, flipped (row_conv), then woven
    into dx: float64-exact to the reference, the same bits for 1 and 2 threads."""
    x, wt, b, dy, geo = make(shape, "nchw")
    check_float64("gemm_f64", "backward_input", x, wt, b, dy, geo, "nchw")
    outs = at_thread_counts(lambda: forced("gemm_f64", "backward_input", x, wt, b, dy, geo), (None, 1))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_gemm_f64_backward_weight_chunks(layout, stride):
    """gemm_f64's backward-weight with few filter taps (one task a group) cuts the pixels into
    chunks summed in chunk order: the same bits for 1 and 2 threads, float64-exact to the reference
    (NCHW: the dot products along rows, in chunks of rows, on the input's stride phases at stride 2;
    channels_last: the gather form)."""
    x, wt, b, dy, geo = make(((4, 3, 130, 130), 8, (3, 3), stride, 1, 1, 1), layout)  # 4096+ pixels a chunk
    outs = at_thread_counts(lambda: forced("gemm_f64", "backward_weight", x, wt, b, dy, geo), (None, 1))
    assert torch.equal(outs[0], outs[1])
    with testing.force_cpu_algorithm({"backward_weight": "reference"}):
        ref = run_pass("backward_weight", x, wt, b, dy, geo)
    assert rel_error(outs[0], ref) <= 1e-12


def check_bfloat16(algo, pass_name, x64, w64, b64, dy64, geo, layout, skip=True):
    """A bfloat16 algorithm against the float64 result on the same (bfloat16) values: its error
    at most the reference kernel's (float32 sums, one rounding) plus a rounding step, with a
    channels_last filter too (read in place: the same bits). A problem it does not take: the test
    skips, or (skip=False) this check returns."""
    x, wt, b, dy = (t.to(torch.bfloat16) for t in (x64, w64, b64, dy64))
    out = forced(algo, pass_name, x, wt, b, dy, geo)
    if out is None:
        if not skip:
            return
        pytest.skip(f"{algo} does not support this problem (or this CPU)")
    assert out.dtype == torch.bfloat16
    if pass_name != "backward_weight":
        assert out.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    truth = torch_pass(pass_name, *(t.double() for t in (x, wt, b, dy)), geo)
    with testing.force_cpu_algorithm({pass_name: "reference"}):
        ref = run_pass(pass_name, x, wt, b, dy, geo)
    assert rel_error(out, truth) <= rel_error(ref, truth) + 2 ** -8, (rel_error(out, truth), rel_error(ref, truth))
    wt_cl = wt.contiguous(memory_format=torch.channels_last)
    if not wt_cl.is_contiguous() and layout == "nhwc":
        assert torch.equal(forced(algo, pass_name, x, wt_cl, b, dy, geo), out)


FP16_ALGORITHMS = ("amx_fp16",)  # float16 kernels (float16 operands only)


def check_float16(algo, pass_name, x64, w64, b64, dy64, geo, layout):
    """A float16 algorithm against the float64 result on the same (float16) values: its error at
    most the reference kernel's (float32 sums, one rounding) plus a float16 rounding step, with a
    channels_last filter too (the same split values: the same bits). Each filter twice: amx_fp16
    runs a large filter of few pixels on float32 copies until the filter cache keeps it (the
    second call: test_amx_fp16_few_pixels_use_only_a_kept_filter)."""
    x, wt, b, dy = (t.to(torch.float16) for t in (x64, w64, b64, dy64))
    truth = torch_pass(pass_name, *(t.double() for t in (x, wt, b, dy)), geo)
    with testing.force_cpu_algorithm({pass_name: "reference"}):
        ref = run_pass(pass_name, x, wt, b, dy, geo)
    wt_cl = wt.contiguous(memory_format=torch.channels_last)
    outs = []
    for w in (wt, wt_cl) if not wt_cl.is_contiguous() and layout == "nhwc" else (wt,):
        for _ in range(2):
            out = forced(algo, pass_name, x, w, b, dy, geo)
            if out is None:
                pytest.skip(f"{algo} does not support this problem (or this CPU)")
            assert out.dtype == torch.float16
            if pass_name != "backward_weight":
                assert out.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
            assert rel_error(out, truth) <= rel_error(ref, truth) + 2 ** -10, (rel_error(out, truth), rel_error(ref, truth))
        outs.append(out)
    assert torch.equal(outs[0], outs[-1])


@pytest.mark.parametrize("algo,pass_name,shape,layout", list(cases()))
def test_against_reference(algo, pass_name, shape, layout):
    x64, w64, b64, dy64, geo = make(shape, layout)
    if algo in FP16_ALGORITHMS:
        return check_float16(algo, pass_name, x64, w64, b64, dy64, geo, layout)
    if algo in INTEGER_ALGORITHMS:
        return check_integer(algo, pass_name, x64, w64, b64, geo)
    if algo in F64_ALGORITHMS:
        return check_float64(algo, pass_name, x64, w64, b64, dy64, geo, layout)
    if algo in BF16_ALGORITHMS and algo not in FLOAT32_TOO:
        return check_bfloat16(algo, pass_name, x64, w64, b64, dy64, geo, layout)
    x, wt, b, dy = (t.float() for t in (x64, w64, b64, dy64))
    out = forced(algo, pass_name, x, wt, b, dy, geo)
    if out is None:
        pytest.skip(f"{algo} does not support this problem")
    with testing.force_cpu_algorithm({pass_name: "reference"}):
        ref64 = run_pass(pass_name, x64, w64, b64, dy64, geo)      # float64 oracle
        ref32 = run_pass(pass_name, x, wt, b, dy, geo)
    assert out.dtype == torch.float32 and out.shape == ref64.shape
    if pass_name != "backward_weight":
        assert out.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    err = rel_error(out, ref64)
    err_ref32 = rel_error(ref32, ref64)
    assert err <= max(4 * err_ref32, 1e-6), (err, err_ref32)
    # and torch agrees
    assert rel_error(out, torch_pass(pass_name, x64, w64, b64, dy64, geo)) <= max(4 * err_ref32, 1e-6)
    if algo in BF16_ALGORITHMS:  # and its bfloat16 kernel, where it takes the problem
        check_bfloat16(algo, pass_name, x64, w64, b64, dy64, geo, layout, skip=False)


def assert_same_bits_any_threads(x, wt, b, dy, geo):
    """Every pass gives the same bits on two runs and for 1 and for the default thread count."""
    outs = at_thread_counts(lambda: [run_pass(p, x, wt, b, dy, geo) for p in PASSES], (None, None, 1))
    for other in outs[1:]:
        for a, o in zip(outs[0], other):
            assert torch.equal(a, o)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [
    ((2, 5, 13, 7), 33, (3, 3), 2, 1, 1, 1),
    ((1, 3, 32, 32), 70, (7, 7), 2, 3, 1, 1),
    ONE_BY_ONE[1], DEPTHWISE[1], WINOGRAD[6], WINOGRAD_S2[5],
    WINOGRAD[5],                                  # winograd's large U: teams of tile rows on 2 threads, one on 1
    ((5, 200, 5, 7), 136, (3, 3), 2, 1, 1, 1),    # forward task shapes chosen per thread count
    ((1, 1040, 2, 5), 1030, (1, 1), 1, 0, 1, 1),  # NHWC 1x1 backward-input task shapes, likewise
    ((1, 70, 6, 29), 16, (7, 7), 1, 3, 1, 1),     # row runs and micro-kernel tiles in one row
    ((4, 128, 24, 24), 128, (3, 3), 1, 1, 1, 32),  # grouped_nhwc's row chunks (NHWC backward-weight)
    ((2, 24, 30, 29), 144, (1, 1), 1, 0, 1, 1),   # gemm_1x1 backward-weight: 3 blocks, chunks for the machine
], ids=str)
def test_deterministic(shape, layout):
    """Same bits on two runs and for 1 and 2 threads (backward-weight reduces in a fixed order; the
    forward's task shapes may follow the thread count, its sums' order does not)."""
    x, wt, b, dy, geo = (t if isinstance(t, tuple) else t for t in make(shape, layout, torch.float32))
    assert_same_bits_any_threads(x, wt, b, dy, geo)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [
    ((3, 3, 70, 66), 64, (7, 7), 2, 3, 1, 1),     # amx_bf16_rows: several parts of 64 steps
    ((2, 64, 20, 20), 64, (3, 3), 1, 1, 1, 1),
    ((2, 256, 9, 9), 256, (3, 3), 1, 1, 1, 16),   # amx_bf16's groups: blocks of groups a task, by thread count
    ((2, 128, 10, 10), 128, (3, 3), 2, 1, 1, 16),  # small groups (8 channels): block-diagonal filters
    ((2, 96, 40, 40), 64, (1, 1), 1, 0, 1, 1),     # amx_bf16's 1x1 backward-weight: parts of pixels, channels by threads
], ids=str)
def test_deterministic_bfloat16(shape, layout):
    """bfloat16 kernels: the same bits on two runs and for 1 and 2 threads."""
    x, wt, b, dy, geo = (t.to(torch.bfloat16) if torch.is_tensor(t) else t for t in make(shape, layout))
    assert_same_bits_any_threads(x, wt, b, dy, geo)


# float32 accuracy of the default choice at sizes like the benchmark's (but smaller batch)
ACCURACY = [
    ((1, 64, 28, 28), 64, (3, 3), 1, 1, 1, 1),
    ((1, 256, 14, 14), 64, (1, 1), 1, 0, 1, 1),
    ((1, 3, 64, 64), 64, (7, 7), 2, 3, 1, 1),
    ((1, 96, 28, 28), 96, (3, 3), 2, 1, 1, 96),
    ((2, 128, 14, 14), 128, (3, 3), 2, 1, 1, 1),
    ((1, 3, 8, 8), 16, (3, 3), 1, 1, 1, 1),
    ((2, 256, 14, 14), 256, (3, 3), 1, 1, 1, 1),    # Winograd, large U
    ((4, 32, 16, 16), 32, (3, 3), 1, 1, 1, 1),      # Winograd at 32 channels (AVX-512), all three passes
    ((2, 512, 7, 7), 512, (3, 3), 1, 1, 1, 1),
]


def float32_errors(shape, layout, pass_name, seed=0):
    """The pass in float32 by conv_ext's default choice and by torch, each one's error against
    the float64 reference kernel, and the algorithm that ran ours."""
    x64, w64, b64, dy64, geo = make(shape, layout, seed=seed)
    x, wt, b, dy = (t.float() for t in (x64, w64, b64, dy64))
    with testing.force_cpu_algorithm({pass_name: "reference"}):
        ref = run_pass(pass_name, x64, w64, b64, dy64, geo)
    ours = run_pass(pass_name, x, wt, b, dy, geo)
    algorithm = testing.last_cpu_algorithm(pass_name)
    return rel_error(ours, ref), rel_error(torch_pass(pass_name, x, wt, b, dy, geo), ref), algorithm


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", ACCURACY, ids=str)
def test_default_accuracy(shape, layout):
    for pass_name in PASSES:
        err, err_torch, algorithm = float32_errors(shape, layout, pass_name)
        assert algorithm != "reference" or conv_ext._C.cpu_capability() == "portable"
        assert err <= 4 * err_torch + 1e-7, (pass_name, err, err_torch)


# Long reductions (1600-3136 steps), each on the kernel named, found by random shapes against torch:
# one float32 chain over a whole reduction came to 1-2e-6 here, up to 10x torch's error where
# torch's sums are blocked; in chains of simd.h's kChain steps 2.5-3.7e-7. Both bounds: the
# issue's (4x torch's error) and one of 6e-7, which every one of them broke before.
LONG_REDUCTIONS = [
    # (shape, layout, pass, the kernel that runs it)
    (((5, 12, 38, 40), 32, (2, 1), 2, (1, 0), 1, 4), "nchw", "backward_weight", "implicit_gemm"),  # micro-kernel: 2000 pixels
    # 264 pixels (one chain of 256 was 5-8e-7; chains of 64 now)
    (((1, 256, 15, 26), 256, (7, 5), 1, 1, 1, 4), "nhwc", "backward_weight", "implicit_gemm"),
    (((2, 256, 18, 38), 32, (7, 7), 1, 3, 1, 4), "nchw", "forward", "implicit_gemm"),  # row runs: 64 x 7x7 taps
    (((2, 16, 33, 26), 64, (7, 7), 1, 1, 1, 1), "nhwc", "backward_input", "implicit_gemm"),  # row runs
    (((2, 16, 20, 26), 128, (7, 7), 1, 3, 1, 1), "nchw", "backward_input", "implicit_gemm"),  # micro-kernel
    (((2, 2, 12, 17), 256, (5, 5), 1, 2, 1, 2), "nchw", "backward_input", "direct_nchw"),  # 128 x 5x5 taps
    (((1, 2, 8, 17), 128, (5, 5), 1, 0, 1, 2), "nchw", "backward_input", "implicit_gemm"),  # pixel rows: 64 x 5x5
]


@pytest.mark.skipif(conv_ext._C.cpu_capability() == "portable", reason="the reference kernel runs these")
@pytest.mark.parametrize("shape,layout,pass_name,kernel", LONG_REDUCTIONS, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_reduction_accuracy(shape, layout, pass_name, kernel, seed):
    err, err_torch, algorithm = float32_errors(shape, layout, pass_name, seed)
    assert algorithm == kernel
    assert err <= 4 * err_torch + 1e-7 and err <= 6e-7, (err, err_torch)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_bias_gradient_sums_in_float64(layout):
    """float32 bias gradients: the float64 sum of the float32 values, rounded once (a float32 sum of
    the 276 pixels of one channel was 8e-6 off, 10x torch's pairwise sum)."""
    g = torch.Generator().manual_seed(2)
    dy = torch.randn(3, 5, 23, 12, generator=g)
    if layout == "nhwc":
        dy = dy.contiguous(memory_format=torch.channels_last)
    exact = dy.double().sum((0, 2, 3))
    for d in (dy, dy[:1, :1]):  # many channels and many pixels a chunk; one channel of one image
        e = exact if d is dy else d.double().sum((0, 2, 3))
        assert ((ops.conv2d_backward_bias(d).double() - e).abs() <= e.abs() * 1.01 * 2.0**-24).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [GENERAL[3], ((2, 64, 9, 9), 64, (3, 3), 1, 1, 1, 1), ((1, 24, 9, 9), 24, (3, 3), 2, 1, 1, 24)],
                         ids=["strided", "winograd", "depthwise"])
def test_half_types_run_float32_kernels(shape, layout, dtype):
    """float16/bfloat16: every pass runs the float32 algorithm the problem gets in float32 (not the
    reference), on float32 copies, and rounds once: the same values as the float32 op on the
    converted operands, rounded, in the same memory format."""
    x, wt, b, dy, geo = (t.to(dtype) if torch.is_tensor(t) else t for t in make(shape, layout))
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    for pass_name in PASSES:
        ours = run_pass(pass_name, x, wt, b, dy, geo)
        algo = testing.last_cpu_algorithm(pass_name)
        want = run_pass(pass_name, *(t.float() for t in (x, wt, b, dy)), geo)
        assert algo != "reference" or conv_ext._C.cpu_capability() == "portable"
        if algo in BF16_ALGORITHMS and dtype == torch.bfloat16:  # its own kernel: float32 sums in another order
            assert dtype == torch.bfloat16 and rel_error(ours, want) <= 2 ** -7, pass_name
        elif algo in FP16_ALGORITHMS:  # float16's own kernel (AMX): float32 sums of split products
            assert dtype == torch.float16 and rel_error(ours, want) <= 2 ** -10, pass_name
        else:
            assert testing.last_cpu_algorithm(pass_name) == algo
            assert ours.dtype == dtype and torch.equal(ours, want.to(dtype)), pass_name
        if pass_name != "backward_weight":
            assert ours.is_contiguous(memory_format=fmt), pass_name


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [
    ((2, 16, 12, 11), 40, (1, 1), 1, 0, 1, 1),       # 1x1 read in place: float16 stores, a masked channel tail
    ((1, 24, 9, 13), 144, (1, 1), 2, 0, 1, 1),       # strided 1x1 in place
    ((2, 24, 9, 10), 48, (3, 3), 1, 1, 1, 1),        # 3x3 on a band, tiles across rows
    ((2, 20, 7, 9), 64, (5, 3), 2, (2, 1), (1, 2), 1),  # strided, dilated, uneven padding
    ((2, 32, 10, 12), 64, (3, 3), 1, 1, 1, 2),       # groups
    ((1, 100, 6, 7), 64, (5, 5), 1, 2, 1, 1),        # reduction panels (not one): float32 sums rounded after
    ((2, 16, 9, 20), 16, (3, 3), 1, 1, 1, 1),        # one vector of channels, 3 taps: row runs
    ((2, 8, 9, 23), 12, (5, 5), 1, 2, 1, 1),         # row runs of 5 taps and their rests, a masked channel tail
    ((1, 16, 12, 21), 16, (3, 3), 2, 1, 1, 1),       # strided row runs
    ((2, 3, 11, 30), 32, (3, 3), 2, 1, 1, 1),        # 3 channels: row tiles read in place, edge pixels, rests
    ((1, 3, 9, 40), 40, (3, 3), 1, 1, 1, 1),         # row tiles at stride 1, a masked channel tail
    ((2, 3, 10, 29), 64, (1, 1), 1, 0, 1, 1),        # row tiles on x as it lies (direct: a 1x1 on 3 channels)
    ((1, 3, 12, 23), 64, (5, 5), 1, 2, 1, 1),        # 5x5 row tiles, 4 vectors of channels
    ((1, 3, 20, 23), 32, (11, 11), 1, 5, 1, 1),      # 363 taps: row tiles by the micro-kernel (longer than a chain)
    ((2, 3, 64, 66), 64, (3, 3), 1, 1, 1, 1),        # row tiles streamed (>= 512K outputs)
    ((2, 8, 64, 66), 64, (1, 1), 1, 0, 1, 1),        # >= 512K outputs, whole lines a pixel block: streaming stores
])
def test_float16_forward_rounded_by_the_tiles(shape, bias):
    """implicit_gemm's channels_last float16 forward (float32 copies of x and the filter, the
    sums rounded to float16 as they are stored where the reduction is one panel, else through a
    float32 y): the float32 forward on the converted operands, rounded once, bit for bit, in
    channels_last; with a channels_last filter too."""
    assert_float16_rounded_by_implicit_gemm("forward", shape, bias)


def assert_float16_rounded_by_implicit_gemm(pass_name, shape, bias=False):
    """The float16 pass on implicit_gemm equals the float32 pass on the converted operands, rounded
    once, in channels_last, with a KCRS and a channels_last filter."""
    if conv_ext.info()["cpu_capability"] == "portable":
        pytest.skip("no SIMD kernels")
    x, wt, b, dy, geo = (t.to(torch.float16) if torch.is_tensor(t) else t for t in make(shape, "nhwc"))
    b = b if bias else None
    want = run_pass(pass_name, x.float(), wt.float(), None if b is None else b.float(), dy.float(), geo)
    assert testing.last_cpu_algorithm(pass_name) == "implicit_gemm"
    for w in (wt, wt.contiguous(memory_format=torch.channels_last)):
        # (forced: with AMX tiles amx_fp16 takes most of these problems)
        out = forced("implicit_gemm", pass_name, x, w, b, dy, geo)
        assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, want.to(torch.float16))


@pytest.mark.parametrize("shape", [
    ((2, 40, 12, 11), 24, (3, 3), 1, 1, 1, 1),       # dx by the turned-round forward's tiles, a masked channel tail
    ((2, 24, 9, 10), 32, (1, 3), 1, (0, 1), 1, 1),   # 1x3
    ((1, 48, 10, 13), 40, (5, 3), 1, (2, 1), (1, 2), 1),  # dilated, uneven padding
    ((2, 32, 10, 12), 32, (3, 3), 1, 1, 1, 2),       # groups
    ((2, 16, 9, 20), 24, (3, 3), 1, 1, 1, 1),        # 16 dx channels: row runs
    ((1, 64, 6, 7), 200, (5, 5), 1, 2, 1, 1),        # reduction panels: a float32 dx rounded after
    ((2, 3, 11, 12), 32, (3, 3), 1, 1, 1, 1),        # 3 dx channels: pixel rows, a float32 dx rounded after
], ids=str)
def test_float16_backward_input_rounded_by_the_tiles(shape):
    """implicit_gemm's channels_last float16 backward-input at stride 1 (the forward turned round on
    float32 copies of dy and the filter, dx rounded to float16 as it is stored where it can): the
    float32 pass on the converted operands, rounded once, bit for bit."""
    assert_float16_rounded_by_implicit_gemm("backward_input", shape)


AMX_FP16_SHAPES = [
    ((2, 64, 9, 11), 64, (3, 3), 1, 1, 1, 1),          # tiles across rows, 192 band channels
    ((2, 3, 12, 13), 32, (3, 3), 1, 1, 1, 1),          # 9 band channels: row_mode, odd (3 taps a step)
    ((1, 3, 21, 19), 64, (7, 7), 2, 3, 1, 1),          # the stem, small
    ((2, 4, 10, 9), 16, (3, 3), 1, 1, 1, 1),           # 12 band channels: row_mode, even (two taps a step)
    ((2, 11, 7, 9), 24, (3, 3), 1, 1, 1, 1),           # 33 band channels: a block and 1, K tail
    ((2, 40, 9, 8), 48, (1, 1), 1, 0, 1, 1),           # 1x1: not read in place (the band is split)
    ((1, 48, 11, 13), 40, (3, 3), 2, 1, 1, 1),         # strided: backward-input by phases
    ((1, 20, 12, 12), 17, (5, 3), 1, (2, 1), (2, 1), 1),  # dilated, uneven padding, 17 filters
    ((2, 17, 8, 8), 64, (3, 3), 1, 3, 1, 1),           # padding past the taps: backward-input by phases
    ((2, 16, 9, 10), 6, (3, 3), 1, 1, 1, 1),           # backward-input: 18 dy band channels, row_mode
    ((1, 24, 7, 11), 7, (3, 3), 1, 1, 1, 1),           # backward-input: 21, odd
    ((2, 48, 7, 9), 32, (1, 1), 1, 0, 1, 1),           # backward-weight of the pixels, dy as A (above: x as A)
]


def fp16_grid(shape, layout, seed, bias=True, long_filter=False, long_one=None):
    """float16 operands whose products and float32 sums are exact: x and dy integers of up to 11
    bits times 2^-10 (every float16 bit of the significand used: a nonzero lo), the filter 4-bit
    integers times 2^-6 (bfloat16 values: lo 0, so hi x hi + lo x hi is every product), or with
    long_filter the other way round (hi x hi + hi x lo); the bias a multiple of 2^-16. With at
    most 512 products a sum, every partial sum stays under 2^8. long_one ("x" or "dy": for
    backward-weight, whose products are dy x x): that one long, the other short."""
    (n, c, h, w), k, (r, s), stride, padding, dilation, groups = shape
    g = torch.Generator().manual_seed(seed)
    long, short = lambda *size: torch.randint(-2047, 2048, size, generator=g).half() * 2 ** -10, \
        lambda *size: torch.randint(-15, 16, size, generator=g).half() * 2 ** -6
    x = (long if long_one == "x" or (long_one is None and not long_filter) else short)(n, c, h, w)
    wt = (long if long_filter else short)(k, c // groups, r, s)
    b = torch.randint(-4096, 4097, (k,), generator=g).half() * 2 ** -12 if bias else None
    geo = (_pair(stride), _pair(padding), _pair(dilation), groups)
    dy_long = long_one == "dy" or (long_one is None and not long_filter)
    dy = (long if dy_long else short)(*F.conv2d(x.float(), wt.float(), None, *geo).shape)
    if layout == "nhwc":
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    return x, wt, b, dy, geo


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_name", ["forward", "backward_input"])
@pytest.mark.parametrize("shape", AMX_FP16_SHAPES, ids=str)
def test_amx_fp16_exact_products(shape, pass_name, layout):
    """amx_fp16 (float16 as bfloat16 hi + lo on the AMX tiles): where every product is hi x hi +
    lo x hi exactly (a filter of bfloat16 values), or hi x hi + hi x lo (x and dy bfloat16's), and
    every sum exact in float32, the result is the exact one rounded once, bit for bit the
    reference kernel's; with a channels_last filter too, with and without bias. A hi or lo lost,
    a channel of the band or the filter misplaced, a store off by a pixel: not equal."""
    for bias, long_filter in ((True, False), (False, False), (True, True)):
        x, wt, b, dy, geo = fp16_grid(shape, layout, seed=len(str(shape)), bias=bias, long_filter=long_filter)
        with testing.force_cpu_algorithm({pass_name: "reference"}):
            want = run_pass(pass_name, x, wt, b, dy, geo)
        for w in (wt, wt.contiguous(memory_format=torch.channels_last)):
            out = forced("amx_fp16", pass_name, x, w, b, dy, geo)
            if out is None and not conv_ext.cpu_amx_bf16():
                pytest.skip("amx_fp16 does not support this problem (or this CPU)")
            if out is None:  # (amx_bf16 wants 16+ filters: forward's K, backward-input's dx channels)
                assert shape[1] < 16 if pass_name == "forward" else shape[0][1] < 16
                return
            assert out.dtype == torch.float16 and torch.equal(out, want), (bias, w.stride())


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", AMX_FP16_SHAPES, ids=str)
def test_amx_fp16_backward_weight_exact_products(shape, layout):
    """amx_fp16's backward-weight (sums over three times the pixels: dy's hi with x's hi and lo,
    dy's lo with x's hi): where x's values are bfloat16's and dy's are not (every product hi x hi
    + lo x hi), or the other way round, and every sum is exact in float32, dw is the exact one
    rounded once, bit for bit the reference kernel's, for a KCRS and a channels_last filter. A lo
    part lost, an image of the copies misplaced, a pixel pair off by one: not equal."""
    (n, c, h, w), k = shape[0], shape[1]
    for long_one in ("x", "dy"):
        x, wt, b, dy, geo = fp16_grid(shape, layout, seed=len(str(shape)), bias=False, long_one=long_one)
        with testing.force_cpu_algorithm({"backward_weight": "reference"}):
            want = run_pass("backward_weight", x, wt, None, dy, geo)
        for wl in (wt, wt.contiguous(memory_format=torch.channels_last)):
            out = forced("amx_fp16", "backward_weight", x, wl, None, dy, geo)
            if out is None and not conv_ext.cpu_amx_bf16():
                pytest.skip("amx_fp16 does not support this problem (or this CPU)")
            if out is None:  # (16+ channels and filters)
                assert min(c, k) < 16
                return
            assert out.dtype == torch.float16 and torch.equal(out, want), (long_one, wl.stride())


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_name", ["forward", "backward_input", "backward_weight"])
def test_amx_fp16_nonfinite_operands(pass_name, layout):
    """An infinity or a NaN in x (dy) or the filter (backward-weight: in dy or x) sends amx_fp16's
    problem to float32 copies (an infinite hi meets a lo of 0 there: inf x 0 = NaN where torch has
    inf): the float32 pass on the converted operands, rounded, NaNs where it has them. For
    backward-weight also on a 1x1 layer (its tiles made from the pixels as they are read) and an
    RGB stem (amx_bf16_rows' kernel)."""
    shapes = [((2, 64, 6, 7), 64, (3, 3), 1, 1, 1, 1)]
    if pass_name == "backward_weight":  # (and its 1x1 and RGB-stem kernels)
        shapes += [((2, 48, 6, 7), 32, (1, 1), 1, 0, 1, 1), ((2, 3, 12, 13), 32, (3, 3), 1, 1, 1, 1)]
    for shape, (where, value) in itertools.product(shapes, (
            ("a", float("inf")), ("w", float("-inf")), ("a", float("nan")), ("w", float("nan")))):
        x, wt, b, dy, geo = fp16_grid(shape, layout, seed=3)
        a = x if pass_name == "forward" else dy
        if pass_name == "backward_weight":  # (dy and x)
            (dy if where == "a" else x)[1, 2, 2, 3] = value
        elif where == "a":
            a[1, 5, 2, 3] = value
        else:
            wt[3, 7, 1, 2] = value
            wt[0, 0, 0, 1] = 0.5 + 2 ** -10  # (a lo not 0: the filter's other values are bfloat16's)
        want = run_pass(pass_name, *(t.float() for t in (x, wt, b, dy)), geo).half()
        out = forced("amx_fp16", pass_name, x, wt, b, dy, geo)
        if out is None:
            pytest.skip("amx_fp16 does not support this problem (or this CPU)")
        assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.nan_to_num(), want.nan_to_num()), (where, value)


@pytest.mark.parametrize("pass_name", ["forward", "backward_input"])
def test_amx_fp16_few_pixels_use_only_a_kept_filter(pass_name):
    """A filter of many values and few output pixels (512->256 3x3 @4x4): splitting and packing it
    costs more than the tiles gain, so amx_fp16 runs a filter the cache does not keep on float32
    copies (a training step: a new version each call) and its tiles on a kept one (the second call
    with the same version: inference)."""
    x, wt, b, dy, geo = make(((1, 512, 4, 4), 256, (3, 3), 1, 1, 1, 1), "nchw", torch.float16)
    want32 = run_pass(pass_name, *(t.float() for t in (x, wt, b, dy)), geo).half()
    truth = torch_pass(pass_name, *(t.double() for t in (x, wt, b, dy)), geo)
    conv_ext.empty_cache()
    first = forced("amx_fp16", pass_name, x, wt, b, dy, geo)
    if first is None:
        pytest.skip("amx_fp16 does not support this problem (or this CPU)")
    assert torch.equal(first, want32)
    second = forced("amx_fp16", pass_name, x, wt, b, dy, geo)
    assert conv_ext.info()["cpu_filter_cache_bytes"] > 0
    assert rel_error(second, truth) <= rel_error(want32, truth) + 2 ** -10
    with torch.no_grad():
        wt.mul_(1.0)  # a new version: the kept filter no longer applies
    assert torch.equal(forced("amx_fp16", pass_name, x, wt, b, dy, geo), want32)
    conv_ext.empty_cache()


def small_ints(seed, top, dtype=torch.bfloat16):
    """A maker of bfloat16 (or dtype) tensors of nonzero integers in [-top, top]: products and
    float32 sums of them are exact, so a kernel's result can be held to the exact one, element for
    element."""
    g = torch.Generator().manual_seed(seed)

    def ints(*size):
        v = torch.randint(1, top + 1, size, generator=g) * (torch.randint(0, 2, size, generator=g) * 2 - 1)
        return v.to(dtype)
    return ints


AMX_EXACT = AMX + AMX_ROWS + [
    ((2, 2048, 3, 3), 48, (1, 1), 1, 0, 1, 1),       # the filter's 2048 channels 4 KiB apart
    ((1, 34, 6, 7), 32, (2, 2), 1, 1, 1, 1),
    ((1, 32, 5, 6), 32, (1, 1), 1, 1, 1, 1),          # padding past dil (R-1): backward-input by phases
    ((2, 32, 7, 5), 48, (1, 1), 3, 0, 1, 1),          # 1x1/3: eight of nine dx phases without taps
    ((1, 40, 9, 10), 33, (3, 3), 2, 2, 2, 1),         # stride 2, dilation 2: phases without taps
    ((1, 32, 2, 1), 32, (1, 1), (3, 2), 0, 1, 1),     # phases without pixels (H, W < stride)
    ((2, 32, 32, 1), 32, (3, 1), 1, (1, 0), 1, 1),    # backward-weight: a grid of 32 x 1 pixels, every one
                                                      # in dy, and taps at odd offsets (1 pixel a row)
    ((1, 32, 28, 29), 80, (1, 1), 1, 0, 1, 1),        # 1x1 with more filters: channels_last backward-weight
                                                      # with x and dy's roles swapped (dw transposed)
    ((2, 40, 5, 7), 48, (1, 1), 1, 0, 1, 1),          # channels_last 1x1 read in place, A rows of the last
    ((1, 24, 6, 5), 40, (1, 1), 1, 0, 1, 1),          # block reaching into the next pixel (40, 48; 24)
    ((1, 400, 5, 6), 40, (3, 3), 1, 1, 1, 1),         # bf16_pairs: 200 words, 2 panels (float32 out, rounded after);
    ((1, 32, 5, 6), 400, (3, 3), 1, 1, 1, 1),         # backward-input turned round, 2 panels;
    ((1, 32, 7, 8), 704, (3, 3), 2, 1, 1, 1),         # strided backward-input, 3 panels of output channels
    ((4, 32, 12, 12), 48, (1, 1), 1, 0, 1, 1),        # bf16_pairs' 1x1 backward-weight on tall rows: channels_last
                                                      # 576 pixels as 3 rows of 192, NCHW a row a plane
    ((3, 32, 7, 7), 32, (1, 1), 1, 0, 1, 1),          # 147 pixels, no even width: the planes' rows of 7
    ((2, 16, 6, 16), 16, (5, 5), 1, 2, 1, 1),         # bf16_pairs forward "row runs" (one vector of filters),
    ((2, 16, 5, 11), 12, (3, 3), 1, 1, 1, 1),         # rounded by the runs (rows of 16) or not (a rest: 11)
    ((2, 32, 9, 21), 32, (3, 3), 1, 1, 1, 8),         # direct_nchw's bfloat16 forward: groups of 4 channels
                                                      # (2 words), rows of 2 vectors, 4 groups a task (NHWC)
    ((2, 64, 11, 13), 64, (3, 3), 2, 1, 1, 8),        # 8 channels a group at stride 2 (phase words), odd width
    ((1, 16, 13, 14), 8, (3, 3), 3, 2, 1, 4),         # stride 3 (one word at a time), 2 filters a group
    ((1, 8, 7, 33), 12, (5, 3), (1, 2), (2, 1), (1, 2), 2),  # dilation in width, stride 2 in width only
    ((1, 16, 13, 14), 16, (3, 3), 2, 2, 1, 4),        # grouped_interleaved's bfloat16 words: 4 + 4 a group,
                                                      # backward-input's 4 stride classes
    ((3, 40, 5, 50), 40, (3, 3), 1, 1, 1, 5),         # 8 + 8: 5 groups (a last block of one), rows of 50
    ((2, 16, 62, 64), 32, (3, 5), (3, 2), (1, 2), (2, 1), 4),  # direct_nchw's bfloat16 backward-input (big enough
                                                      # to be chosen): strided phases, filters in pairs of words
    ((2, 16, 30, 22), 8, (3, 3), 1, 2, 2, 4),         # stride 1 with dilation: NCHW rows joined into words
    ((2, 3, 17, 20), 16, (5, 5), 2, 2, 1, 1),         # bf16_pairs' flat rows (channels_last, odd C, even
                                                      # stride): reads on even offsets, a zero after each row
    ((1, 5, 18, 18), 32, (3, 7), (1, 2), (1, 3), (2, 1), 1),  # odd offsets (a zero before), dilated rows
    ((2, 3, 16, 18), 32, (3, 3), 2, 1, 1, 1),         # MobileNetV2's stem
    ((2, 64, 12, 14), 64, (3, 3), 1, 1, 1, 4),        # bf16_pairs' runs on x in place: 16 + 16 channels a
    ((2, 64, 20, 28), 64, (3, 3), 2, 1, 1, 4),        # group, padding columns read as zero words; stride 2
    ((1, 64, 8, 14), 32, (2, 3), 1, (3, 1), 1, 2),    # rows of padding only, 32 + 16 channels a group
    ((2, 32, 13, 13), 32, (3, 3), 2, 0, 1, 2),        # bf16_pairs' scatter runs (strided backward-input,
    ((1, 16, 11, 30), 16, (5, 3), (1, 2), (2, 1), (2, 1), 1),  # 16 dx channels): parities, partial runs,
    ((1, 16, 7, 8), 704, (3, 3), 2, 1, 1, 1),         # row taps dilated, runs added over 3 panels
    ((2, 32, 9, 56), 32, (3, 3), 2, 1, 1, 4),         # grouped_interleaved's 3-tap rows, stride 2 (29 columns a tile)
    ((2, 3, 12, 33), 16, (3, 3), 1, 1, 1, 1),         # direct_nchw's bfloat16 NCHW forward, odd channel counts: the
    ((1, 3, 14, 17), 8, (3, 3), 3, 1, 1, 1),          # last channel's word half zero (stride 1 rows joined,
    ((2, 12, 9, 10), 8, (3, 3), 1, 1, 1, 4),          # stride 3 word by word); groups of 3 channels, 2 filters;
    ((1, 8, 9, 11), 16, (3, 3), 2, 1, 1, 8),          # groups of one channel and 2 filters (not depthwise)
    ((2, 3, 12, 16), 16, (3, 3), 1, 1, 1, 1),         # bf16_pairs' flat rows of pixel pairs (channels_last, odd C,
    ((1, 3, 9, 10), 8, (3, 3), 1, (1, 0), 1, 1),      # stride 1, even Q): a lead zero (pw*C odd) or none,
    ((2, 5, 7, 12), 24, (5, 5), 1, 2, 1, 1),          # 5 channels 5x5, dilated rows; an odd Q (copies
    ((1, 3, 6, 8), 4, (3, 3), 1, 2, (2, 1), 1),       # with a zero channel)
    ((1, 3, 6, 10), 8, (3, 4), 1, 1, 1, 1),
    ((2, 16, 24, 24), 20, (1, 1), 1, 0, 1, 1),        # gemm_1x1's bfloat16 backward-weight on pixel-pair words:
    ((3, 40, 4, 6), 24, (1, 1), 1, 0, 1, 1),          # pieces of 256 words and a rest, whole images a call (12
    ((2, 32, 6, 8), 48, (1, 1), 1, 0, 1, 2),          # words a plane), groups, channel tails (20 of 32 lanes)
    ((2, 40, 33, 35), 48, (1, 1), 1, 0, 1, 1),        # amx_bf16's 1x1 backward-weight made from the pixels (and NCHW
    ((1, 72, 45, 47), 16, (1, 1), 1, 0, 1, 1),        # rows_1x1): two parts (swapped; 6 and 3 pixels in the last step),
    ((1, 512, 2, 3), 2048, (1, 1), 1, 0, 1, 1),       # 16 filters (half A pairs), unswapped with K > C;
    ((3, 17, 3, 5), 130, (1, 1), 1, 0, 1, 1),         # odd counts: 45 pixels, 17 channels, 130 filters
]


@pytest.mark.parametrize("filter_layout", ["kcrs", "krsc"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("shape", AMX_EXACT)
@pytest.mark.parametrize("algo", BF16_ALGORITHMS)
def test_amx_bf16_exact_on_integers(algo, shape, pass_name, layout, filter_layout):
    """amx_bf16 (and amx_bf16_rows) on small nonzero integers: every product and float32 sum is
    exact, so the result must be the exact one rounded to bfloat16, element for element -- any
    value of the packed filter or the band out of place shows (the filter's first and last
    elements included)."""
    if algo not in testing.cpu_algorithms(pass_name):
        pytest.skip(f"{algo} has no {pass_name}")
    (n, c, h, w), k, (r, s), stride, padding, dilation, groups = shape
    geo = (_pair(stride), _pair(padding), _pair(dilation), groups)
    ints = small_ints(seed=1, top=2)
    x, wt, b = ints(n, c, h, w), ints(k, c // groups, r, s), ints(k)
    dy = ints(*F.conv2d(x.double(), wt.double(), None, *geo).shape)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
    if filter_layout == "krsc":
        wt = wt.contiguous(memory_format=torch.channels_last)
    out = forced(algo, pass_name, x, wt, b, dy, geo)
    if out is None:
        pytest.skip(f"{algo} does not support this problem (or this CPU)")
    exact = torch_pass(pass_name, *(t.double() for t in (x, wt, b, dy)), geo).to(torch.bfloat16)
    assert torch.equal(out, exact), (out.double() - exact.double()).abs().max()


@pytest.mark.parametrize("shape", [
    ((2, 32, 12, 13), 32, (3, 3), 1, 1, 1, 32),
    ((1, 20, 11, 17), 20, (3, 3), 2, 1, 1, 20),        # channel tail, strided, odd width (edge runs)
    ((2, 48, 9, 21), 48, (5, 5), 2, 2, 1, 48),
    ((1, 24, 8, 9), 24, (7, 7), 1, 3, 1, 24),
    ((1, 16, 10, 10), 16, (3, 3), (1, 2), (0, 2), (2, 1), 16),  # dilation in height, uneven padding
    ((2, 8, 17, 19), 8, (3, 3), 2, 1, 1, 8),           # NCHW flat planes: strided (phase planes), odd
    ((2, 32, 11, 13), 32, (3, 3), 2, 1, 1, 32),        # NCHW on NHWC tiles (strided small planes): blocks of 32
    ((1, 48, 9, 10), 48, (3, 3), 1, 0, 1, 48),         # NCHW tiles, no padding (not the flat planes'), blocks of 16
    ((1, 64, 14, 14), 64, (5, 5), 2, 2, 1, 64),        # NCHW tiles, blocks of 64, 5x5
    ((2, 40, 13, 21), 40, (3, 3), 3, 1, 1, 40),        # channels_last strided backward-input (the gather):
    ((1, 24, 12, 30), 24, (3, 3), 2, 1, 2, 24),        # stride 3 (a phase without runs), dilation, runs of 8
    ((3, 16, 4, 6), 16, (3, 3), 2, 1, 1, 16),          # NHWC backward-weight's kept widened rows: a task across images
    ((1, 16, 14, 10), 16, (3, 3), 1, 3, 3, 16),        # the same, dilation 3: rows not kept by ih mod 3
    ((2, 24, 7, 7), 24, (3, 3), 1, 1, 1, 24),          # NCHW flat planes of <= 4 vectors: pairs of planes a task
    ((1, 5, 6, 6), 5, (3, 3), 1, 1, 1, 5),             # ... an odd channel count: one plane a task
    ((2, 16, 8, 8), 16, (3, 3), 2, 1, 1, 16),          # strided backward-input's flat pairs (forward: NHWC tiles)
])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_depthwise_bfloat16_exact(shape, layout, pass_name, dtype):
    """The depthwise kernel's own bfloat16 and float16 passes (channels_last: 16-bit rows
    converted as they are loaded, backward-input at stride 1 as the forward with the taps turned
    round, strided through the gather's phase runs, backward-weight on rows widened per task;
    NCHW forward and backward-input: flat planes widened per task; NCHW planes the flat kernels
    do not take (small ones, C % 16 == 0) on NHWC tiles widened and rounded in their transposes,
    backward-weight included) on small nonzero integers equal the exact result rounded to the
    dtype, bias included."""
    if conv_ext.info()["cpu_capability"] == "portable":
        pytest.skip("no SIMD kernels")
    (n, c, h, w), k, (r, s), stride, padding, dilation, groups = shape
    geo = (_pair(stride), _pair(padding), _pair(dilation), groups)
    ints = small_ints(seed=2, top=3, dtype=dtype)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = ints(n, c, h, w).contiguous(memory_format=fmt)
    wt, b = ints(k, 1, r, s), ints(k)
    dy = ints(*F.conv2d(x.double(), wt.double(), None, *geo).shape).contiguous(memory_format=fmt)
    out = forced("depthwise", pass_name, x, wt, b, dy, geo)
    if out is None:
        assert layout == "nchw"  # channels_last: every pass runs natively
        pytest.skip("not this kernel's shapes (NCHW: 'same' width or small planes, backward-weight strided or on the "
                    "small ones only)")
    assert out.is_contiguous(memory_format=fmt) and out.dtype == dtype
    exact = torch_pass(pass_name, *(t.double() for t in (x, wt, b, dy)), geo).to(dtype)
    assert torch.equal(out, exact)


INF, NAN = float("inf"), float("nan")
ROUNDING_CASES = {  # (x, centre, bias): each row one channel
    torch.bfloat16: [
        (1.0, 1.0, 2**-8), (1 + 2**-7, 1.0, 2**-8),       # ties: down to even, up to even
        (NAN, 1.0, 0.0), (INF, 1.0, 0.0), (-INF, 1.0, 0.0), (3e38, 2.0, 0.0),  # NaN, infinities, overflow
        (-1.0, 1.0, -2**-8), (2**-130, 1.0, 0.0), (1.0, 1.5, 2**-9), (1 + 2**-7, 1.5, 2**-9),
        (5.0, 1.0, 2**-6), (1.5, 1.0, 2**-9), (2.0, 1.0, 2**-7), (0.0, 1.0, 2**-140),  # a subnormal
        (-0.0, 1.0, 0.0), (7.0, 1.0, 0.0), (1.0, 1.0, 3 * 2**-8), (3.0, 1.0, 0.0), (1 + 2**-7, 1.0, -2**-8)],
    torch.float16: [
        (1.0, 1.0, 2**-11), (1 + 2**-10, 1.0, 2**-11),    # ties: down to even, up to even
        (NAN, 1.0, 0.0), (INF, 1.0, 0.0), (-INF, 1.0, 0.0), (60000.0, 2.0, 0.0),  # NaN, infinities, overflow
        (65504.0, 1.0, 16.0),                              # the tie past the largest value: infinity
        (-1.0, 1.0, -2**-11), (2**-20, 1.0, 0.0), (2**-24, 1.5, 0.0),  # subnormals, a subnormal tie
        (0.0, 1.0, 2**-24), (1.0, 1.5, 2**-12), (3.0, 1.0, 2**-10), (1.5, 1.0, 2**-11),
        (-0.0, 1.0, 0.0), (7.0, 1.0, 0.0), (1.0, 1.0, 3 * 2**-11), (1000.0, 1.0, 0.25), (1 + 2**-10, 1.0, -2**-11)],
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_depthwise_bfloat16_rounding(layout, dtype):
    """The depthwise kernel's bfloat16 and float16 outputs are rounded as c10::BFloat16 and torch's
    float16 copies round (Isa::narrow, Isa::narrow_half: channels_last rows stored rounded by the
    runs, NCHW planes by narrow_row): to nearest, ties to even, a NaN stays a NaN, overflow to
    infinity, subnormals kept. One pixel, padding 1: each output is bias + x * (the filter's
    centre), exact in float32, so the float64 result rounded once is the answer element for
    element. The 19 cases twice, 38 channels: whole vectors and a masked tail (AVX-512
    channels_last bfloat16: a block of 32 channels split even/odd, and a tail)."""
    if conv_ext.info()["cpu_capability"] == "portable":
        pytest.skip("no SIMD kernels")
    cases = ROUNDING_CASES[dtype] * 2
    c = len(cases)
    xs, centres, biases = (torch.tensor(v, dtype=torch.float64) for v in zip(*cases))
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = xs.to(dtype).view(1, c, 1, 1).contiguous(memory_format=fmt)
    wt = torch.ones(c, 1, 3, 3, dtype=dtype)
    wt[:, 0, 1, 1] = centres.to(dtype)
    b = biases.to(dtype)
    geo = ((1, 1), (1, 1), (1, 1), c)
    out = forced("depthwise", "forward", x, wt, b, None, geo)
    assert out is not None and out.dtype == dtype
    exact = F.conv2d(x.double(), wt.double(), b.double(), *geo).float().to(dtype)
    assert torch.equal(out.isnan(), exact.isnan())
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(exact)), (out.flatten(), exact.flatten())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [
    ((1, 3, 20, 22), 64, (7, 7), 2, 3, 1, 1),      # amx_bf16 forward's filter-row steps, amx_bf16_rows
    ((1, 3, 10, 12), 16, (3, 3), 1, 1, 1, 1),      # bf16_pairs' flat rows of pixel pairs (zeros in every filter)
    ((2, 8, 9, 40), 33, (3, 5), 1, 2, 1, 1),       # amx_bf16_rows: windows of 40, rows of 40 pixels
    ((2, 16, 9, 10), 16, (3, 3), 1, 1, 1, 1),      # amx_bf16's 16-channel backward passes
    ((1, 32, 28, 28), 64, (1, 1), 1, 0, 1, 1),     # its swapped 1x1 backward-weight (channels_last)
    ((1, 40, 6, 7), 48, (1, 1), 1, 0, 1, 1),       # its in-place 1x1 reading into the next pixel
    ((2, 48, 7, 6), 40, (1, 1), 1, 0, 1, 1),       # ... and backward-input's, on dy (tasks test what they read)
    ((2, 80, 7, 6), 16, (1, 1), 1, 0, 1, 1),       # ... fewer filters than channels: tasks test their sums
    ((2, 24, 7, 6), 80, (1, 1), 1, 0, 1, 1),       # ... and backward-input's on dy's 80 channels
    ((2, 40, 5, 30), 48, (1, 1), 2, 0, 1, 1),      # ... strided (its sums tested; x's odd columns read past)
    ((2, 40, 8, 9), 24, (1, 1), 1, 0, 1, 1),       # ... 24 filters: sums tested as they are staged
    ((1, 64, 9, 9), 64, (3, 3), 1, 1, 1, 8),       # its small groups (block-diagonal filters)
    ((1, 64, 9, 9), 64, (3, 3), 2, 1, 1, 8),       # ... strided (backward-input by dx's phases)
    ((2, 64, 7, 6), 64, (1, 1), 1, 0, 1, 8),       # ... 1x1 (channels_last: read in place)
    ((1, 32, 8, 8), 32, (3, 3), 1, 1, 1, 1),
    ((1, 64, 9, 9), 64, (3, 3), 2, 1, 1, 1),
    ((1, 128, 9, 9), 128, (3, 3), 1, 1, 1, 8),     # ... and its groups of 16 channels
    ((1, 64, 8, 8), 64, (3, 3), 1, 1, 1, 1),       # winograd (backward-weight: direct sums where dw is not finite)
])
def test_nonfinite_values_stay_local(shape, layout, dtype):
    """An infinity or NaN in x (forward, backward-weight) or dy (backward-input) makes non-finite
    exactly the outputs that read it, as in float64 torch: a kernel that multiplies zeros it puts
    in with real neighbouring values (0 * inf = NaN) must not spread it (default algorithms). (Not
    dy for backward-weight: torch's own result there depends on whether it multiplies the padding.)"""
    x64, w64, b64, dy64, geo = make(shape, layout)
    n, c, h, w = x64.shape
    bad_x, bad_dy = x64.clone(), dy64.clone()
    bad_x[0, 0, h // 2, w - 1] = float("inf")
    bad_x[-1, c - 1, h - 1, 0] = float("nan")
    bad_dy[0, 0, 0, dy64.shape[3] - 1] = float("-inf")
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2 ** -6)
    for pass_name in PASSES:
        xx, dd = (x64, bad_dy) if pass_name == "backward_input" else (bad_x, dy64)
        x, wt, b, dy = (t.to(dtype) for t in (xx, w64, b64, dd))
        out = run_pass(pass_name, x, wt, b, dy, geo).double()
        truth = torch_pass(pass_name, *(t.double() for t in (x, wt, b, dy)), geo)
        finite = torch.isfinite(truth)
        assert torch.equal(torch.isfinite(out), finite), (pass_name, testing.last_cpu_algorithm(pass_name))
        assert rel_error(out[finite], truth[finite]) <= tol, pass_name


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_bfloat16_default_is_amx_where_available(layout):
    """bfloat16 layers with >= 32 channels run amx_bf16 by default in all three passes where the
    CPU has AMX (conv_ext.info()["cpu_amx_bf16"]), and the float32 path where it has neither AMX
    nor AVX512-BF16. With AVX512-BF16 but no AMX ("cpu_amx_bf16_emulated": amx_bf16 would emulate
    its tiles) they run bf16_pairs in all three passes."""
    info = conv_ext.info()
    amx, emulated = info["cpu_amx_bf16"], info["cpu_amx_bf16_emulated"]
    assert isinstance(amx, bool) and isinstance(emulated, bool) and (amx or not emulated)
    for stride in (1, 2):
        x, wt, b, dy, geo = make(((2, 64, 9, 9), 48, (3, 3), stride, 1, 1, 1), layout)
        for pass_name in PASSES:
            run_pass(pass_name, *(t.to(torch.bfloat16) for t in (x, wt, b, dy)), geo)
            algo = testing.last_cpu_algorithm(pass_name)
            assert (algo == "amx_bf16") == (amx and not emulated), (stride, pass_name, algo)
            assert (algo == "bf16_pairs") == emulated, (stride, pass_name, algo)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_float16_backward_weight_default(layout):
    """float16 backward-weight runs amx_fp16 by default where the CPU has AMX tiles (not emulated)
    on the layers where the split pays (amx_fp16.cpp's preferred: 1x1 stride-1 layers; others
    with 64+ channels and filters and 32M+ multiply-adds; RGB stems with 64+ filters and 16+
    values a filter row), and the float32 path elsewhere (CIFAR's 16->16 3x3, where the float32
    copies run Winograd at twice amx_fp16's speed; a 3x3 stem, 9 values a filter row)."""
    info = conv_ext.info()
    tiles = info["cpu_amx_bf16"] and not info["cpu_amx_bf16_emulated"]
    for shape, split in ((((2, 64, 28, 28), 64, (1, 1), 1, 0, 1, 1), True),
                         (((2, 64, 24, 24), 64, (3, 3), 1, 1, 1, 1), True),
                         (((4, 16, 32, 32), 16, (3, 3), 1, 1, 1, 1), False),
                         (((2, 3, 32, 32), 64, (7, 7), 2, 3, 1, 1), True),
                         (((4, 3, 32, 32), 64, (3, 3), 1, 1, 1, 1), False)):
        x, wt, b, dy, geo = (t.to(torch.float16) if torch.is_tensor(t) else t for t in make(shape, layout))
        run_pass("backward_weight", x, wt, b, dy, geo)
        assert (testing.last_cpu_algorithm("backward_weight") == "amx_fp16") == (tiles and split), shape


def test_module_training_step_matches_torch():
    """Autograd through the default choices, channels_last, matches nn.Conv2d."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(16, 32, 3, padding=1, stride=2)
    ours = conv_ext.Conv2d(16, 32, 3, padding=1, stride=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 15, 15).contiguous(memory_format=torch.channels_last).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    ref(x).square().sum().backward()
    ours(x2).square().sum().backward()
    for a, b in [(x2.grad, x.grad), (ours.weight.grad, ref.weight.grad), (ours.bias.grad, ref.bias.grad)]:
        assert rel_error(a, b) < 1e-5


@pytest.mark.skipif(os.environ.get("CONV_EXT_CPU_CAPABILITY") is not None, reason="already in a subprocess")
@pytest.mark.parametrize("level", ["avx2", "portable"])
def test_lower_capability_subprocess(level):
    """The same tests through the AVX2 kernels, and with no SIMD at all (reference only)."""
    if level == "avx2" and conv_ext._C.cpu_capability() == "portable":
        pytest.skip("this CPU has no AVX2")
    env = dict(os.environ, CONV_EXT_CPU_CAPABILITY=level)
    k = ("test_against_reference and ((implicit_gemm or gemm_1x1 or depthwise or winograd) and nhwc or direct_nchw"
         " or grouped_nhwc or gemm_f64) or test_gemm_f64 or test_depthwise_bfloat16 or test_nonfinite"
         if level == "avx2" else "test_default")
    if level == "avx2":  # a quarter of the cases keeps this quick; NCHW runs the same micro-kernel
        k += " or test_deterministic or test_default_accuracy or test_long_reduction or test_bias_gradient"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", k]
    if level == "portable":
        code = ("import conv_ext, torch; from conv_ext import testing;"
                "assert conv_ext._C.cpu_capability() == 'portable';"
                "y = conv_ext.conv2d(torch.randn(1, 3, 8, 8), torch.randn(16, 3, 3, 3), padding=1);"
                "assert testing.last_cpu_algorithm('forward') == 'reference';"
                "assert not conv_ext.info()['cpu_amx_bf16'];"
                "assert conv_ext._C.cpu_fma_peak_gflops() == 0")
        cmd = [sys.executable, "-c", code]
    run_ok(cmd, env, timeout=300)


def run_ok(cmd, env, timeout):
    """Runs cmd from the repository root with env; fails the test (with its output) unless it
    exits 0. Returns its stdout."""
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.skipif(os.environ.get("CONV_EXT_AMX_EMULATE") is not None, reason="already in a subprocess")
def test_amx_emulated_subprocess():
    """On an AMX machine, amx_bf16's tests again with the tiles emulated by AVX512-BF16 (what a
    CPU without AMX runs: there the tests above already run emulated)."""
    if not conv_ext.info()["cpu_amx_bf16"] or conv_ext.info()["cpu_amx_bf16_emulated"]:
        pytest.skip("no AMX here (emulated or not available: the tests above cover it)")
    env = dict(os.environ, CONV_EXT_AMX_EMULATE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
           "amx_bf16 and (exact_on_integers or against_reference) or default_is_amx"]
    assert " passed" in run_ok(cmd, env, timeout=600)


# channels_last filters (what model.to(memory_format=torch.channels_last) gives) are read in place
# by the algorithms that can (no KCRS copy per call); the packed panels must be the same, so the
# results are the same bits as with a contiguous filter.
@pytest.mark.parametrize("algo,pass_name", [(a, p) for a in ("implicit_gemm", "winograd", "winograd_s2")
                                             for p in ("forward", "backward_input") if a in testing.cpu_algorithms(p)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [s for s in GENERAL + WINOGRAD + WINOGRAD_S2 if s[2] != (1, 1)], ids=str)
def test_channels_last_filter(shape, layout, algo, pass_name):
    x64, w64, b64, dy64, geo = make(shape, layout)
    x, wt, b, dy = (t.float() for t in (x64, w64, b64, dy64))
    wt_cl = wt.contiguous(memory_format=torch.channels_last)
    if wt_cl.is_contiguous():
        pytest.skip("the channels_last filter is also contiguous")
    out, out_kcrs = (forced(algo, pass_name, x, w, b, dy, geo) for w in (wt_cl, wt))
    if out is None or out_kcrs is None:  # (an NCHW x with a channels_last filter runs channels_last,
        pytest.skip(f"{algo} does not support this problem")  # as torch's does: winograd_s2 takes only that)
    assert torch.equal(out, out_kcrs)
    with testing.force_cpu_algorithm({pass_name: "reference"}):
        ref64 = run_pass(pass_name, x64, w64, b64, dy64, geo)
    assert rel_error(out, ref64) <= 1e-5


@pytest.mark.parametrize("layout,algo,shape", [
    ("nchw", "implicit_gemm", ((1, 3, 448, 450), 64, 7, 2, 3)),
    ("nhwc", "implicit_gemm", ((1, 3, 448, 450), 64, 7, 2, 3)),
    ("nchw", "direct_nchw", ((1, 3, 448, 448), 64, 7, 2, 3)),
    ("nchw", "gemm_1x1", ((1, 32, 112, 115), 96, 1, 1, 0)),
    ("nhwc", "winograd", ((1, 40, 122, 120), 72, 3, 1, 1)),
    ("nchw", "winograd", ((1, 40, 122, 121), 72, 3, 1, 1)),
], ids=str)
def test_large_output_streamed(layout, algo, shape):
    """Outputs of >= 512K floats leave by streaming stores where whole, aligned vectors are written
    (implicit_gemm NCHW: its transposes; NHWC: the micro-kernel; direct_nchw: rows of whole
    vectors; gemm_1x1: 64-pixel blocks, the plane's tail masked; winograd: NHWC pixels' whole
    vectors -- 72 channels = 288 bytes, every other pixel starts mid-line, the last 8 channels
    masked -- and NCHW's transposes). Rows that end mid-vector (225, 115, 121 columns) mix
    streamed and ordinary stores; the result must match torch's, bias and all."""
    (n, c, h, w_), k, r, stride, pad = shape
    g = torch.Generator().manual_seed(5)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, c, h, w_, generator=g).contiguous(memory_format=fmt)
    w = torch.randn(k, c, r, r, generator=g) / 12
    b = torch.randn(k, generator=g)
    with testing.force_cpu_algorithm(algo, passes=("forward",)):
        y = conv_ext.conv2d(x, w, b, stride=stride, padding=pad)
        assert testing.last_cpu_algorithm("forward") == algo
    assert y.numel() >= 1 << 20
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride=stride, padding=pad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout,shape,k", [
    ("nchw", (1, 40, 112, 128), 48), ("nchw", (2, 20, 121, 115), 36),
    ("nhwc", (1, 48, 112, 128), 48), ("nhwc", (1, 72, 90, 90), 32), ("nhwc", (2, 20, 121, 115), 36),
], ids=str)
def test_implicit_gemm_strided_backward_input_streamed(layout, shape, k):
    """Strided backward-input (the phase gather) with dx of >= 512K floats. NCHW: its transposes
    write dx with streaming stores where a row block of a plane is whole, aligned vectors (128
    columns), ordinary stores elsewhere (115 columns: row blocks start mid-line); 40 and 20
    channels: the last vector of channels partly lanes past C, which the transposes do not write.
    Channels_last: the micro-kernel streams a pixel's block of channels when it is whole, aligned
    vectors (48 channels: every pixel; 72 = 48 + a masked 24, 288 bytes a pixel: every other
    pixel's block starts mid-line; 20: masked, never streamed)."""
    g = torch.Generator().manual_seed(9)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(*shape, generator=g).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(k, shape[1], 3, 3, generator=g) / 8
    with testing.force_cpu_algorithm("implicit_gemm", passes=("backward_input",)):
        y = conv_ext.conv2d(x, w, stride=2, padding=1)
        dy = torch.randn(y.shape, generator=g).contiguous(memory_format=fmt)
        (dx,) = torch.autograd.grad(y, x, dy)
        assert testing.last_cpu_algorithm("backward_input") == "implicit_gemm"
    assert dx.numel() >= 1 << 19 and dx.is_contiguous(memory_format=fmt)
    (dx_ref,) = torch.autograd.grad(F.conv2d(x, w, stride=2, padding=1), x, dy)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,k", [((1, 40, 160, 170), 24), ((2, 100, 75, 71), 16)], ids=str)
def test_gemm_1x1_nhwc_backward_input_streamed(shape, k):
    """Channels_last 1x1 backward-input with dx of >= 1M floats and one panel of filters: whole,
    aligned vectors of dx leave by streaming stores, the rest (40 channels = 160 bytes a pixel,
    every other pixel unaligned; 100 channels = a block of 64 and a masked one of 36) by ordinary ones."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(k, shape[1], 1, 1, generator=g) / 4
    with testing.force_cpu_algorithm("gemm_1x1", passes=("backward_input",)):
        y = conv_ext.conv2d(x, w)
        dy = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
        (dx,) = torch.autograd.grad(y, x, dy)
        assert testing.last_cpu_algorithm("backward_input") == "gemm_1x1"
    assert dx.numel() >= 1 << 20 and dx.is_contiguous(memory_format=torch.channels_last)
    (dx_ref,) = torch.autograd.grad(F.conv2d(x, w), x, dy)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,k", [((3, 256, 57, 58), 128), ((2, 48, 150, 151), 256)], ids=str)
def test_gemm_1x1_nhwc_backward_weight_prefetched(shape, k):
    """Channels_last 1x1 backward-weight whose broadcast operand (x, then dy) has >= 2M floats: the
    next piece of its pixels is prefetched while a piece's tiles run (pixel counts that are not a
    multiple of the 128-pixel piece: the last piece's prefetch stops at the chunk's end). Against a
    float64 reference."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape[0], k, *shape[2:], generator=g).contiguous(memory_format=torch.channels_last)
    a = x if shape[1] > k else dy
    assert a.numel() >= 1 << 21
    with testing.force_cpu_algorithm("gemm_1x1", passes=("backward_weight",)):
        dw = torch.ops.conv_ext.conv2d_backward_weight(dy, x, [k, shape[1], 1, 1], [1, 1], [0, 0], [1, 1], 1)
        assert testing.last_cpu_algorithm("backward_weight") == "gemm_1x1"
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), torch.zeros(k, shape[1], 1, 1, dtype=torch.float64),
                                              None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    assert rel_error(dw, ref) <= 1e-5


@pytest.mark.parametrize("shape,stride", [((1, 48, 150, 150), 1), ((1, 40, 160, 170), 2)], ids=str)
def test_depthwise_large_output_streamed(shape, stride):
    """Channels_last depthwise forward and backward-input with outputs of >= 1M floats: the runs'
    whole, aligned vectors leave by streaming stores (48 channels), edge pixels and unaligned
    pixel rows (40 channels = 160 bytes a pixel) by ordinary ones; the results must match torch's."""
    g = torch.Generator().manual_seed(6)
    c = shape[1]
    x = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(c, 1, 3, 3, generator=g) / 3).requires_grad_()
    b = torch.randn(c, generator=g)
    with testing.force_cpu_algorithm("depthwise", passes=("forward", "backward_input")):
        y = conv_ext.conv2d(x, w, b, stride=stride, padding=1, groups=c)
        assert testing.last_cpu_algorithm("forward") == "depthwise"
        dy = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
        (dx,) = torch.autograd.grad(y, x, dy)
        assert testing.last_cpu_algorithm("backward_input") == "depthwise"
    assert max(y.numel(), dx.numel()) >= 1 << 20
    y_ref = F.conv2d(x, w, b, stride=stride, padding=1, groups=c)
    (dx_ref,) = torch.autograd.grad(y_ref, x, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-4)


def odd_offset(t):
    """t's values in a tensor of the same layout whose data starts one element into its storage
    (a bfloat16 address that is not 4-byte aligned)."""
    fmt = torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else torch.contiguous_format
    base = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = base[1:].view(t.permute(0, 2, 3, 1).shape if fmt == torch.channels_last else t.shape)
    if fmt == torch.channels_last:
        out = out.permute(0, 3, 1, 2)
    out.copy_(t)
    assert out.data_ptr() % 4 != 0 and out.is_contiguous(memory_format=fmt)
    return out


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_name", PASSES)
def test_bf16_pairs_odd_offsets(layout, pass_name):
    """bf16_pairs reads channels_last activations and 1x1 or channels_last filters as 32-bit words
    in place: operands whose data is not 4-byte aligned (a view one element into its storage) give
    the same bits as aligned copies."""
    if "bf16_pairs" not in testing.cpu_algorithms(pass_name):
        pytest.skip(f"no bf16_pairs {pass_name}")
    for shape in [((2, 32, 9, 10), 48, (3, 3), 1, 1, 1, 1), ((2, 64, 7, 6), 32, (1, 1), 1, 0, 1, 1)]:
        x, wt, b, dy, geo = (t.to(torch.bfloat16) if torch.is_tensor(t) else t for t in make(shape, layout))
        for w in (wt, wt.contiguous(memory_format=torch.channels_last)):
            want = forced("bf16_pairs", pass_name, x, w, b, dy, geo)
            if want is None:
                pytest.skip("bf16_pairs does not support this problem (or this CPU)")
            got = forced("bf16_pairs", pass_name, odd_offset(x), odd_offset(w), b, odd_offset(dy), geo)
            assert torch.equal(got, want)
