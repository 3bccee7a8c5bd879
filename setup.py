"""cress_bitnet: a fairseq user-dir plugin for end-to-end speech translation with 1-bit decoders."""

from setuptools import find_packages, setup

setup(
    name="cress_bitnet",
    version="0.1.0",
    description="HuBERT + Transformer speech translation for fairseq with SVCD 1-bit quantized layers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["cress_bitnet", "cress_bitnet.*"]),
    install_requires=[
        # torch and torchaudio move in lockstep: torchaudio 2.11 only works with torch 2.11.
        "torch==2.11.0",
        "torchaudio==2.11.0",
        # A maintained build of fairseq main with wheels for Python 3.11/3.12 (fairseq 0.12.2 cannot install there).
        "ve-fairseq==0.12.3",
        "sentencepiece",
        "sacrebleu>=2",
        "tensorboard",
        "soundfile",
        "espeakng-loader",
        "PyYAML",
        "tqdm",
        "matplotlib",
        # torch.utils.cpp_extension builds the packed 1-bit CPU kernel on first use with ninja
        "ninja",
        # cress-bitnet-export --format safetensors: packed checkpoints that load without any unpickling
        "safetensors",
    ],
    package_data={"cress_bitnet.kernels": ["*.cpp"]},
    extras_require={"dev": ["pytest", "ruff"]},
    entry_points={"console_scripts": ["cress-bitnet-export=cress_bitnet.export:main",
                                      "cress-bitnet-translate=cress_bitnet.translate:main"]},
)
