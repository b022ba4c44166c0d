"""Static instruction mix of the fused AEPPT kernel's inner loops, from its SASS: no GPU needed.

    python bench/sass_mix.py                      # the working tree's kernel
    python bench/sass_mix.py --rev 51115b0 --rev HEAD   # two versions side by side

Compiles csrc/cuda/aeppt_kernel.cu (or the file at a git revision) with `nvcc -cubin -arch=sm_90`,
disassembles it with cuobjdump (`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` if they are not
on the PATH) and lists, for one kernel instantiation, every innermost loop with FFMAs or tensor-core MMAs
(HMMA) in it: its length in instructions, the FFMAs and HMMAs among them and their share. In a GEMM loop
the rest (shared-memory loads, TF32 splits, address arithmetic, loop control) is the issue overhead the
kernel pays per product. A count, not a timing: only a GPU run tells the time (bench_aeppt_cuda.py).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "csrc/cuda/aeppt_kernel.cu"


def tool_path() -> str:
    """PATH with the NVIDIA wheels' bin directory added (cuobjdump runs nvdisasm)."""
    wheels = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "bin"
    path = os.environ.get("PATH", "") + os.pathsep + str(wheels)
    if shutil.which("cuobjdump", path=path) is None or shutil.which("nvdisasm", path=path) is None:
        sys.exit("sass_mix: cuobjdump and nvdisasm not found; pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    return path


def compile_sass(rev: str | None, arch: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        source = ROOT / KERNEL
        if rev is not None:
            kernel_dir = Path(tmp) / "cuda"
            kernel_dir.mkdir()
            for name in ("aeppt_kernel.cu", "aeppt_kernel.cuh"):
                text = subprocess.run(["git", "show", f"{rev}:csrc/cuda/{name}"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout
                (kernel_dir / name).write_text(text)
            source = kernel_dir / "aeppt_kernel.cu"
        cubin = os.path.join(tmp, "kernel.cubin")
        subprocess.run(["nvcc", "-cubin", "-std=c++17", "-O3", f"-arch={arch}", str(source), "-o", cubin], check=True)
        env = dict(os.environ, PATH=tool_path())
        return subprocess.run(["cuobjdump", "-sass", cubin], check=True, capture_output=True, text=True, env=env).stdout


def opcode(text: str) -> str:
    words = text.split()
    word = words[1] if words[0].startswith("@") else words[0]  # skip a predicate guard
    return word.split(".")[0]


def inner_loops(sass: str, kernel: str):
    """[(start, length, Counter of opcodes)] for the innermost loops of the first function matching."""
    for body in re.split(r"\n\s*Function : ", sass)[1:]:
        if kernel not in body.split("\n", 1)[0]:
            continue
        code = [(int(m.group(1), 16), m.group(2).strip())
                for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
        index = {address: i for i, (address, _) in enumerate(code)}
        loops = []
        for i, (address, text) in enumerate(code):
            target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
            if target and int(target.group(1), 16) <= address and int(target.group(1), 16) in index:
                loops.append((index[int(target.group(1), 16)], i))
        innermost = [(s, e) for s, e in loops
                     if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in loops)]
        return [(s, e - s + 1, collections.Counter(opcode(t) for _, t in code[s:e + 1])) for s, e in innermost]
    sys.exit(f"sass_mix: no kernel matching {kernel!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", help="git revision of the kernel (repeatable); default: working tree")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--kernel", default="aeppt_kernelILi32ELb1E",
                        help="mangled-name fragment: the 32-sample tile with weights in shared memory, as run at "
                             "B = 4096, C = 100 on an H100 (append ELb1E for its tensor-core variant)")
    parser.add_argument("--min-math", type=int, default=8, help="list loops with at least this many FFMA + HMMA")
    args = parser.parse_args()
    print(f"{KERNEL}, {args.arch}, kernel {args.kernel}: innermost loops with >= {args.min_math} FFMA + HMMA")
    print("| version | loop at | instructions | FFMA | HMMA | math share | shared loads | other |")
    print("|---|---|---|---|---|---|---|---|")
    for rev in args.rev or [None]:
        for start, length, ops in inner_loops(compile_sass(rev, args.arch), args.kernel):
            math = ops["FFMA"] + ops["HMMA"]
            if math < args.min_math:
                continue
            print(f"| {rev or 'working tree'} | {start} | {length} | {ops['FFMA']} | {ops['HMMA']} | "
                  f"{math / length:.0%} | {ops['LDS']} | {length - math - ops['LDS']} |")


if __name__ == "__main__":
    main()
