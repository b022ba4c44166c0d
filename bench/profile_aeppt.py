"""One fused AEPPT launch (B = 4096, C = 100, T = 100) after warm-up, for Nsight Compute:
    ncu -k regex:aeppt_kernel -c 1 --section SpeedOfLight --section WarpStateStats \
        python3 bench/profile_aeppt.py [3xtf32]
"""
import sys

import torch

from mia_fast import ops
from mia_fast.testing import random_folded_weights, random_probs

g = torch.Generator().manual_seed(0)
weights = [t.cuda() for t in random_folded_weights(100, g)]
probs = random_probs(4096, 100, g).cuda()
steps = (torch.rand(100, 4096, generator=g) * 9e-4).cuda()
precision = sys.argv[1] if len(sys.argv) > 1 else "fp32"
for _ in range(3):
    ops.aeppt(probs, *weights, steps, precision=precision)
torch.cuda.synchronize()
