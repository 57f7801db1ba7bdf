"""Installable `ku` package: image aesthetics (Hosu 2019, Murray & Gordo 2017, Jia et al. 2019)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "ku" / "__init__.py").read_text()).group(1)

setup(
    name="ku",
    version=VERSION,
    description="Keras 3 / TensorFlow 2 reproductions of image-aesthetics papers (MLSP, APM, theme-ROI)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ku", "ku.*"]),
    python_requires=">=3.10",
    install_requires=[
        # `tensorflow` or `tensorflow-cpu` (requirements.txt pins the CPU build we test with)
        "keras>=3.10,<4",
        "h5py>=3.10",
        "numpy>=1.26",
        "pandas>=2.1",
        "scipy>=1.11",
        "opencv-python-headless>=4.9",
        "matplotlib>=3.8",
        "pillow>=10",
        "absl-py>=2.0",
        "scikit-image>=0.22",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5", "jax>=0.4.36", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6"]},
    entry_points={"console_scripts": ["ku = ku.cli:main"]},
)
