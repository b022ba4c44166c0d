"""Build mia-fast: the Python package and its C++ (and, where possible, CUDA) extension mia_fast._C.

Install against the torch already in the environment:  pip install --no-build-isolation -e .
CUDA kernels are built when torch has CUDA and nvcc is found, or when FORCE_CUDA=1.
MIA_FAST_NATIVE=0 builds without -march=native (for wheels that must run on other CPUs).
MIA_FAST_VEC_WIDTH=4|8|16 forces the CPU kernels' vector width (16 is what AVX-512 machines build), so
every width can be tested on any x86 CPU.
"""
import glob
import os
import shutil
import subprocess
import tempfile

from setuptools import find_packages, setup

# One place for the version: mia_fast/version.py (the compare cache keys results by it).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mia_fast", "version.py")) as _f:
    VERSION = _f.read().split('"')[1]


def _compiler_accepts(flag):
    """True if the C++ compiler accepts `flag` (tried on an empty translation unit)."""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        cmd = [cxx, flag, "-c", src, "-o", os.path.join(tmp, "probe.o")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def _cpu_flags():
    flags = ["-O3"]
    if os.environ.get("MIA_FAST_NATIVE", "1") != "0" and _compiler_accepts("-march=native"):
        flags.append("-march=native")
    if _compiler_accepts("-fopenmp"):
        flags.append("-fopenmp")
    if os.environ.get("MIA_FAST_VEC_WIDTH"):  # 4, 8 or 16 floats whatever the CPU: tests every kernel width
        flags.append("-DMIA_FAST_VEC_WIDTH=" + str(int(os.environ["MIA_FAST_VEC_WIDTH"])))
    return flags


def _want_cuda(torch):
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc") is not None


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = _cpu_flags()
    ldflags = ["-fopenmp"] if "-fopenmp" in cxx else []
    if _want_cuda(torch):
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-lineinfo",
                "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        return [CUDAExtension("mia_fast._C", sources, extra_compile_args={"cxx": cxx + ["-DMIA_FAST_WITH_CUDA"], "nvcc": nvcc},
                              extra_link_args=ldflags)]
    return [CppExtension("mia_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=ldflags)]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


# httptools and uvloop: uvicorn's C parser and event loop, 1.6-2.1x the requests/s of its h11 and asyncio
# fallbacks on 2 cores (bench/README.md, `mia-fast serve` under load).
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'"]
RAY = ["ray>=2.9"]

setup(
    name="mia-fast",
    version=VERSION,
    description="Defenses against membership inference attacks (AEPPT, input perturbation) with fused CPU/CUDA kernels",
    packages=find_packages(include=["mia_fast", "mia_fast.*"]),
    package_data={"mia_fast": ["py.typed"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
    python_requires=">=3.9",
    # torch >= 2.10: earlier weights_only loaders (used for .pt checkpoints mia-fast wrote before it moved
    # to safetensors, and .pt prediction files) can be made to run code (GHSA-53q9-r3pm-6pq6, fixed in
    # 2.6) or corrupt memory (GHSA-63cw-57p8-fm3p, fixed in 2.10).
    install_requires=["torch>=2.10", "numpy", "click>=8", "tqdm", "scikit-learn", "matplotlib", "safetensors>=0.4",
                      "opacus==1.6.0"],  # DP-SGD; 1.6.0 is tested with the torch 2.13.0 CPU build
    extras_require={"serve": SERVE, "ray": RAY, "test": ["pytest", "pytest-benchmark", "pytest-xdist", *SERVE, "httpx", *RAY]},
    entry_points={"console_scripts": ["mia-fast=mia_fast.cli:main"]},
)
